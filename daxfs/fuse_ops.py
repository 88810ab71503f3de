"""The FUSE layer: translates pyfuse3 requests into Filesystem calls and back.

No filesystem logic lives here: arguments are unpacked, FsError becomes FUSEError,
inodes become EntryAttributes, and file handles are mapped to inodes.  Corruption
found by a lower layer makes the filesystem read-only (s3ql's rule) and answers EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar, cast

import pyfuse3

from . import fuse_ext as fx
from .errors import CorruptionError, FsError
from .fs import FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, Filesystem
from .inode import Inode
from .leases import LayoutManager

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

ATTR_TIMEOUT = 1.0
_FORGET, _RELEASE, _RELEASEDIR = fx.DEFERRED_FORGET, fx.DEFERRED_RELEASE, fx.DEFERRED_RELEASEDIR
ENTRY_TIMEOUT = 60.0


def _translate(fn: F) -> F:
    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any, **kw: Any) -> Any:
        try:
            self.catch_up()  # what the C readers left, before anything else
            return await fn(self, *args, **kw)
        except FsError as e:
            raise pyfuse3.FUSEError(e.errno) from None
        except CorruptionError as e:
            self.fs.mark_corrupt(str(e))
            raise pyfuse3.FUSEError(errno.EIO) from None
        except pyfuse3.FUSEError:
            raise
        except Exception:
            # A bug must cost one request, never the mount.
            log.exception("%s%r failed", fn.__name__, args[:2])
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            self.fs.publish_attrs()  # before pyfuse3 sends the reply

    return cast(F, wrapper)


def _entry_attributes(inode: Inode) -> pyfuse3.EntryAttributes:
    """The one mapping from an inode to what the kernel is told about it."""
    d = inode.d
    a = pyfuse3.EntryAttributes()
    a.st_ino = cast(pyfuse3.InodeT, inode.ino)
    a.generation = d.generation
    a.entry_timeout = ENTRY_TIMEOUT
    a.attr_timeout = ATTR_TIMEOUT
    a.st_mode = d.mode
    a.st_nlink = d.nlink
    a.st_uid = d.uid
    a.st_gid = d.gid
    a.st_rdev = d.rdev
    a.st_size = d.size
    a.st_blksize = 4096
    a.st_blocks = d.nblocks * 8
    a.st_atime_ns = d.atime
    a.st_mtime_ns = d.mtime
    a.st_ctime_ns = d.ctime
    a.st_birthtime_ns = d.btime
    return a


# What fuse_ext's setattr_size reply needs (fuse_reply_attr: no entry fields).
_ATTR_REPLY = ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_rdev", "st_size",
               "st_blocks", "st_blksize", "st_atime_ns", "st_mtime_ns", "st_ctime_ns",
               "attr_timeout")


class _SetattrFields(Protocol):
    update_mode: Any
    update_uid: Any
    update_gid: Any
    update_size: Any
    update_atime: Any
    update_mtime: Any
    update_ctime: Any


class _SetattrValues(Protocol):
    st_mode: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int


def _setattr_kw(attr: _SetattrValues, fields: _SetattrFields) -> dict[str, int]:
    """pyfuse3-style (attr, fields) -> Filesystem.setattr keywords."""
    kw: dict[str, int] = {}
    if fields.update_mode:
        kw["mode"] = attr.st_mode
    if fields.update_uid:
        kw["uid"] = attr.st_uid
    if fields.update_gid:
        kw["gid"] = attr.st_gid
    if fields.update_size:
        kw["size"] = attr.st_size
    if fields.update_atime:
        kw["atime"] = attr.st_atime_ns
    if fields.update_mtime:
        kw["mtime"] = attr.st_mtime_ns
    if fields.update_ctime:
        kw["ctime"] = attr.st_ctime_ns
    return kw


class _RawSetattr:
    """fuse_ext's raw setattr fields (FUSE_SET_ATTR_* bits + struct stat values)
    seen the way pyfuse3 presents them to Operations.setattr: both the attr and
    the fields of _setattr_kw.  Like pyfuse3, *_NOW takes the current time."""

    def __init__(self, raw: Mapping[str, int]) -> None:
        to_set = raw["to_set"]
        now = time.time_ns() if to_set & (fx.SET_ATTR_ATIME_NOW | fx.SET_ATTR_MTIME_NOW) else 0
        self.st_mode = raw["st_mode"]
        self.st_uid = raw["st_uid"]
        self.st_gid = raw["st_gid"]
        self.st_size = raw["st_size"]
        self.st_atime_ns = raw["st_atime_ns"]
        self.st_mtime_ns = raw["st_mtime_ns"]
        self.st_ctime_ns = raw["st_ctime_ns"]
        self.update_mode = bool(to_set & fx.SET_ATTR_MODE)
        self.update_uid = bool(to_set & fx.SET_ATTR_UID)
        self.update_gid = bool(to_set & fx.SET_ATTR_GID)
        self.update_size = bool(to_set & fx.SET_ATTR_SIZE)
        self.update_atime = bool(to_set & (fx.SET_ATTR_ATIME | fx.SET_ATTR_ATIME_NOW))
        self.update_mtime = bool(to_set & (fx.SET_ATTR_MTIME | fx.SET_ATTR_MTIME_NOW))
        self.update_ctime = bool(to_set & fx.SET_ATTR_CTIME)
        # pyfuse3: an explicit time wins over *_NOW (the kernel never sends both).
        if to_set & fx.SET_ATTR_ATIME_NOW and not to_set & fx.SET_ATTR_ATIME:
            self.st_atime_ns = now
        if to_set & fx.SET_ATTR_MTIME_NOW and not to_set & fx.SET_ATTR_MTIME:
            self.st_mtime_ns = now


async def _setattr(fs: Filesystem, layouts: LayoutManager | None, inode: int,
                   kw: dict[str, int], *, breaker_pid: int | None,
                   interrupted: Any = None) -> Inode:
    """Filesystem.setattr, with shrinking truncates run through break_layout.

    `interrupted` (a trio.Event, fuse_ext requests only) ends a wait for pins
    with OSError(EINTR), nothing changed."""
    if layouts is not None and "size" in kw:
        node = fs.get(inode)
        if node.is_reg() and 0 <= kw["size"] < node.d.size:
            # Shrinking frees blocks: break layouts and wait for pins first.
            return await layouts.break_layout(
                inode, kw["size"] // 4096, 1 << 62, lambda: fs.setattr(inode, **kw),
                what=f"truncate ino {inode}", breaker_pid=breaker_pid,
                interrupted=interrupted)
    return fs.setattr(inode, **kw)


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers over a `Filesystem`.

    `dax_always`: files are opened direct_io, so every read and write reaches the
    daemon and so pmem (no page cache), like fs-DAX.  Otherwise the kernel page
    cache is used and the daemon invalidates what changes behind its back.
    """

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Filesystem, *, dax_always: bool = True) -> None:
        super().__init__()
        self.fs = fs
        self.dax_always = dax_always
        # Invariants: every fh maps to an inode whose `opens` it holds.
        self._fh: dict[int, int] = {}
        self._dirh: dict[int, list[int]] = {}  # fh -> [inode, readdir horizon]
        self._next_fh = 1
        # Set by the daemon: truncate, O_TRUNC, punch and zero-range go through it.
        self.layouts: LayoutManager | None = None
        # Set by the daemon when the C readers record FORGET / RELEASE /
        # RELEASEDIR for us (fuse_ext.set_defer): (pending count, take them).
        self.deferred: tuple[Callable[[], int],
                             Callable[[], list[tuple[int, int, int]]]] | None = None

    def catch_up(self) -> None:
        """Apply what the C reader threads left for Python: the requests they
        recorded and the fast path's timestamps.  Before every request and every
        periodic commit."""
        if self.deferred is not None and self.deferred[0]():
            self.apply_deferred(self.deferred[1]())
        self.fs.sync_fast()

    def apply_deferred(self, records: list[tuple[int, int, int]]) -> None:
        for op, ino, arg in records:
            try:
                if op == _FORGET:
                    self.fs.forget(ino, arg)
                elif op == _RELEASE:
                    self.fs.release(self._fh.pop(arg))
                elif op == _RELEASEDIR:
                    self._dirh.pop(arg, None)
            except Exception:
                # As forget/release do: one bad record must not stop the rest.
                log.exception("deferred request %d on inode %d (%d) failed", op, ino, arg)

    # -- helpers -----------------------------------------------------------------

    def _attr(self, inode: Inode) -> pyfuse3.EntryAttributes:
        self.fs.attrs_answered(inode)  # the next GETATTR of it may be answered in C
        return _entry_attributes(inode)

    def _entry(self, inode: Inode) -> pyfuse3.EntryAttributes:
        inode.lookups += 1
        return self._attr(inode)

    def _new_fh(self, ino: int) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._fh[fh] = ino
        return fh

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fh), direct_io=self.dax_always,
                                keep_cache=not self.dax_always)

    # -- namespace ----------------------------------------------------------------

    @_translate
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        try:
            node = self.fs.lookup(parent_inode, name)
        except FsError as e:
            if e.errno != errno.ENOENT:
                raise
            # A negative entry (inode 0): the kernel caches the miss for
            # ENTRY_TIMEOUT, so a create does not cost a lookup round trip first.
            # Safe because every namespace change comes through this kernel.
            miss = pyfuse3.EntryAttributes()
            miss.st_ino = cast(pyfuse3.InodeT, 0)
            miss.entry_timeout = ENTRY_TIMEOUT
            return miss
        return self._entry(node)

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            try:
                self.fs.forget(ino, n)
            except Exception as e:
                log.warning("forget(%d): %s", ino, e)

    @_translate
    async def getattr(self, inode: int,
                      ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attr(self.fs.get(inode))

    @_translate
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        # Size changes normally arrive as ExtOperations.setattr_size (fuse_ext
        # takes them over, for FUSE_INTERRUPT); this path serves the rest, and
        # size changes too when the native extension is unavailable.
        return self._attr(await _setattr(self.fs, self.layouts, inode, _setattr_kw(attr, fields),
                                         breaker_pid=ctx.pid))

    @_translate
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.readlink(inode)

    @_translate
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid))

    @_translate
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.mkdir(parent_inode, name, mode, ctx.uid, ctx.gid))

    @_translate
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.fs.unlink(parent_inode, name)

    @_translate
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.fs.rmdir(parent_inode, name)

    @_translate
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.symlink(parent_inode, name, target, ctx.uid, ctx.gid))

    @_translate
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self.fs.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)

    @_translate
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self.fs.link(inode, new_parent_inode, new_name))

    # -- files --------------------------------------------------------------------

    @_translate
    async def open(self, inode: int, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.fs.get(inode)
        if flags & (os.O_WRONLY | os.O_RDWR) and self.fs.readonly:
            raise FsError(errno.EROFS)
        if node.is_dir():
            raise FsError(errno.EISDIR)
        if flags & os.O_TRUNC and node.is_reg() and node.d.size and self.layouts is not None:
            # O_TRUNC frees blocks like a shrinking truncate: same layout break.
            await self.layouts.break_layout(
                inode, 0, 1 << 62, lambda: self.fs.open(inode, truncate=True),
                what=f"O_TRUNC ino {inode}", breaker_pid=ctx.pid)
        else:
            self.fs.open(inode, truncate=bool(flags & os.O_TRUNC))
        return self._file_info(self._new_fh(inode))

    @_translate
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self.fs.mknod(parent_inode, name, mode, 0, ctx.uid, ctx.gid)
        self.fs.open(node.ino)
        return self._file_info(self._new_fh(node.ino)), self._entry(node)

    @_translate
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return cast(bytes, self.fs.read(self._fh[fh], off, size))

    @_translate
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        return self.fs.write(self._fh[fh], off, buf)

    async def flush(self, fh: int) -> None:
        # Nothing to do at close(2) (data is written in place, durability is
        # fsync's job): ENOSYS makes the kernel stop sending FLUSH at all, one
        # round trip less per close.
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_translate
    async def release(self, fh: int) -> None:
        ino = self._fh.pop(fh)
        self.fs.release(ino)

    @_translate
    async def fsync(self, fh: int, datasync: bool) -> None:
        self.fs.fsync(self._fh[fh], datasync)

    # -- directories ----------------------------------------------------------------

    @_translate
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.fs.get(inode)
        if not node.is_dir():
            raise FsError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._dirh[fh] = [inode, self.fs.readdir_horizon(inode)]
        return fh

    @_translate
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        state = self._dirh[fh]
        ino = state[0]
        if start_id == 0:  # opendir or rewinddir: a new listing
            state[1] = self.fs.readdir_horizon(ino)
        for name, child, cookie in self.fs.readdir(ino, start_id, state[1]):
            node = self.fs.get(child)
            # Not self._attr: a listing would give the core a copy of every entry.
            if not pyfuse3.readdir_reply(token, name, _entry_attributes(node), cookie):
                break
            if name not in (b".", b".."):
                node.lookups += 1  # readdirplus: the kernel now holds a reference

    @_translate
    async def releasedir(self, fh: int) -> None:
        self._dirh.pop(fh, None)

    @_translate
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.fs.fsync(None)

    # -- filesystem -------------------------------------------------------------------

    @_translate
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = self.fs.statfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = s.bsize
        out.f_blocks = s.blocks
        out.f_bfree = s.bfree
        out.f_bavail = s.bavail
        out.f_files = s.files
        out.f_ffree = out.f_favail = s.ffree
        out.f_namemax = s.namemax
        return out

    # -- xattrs --------------------------------------------------------------------------

    @_translate
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        # pyfuse3 itself enforces XATTR_CREATE / XATTR_REPLACE through getxattr.
        self.fs.setxattr(inode, name, value)

    @_translate
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        return self.fs.getxattr(inode, name)

    @_translate
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.fs.listxattr(inode)

    @_translate
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.fs.removexattr(inode, name)

    @_translate
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        node = self.fs.get(inode)
        if mode & os.W_OK and self.fs.readonly:
            return False
        if ctx.uid == 0:
            return not (mode & os.X_OK) or bool(node.d.mode & 0o111) or node.is_dir()
        m = node.d.mode
        if ctx.uid == node.d.uid:
            bits = (m >> 6) & 7
        elif ctx.gid == node.d.gid:
            bits = (m >> 3) & 7
        else:
            bits = m & 7
        return (bits & mode) == mode


class ExtOperations:
    """Handlers for the requests pyfuse3 lacks or hides interrupts of
    (fallocate, lseek, size-changing setattr), served by `daxfs.fuse_ext` from
    the native op-table extension.  Errors are OSError (fuse_ext's convention);
    anything else is logged by fuse_ext and answered EIO."""

    def __init__(self, fs: Filesystem) -> None:
        self.fs = fs
        self.layouts: LayoutManager | None = None
        self.catch_up: Callable[[], None] = fs.sync_fast  # the daemon: Operations.catch_up

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            self.catch_up()
            yield
        except CorruptionError as e:
            self.fs.mark_corrupt(str(e))
            raise OSError(errno.EIO, "metadata corruption") from None
        except FsError as e:
            raise OSError(e.errno, os.strerror(e.errno)) from None
        finally:
            self.fs.publish_attrs()

    async def fallocate(self, ino: int, fh: int, mode: int, offset: int, length: int,
                        interrupted: Any = None, *, ctx: Mapping[str, int] | None = None) -> None:
        layouts = self.layouts
        with self._errors():
            if (layouts is not None and mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE)
                    and length > 0 and offset >= 0):
                # PUNCH_HOLE / ZERO_RANGE free blocks: break layouts, wait for pins
                # (interruptible: EINTR, nothing changed).
                await layouts.break_layout(
                    ino, offset // 4096, -(-(offset + length) // 4096) - offset // 4096,
                    lambda: self.fs.fallocate(ino, mode, offset, length),
                    what=f"{'zero' if mode & 0x10 else 'punch'} ino {ino}",
                    breaker_pid=ctx.get("pid") if ctx else None,
                    interrupted=interrupted)
            else:
                self.fs.fallocate(ino, mode, offset, length)

    async def lseek(self, ino: int, fh: int, offset: int, whence: int,
                    interrupted: Any = None) -> int:
        with self._errors():
            return self.fs.seek(ino, offset, whence)

    async def setattr_size(self, ino: int, fh: int | None, fields: Mapping[str, int],
                           ctx: Mapping[str, int], interrupted: Any = None) -> dict[str, Any]:
        """Operations.setattr for size changes (truncate/ftruncate), which fuse_ext
        takes over from pyfuse3 so that a truncate waiting for DMA pins ends with
        EINTR, nothing changed, when its caller gets a signal."""
        raw = _RawSetattr(fields)
        with self._errors():
            node = await _setattr(self.fs, self.layouts, ino, _setattr_kw(raw, raw),
                                  breaker_pid=ctx.get("pid"), interrupted=interrupted)
        a = _entry_attributes(node)
        return {name: getattr(a, name) for name in _ATTR_REPLY}
