"""`daxfs fsck`: check (and with --repair, fix) an unmounted image.

The checker opens the image with its own exclusive flock (so a mounted image is
refused), replays the journal (not an error: every mount does it), then builds an
in-memory model of the metadata and checks one invariant per `check_*` method:

- superblock and state word, journal header;
- checksums of every metadata block (bitmaps, inode table, fsinfo, extent leaves,
  directory, xattr and symlink blocks);
- inode types; extents (sorted, in range, `nblocks`); xattrs parse; symlinks;
- directory blocks parse; namespace: every inode reachable from the root except
  orphans, no cycles, no second name for a directory, `parent` right, no entry to a
  free inode; link counts; the orphan list;
- block bitmap against the blocks actually referenced (no block referenced twice,
  none referenced but free, none marked used but unreferenced), inode bitmap
  against the inodes in use (both compared as numpy arrays).

Repairs change the model; `_write_repairs` re-serializes what changed into sealed
blocks and writes them through the journal (or directly if they do not fit one
transaction; the image is not mounted).  Exit codes follow e2fsck: 0 clean,
1 errors corrected, 4 errors left uncorrected, 8 operational error.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import struct
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from . import format as fmt
from .directory import Directory, dtype_of
from .errors import CorruptionError, ImageError
from .extents import ExtentMap
from .inode import Inode, extent_images, xattr_images
from .journal import Journal
from .pmem import PmemDevice

BS = fmt.BLOCK_SIZE
EXIT_CLEAN, EXIT_FIXED, EXIT_UNFIXED, EXIT_OPERATIONAL = 0, 1, 4, 8
_VALID_TYPES = (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK, stat.S_IFIFO, stat.S_IFSOCK,
                stat.S_IFCHR, stat.S_IFBLK)
_MAX_LBLK = fmt.MAX_FILE_SIZE // BS
_LOST = b"lost+found"


class OperationalError(Exception):
    """fsck cannot work on this image at all (exit 8, one-line reason)."""


@dataclass
class Finding:
    check: str
    message: str
    repaired: bool = False

    def as_dict(self) -> dict:
        return {"check": self.check, "message": self.message, "repaired": self.repaired}


@dataclass
class _Ino:
    """The model of one in-use inode."""

    d: fmt.DiskInode
    runs: list[tuple[int, int, int]] = field(default_factory=list)  # regular files
    leaves: list[int] = field(default_factory=list)
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    xblocks: list[int] = field(default_factory=list)
    dir: Directory | None = None
    claims: list[tuple[int, int]] = field(default_factory=list)  # (start, count)
    dirty: bool = False  # the inode record must be rewritten
    dirty_ext: bool = False
    dirty_xattr: bool = False
    dirty_dir: bool = False


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def phase(self, n: int, total: int, what: str) -> None:
        if self.enabled:
            width = 30
            done = width * n // total
            sys.stderr.write(f"\rfsck [{'#' * done}{'.' * (width - done)}] {what:<24}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 70 + "\r")
            sys.stderr.flush()


class Checker:
    """One fsck run over one image.  Call `run()`; it returns the exit code."""

    PHASES = 10

    def __init__(self, path: str, repair: bool = False, progress: bool = False) -> None:
        self.path = path
        self.repair = repair
        self.findings: list[Finding] = []
        self.replayed = 0
        self.progress = _Progress(progress)
        self.dev: PmemDevice | None = None
        self.sb: fmt.Superblock | None = None
        self.inodes: dict[int, _Ino] = {}
        self.bad_itable: set[int] = set()  # inode-table blocks to rewrite
        self.freed_inodes: set[int] = set()
        self.writes: dict[int, bytes] = {}
        self.orphans: list[int] = []
        self.orphan_head_dirty = False
        self.state_dirty = False
        self.elapsed = 0.0

    # -- plumbing --------------------------------------------------------------------

    def report(self, check: str, message: str, fixable: bool = True) -> Finding:
        f = Finding(check, message, repaired=self.repair and fixable)
        self.findings.append(f)
        return f

    def blk(self, n: int) -> bytes:
        assert self.dev is not None
        return self.dev.view[n * BS : (n + 1) * BS].tobytes()

    def in_data(self, start: int, count: int = 1) -> bool:
        sb = self.sb
        assert sb is not None
        return count > 0 and sb.data_start <= start and start + count <= sb.block_count

    def claim(self, owner: _Ino, start: int, count: int = 1) -> bool:
        """Mark blocks referenced by `owner`; False (nothing claimed) if out of range or
        already referenced by something else."""
        if not self.in_data(start, count):
            return False
        seg = self.ref[start : start + count]
        if seg.any():
            return False
        seg[:] = True
        owner.claims.append((start, count))
        return True

    def unclaim(self, owner: _Ino, start: int, count: int = 1) -> None:
        self.ref[start : start + count] = False
        owner.claims.remove((start, count))

    def alloc_block(self, owner: _Ino) -> int:
        assert self.sb is not None
        free = np.flatnonzero(~self.ref[self.sb.data_start :])
        if not len(free):
            raise OperationalError("no free block left for the repair")
        b = int(free[0]) + self.sb.data_start
        self.claim(owner, b)
        return b

    # -- driver ------------------------------------------------------------------------

    def run(self) -> int:
        t0 = time.monotonic()
        try:
            self.open()
            steps = [
                ("superblock", self.check_superblock),
                ("journal", self.check_journal_header),
                ("bitmap checksums", self.check_bitmap_blocks),
                ("fsinfo", self.check_fsinfo),
                ("inode table", self.check_inode_table),
                ("inode contents", self.check_inode_contents),
                ("namespace", self.check_namespace),
                ("orphan list", self.check_orphans),
                ("link counts", self.check_link_counts),
                ("bitmaps", self.check_bitmaps),
            ]
            for i, (what, step) in enumerate(steps):
                self.progress.phase(i, len(steps), what)
                step()
            if self.repair and self.findings:
                self.progress.phase(len(steps), len(steps), "writing repairs")
                self._write_repairs()
        finally:
            self.progress.done()
            self.elapsed = time.monotonic() - t0
            if self.dev is not None:
                self.dev.close()
                self.dev = None
        if not self.findings:
            return EXIT_CLEAN
        if all(f.repaired for f in self.findings):
            return EXIT_FIXED
        return EXIT_UNFIXED

    def open(self) -> None:
        if os.path.isdir(self.path):
            raise OperationalError(f"{self.path}: is a directory, not an image file")
        try:
            self.dev = PmemDevice(self.path)
        except ImageError as e:
            raise OperationalError(str(e))
        except OSError as e:
            raise OperationalError(f"{self.path}: {e.strerror or e}")
        try:
            self.sb = fmt.Superblock.unpack(self.blk(0), self.dev.size)
        except ImageError as e:
            raise OperationalError(f"{self.path}: {e}")
        self.ref = np.zeros(self.sb.block_count, dtype=bool)
        self.ref[: self.sb.data_start] = True

    # -- checks --------------------------------------------------------------------------

    def state(self) -> int:
        assert self.dev is not None
        return int.from_bytes(self.dev.view[fmt.SB_STATE_OFF : fmt.SB_STATE_OFF + 8], "little")

    def check_superblock(self) -> None:
        """The superblock itself was validated by open(); here: the state word."""
        st = self.state()
        if st & fmt.STATE_NEEDS_FSCK:
            self.report("superblock", "filesystem is marked as needing fsck (corruption was "
                        "seen while mounted)")
            self.state_dirty = True
        elif st > fmt.STATE_NEEDS_FSCK:
            self.report("superblock", f"invalid state word {st:#x}")
            self.state_dirty = True
        assert self.sb is not None
        if self.sb.feature_ro_compat:
            self.report("superblock", f"unknown read-only features "
                        f"{self.sb.feature_ro_compat:#x}", fixable=False)

    def check_journal_header(self) -> None:
        """Replay the journal (normal), or flag an unreadable header."""
        assert self.dev is not None and self.sb is not None
        self.journal = Journal(self.dev.ops, self.blk, self.sb)
        hb = self.sb.journal_start
        try:
            fmt.unpack_jheader(self.blk(hb), hb)
        except CorruptionError as e:
            self.report("journal", f"journal header is invalid ({e}); uncheckpointed "
                        "transactions cannot be replayed")
            if self.repair:
                # Nothing can be replayed safely: start past every sequence in the area.
                top = 1
                for pos in range(self.journal.capacity):
                    b = self.blk(self.journal.area + pos)
                    if fmt.is_valid(b, fmt.BT_JDESC, self.journal.area + pos) or fmt.is_valid(b, fmt.BT_JCOMMIT, self.journal.area + pos):
                        top = max(top, struct.unpack_from("<Q", b, 0)[0] + 1)
                ops = self.dev.ops
                ops.memcpy(hb * BS, fmt.pack_jheader(top, hb))
                ops.persist(hb * BS, BS)
                self.journal.start_seq = self.journal.next_seq = top
            return
        # Replay is what every mount does first; it is not an error.
        try:
            self.replayed = self.journal.replay()
        except (ImageError, ValueError, IndexError) as e:
            raise OperationalError(f"journal replay failed: {e}")

    def check_bitmap_blocks(self) -> None:
        assert self.sb is not None
        sb = self.sb
        self.bad_bitmap_blocks: set[int] = set()
        for start, n, bt, what in ((sb.bbitmap_start, sb.bbitmap_blocks, fmt.BT_BBITMAP,
                                    "block bitmap"),
                                   (sb.ibitmap_start, sb.ibitmap_blocks, fmt.BT_IBITMAP,
                                    "inode bitmap")):
            for b in range(start, start + n):
                if not fmt.is_valid(self.blk(b), bt, b):
                    self.report("checksum", f"{what} block {b} is corrupt")
                    self.bad_bitmap_blocks.add(b)

    def check_fsinfo(self) -> None:
        assert self.sb is not None
        b = self.sb.fsinfo_block
        try:
            self.orphan_head = fmt.unpack_fsinfo(self.blk(b), b)
        except CorruptionError as e:
            self.report("checksum", f"fsinfo: {e}; the orphan list is lost")
            self.orphan_head = 0
            self.orphan_head_dirty = True

    def _itable_segments(self) -> list[tuple[int, int]]:
        """Block ranges of the inode table that hold data (skip host-file holes)."""
        assert self.sb is not None and self.dev is not None
        sb, fd = self.sb, self.dev.fd
        lo, hi = sb.itable_start * BS, sb.data_start * BS
        out: list[tuple[int, int]] = []
        pos = lo
        try:
            while pos < hi:
                d = os.lseek(fd, pos, os.SEEK_DATA)
                if d >= hi:
                    break
                h = min(os.lseek(fd, d, os.SEEK_HOLE), hi)
                out.append((d // BS, -(-h // BS)))
                pos = h
        except OSError:
            return [(sb.itable_start, sb.data_start)]
        return out

    def check_inode_table(self) -> None:
        """Inode-table checksums, inode types, and the set of inodes in use."""
        assert self.sb is not None and self.dev is not None
        sb = self.sb
        for b0, b1 in self._itable_segments():
            # A copy: a view left in a traceback would keep the mapping (and its lock).
            arr = np.array(self.dev.view[b0 * BS : b1 * BS]).reshape(b1 - b0, BS)
            for i in np.flatnonzero(arr.any(axis=1)):
                blkno = b0 + int(i)
                b = arr[i].tobytes()
                if not fmt.is_valid(b, fmt.BT_ITABLE, blkno):
                    self.report("checksum", f"inode table block {blkno} is corrupt; its "
                                "inodes are checked individually")
                    self.bad_itable.add(blkno)
                first = (blkno - sb.itable_start) * fmt.INODES_PER_BLOCK
                for slot in range(fmt.INODES_PER_BLOCK):
                    ino = first + slot
                    if ino == 0 or ino > sb.inode_count:
                        continue
                    off = slot * fmt.INODE_SIZE
                    if not any(b[off : off + 4]):
                        continue
                    d = fmt.DiskInode.unpack(b, off)
                    if stat.S_IFMT(d.mode) not in _VALID_TYPES:
                        self.report("inode", f"inode {ino} has invalid mode {d.mode:#o}; "
                                    "clearing it")
                        self.freed_inodes.add(ino)
                        continue
                    self.inodes[ino] = _Ino(d)
        if fmt.ROOT_INO not in self.inodes or not stat.S_ISDIR(
                self.inodes[fmt.ROOT_INO].d.mode):
            raise OperationalError("root inode is missing or not a directory; cannot repair")

    def check_inode_contents(self) -> None:
        """Per inode, in inode order: extents, xattrs, symlink, directory blocks.  Blocks
        are claimed as they are found, so the second owner of a block loses it."""
        for ino in sorted(self.inodes):
            m = self.inodes[ino]
            mode = m.d.mode
            if stat.S_ISREG(mode):
                self._check_extents(ino, m)
            else:
                if m.d.ext_head or m.d.ext_count or m.d.nblocks:
                    self.report("extents", f"inode {ino} ({_kind(mode)}) has extents")
                    m.d.ext_head = m.d.ext_count = m.d.nblocks = 0
                    if not stat.S_ISLNK(mode):
                        m.d.inline = b""
                    m.dirty = True
            self._check_xattrs(ino, m)
            if stat.S_ISLNK(mode):
                self._check_symlink(ino, m)
            elif stat.S_ISDIR(mode):
                self._check_dir_blocks(ino, m)
            elif m.d.aux_block:
                self.report("inode", f"inode {ino} ({_kind(mode)}) has an aux block")
                m.d.aux_block = 0
                m.dirty = True

    def _check_extents(self, ino: int, m: _Ino) -> None:
        d = m.d
        recs: list[tuple[int, int, int, int]] = []
        if d.ext_head == 0:
            if d.ext_count > fmt.INLINE_EXTENTS:
                self.report("extents", f"inode {ino}: {d.ext_count} inline extents")
                m.dirty_ext = True
            n = min(d.ext_count, fmt.INLINE_EXTENTS)
            recs = [fmt.EXTENT.unpack_from(d.inline, i * 24) for i in range(n)]
        else:
            blk, seen = d.ext_head, set()
            while blk:
                why = None
                if blk in seen:
                    why = "extent leaf chain loops"
                elif not self.in_data(blk):
                    why = f"extent leaf {blk} is outside the data area"
                else:
                    b = self.blk(blk)
                    if not fmt.is_valid(b, fmt.BT_EXTENT, blk):
                        why = f"extent leaf {blk} is corrupt"
                    else:
                        nxt, count, _ = fmt.EXTENT_LEAF_HDR.unpack_from(b, 0)
                        if count > fmt.EXTENTS_PER_LEAF:
                            why = f"extent leaf {blk} has {count} records"
                        elif not self.claim(m, blk):
                            why = f"extent leaf {blk} is also used elsewhere"
                if why:
                    self.report("extents", f"inode {ino}: {why}; extents from there on "
                                "are dropped")
                    m.dirty_ext = True
                    break
                seen.add(blk)
                m.leaves.append(blk)
                recs.extend(fmt.EXTENT.unpack_from(b, 16 + i * 24) for i in range(count))
                blk = nxt
            if not m.dirty_ext and len(recs) != d.ext_count:
                self.report("extents", f"inode {ino}: {len(recs)} extents on media, inode "
                            f"says {d.ext_count}")
                m.dirty_ext = True
        prev_end = 0
        for lblk, pblk, count, _flags in recs:
            why = None
            if count == 0 or lblk < prev_end or lblk + count > _MAX_LBLK:
                why = f"extent {lblk}+{count} is empty, unsorted or overlapping"
            elif not self.in_data(pblk, count):
                why = f"extent {lblk}+{count} -> block {pblk} is outside the data area"
            elif not self.claim(m, pblk, count):
                why = f"extent {lblk}+{count} -> block {pblk} is also used elsewhere"
            if why:
                self.report("extents", f"inode {ino}: {why}; dropping it")
                m.dirty_ext = True
                continue
            m.runs.append((lblk, pblk, count))
            prev_end = lblk + count
        total = sum(c for _, _, c in m.runs)
        if d.nblocks != total:
            self.report("extents", f"inode {ino}: nblocks {d.nblocks}, extents map {total}")
            d.nblocks = total
            m.dirty = True
        if d.size > fmt.MAX_FILE_SIZE:
            self.report("inode", f"inode {ino}: size {d.size} beyond the limit")
            d.size = max((lb + c) * BS for lb, _, c in m.runs) if m.runs else 0
            m.dirty = True

    def _check_xattrs(self, ino: int, m: _Ino) -> None:
        blk, seen = m.d.xattr_head, set()
        while blk:
            why = None
            entries: list[tuple[bytes, bytes]] = []
            if blk in seen:
                why = "xattr chain loops"
            elif not self.in_data(blk):
                why = f"xattr block {blk} is outside the data area"
            else:
                b = self.blk(blk)
                if not fmt.is_valid(b, fmt.BT_XATTR, blk):
                    why = f"xattr block {blk} is corrupt"
                else:
                    nxt, used, count = fmt.XATTR_HDR.unpack_from(b, 0)
                    off = fmt.XATTR_HDR.size
                    for _ in range(count):
                        if off + 4 > fmt.PAYLOAD:
                            why = f"xattr block {blk} has a bad entry"
                            break
                        nlen, _r, vlen = fmt.XATTR_ENT.unpack_from(b, off)
                        off += 4
                        name, value = b[off : off + nlen], b[off + nlen : off + nlen + vlen]
                        off += nlen + vlen
                        if off > fmt.PAYLOAD or not name:
                            why = f"xattr block {blk} has a bad entry"
                            break
                        entries.append((name, value))
                    if why is None and off - fmt.XATTR_HDR.size != used:
                        why = f"xattr block {blk}: used bytes mismatch"
                    if why is None and not self.claim(m, blk):
                        why = f"xattr block {blk} is also used elsewhere"
            if why:
                self.report("xattrs", f"inode {ino}: {why}; xattrs from there on are dropped")
                m.dirty_xattr = True
                break
            seen.add(blk)
            m.xblocks.append(blk)
            for name, value in entries:
                m.xattrs[name] = value
            blk = nxt

    def _check_symlink(self, ino: int, m: _Ino) -> None:
        d = m.d
        why = None
        if d.inline_len > fmt.INLINE_AREA or d.size > fmt.MAX_SYMLINK:
            why = f"bad target length {d.size}/{d.inline_len}"
        elif d.aux_block:
            blk = d.aux_block
            b = self.blk(blk) if self.in_data(blk) else b""
            if not b or not fmt.is_valid(b, fmt.BT_SYMLINK, blk):
                why = f"symlink block {blk} is corrupt or out of range"
            else:
                (n,) = struct.unpack_from("<I", b, 0)
                if n > fmt.PAYLOAD - 4 or d.inline_len + n != d.size:
                    why = f"symlink block {blk}: length {n}"
                elif not self.claim(m, blk):
                    why = f"symlink block {blk} is also used elsewhere"
        elif d.inline_len != d.size:
            why = f"inline target length {d.inline_len} != size {d.size}"
        if why is None and d.size == 0:
            why = "empty target"
        if why:
            self.report("symlink", f"inode {ino}: {why}; keeping the inline part")
            d.aux_block = 0
            d.inline_len = min(d.inline_len, fmt.INLINE_AREA)
            if d.inline_len == 0:
                d.inline, d.inline_len = b"lost-target", 11
            d.size = d.inline_len
            m.dirty = True

    def _check_dir_blocks(self, ino: int, m: _Ino) -> None:
        d = m.d
        dr = Directory(max(d.next_cookie, fmt.FIRST_COOKIE))
        m.dir = dr
        # A new directory that never had an entry keeps next_cookie 0 on media (mkdir
        # does not set it): that is fine; only cookies at or past it are wrong.
        max_cookie = fmt.FIRST_COOKIE - 1
        blk, seen = d.aux_block, set()
        while blk:
            why = None
            if blk in seen:
                why = "block chain loops"
            elif not self.in_data(blk):
                why = f"block {blk} is outside the data area"
            else:
                b = self.blk(blk)
                if not fmt.is_valid(b, fmt.BT_DIR, blk):
                    why = f"block {blk} is corrupt"
                elif not self.claim(m, blk):
                    why = f"block {blk} is also used elsewhere"
            if why:
                self.report("directory", f"directory {ino}: {why}; entries from there on "
                            "are dropped")
                m.dirty_dir = True
                if dr.blocks:
                    dr.dirty.add(len(dr.blocks) - 1)
                break
            seen.add(blk)
            nxt, used, count = fmt.DIR_HDR.unpack_from(b, 0)
            idx = len(dr.blocks)
            dr.blocks.append(blk)
            dr.used.append(0)
            dr.names.append({})
            off = fmt.DIR_HDR.size
            bad = False
            for _ in range(count):
                if off + fmt.DIRENT_HDR.size > fmt.PAYLOAD:
                    bad = True
                    break
                cookie, cino, dtype, nlen = fmt.DIRENT_HDR.unpack_from(b, off)
                name = b[off + fmt.DIRENT_HDR.size : off + fmt.DIRENT_HDR.size + nlen]
                off += fmt.DIRENT_HDR.size + nlen
                if off > fmt.PAYLOAD:
                    bad = True
                    break
                if (not name or b"/" in name or b"\0" in name or cookie < fmt.FIRST_COOKIE
                        or cookie in dr.by_cookie or name in dr.entries):
                    self.report("directory", f"directory {ino}: bad entry {name!r} in "
                                f"block {blk}; removing it")
                    dr.dirty.add(idx)
                    continue
                dr._add_at(idx, name, cino, cookie, dtype)
                max_cookie = max(max_cookie, cookie)
            if bad:
                self.report("directory", f"directory {ino}: block {blk} has a truncated "
                            "entry")
                dr.dirty.add(idx)
            elif dr.used[idx] != used:
                self.report("directory", f"directory {ino}: block {blk} used bytes mismatch")
                dr.dirty.add(idx)
            blk = nxt
        dr.cookies.sort()
        if max_cookie >= dr.next_cookie:
            self.report("directory", f"directory {ino}: cookie {max_cookie} >= next_cookie "
                        f"{dr.next_cookie}")
            dr.next_cookie = max_cookie + 1
            m.dirty_dir = True
        if dr.dirty:
            m.dirty_dir = True
        for idx in range(len(dr.blocks)):
            if fmt.DIR_CAPACITY - dr.used[idx] >= fmt.DIRENT_HDR.size + fmt.MAX_NAME:
                dr._spacious.add(idx)

    # -- namespace ---------------------------------------------------------------------

    def _remove_entry(self, dino: int, name: bytes) -> None:
        m = self.inodes[dino]
        assert m.dir is not None
        m.dir.remove(name)
        m.dirty_dir = True

    def check_namespace(self) -> None:
        """Reachability from the root, dangling entries, directory links, parents."""
        self.links: dict[int, int] = {}
        self.subdirs: dict[int, int] = {}
        self.reached: set[int] = {fmt.ROOT_INO}
        self.parent_of: dict[int, int] = {fmt.ROOT_INO: fmt.ROOT_INO}
        self._walk([fmt.ROOT_INO])
        self.unreachable = sorted(set(self.inodes) - self.reached)

    def _walk(self, queue: list[int]) -> None:
        while queue:
            dino = queue.pop()
            m = self.inodes[dino]
            assert m.dir is not None
            want_parent = self.parent_of[dino]
            if m.d.parent != want_parent:
                self.report("namespace", f"directory {dino}: parent is {m.d.parent}, should "
                            f"be {want_parent}")
                m.d.parent = want_parent
                m.dirty = True
            for name, (cino, _cookie, dtype, _idx) in list(m.dir.entries.items()):
                child = self.inodes.get(cino)
                if child is None:
                    self.report("namespace", f"directory {dino}: entry {name!r} points to "
                                f"free or invalid inode {cino}; removing it")
                    self._remove_entry(dino, name)
                    continue
                if stat.S_ISDIR(child.d.mode):
                    if cino in self.reached:
                        self.report("namespace", f"directory {dino}: entry {name!r} is a "
                                    f"second name (or a cycle) for directory {cino}; "
                                    "removing it")
                        self._remove_entry(dino, name)
                        continue
                    self.reached.add(cino)
                    self.parent_of[cino] = dino
                    self.subdirs[dino] = self.subdirs.get(dino, 0) + 1
                    queue.append(cino)
                else:
                    self.reached.add(cino)
                    self.links[cino] = self.links.get(cino, 0) + 1
                if dtype != dtype_of(child.d.mode):
                    self.report("namespace", f"directory {dino}: entry {name!r} has file "
                                f"type {dtype}, inode says {dtype_of(child.d.mode)}")
                    m.dir.replace(name, cino, dtype_of(child.d.mode))
                    m.dirty_dir = True

    def check_orphans(self) -> None:
        """The orphan list: well formed, and the only home of unreachable inodes."""
        orphans: list[int] = []
        bad = None
        cur = self.orphan_head
        while cur:
            m = self.inodes.get(cur)
            if m is None:
                bad = f"orphan list names free or invalid inode {cur}"
            elif cur in orphans or len(orphans) > len(self.inodes):
                bad = "orphan list loops"
            elif cur in self.reached:
                bad = f"orphan list names inode {cur}, which still has a name"
            elif not m.d.flags & fmt.IF_ORPHAN or m.d.nlink != 0:
                bad = f"inode {cur} on the orphan list has flags {m.d.flags}, nlink {m.d.nlink}"
            if bad:
                break
            orphans.append(cur)
            cur = m.d.orphan_next
        flagged = [i for i, m in self.inodes.items()
                   if m.d.flags & fmt.IF_ORPHAN and i not in orphans]
        if bad is None and flagged:
            bad = f"inode(s) {flagged[:5]} flagged as orphans but not on the list"
        if bad is not None:
            self.report("orphans", f"{bad}; freeing the orphans and clearing the list")
            for ino in orphans:
                self._free_inode(ino)
            for ino in flagged:
                m = self.inodes[ino]
                m.d.flags &= ~fmt.IF_ORPHAN
                m.d.orphan_next = 0
                m.dirty = True
            self.orphans = []
            self.orphan_head_dirty = True
        else:
            self.orphans = orphans
        # Unreachable inodes that are not orphans.
        lost: list[int] = []
        for ino in self.unreachable:
            if ino in self.orphans or ino not in self.inodes:
                continue
            m = self.inodes[ino]
            if m.d.nlink == 0 and not stat.S_ISDIR(m.d.mode):
                self.report("namespace", f"inode {ino} has no name and no links; freeing it")
                self._free_inode(ino)
            else:
                lost.append(ino)
        if lost:
            self._to_lost_found(lost)

    def _free_inode(self, ino: int) -> None:
        m = self.inodes.pop(ino)
        for start, count in m.claims:
            self.ref[start : start + count] = False
        self.freed_inodes.add(ino)

    def _to_lost_found(self, lost: list[int]) -> None:
        root = self.inodes[fmt.ROOT_INO]
        assert root.dir is not None
        ent = root.dir.get(_LOST)
        lf_ino = ent[0] if ent and ent[0] in self.inodes and stat.S_ISDIR(
            self.inodes[ent[0]].d.mode) else 0
        for ino in sorted(lost, key=lambda i: not stat.S_ISDIR(self.inodes[i].d.mode)):
            if ino in self.reached:
                continue  # reached through an earlier lost directory
            self.report("namespace", f"inode {ino} ({_kind(self.inodes[ino].d.mode)}) is "
                        "not reachable from the root; moving it to /lost+found")
            if not self.repair:
                continue
            if not lf_ino:
                lf_ino = self._make_lost_found()
            lf = self.inodes[lf_ino]
            assert lf.dir is not None
            name = f"#{ino}".encode()
            m = self.inodes[ino]
            lf.dir.add(name, ino, dtype_of(m.d.mode), lambda lf=lf: self.alloc_block(lf))
            lf.dirty_dir = True
            self.reached.add(ino)
            if stat.S_ISDIR(m.d.mode):
                self.parent_of[ino] = lf_ino
                self.subdirs[lf_ino] = self.subdirs.get(lf_ino, 0) + 1
                self._walk([ino])
            else:
                self.links[ino] = self.links.get(ino, 0) + 1

    def _make_lost_found(self) -> int:
        assert self.sb is not None
        ino = next(i for i in range(2, self.sb.inode_count + 1)
                   if i not in self.inodes and i not in self.freed_inodes)
        now = fmt.now_ns()
        d = fmt.DiskInode(mode=stat.S_IFDIR | 0o700, nlink=2, atime=now, mtime=now, ctime=now,
                          btime=now, parent=fmt.ROOT_INO, next_cookie=fmt.FIRST_COOKIE)
        m = _Ino(d, dir=Directory(), dirty=True, dirty_dir=True)
        self.inodes[ino] = m
        root = self.inodes[fmt.ROOT_INO]
        assert root.dir is not None
        if root.dir.get(_LOST) is not None:
            root.dir.remove(_LOST)
        root.dir.add(_LOST, ino, dtype_of(d.mode), lambda: self.alloc_block(root))
        root.dirty_dir = True
        self.reached.add(ino)
        self.parent_of[ino] = fmt.ROOT_INO
        self.subdirs[fmt.ROOT_INO] = self.subdirs.get(fmt.ROOT_INO, 0) + 1
        return ino

    def check_link_counts(self) -> None:
        for ino, m in self.inodes.items():
            if ino in self.orphans or ino not in self.reached:
                continue
            if stat.S_ISDIR(m.d.mode):
                want = 2 + self.subdirs.get(ino, 0)
            else:
                want = self.links.get(ino, 0)
            if m.d.nlink != want:
                self.report("nlink", f"inode {ino}: link count {m.d.nlink}, should be {want}")
                m.d.nlink = want
                m.dirty = True

    # -- bitmaps -----------------------------------------------------------------------

    def _disk_bits(self, start: int, nblocks: int, n: int) -> np.ndarray:
        per = fmt.BITS_PER_BITMAP_BLOCK // 8
        assert self.dev is not None
        raw = np.array(self.dev.view[start * BS : (start + nblocks) * BS]).reshape(
            nblocks, BS)[:, :per]
        return np.unpackbits(raw.reshape(-1), bitorder="little")[:n].astype(bool)

    def check_bitmaps(self) -> None:
        """Block bitmap vs blocks referenced, inode bitmap vs inodes in use."""
        assert self.sb is not None
        sb = self.sb
        # Repairs made while building the model may need new blocks (lost+found):
        # those are claimed in self.ref already.
        disk = self._disk_bits(sb.bbitmap_start, sb.bbitmap_blocks, sb.block_count)
        leaked = np.flatnonzero(disk & ~self.ref)
        missing = np.flatnonzero(self.ref & ~disk)
        if len(leaked):
            self.report("bitmap", f"{len(leaked)} block(s) marked in use but not referenced "
                        f"(leak), first {leaked[:8].tolist()}")
        if len(missing):
            self.report("bitmap", f"{len(missing)} block(s) referenced but marked free, first "
                        f"{missing[:8].tolist()}")
        n = sb.inode_count + 1
        want = np.zeros(n, dtype=bool)
        want[0] = True
        want[list(self.inodes)] = True
        idisk = self._disk_bits(sb.ibitmap_start, sb.ibitmap_blocks, n)
        extra = np.flatnonzero(idisk & ~want)
        lack = np.flatnonzero(want & ~idisk)
        if len(extra):
            self.report("bitmap", f"{len(extra)} inode(s) marked in use but free, first "
                        f"{extra[:8].tolist()}")
        if len(lack):
            self.report("bitmap", f"{len(lack)} inode(s) in use but marked free, first "
                        f"{lack[:8].tolist()}")
        self.ibits_want = want

    # -- repair ------------------------------------------------------------------------

    def _bitmap_images(self, bits: np.ndarray, start: int, nblocks: int, btype: int,
                       force: bool) -> None:
        per = fmt.BITS_PER_BITMAP_BLOCK
        full = np.ones(nblocks * per, dtype=bool)
        full[: len(bits)] = bits
        packed = np.packbits(full, bitorder="little")
        for i in range(nblocks):
            blk = start + i
            payload = packed[i * (per // 8) : (i + 1) * (per // 8)].tobytes()
            image = fmt.seal(payload, btype, blk)
            if force or image != self.blk(blk):
                self.writes[blk] = image

    def _write_repairs(self) -> None:
        assert self.sb is not None and self.dev is not None
        sb = self.sb
        inodes_to_write: set[int] = set(self.freed_inodes)
        for ino, m in self.inodes.items():
            if m.dirty_ext:
                node = Inode(ino, m.d)
                node.ext = ExtentMap()
                for lb, pb, c in m.runs:
                    node.ext.insert(lb, pb, c)
                node.ext_leaves = list(m.leaves)
                self.writes.update(extent_images(
                    node, lambda m=m: self.alloc_block(m),
                    lambda b, m=m: self.unclaim(m, b)))
                m.d.nblocks = sum(c for _, _, c in m.runs)
                m.dirty = True
            if m.dirty_xattr:
                node = Inode(ino, m.d)
                node.xattrs = m.xattrs
                node.xattr_blocks = list(m.xblocks)
                self.writes.update(xattr_images(
                    node, lambda m=m: self.alloc_block(m),
                    lambda b, m=m: self.unclaim(m, b)))
                m.dirty = True
            if m.dirty_dir and m.dir is not None:
                dr = m.dir
                for i in range(len(dr.blocks)):
                    self.writes[dr.blocks[i]] = dr.block_image(i)
                m.d.aux_block = dr.blocks[0] if dr.blocks else 0
                m.d.next_cookie = dr.next_cookie
                m.dirty = True
            if m.dirty:
                inodes_to_write.add(ino)
        for blk in self.bad_itable:
            first = (blk - sb.itable_start) * fmt.INODES_PER_BLOCK
            inodes_to_write.update(range(first, first + fmt.INODES_PER_BLOCK))
        by_block: dict[int, list[int]] = {}
        for ino in inodes_to_write:
            if 0 < ino <= sb.inode_count:
                blk, _ = fmt.itable_location(sb, ino)
                by_block.setdefault(blk, []).append(ino)
        for blk, members in by_block.items():
            image = bytearray(self.blk(blk)[: fmt.PAYLOAD])
            for ino in members:
                _, off = fmt.itable_location(sb, ino)
                m = self.inodes.get(ino)
                image[off : off + fmt.INODE_SIZE] = (m.d.pack() if m is not None
                                                     else bytes(fmt.INODE_SIZE))
            if blk == sb.itable_start:
                image[: fmt.INODE_SIZE] = bytes(fmt.INODE_SIZE)
            image[fmt.INODES_PER_BLOCK * fmt.INODE_SIZE :] = bytes(
                fmt.PAYLOAD - fmt.INODES_PER_BLOCK * fmt.INODE_SIZE)
            self.writes[blk] = fmt.seal(bytes(image), fmt.BT_ITABLE, blk)
        if self.orphan_head_dirty:
            b = sb.fsinfo_block
            self.writes[b] = fmt.pack_fsinfo(self.orphans[0] if self.orphans else 0, b)
        want_i = np.zeros(sb.inode_count + 1, dtype=bool)
        want_i[0] = True
        want_i[list(self.inodes)] = True
        self._bitmap_images(self.ref, sb.bbitmap_start, sb.bbitmap_blocks, fmt.BT_BBITMAP,
                            False)
        self._bitmap_images(want_i, sb.ibitmap_start, sb.ibitmap_blocks, fmt.BT_IBITMAP,
                            False)
        ops = self.dev.ops
        if self.writes:
            if len(self.writes) <= self.journal.max_blocks():
                self.journal.commit(self.writes)
                self.journal.checkpoint()
            else:
                for blk, image in sorted(self.writes.items()):
                    ops.memcpy(blk * BS, image)
                    ops.flush(blk * BS, BS)
                ops.drain()
        ops.memcpy(fmt.SB_STATE_OFF, fmt.STATE_CLEAN.to_bytes(8, "little"))
        ops.persist(fmt.SB_STATE_OFF, 8)

    # -- output ------------------------------------------------------------------------

    def as_dict(self, code: int) -> dict:
        return {
            "image": self.path,
            "exit_code": code,
            "status": {0: "clean", 1: "repaired", 4: "errors"}.get(code, "error"),
            "journal_transactions_replayed": self.replayed,
            "inodes_in_use": len(self.inodes),
            "blocks_referenced": int(self.ref.sum()) if hasattr(self, "ref") else 0,
            "findings": [f.as_dict() for f in self.findings],
            "seconds": round(self.elapsed, 3),
        }


def _kind(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink"}.get(
        stat.S_IFMT(mode), "special file")


def check_image(path: str, repair: bool = False) -> tuple[int, Checker]:
    """Run fsck in-process: (exit code, checker).  Operational errors give code 8 and
    the reason in `checker.error`."""
    c = Checker(path, repair=repair)
    try:
        code = c.run()
        c.error = None  # type: ignore[attr-defined]
    except OperationalError as e:
        code = EXIT_OPERATIONAL
        c.error = str(e)  # type: ignore[attr-defined]
    return code, c


def add_fsck_subcommand(sub) -> None:
    """Register `daxfs fsck` on the CLI's subparsers."""
    m = sub.add_parser("fsck", help="check (and repair) an unmounted image")
    _add_args(m)
    m.set_defaults(func=lambda args: _cmd(args))


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--repair", "-y", action="store_true", help="fix what can be fixed")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("image")


