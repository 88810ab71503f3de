"""The filesystem: namespace, attributes, data and transactions, without FUSE.

Operations are synchronous and never yield, so under trio each one is atomic with
respect to the others; they raise FsError(errno).  Metadata changes accumulate in
the running transaction (dirty inodes, directory blocks, bitmap blocks, extent and
xattr blocks) and are committed through the journal by `commit()`: on fsync,
syncfs, unmount, a timer, when the transaction grows large, and after operations
that free data blocks.  Data is stored in place in the pmem mapping and flushed
before the commit that exposes it.
"""

from __future__ import annotations

import errno
import logging
import operator
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from . import format as fmt
from .alloc import BlockAllocator, InodeAllocator
from .directory import Directory, dtype_of
from .errors import CorruptionError, FsError, ImageError
from .extents import HOLE, ExtentMap
from .inode import (
    Inode,
    extent_images,
    extent_leaves_needed,
    load_extents,
    load_symlink,
    load_xattrs,
    symlink_image,
    xattr_blocks_needed,
    xattr_entry_size,
    xattr_images,
)
from .journal import Journal
from .pmem import PmemDevice

log = logging.getLogger(__name__)

BS = fmt.BLOCK_SIZE
XATTR_CREATE = 1
XATTR_REPLACE = 2
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SEEK_DATA = 3
SEEK_HOLE = 4
_DAY_NS = 86400 * 10**9
_CAPS_XATTR = b"security.capability"
_NEVER = 2**63 - 1  # an atime_next no read reaches (read-only mounts)
_XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
# Blocks kept back from data and namespace allocations for the metadata a commit
# itself may need (extent leaves, xattr blocks).
META_RESERVE = 8
# A transaction is committed early once it may hold this share of the journal.
_TXN_FRACTION = 4
# A file with more extents than this is flushed as one span of device blocks.
_FLUSH_SPAN_RUNS = 64


class LayoutHooks(Protocol):
    """What the filesystem tells the page table ("struct page") and pfn map about
    block ownership.  The native core implements it; `NullHooks` does nothing."""

    def mapped(self, ino: int, lblk: int, pblk: int, count: int) -> None: ...
    def unmapped(self, ino: int, lblk: int, pblk: int, count: int) -> None: ...
    def dropped(self, ino: int) -> None: ...

    # The fast data path (native/fastpath.c): serves reads and in-place
    # overwrites of published inodes and leaves timestamps as stamps.
    fast: bool

    def publish(self, ino: int, size: int, atime_next: int) -> None: ...
    def resized(self, ino: int, size: int) -> None: ...
    def nocaps(self, ino: int, on: bool) -> None: ...
    def atime_next(self, ino: int, when: int) -> None: ...
    def writable(self, on: bool) -> None: ...
    def stamps(self) -> list[tuple[int, int, int]]: ...
    # ... and answers GETATTR from a copy of the attributes (any inode).
    def attrs(self, ino: int, d: fmt.DiskInode) -> bool: ...
    def attrs_stale(self, ino: int) -> None: ...


class NullHooks:
    fast = False

    def mapped(self, ino: int, lblk: int, pblk: int, count: int) -> None:
        pass

    def unmapped(self, ino: int, lblk: int, pblk: int, count: int) -> None:
        pass

    def dropped(self, ino: int) -> None:
        pass

    def publish(self, ino: int, size: int, atime_next: int) -> None:
        pass

    def resized(self, ino: int, size: int) -> None:
        pass

    def nocaps(self, ino: int, on: bool) -> None:
        pass

    def atime_next(self, ino: int, when: int) -> None:
        pass

    def writable(self, on: bool) -> None:
        pass

    def stamps(self) -> list[tuple[int, int, int]]:
        return []

    def attrs(self, ino: int, d: fmt.DiskInode) -> bool:
        return False

    def attrs_stale(self, ino: int) -> None:
        pass


@dataclass
class MountOptions:
    readonly: bool = False
    alloc_policy: str | None = None  # None: the image's own (from mkfs)
    commit_interval: float = 5.0


@dataclass
class StatFs:
    blocks: int
    bfree: int
    bavail: int
    files: int
    ffree: int
    namemax: int = fmt.MAX_NAME
    bsize: int = BS