def _cmd(args: argparse.Namespace) -> int:
    c = Checker(args.image, repair=args.repair,
                progress=sys.stderr.isatty() and not args.json)
    try:
        code = c.run()
    except OperationalError as e:
        if args.json:
            print(json.dumps({"image": args.image, "exit_code": EXIT_OPERATIONAL,
                              "status": "error", "error": str(e), "findings": []}))
        else:
            print(f"daxfs fsck: {e}", file=sys.stderr)
        return EXIT_OPERATIONAL
    except Exception as e:  # never a traceback for the user
        print(f"daxfs fsck: internal error: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_OPERATIONAL
    if args.json:
        print(json.dumps(c.as_dict(code), indent=1))
        return code
    for f in c.findings:
        print(f"{f.check}: {f.message}{' [fixed]' if f.repaired else ''}")
    if c.replayed:
        print(f"journal: replayed {c.replayed} transaction(s)")
    verdict = {EXIT_CLEAN: "clean", EXIT_FIXED: "errors corrected",
               EXIT_UNFIXED: "errors left uncorrected (run with --repair)"}[code]
    print(f"{args.image}: {verdict}; {len(c.inodes)} inodes, "
          f"{int(c.ref.sum())} blocks in use, {c.elapsed:.2f}s")
    return code


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="daxfs fsck", description="check a daxfs image")
    _add_args(p)
    return _cmd(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