class Filesystem:
    # Invariants: every inode in `dirty` has a stale on-media copy; `cache` holds every
    # inode that is referenced (lookups/opens > 0), dirty, or a directory's parent.

    def __init__(self, dev: PmemDevice, sb: fmt.Superblock, opts: MountOptions,
                 hooks: LayoutHooks | None = None) -> None:
        self.dev = dev
        self.ops = dev.ops
        self.sb = sb
        self.opts = opts
        self.readonly = opts.readonly
        self.hooks: LayoutHooks = hooks or NullHooks()
        policy = opts.alloc_policy or fmt.ALLOC_POLICIES[sb.alloc_policy]
        self.balloc = BlockAllocator(sb, policy)
        self.ialloc = InodeAllocator(sb)
        self.journal = Journal(self.ops, self._read_raw, sb)
        self.cache: dict[int, Inode] = {}
        self.dirty: set[int] = set()
        # Inodes whose attributes changed, or were just told to the kernel, since
        # the fast path's copies were last brought up to date (publish_attrs).
        self.attrs_touched: set[int] = set()
        self.dirty_ext: set[int] = set()
        self.dirty_xattr: set[int] = set()
        self.dirty_dirs: set[int] = set()
        self.data_dirty: set[int] = set()
        self.orphans: list[int] = []  # on-media orphan list, head first
        # Orphans whose storage is freed, kept only until the kernel forgets them.
        self.dead: set[int] = set()
        self.fsinfo_dirty = False
        # New metadata blocks whose image is built when they are made (symlink targets).
        self.new_images: dict[int, bytes] = {}
        self.txn_weight = 0
        self._freed_now: list[tuple[int, int]] = []  # freed by the commit being built
        self.error: str | None = None

    # -- lifecycle ---------------------------------------------------------------

    @classmethod
    def from_image(cls, path: str, opts: MountOptions | None = None,
             hooks: LayoutHooks | None = None) -> Filesystem:
        """Open an image: validate, replay the journal, load bitmaps, reap orphans."""
        opts = opts or MountOptions()
        dev = PmemDevice(path, readonly=opts.readonly)
        try:
            sb = fmt.Superblock.unpack(dev.view[:BS].tobytes(), dev.size)
            if opts.readonly and cls._state_of(dev) != fmt.STATE_CLEAN:
                raise ImageError("image was not unmounted cleanly: mount it read-write once "
                                 "to replay its journal")
            if sb.feature_ro_compat and not opts.readonly:
                raise ImageError(f"image uses unknown features {sb.feature_ro_compat:#x}: "
                                 "it can only be mounted read-only")
            fs = cls(dev, sb, opts, hooks)
            fs._mount()
        except (CorruptionError, FsError) as e:
            # FsError here: a structure points at something that is not there (an
            # orphan list naming a free inode, ...): the image is corrupt.
            dev.close()
            raise ImageError(f"corrupt image: {e}")
        except BaseException:
            dev.close()
            raise
        return fs

    def _mount(self) -> None:
        state = self._state()
        if state & fmt.STATE_NEEDS_FSCK:
            raise ImageError("image is marked as needing fsck: run 'daxfs fsck --repair'")
        if not self.readonly:  # a read-only mount is only allowed on a clean image
            self.journal.replay()
        self.balloc.bitmap.load(self._read_raw)
        self.ialloc.bitmap.load(self._read_raw)
        head = fmt.unpack_fsinfo(self._read_raw(self.sb.fsinfo_block), self.sb.fsinfo_block)
        root = self.get(fmt.ROOT_INO)
        if not root.is_dir():
            raise CorruptionError("root inode is not a directory")
        while head:
            if head in self.orphans or len(self.orphans) > self.sb.inode_count:
                raise CorruptionError("orphan list loops")
            self.orphans.append(head)
            head = self.get(head).d.orphan_next
        if self.orphans and not self.readonly:
            log.info("freeing %d orphaned inode(s)", len(self.orphans))
            for ino in list(self.orphans):
                self._destroy(self.get(ino))
        if not self.readonly:
            self._set_state(0)  # mounted: not clean until unmount
            self.commit()

    def attach_hooks(self, hooks: LayoutHooks) -> None:
        """Start telling `hooks` about block ownership, beginning with every extent
        map already in memory."""
        self.hooks = hooks
        for inode in self.cache.values():
            inode.published = inode.attrs_out = False
            if inode.ext is not None:
                for lblk, pblk, count in inode.ext.runs():
                    hooks.mapped(inode.ino, lblk, pblk, count)
        hooks.writable(not self.readonly)

    @staticmethod
    def _state_of(dev: PmemDevice) -> int:
        return int.from_bytes(dev.view[fmt.SB_STATE_OFF : fmt.SB_STATE_OFF + 8], "little")

    def _state(self) -> int:
        return self._state_of(self.dev)

    def _set_state(self, state: int) -> None:
        self.ops.memcpy(fmt.SB_STATE_OFF, state.to_bytes(8, "little"))
        self.ops.persist(fmt.SB_STATE_OFF, 8)

    def close(self) -> None:
        """Unmount: free what only the kernel still referenced, commit, mark clean."""
        if not self.readonly and self.error is None:
            for inode in [i for i in self.cache.values() if i.d.nlink == 0]:
                inode.lookups = inode.opens = 0
                self._maybe_destroy(inode)
            self.commit()
            self.journal.checkpoint()
            self._set_state(fmt.STATE_CLEAN)
        self.dev.close()

    def mark_corrupt(self, why: str) -> None:
        """Corruption seen while mounted: go read-only and ask for fsck."""
        if self.error is None:
            log.error("metadata corruption: %s; filesystem is now read-only, run daxfs fsck",
                      why)
            self.error = why
            self.readonly = True
            self.hooks.writable(False)
            try:
                self._set_state(fmt.STATE_NEEDS_FSCK)
            except OSError:
                pass

    # -- block access --------------------------------------------------------------

    def _read_raw(self, blk: int) -> bytes:
        if blk >= self.sb.block_count:
            raise CorruptionError(f"block number {blk} beyond the device", blk)
        return self.dev.view[blk * BS : (blk + 1) * BS].tobytes()

    def _read_itable(self, blk: int) -> bytes:
        """An inode-table block; one never written (all zeros) holds only free slots,
        which is what lets mkfs leave the table sparse."""
        b = self._read_raw(blk)
        if not any(b[fmt.PAYLOAD:]) and not any(b):
            return b
        fmt.check(b, fmt.BT_ITABLE, blk)
        return b

    def _alloc_meta(self) -> int:
        """A metadata block while building a commit: may use the reserve."""
        (start, _n), = self.balloc.alloc(1)
        return start

    def _free_dir_block(self, blk: int) -> None:
        self.balloc.free(blk, 1)

    def _alloc_ns(self) -> int:
        """A metadata block for an operation (directory, symlink, xattr, extent leaf)."""
        if not self.balloc.available(META_RESERVE // 2) and self.balloc.pending:
            self.commit()  # frees waiting for a commit may be enough
        (start, _n), = self.balloc.alloc(1, reserve=META_RESERVE // 2)
        return start

    def _ensure_leaves(self, inode: Inode) -> None:
        """Allocate the extent leaves the map will need at commit, now, so that ENOSPC
        reaches the operation that caused it instead of the commit."""
        assert inode.ext is not None
        need = extent_leaves_needed(len(inode.ext))
        while len(inode.ext_leaves) < need:
            inode.ext_leaves.append(self._alloc_ns())

    def _free_meta_now(self, blk: int) -> None:
        self._freed_now.append((blk, 1))
        # Only used while building a commit: no data can land in the block before
        # the transaction that frees it is durable.
        self.balloc.bitmap.clear_range(blk, 1)

    # -- inodes ----------------------------------------------------------------------

    def get(self, ino: int) -> Inode:
        inode = self.cache.get(ino)
        if inode is not None:
            return inode
        if ino <= 0 or ino > self.sb.inode_count or ino in self.dirty:
            raise FsError(errno.ESTALE)
        blk, off = fmt.itable_location(self.sb, ino)
        d = fmt.DiskInode.unpack(self._read_itable(blk), off)
        if d.mode == 0:
            raise FsError(errno.ESTALE, f"inode {ino} is not in use")
        inode = Inode(ino, d)
        self.cache[ino] = inode
        return inode

    def _dirty(self, inode: Inode) -> None:
        """Every change of an inode comes here (the journal must see it), in the
        same synchronous call as the change itself."""
        if inode.ino not in self.dirty:
            self.dirty.add(inode.ino)
            self.txn_weight += 1
        if inode.published:
            # Its times changed: relatime may now want the next read's atime.
            self.hooks.atime_next(inode.ino, 0)
        if inode.attrs_out:
            # At once: a GETATTR a reader thread takes now must come to us.
            self.hooks.attrs_stale(inode.ino)
            inode.attrs_out = False
        if self.hooks.fast:
            self.attrs_touched.add(inode.ino)

    def attrs_answered(self, inode: Inode) -> None:
        """The kernel was just told inode's attributes: let the fast path repeat them."""
        if self.hooks.fast and not inode.attrs_out:
            self.attrs_touched.add(inode.ino)

    def publish_attrs(self) -> None:
        """Give the fast path a copy of the attributes of each inode changed or
        answered since the last call.  Called at the end of every request, before
        its reply: fs methods are synchronous and call _dirty with each change, so
        no inode is half-changed here, and the kernel never hears of a change the
        copy lacks."""
        if not self.attrs_touched:
            return
        touched, self.attrs_touched = self.attrs_touched, set()
        for ino in touched:
            inode = self.cache.get(ino)
            if inode is not None and not inode.attrs_out:
                # False while fast-path stamps wait: the next request publishes it.
                inode.attrs_out = self.hooks.attrs(ino, inode.d)

    def _set_size(self, inode: Inode, size: int) -> None:
        """The one place a regular file's size changes (the fast path must know)."""
        inode.d.size = size
        if inode.published:
            self.hooks.resized(inode.ino, size)

    def _atime_next(self, inode: Inode) -> int:
        """When a read next needs an atime update (relatime), for the fast path."""
        if self.readonly:
            return _NEVER
        d = inode.d
        if d.atime <= d.mtime or d.atime <= d.ctime:
            return 0
        return d.atime + _DAY_NS

    def _publish(self, inode: Inode) -> None:
        """Hand a regular file to the fast data path: its whole pfn map is in the
        core from here on (extents are loaded), and its size is kept current."""
        if self.hooks.fast and inode.is_reg() and not inode.published:
            self._extents(inode)
            inode.published = True
            self.hooks.publish(inode.ino, inode.d.size, self._atime_next(inode))
            self._publish_caps(inode)

    def _publish_caps(self, inode: Inode) -> None:
        """Tell the fast path whether the file has file capabilities: the kernel
        asks (getxattr security.capability) before every page-cache write."""
        if inode.published:
            self.hooks.nocaps(inode.ino, _CAPS_XATTR not in self._xattrs(inode))

    def sync_fast(self) -> None:
        """Fold in the timestamps the fast path left: every request and every
        commit starts here, so getattr, fsync and the journal see each write that
        completed."""
        for ino, wtime, rtime in self.hooks.stamps():
            inode = self.cache.get(ino)
            if inode is None or not inode.published:
                continue
            d = inode.d
            changed = False
            if wtime:
                d.mtime = d.ctime = wtime
                self.data_dirty.add(ino)
                changed = True
            if rtime and not self.readonly and (
                    d.atime <= d.mtime or d.atime <= d.ctime or rtime - d.atime > _DAY_NS):
                d.atime = rtime
                changed = True
            if changed:
                self._dirty(inode)
            self.hooks.atime_next(ino, self._atime_next(inode))

    def _extents(self, inode: Inode) -> ExtentMap:
        if inode.ext is None:
            load_extents(inode, self._read_raw)
            em = inode.ext
            assert em is not None
            for lblk, pblk, count in em.runs():
                self.hooks.mapped(inode.ino, lblk, pblk, count)
        assert inode.ext is not None
        return inode.ext

    def _directory(self, inode: Inode) -> Directory:
        if not inode.is_dir():
            raise FsError(errno.ENOTDIR)
        if inode.dir is None:
            inode.dir = Directory.load(inode.d.aux_block, inode.d.next_cookie, self._read_raw)
        return inode.dir

    def _xattrs(self, inode: Inode) -> dict[bytes, bytes]:
        if inode.xattrs is None:
            load_xattrs(inode, self._read_raw)
        assert inode.xattrs is not None
        return inode.xattrs

    def _check_writable(self) -> None:
        if self.readonly:
            raise FsError(errno.EROFS)

    @staticmethod
    def _check_name(name: bytes) -> None:
        if len(name) > fmt.MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
        if not name or b"/" in name or b"\0" in name:
            raise FsError(errno.EINVAL)

    def _new_inode(self, mode: int, uid: int, gid: int, parent: Inode | None,
                   rdev: int = 0) -> Inode:
        ino = self.ialloc.alloc()
        now = fmt.now_ns()
        if parent is not None and parent.d.mode & stat.S_ISGID:
            gid = parent.d.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        d = fmt.DiskInode(mode=mode, uid=uid, gid=gid, nlink=1, atime=now, mtime=now,
                          ctime=now, btime=now, rdev=rdev)
        inode = Inode(ino, d)
        inode.ext = ExtentMap()
        inode.xattrs = {}
        self.cache[ino] = inode
        self._dirty(inode)
        return inode

    # -- transactions ----------------------------------------------------------------

    def maybe_commit(self) -> None:
        """Commit early when the running transaction may outgrow its journal share."""
        if self.txn_weight * _TXN_FRACTION >= self.journal.max_blocks():
            self.commit()

    def flush_data(self, inode: Inode) -> None:
        em = inode.ext
        if em is None or not em.pblk:
            return
        if len(em.pblk) > _FLUSH_SPAN_RUNS:
            # A fragmented file: one flush of the span of its blocks, not one per
            # run (tens of thousands after random allocating writes); flushing
            # clean pages too is never wrong, and a drain writes back only the
            # dirty ones.
            lo = min(em.pblk)
            hi = max(map(operator.add, em.pblk, em.count))
            self.ops.flush(lo * BS, (hi - lo) * BS)
            return
        for _lblk, pblk, count in em.runs():
            self.ops.flush(pblk * BS, count * BS)

    def commit(self) -> None:
        """Make everything done so far durable, atomically, through the journal."""
        if self.readonly or self.error is not None:
            return
        self._freed_now = []
        self.journal.commit(self._build_transaction())
        if self.journal.replays_into(self._freed_now):
            # Blocks this commit made free for reuse (as data, written in place) still
            # have old images in the log: checkpoint so no replay can write them.
            self.journal.checkpoint()
        self._freed_now = []
        self.txn_weight = 0
        self._evict()

    def _build_transaction(self) -> dict[int, bytes]:
        """Flush dirty data, then serialize every dirty metadata object into sealed
        block images (home block number -> image)."""
        self.sync_fast()
        for ino in self.data_dirty:
            inode = self.cache.get(ino)
            if inode is not None:
                self.flush_data(inode)
        self.data_dirty.clear()
        blocks: dict[int, bytes] = {}
        # Frees of this transaction become allocatable now: only metadata written
        # through this same transaction can land in them before it is durable.
        self._freed_now.extend(self.balloc.release_pending())
        for ino in self.dirty_ext:
            inode = self.cache[ino]
            blocks.update(extent_images(inode, self._alloc_meta, self._free_meta_now))
            self._dirty(inode)
        self.dirty_ext.clear()
        for ino in self.dirty_xattr:
            inode = self.cache[ino]
            blocks.update(xattr_images(inode, self._alloc_meta, self._free_meta_now))
            self._dirty(inode)
        self.dirty_xattr.clear()
        for ino in self.dirty_dirs:
            inode = self.cache.get(ino)
            if inode is not None and inode.dir is not None:
                blocks.update(inode.dir.dirty_images())
                inode.d.next_cookie = inode.dir.next_cookie
                inode.d.aux_block = inode.dir.blocks[0] if inode.dir.blocks else 0
                self._dirty(inode)
        self.dirty_dirs.clear()
        by_block: dict[int, list[Inode | int]] = {}
        for ino in self.dirty:
            blk, _ = fmt.itable_location(self.sb, ino)
            by_block.setdefault(blk, []).append(self.cache.get(ino) or ino)
        for blk, members in by_block.items():
            image = bytearray(self._read_itable(blk))
            for m in members:
                ino = m if isinstance(m, int) else m.ino
                _, off = fmt.itable_location(self.sb, ino)
                image[off : off + fmt.INODE_SIZE] = (
                    fmt.DiskInode().pack() if isinstance(m, int) else m.d.pack())
            blocks[blk] = fmt.seal(image[: fmt.PAYLOAD], fmt.BT_ITABLE, blk)
        self.dirty.clear()
        if self.fsinfo_dirty:
            blk = self.sb.fsinfo_block
            blocks[blk] = fmt.pack_fsinfo(self.orphans[0] if self.orphans else 0, blk)
            self.fsinfo_dirty = False
        blocks.update(self.new_images)
        self.new_images.clear()
        blocks.update(self.balloc.bitmap.dirty_blocks())
        blocks.update(self.ialloc.bitmap.dirty_blocks())
        return blocks

    def _evict(self) -> None:
        """Drop clean, unreferenced inodes so the cache does not grow without bound."""
        if len(self.cache) < 50_000:
            return
        for ino in [i for i, n in self.cache.items()
                    if not n.lookups and not n.opens and i != fmt.ROOT_INO
                    and not n.is_dir()]:
            self.cache.pop(ino)
            # Its pfn map, or an attribute copy (valid or not), may be in the core.
            self.hooks.dropped(ino)

    def fsync(self, ino: int | None, datasync: bool = False) -> None:
        if ino is not None:
            inode = self.get(ino)
            self.flush_data(inode)
            if datasync and ino not in self.dirty and not self.dirty_ext:
                self.ops.drain()
                return
        self.commit()

    # -- orphans -----------------------------------------------------------------------

    def _add_orphan(self, inode: Inode) -> None:
        if inode.d.flags & fmt.IF_ORPHAN:
            return
        inode.d.flags |= fmt.IF_ORPHAN
        inode.d.orphan_next = self.orphans[0] if self.orphans else 0
        self.orphans.insert(0, inode.ino)
        self.fsinfo_dirty = True
        self._dirty(inode)

    def _remove_orphan(self, inode: Inode) -> None:
        if not inode.d.flags & fmt.IF_ORPHAN:
            return
        i = self.orphans.index(inode.ino)
        nxt = self.orphans[i + 1] if i + 1 < len(self.orphans) else 0
        if i == 0:
            self.fsinfo_dirty = True
        else:
            prev = self.get(self.orphans[i - 1])
            prev.d.orphan_next = nxt
            self._dirty(prev)
        del self.orphans[i]
        inode.d.flags &= ~fmt.IF_ORPHAN
        inode.d.orphan_next = 0

    def _maybe_destroy(self, inode: Inode) -> None:
        """An inode without names loses its storage at its last close, and its slot
        once the kernel has forgotten it too (its number must not be reused while
        the kernel may still send requests for it)."""
        if inode.d.nlink != 0 or inode.opens > 0:
            return
        self._free_storage(inode)
        if inode.lookups <= 0:
            self._destroy(inode)
        else:
            self.dead.add(inode.ino)

    def _free_storage(self, inode: Inode) -> None:
        """Free an unused inode's blocks: data, directory, symlink, xattr, leaves."""
        if inode.is_reg():
            em = self._extents(inode)
            self._unmap(inode, 0, em.end())
            self._set_size(inode, 0)
        if inode.is_dir():
            d = self._directory(inode)
            for blk in d.blocks:
                self.balloc.free(blk, 1)
            d.blocks.clear()
            d.dirty.clear()
            d.used.clear()
            d.names.clear()
            self.dirty_dirs.discard(inode.ino)
            inode.d.aux_block = 0
        if inode.is_lnk() and inode.d.aux_block:
            self.new_images.pop(inode.d.aux_block, None)
            self.balloc.free(inode.d.aux_block, 1)
            inode.d.aux_block = 0
        for blk in self._all_xattr_blocks(inode):
            self.balloc.free(blk, 1)
        inode.xattrs = {}
        inode.d.xattr_head = 0
        self.dirty_xattr.discard(inode.ino)
        for blk in inode.ext_leaves:
            self.balloc.free(blk, 1)
        inode.ext_leaves = []
        inode.d.ext_head = 0
        inode.d.ext_count = 0
        if not inode.is_lnk():
            inode.d.inline = b""
        self.dirty_ext.discard(inode.ino)
        self._dirty(inode)

    def _destroy(self, inode: Inode) -> None:
        """Free an inode with no names and no users: its storage, then the slot."""
        self._free_storage(inode)
        self._remove_orphan(inode)
        self.dead.discard(inode.ino)
        self.hooks.dropped(inode.ino)
        self.ialloc.free(inode.ino)
        for s in (self.dirty_ext, self.dirty_xattr, self.dirty_dirs, self.data_dirty):
            s.discard(inode.ino)
        del self.cache[inode.ino]
        self.dirty.add(inode.ino)  # written back as a zeroed slot
        self.txn_weight += 1

    def _all_xattr_blocks(self, inode: Inode) -> list[int]:
        self._xattrs(inode)
        blocks = inode.xattr_blocks
        inode.xattr_blocks = []
        return blocks

    def forget(self, ino: int, n: int) -> None:
        inode = self.cache.get(ino)
        if inode is None:
            return
        inode.lookups -= n
        if inode.lookups < 0:
            inode.lookups = 0
        if not self.readonly:
            self._maybe_destroy(inode)

    # -- namespace -----------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> Inode:
        p = self.get(parent)
        if len(name) > fmt.MAX_NAME:
            raise FsError(errno.ENAMETOOLONG)
        if name == b".":
            return p
        if name == b"..":
            return self.get(p.d.parent or fmt.ROOT_INO)
        ent = self._directory(p).get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        return self.get(ent[0])

    def _link_into(self, parent: Inode, name: bytes, inode: Inode) -> None:
        d = self._directory(parent)
        d.add(name, inode.ino, dtype_of(inode.d.mode), self._alloc_ns)
        self.dirty_dirs.add(parent.ino)
        self.txn_weight += 1
        now = fmt.now_ns()
        parent.d.mtime = parent.d.ctime = now
        self._dirty(parent)

    def _create_node(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
                     rdev: int = 0) -> Inode:
        self._check_writable()
        self._check_name(name)
        p = self.get(parent)
        d = self._directory(p)
        if p.d.nlink == 0:
            raise FsError(errno.ENOENT)
        if d.get(name) is not None:
            raise FsError(errno.EEXIST)
        inode = self._new_inode(mode, uid, gid, p, rdev)
        try:
            self._link_into(p, name, inode)
        except FsError:
            self.ialloc.free(inode.ino)
            del self.cache[inode.ino]
            self.dirty.discard(inode.ino)
            raise
        if inode.is_dir():
            inode.d.nlink = 2
            inode.d.parent = p.ino
            inode.dir = Directory()
            p.d.nlink += 1
        self.maybe_commit()
        return inode

    def mknod(self, parent: int, name: bytes, mode: int, rdev: int, uid: int,
              gid: int) -> Inode:
        fmtbits = stat.S_IFMT(mode)
        if fmtbits == 0:
            mode |= stat.S_IFREG
        elif fmtbits not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR,
                             stat.S_IFBLK):
            raise FsError(errno.EINVAL)
        return self._create_node(parent, name, mode, uid, gid, rdev)

    def mkdir(self, parent: int, name: bytes, mode: int, uid: int, gid: int) -> Inode:
        return self._create_node(parent, name, stat.S_IFDIR | (mode & 0o7777), uid, gid)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int, gid: int) -> Inode:
        if len(target) > fmt.MAX_SYMLINK:
            raise FsError(errno.ENAMETOOLONG)
        if not target:
            raise FsError(errno.ENOENT)
        blk = 0
        if len(target) > fmt.INLINE_AREA:
            self._check_writable()
            blk = self._alloc_ns()
        try:
            inode = self._create_node(parent, name, stat.S_IFLNK | 0o777, uid, gid)
        except FsError:
            if blk:
                self.balloc.free(blk, 1)
            raise
        inode.d.size = len(target)
        inode.symlink = target
        inode.d.inline = target[: fmt.INLINE_AREA]
        inode.d.inline_len = len(inode.d.inline)
        if blk:
            inode.d.aux_block = blk
            self.new_images[blk] = symlink_image(target, blk)
        return inode

    def readlink(self, ino: int) -> bytes:
        inode = self.get(ino)
        if not inode.is_lnk():
            raise FsError(errno.EINVAL)
        if inode.symlink is None:
            inode.symlink = load_symlink(inode, self._read_raw)
        return inode.symlink

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Inode:
        self._check_writable()
        self._check_name(new_name)
        inode = self.get(ino)
        if inode.is_dir():
            raise FsError(errno.EPERM)
        p = self.get(new_parent)
        d = self._directory(p)
        if d.get(new_name) is not None:
            raise FsError(errno.EEXIST)
        if inode.d.nlink == 0:
            raise FsError(errno.ENOENT)
        if inode.d.nlink >= 65000:
            raise FsError(errno.EMLINK)
        self._link_into(p, new_name, inode)
        inode.d.nlink += 1
        inode.d.ctime = fmt.now_ns()
        self._dirty(inode)
        self.maybe_commit()
        return inode

    def _drop_link(self, inode: Inode) -> None:
        inode.d.nlink -= 1
        inode.d.ctime = fmt.now_ns()
        self._dirty(inode)
        if inode.d.nlink == 0 or (inode.is_dir() and inode.d.nlink <= 1):
            inode.d.nlink = 0
            if inode.lookups > 0 or inode.opens > 0:
                self._add_orphan(inode)
            self._maybe_destroy(inode)

    def unlink(self, parent: int, name: bytes) -> None:
        self._check_writable()
        p = self.get(parent)
        d = self._directory(p)
        ent = d.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        inode = self.get(ent[0])
        if inode.is_dir():
            raise FsError(errno.EISDIR)
        d.remove(name, self._free_dir_block)
        self.dirty_dirs.add(p.ino)
        p.d.mtime = p.d.ctime = fmt.now_ns()
        self._dirty(p)
        self._drop_link(inode)
        self.maybe_commit()

    def rmdir(self, parent: int, name: bytes) -> None:
        self._check_writable()
        if name == b".":
            raise FsError(errno.EINVAL)
        if name == b"..":
            raise FsError(errno.ENOTEMPTY)
        p = self.get(parent)
        d = self._directory(p)
        ent = d.get(name)
        if ent is None:
            raise FsError(errno.ENOENT)
        inode = self.get(ent[0])
        if not inode.is_dir():
            raise FsError(errno.ENOTDIR)
        if len(self._directory(inode)):
            raise FsError(errno.ENOTEMPTY)
        d.remove(name, self._free_dir_block)
        self.dirty_dirs.add(p.ino)
        p.d.nlink -= 1
        p.d.mtime = p.d.ctime = fmt.now_ns()
        self._dirty(p)
        inode.d.nlink = 1
        self._drop_link(inode)
        self.maybe_commit()

    def _is_ancestor(self, anc: Inode, node: Inode) -> bool:
        cur, hops = node, 0
        while True:
            if cur.ino == anc.ino:
                return True
            if cur.ino == fmt.ROOT_INO or hops > self.sb.inode_count:
                return False
            cur = self.get(cur.d.parent or fmt.ROOT_INO)
            hops += 1

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        self._check_writable()
        self._check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or (
                flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE):
            raise FsError(errno.EINVAL)
        op, np_ = self.get(old_parent), self.get(new_parent)
        od, nd = self._directory(op), self._directory(np_)
        src_ent = od.get(old_name)
        if src_ent is None:
            raise FsError(errno.ENOENT)
        src = self.get(src_ent[0])
        dst_ent = nd.get(new_name)
        dst = self.get(dst_ent[0]) if dst_ent else None
        now = fmt.now_ns()
        if flags & RENAME_EXCHANGE:
            if dst is None:
                raise FsError(errno.ENOENT)
            if src.ino == dst.ino:
                return
            if (src.is_dir() and self._is_ancestor(src, np_)) or (
                    dst.is_dir() and self._is_ancestor(dst, op)):
                raise FsError(errno.EINVAL)
            od.replace(old_name, dst.ino, dtype_of(dst.d.mode))
            nd.replace(new_name, src.ino, dtype_of(src.d.mode))
            if op.ino != np_.ino:
                if src.is_dir():
                    src.d.parent = np_.ino
                    op.d.nlink -= 1
                    np_.d.nlink += 1
                if dst.is_dir():
                    dst.d.parent = op.ino
                    np_.d.nlink -= 1
                    op.d.nlink += 1
            for n in (src, dst):
                n.d.ctime = now
                self._dirty(n)
        else:
            if dst is not None:
                if flags & RENAME_NOREPLACE:
                    raise FsError(errno.EEXIST)
                if src.ino == dst.ino:
                    return
                if src.is_dir():
                    if not dst.is_dir():
                        raise FsError(errno.ENOTDIR)
                    if len(self._directory(dst)):
                        raise FsError(errno.ENOTEMPTY)
                elif dst.is_dir():
                    raise FsError(errno.EISDIR)
            if src.is_dir() and self._is_ancestor(src, np_):
                raise FsError(errno.EINVAL)
            if dst is not None:
                nd.replace(new_name, src.ino, dtype_of(src.d.mode))
                if dst.is_dir():
                    np_.d.nlink -= 1
                    dst.d.nlink = 1
                self._drop_link(dst)
            else:
                nd.add(new_name, src.ino, dtype_of(src.d.mode), self._alloc_ns)
            od.remove(old_name, self._free_dir_block)
            if src.is_dir() and op.ino != np_.ino:
                src.d.parent = np_.ino
                op.d.nlink -= 1
                np_.d.nlink += 1
            src.d.ctime = now
            self._dirty(src)
        for p in (op, np_):
            p.d.mtime = p.d.ctime = now
            self._dirty(p)
            self.dirty_dirs.add(p.ino)
        self.txn_weight += 2
        self.maybe_commit()

    def readdir_horizon(self, ino: int) -> int:
        """The cookie a listing started now may stop before (see `readdir`)."""
        return self._directory(self.get(ino)).next_cookie

    def readdir(self, ino: int, cookie: int,
                horizon: int | None = None) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode number, next cookie) from after `cookie`, with . and .. first.

        Entries created after the listing began (cookie >= `horizon`) are left out, as
        POSIX allows: otherwise a reader that creates as it lists may never finish.
        """
        inode = self.get(ino)
        d = self._directory(inode)
        if cookie < 1:
            yield b".", inode.ino, 1
        if cookie < 2:
            yield b"..", inode.d.parent or fmt.ROOT_INO, 2
        for name, child, _dtype, c in d.after(max(cookie, 2)):
            if horizon is not None and c >= horizon:
                return
            yield name, child, c

    # -- attributes ------------------------------------------------------------------------

    def setattr(self, ino: int, *, mode: int | None = None, uid: int | None = None,
                gid: int | None = None, size: int | None = None, atime: int | None = None,
                mtime: int | None = None, ctime: int | None = None) -> Inode:
        self._check_writable()
        inode = self.get(ino)
        d = inode.d
        now = fmt.now_ns()
        if size is not None:
            if inode.is_dir():
                raise FsError(errno.EISDIR)
            if not inode.is_reg():
                raise FsError(errno.EINVAL)
            self.truncate(inode, size)
            if mtime is None:
                d.mtime = now
        if mode is not None:
            d.mode = stat.S_IFMT(d.mode) | (mode & 0o7777)
        if uid is not None:
            d.uid = uid
        if gid is not None:
            d.gid = gid
        if atime is not None:
            d.atime = atime
        if mtime is not None:
            d.mtime = mtime
        d.ctime = ctime if ctime is not None else now
        self._dirty(inode)
        self.maybe_commit()
        return inode

    def truncate(self, inode: Inode, size: int) -> None:
        """Set the size; shrinking frees whole blocks past it and zeroes the tail."""
        if size < 0:
            raise FsError(errno.EINVAL)
        if size > fmt.MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        d = inode.d
        em = self._extents(inode)
        if size < d.size:
            first = -(-size // BS)
            freed = self._unmap(inode, first, max(em.end(), first) - first)
            if size % BS:
                pblk = em.lookup(size // BS)
                if pblk != HOLE:
                    self.ops.memset(pblk * BS + size % BS, 0, BS - size % BS)
                    self.ops.flush(pblk * BS + size % BS, BS - size % BS)
            self._set_size(inode, size)
            self._dirty(inode)
            if freed:
                self.commit()  # freed blocks become reusable right away
            return
        self._set_size(inode, size)
        self._dirty(inode)

    def statfs(self) -> StatFs:
        free = self.balloc.free_count()
        return StatFs(
            blocks=self.sb.block_count - self.sb.data_start,
            bfree=free,
            bavail=max(0, free - META_RESERVE),
            files=self.sb.inode_count,
            ffree=self.ialloc.free_count() + len(self.dead),
        )

    # -- data ----------------------------------------------------------------------------

    def open(self, ino: int, truncate: bool = False) -> Inode:
        """Count an open file; `truncate` is O_TRUNC (the kernel sends it with the
        open, as libfuse asks for atomic O_TRUNC)."""
        inode = self.get(ino)
        if truncate and inode.is_reg():
            self._check_writable()
            self.truncate(inode, 0)
            inode.d.mtime = inode.d.ctime = fmt.now_ns()
            self._dirty(inode)
        inode.opens += 1
        self._publish(inode)
        return inode

    def release(self, ino: int) -> None:
        inode = self.cache.get(ino)
        if inode is None:
            return
        inode.opens -= 1
        if not self.readonly:
            self._maybe_destroy(inode)

    def _map_new(self, inode: Inode, start: int, count: int,
                 zero_ranges: bool) -> list[tuple[int, int, int]]:
        """Allocate device blocks for every hole in [start, start+count) (all or nothing).

        Returns the new (file block, device block, count) runs; if `zero_ranges`,
        they are zeroed on media first.
        """
        em = self._extents(inode)
        holes = [(lb, n) for lb, pb, n in em.segments(start, count) if pb == HOLE]
        need = sum(n for _, n in holes)
        if not need:
            return []
        if need > self.balloc.bitmap.n - self.balloc.bitmap.used and self.balloc.pending:
            self.commit()  # frees waiting for a commit may be enough
        runs = self.balloc.alloc(need, em.goal(start), reserve=META_RESERVE)
        out: list[tuple[int, int, int]] = []
        ri, r_start, r_left = 0, runs[0][0], runs[0][1]
        for lb, n in holes:
            while n:
                take = min(n, r_left)
                out.append((lb, r_start, take))
                lb += take
                n -= take
                r_start += take
                r_left -= take
                if not r_left and ri + 1 < len(runs):
                    ri += 1
                    r_start, r_left = runs[ri]
        for lb, pb, n in out:
            em.insert(lb, pb, n)
        try:
            self._ensure_leaves(inode)
        except FsError:
            for lb, pb, n in out:
                em.remove(lb, n)
                self.balloc.bitmap.clear_range(pb, n)  # never exposed: free at once
            raise
        for lb, pb, n in out:
            if zero_ranges:
                self.ops.zero(pb * BS, n * BS)
            self.hooks.mapped(inode.ino, lb, pb, n)
        inode.d.nblocks += need
        self.dirty_ext.add(inode.ino)
        self._dirty(inode)
        self.txn_weight += 1 + len(out) // fmt.EXTENTS_PER_LEAF
        return out

    def _unmap(self, inode: Inode, start: int, count: int) -> int:
        """Unmap and free [start, start+count); returns the number of blocks freed."""
        if count <= 0:
            return 0
        em = self._extents(inode)
        removed = em.remove(start, count)
        n = 0
        for lb, pb, c in removed:
            self.hooks.unmapped(inode.ino, lb, pb, c)
            self.balloc.free(pb, c)
            n += c
        if n:
            inode.d.nblocks -= n
            self.dirty_ext.add(inode.ino)
            self._dirty(inode)
            self.txn_weight += 1 + len(removed) // 64
        return n

    def write(self, ino: int, off: int, data: bytes | memoryview) -> int:
        self._check_writable()
        inode = self.get(ino)
        n = len(data)
        if off < 0:
            raise FsError(errno.EINVAL)
        if off + n > fmt.MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        if n == 0:
            return 0
        first, last = off // BS, (off + n - 1) // BS
        avail = self.balloc.available(META_RESERVE)
        holes = [(lb, c) for lb, pb, c in self._extents(inode).segments(first, last - first + 1)
                 if pb == HOLE]
        if sum(c for _, c in holes) > avail and self.balloc.pending:
            self.commit()
            avail = self.balloc.available(META_RESERVE)
        if sum(c for _, c in holes) > avail:
            # Short write: as much as fits, like any filesystem near full.
            cum = 0
            for lb, c in holes:
                if cum + c > avail:
                    cut = (lb + avail - cum) * BS
                    break
                cum += c
            if cut <= off:
                raise FsError(errno.ENOSPC)
            n = cut - off
            data = data[:n]
            last = (off + n - 1) // BS
        new = self._map_new(inode, first, last - first + 1, zero_ranges=False)
        for lb, pb, c in new:
            # Zero what this write does not cover in newly allocated blocks.
            if lb == first and off % BS:
                self.ops.memset(pb * BS, 0, off % BS)
            end_lb = lb + c - 1
            if end_lb == last and (off + n) % BS:
                tail = (off + n) % BS
                self.ops.memset((pb + c - 1) * BS + tail, 0, BS - tail)
        em = self._extents(inode)
        src = np.frombuffer(data, dtype=np.uint8)
        pos = 0
        for lb, pb, c in em.segments(first, last - first + 1):
            seg_start = max(lb * BS, off)
            seg_end = min((lb + c) * BS, off + n)
            dev_off = pb * BS + (seg_start - lb * BS)
            ln = seg_end - seg_start
            self.ops.memcpy(dev_off, src[pos : pos + ln])
            pos += ln
        d = inode.d
        if off + n > d.size:
            self._set_size(inode, off + n)
        d.mtime = d.ctime = fmt.now_ns()  # suid/sgid are killed by the kernel's setattr
        self._dirty(inode)
        self.data_dirty.add(inode.ino)
        self.maybe_commit()
        return n

    def read(self, ino: int, off: int, size: int) -> bytes | memoryview:
        inode = self.get(ino)
        if off < 0:
            raise FsError(errno.EINVAL)
        d = inode.d
        if off >= d.size or size <= 0:
            return b""
        size = min(size, d.size - off)
        first, last = off // BS, (off + size - 1) // BS
        segs = self._extents(inode).segments(first, last - first + 1)
        self._touch_atime(inode)
        if len(segs) == 1 and segs[0][1] != HOLE:
            dev_off = segs[0][1] * BS + off % BS
            return memoryview(self.dev.mm)[dev_off : dev_off + size]
        out = bytearray(size)
        dst = np.frombuffer(out, dtype=np.uint8)
        view = self.ops.view
        for lb, pb, c in segs:
            seg_start = max(lb * BS, off)
            seg_end = min((lb + c) * BS, off + size)
            if pb != HOLE:
                dev_off = pb * BS + (seg_start - lb * BS)
                dst[seg_start - off : seg_end - off] = view[dev_off : dev_off + seg_end
                                                            - seg_start]
        return out

    def _touch_atime(self, inode: Inode) -> None:
        if self.readonly:
            return
        d = inode.d
        now = fmt.now_ns()
        if d.atime <= d.mtime or d.atime <= d.ctime or now - d.atime > _DAY_NS:
            d.atime = now
            self._dirty(inode)

    def fallocate(self, ino: int, mode: int, off: int, length: int) -> None:
        self._check_writable()
        inode = self.get(ino)
        if off < 0 or length <= 0:
            raise FsError(errno.EINVAL)
        if not inode.is_reg():
            raise FsError(errno.ENODEV if inode.is_dir() else errno.EINVAL)
        if off + length > fmt.MAX_FILE_SIZE:
            raise FsError(errno.EFBIG)
        known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
        if mode & ~known:
            raise FsError(errno.EOPNOTSUPP)
        d = inode.d
        end = off + length
        if mode & FALLOC_FL_PUNCH_HOLE:
            if not mode & FALLOC_FL_KEEP_SIZE or mode & FALLOC_FL_ZERO_RANGE:
                raise FsError(errno.EOPNOTSUPP)
            self._punch(inode, off, min(end, max(d.size, end)))
        elif mode & FALLOC_FL_ZERO_RANGE:
            self._punch(inode, off, end)
            self._map_new(inode, off // BS, -(-end // BS) - off // BS, zero_ranges=True)
            if not mode & FALLOC_FL_KEEP_SIZE and end > d.size:
                self._set_size(inode, end)
        else:
            self._map_new(inode, off // BS, -(-end // BS) - off // BS, zero_ranges=True)
            if not mode & FALLOC_FL_KEEP_SIZE and end > d.size:
                self._set_size(inode, end)
        d.mtime = d.ctime = fmt.now_ns()
        self._dirty(inode)
        self.data_dirty.add(inode.ino)
        self.maybe_commit()

    def _punch(self, inode: Inode, start: int, end: int) -> None:
        """Zero [start, end): whole blocks are freed, partial ones zeroed in place."""
        if end <= start:
            return
        em = self._extents(inode)
        first_full, last_full = -(-start // BS), end // BS
        for a, b in ((start, min(end, first_full * BS)), (max(start, last_full * BS), end)):
            if a >= b:
                continue
            pblk = em.lookup(a // BS)
            if pblk != HOLE:
                self.ops.memset(pblk * BS + a % BS, 0, b - a)
                self.ops.flush(pblk * BS + a % BS, b - a)
            if first_full > last_full:
                break
        if last_full > first_full and self._unmap(inode, first_full, last_full - first_full):
            self.commit()

    def seek(self, ino: int, off: int, whence: int) -> int:
        inode = self.get(ino)
        size = inode.d.size
        if off < 0:
            raise FsError(errno.EINVAL)
        if off >= size:
            raise FsError(errno.ENXIO)
        em = self._extents(inode)
        if whence == SEEK_DATA:
            blk = em.next_data(off // BS)
            if blk is None or blk * BS >= size:
                raise FsError(errno.ENXIO)
            return max(off, blk * BS)
        if whence == SEEK_HOLE:
            blk = em.next_hole(off // BS)
            return min(size, max(off, blk * BS))
        raise FsError(errno.EINVAL)

    # -- xattrs --------------------------------------------------------------------------

    def getxattr(self, ino: int, name: bytes) -> bytes:
        x = self._xattrs(self.get(ino))
        if name not in x:
            raise FsError(errno.ENODATA)
        return x[name]

    def listxattr(self, ino: int) -> list[bytes]:
        return list(self._xattrs(self.get(ino)))

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._check_writable()
        if not name or len(name) > fmt.MAX_NAME:
            raise FsError(errno.ERANGE)
        if not name.startswith(_XATTR_NAMESPACES):
            # Includes system.posix_acl_*: without ACL support, cp -a and friends
            # must fall back to chmod rather than believe the ACL was stored.
            raise FsError(errno.EOPNOTSUPP)
        if xattr_entry_size(name, value) > fmt.XATTR_CAPACITY:
            raise FsError(errno.E2BIG if len(value) > 65536 else errno.ENOSPC)
        inode = self.get(ino)
        x = self._xattrs(inode)
        if flags & XATTR_CREATE and name in x:
            raise FsError(errno.EEXIST)
        if flags & XATTR_REPLACE and name not in x:
            raise FsError(errno.ENODATA)
        old = x.get(name)
        x[name] = value
        try:
            while len(inode.xattr_blocks) < xattr_blocks_needed(x):
                inode.xattr_blocks.append(self._alloc_ns())
        except FsError:
            if old is None:
                del x[name]
            else:
                x[name] = old
            raise
        self._publish_caps(inode)
        inode.d.ctime = fmt.now_ns()
        self._dirty(inode)
        self.dirty_xattr.add(inode.ino)
        self.txn_weight += 1 + len(inode.xattr_blocks)
        self.maybe_commit()

    def removexattr(self, ino: int, name: bytes) -> None:
        self._check_writable()
        inode = self.get(ino)
        x = self._xattrs(inode)
        if name not in x:
            raise FsError(errno.ENODATA)
        del x[name]
        self._publish_caps(inode)
        inode.d.ctime = fmt.now_ns()
        self._dirty(inode)
        self.dirty_xattr.add(inode.ino)
        self.txn_weight += 1 + len(inode.xattr_blocks)
        self.maybe_commit()


def mkfs(path: str, size: int | None = None, *, force: bool = False,
         alloc_policy: str = "first-fit", inodes: int | None = None) -> fmt.Superblock:
    """Create (or re-create with force) an image file; returns its superblock."""
    exists = os.path.exists(path)
    if exists:
        if os.path.isdir(path):
            raise ImageError(f"{path}: is a directory")
        st = os.stat(path)
        if st.st_size:
            with open(path, "rb") as f:
                head = f.read(8)
            if head == fmt.MAGIC or head.startswith(b"DAXFS"):
                if not force:
                    raise ImageError(
                        f"{path}: already holds a daxfs image (use --force to overwrite)")
            elif stat.S_ISREG(st.st_mode):
                raise ImageError(f"{path}: is a non-empty file that is not a daxfs image; "
                                 "refusing to overwrite it")
        if size is None:
            size = st.st_size or None
    if size is None:
        size = 1 << 30
    if alloc_policy not in fmt.ALLOC_POLICIES:
        raise ImageError(f"unknown allocation policy {alloc_policy!r}")
    block_count, inode_count, journal = fmt.default_geometry(size, inodes)
    sb = fmt.compute_layout(block_count, inode_count, journal)
    if sb.data_start + 16 > block_count:
        raise ImageError(f"image size {size} is too small (need at least "
                         f"{(sb.data_start + 16) * BS} bytes)")
    sb.uuid = fmt.new_uuid()
    sb.mkfs_time_ns = fmt.now_ns()
    sb.alloc_policy = fmt.ALLOC_POLICIES.index(alloc_policy)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.ftruncate(fd, block_count * BS)
    finally:
        os.close(fd)
    dev = PmemDevice(path)
    try:
        ops = dev.ops
        Journal.format(ops, sb)
        fs = Filesystem(dev, sb, MountOptions())
        fs.balloc.init_fresh()
        fs.ialloc.init_fresh()
        ino = fs.ialloc.alloc()
        assert ino == fmt.ROOT_INO
        now = fmt.now_ns()
        root = Inode(ino, fmt.DiskInode(mode=stat.S_IFDIR | 0o755, uid=os.getuid(),
                                        gid=os.getgid(), nlink=2, atime=now, mtime=now,
                                        ctime=now, btime=now, parent=ino,
                                        next_cookie=fmt.FIRST_COOKIE))
        root.dir = Directory()
        root.ext = ExtentMap()
        root.xattrs = {}
        fs.cache[ino] = root
        fs.dirty.add(ino)
        fs.fsinfo_dirty = True
        # A fresh image has nothing to protect: write home locations directly (the
        # bitmaps of a large device would not fit one journal transaction).
        for blk, image in fs._build_transaction().items():
            ops.memcpy(blk * BS, image)
            ops.flush(blk * BS, BS)
        ops.drain()
        ops.memcpy(0, sb.pack())
        ops.memcpy(fmt.SB_STATE_OFF, fmt.STATE_CLEAN.to_bytes(8, "little"))
        ops.persist(0, BS)
    finally:
        dev.close()
    return sb
