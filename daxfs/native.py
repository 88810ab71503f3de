"""Python face of the daxfs C core (``daxfs._native``).

This is the only module that imports ``daxfs._native``.  It hides ``ffi``,
turns the core's ``-errno`` return codes into :class:`NativeError`
subclasses, and refuses a compiled core whose ``DAXFS_CORE_VERSION`` is not
the one this file was written for (a stale build).

Layering: the C core knows nothing about Python; its threads never call
into Python and only signal through eventfds.  This module turns those fds
into trio waits (``trio.lowlevel.wait_readable``) or blocking waits
(``select.poll`` / a C condition variable with the GIL released).  Every
C call made through cffi releases the GIL.

Vocabulary: *pfn* is a page frame number in the pmem device (byte offset
// PAGE_SIZE); *index* is a page index inside a file; inode number 0 means
"no owner" and is never valid.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import logging
import os
import select
import struct
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Final

import trio

try:
    from daxfs._native import ffi as _ffi
    from daxfs._native import lib as _lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "daxfs._native (the C core) is not built: reinstall with `pip install .` "
        "or build in place with `python native/build_core.py`"
    ) from exc

#: The C core interface version this module speaks (native/daxfs_core.h).
EXPECTED_CORE_VERSION: Final = 3


def _core_version() -> int:
    try:
        return int(_lib.daxfs_core_version())
    except AttributeError:  # pragma: no cover - ancient build
        return -1


CORE_VERSION: Final = _core_version()
if CORE_VERSION != EXPECTED_CORE_VERSION:  # pragma: no cover - stale build
    raise ImportError(
        f"stale build of daxfs._native: core version {CORE_VERSION}, this daxfs "
        f"expects {EXPECTED_CORE_VERSION}; reinstall (`pip install .` or "
        "`python native/build_core.py`)"
    )

PAGE_SIZE: Final = int(_lib.DAXFS_PAGE_SIZE)
MAX_FILE_PAGES: Final = int(_lib.DAXFS_MAX_FILE_PAGES)
_RUNS_CACHED: Final = 16  # pages (so at most this many runs) served from Core._runs_buf
MAX_PINS: Final = int(_lib.DAXFS_MAX_PINS)
PG_ORPHAN: Final = int(_lib.DAXFS_PG_ORPHAN)
#: How the DMA engine moves bytes ("memcpy").
DMA_COPY_METHOD: Final = _ffi.string(_lib.daxfs_dma_copy_method()).decode()

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- errors


class NativeError(OSError):
    """An error returned by the C core (``errno`` holds the code)."""


class HoleError(NativeError):
    """A page of the file range is not mapped (EFAULT)."""


class OwnerMismatchError(NativeError):
    """A page's owner is not the expected (inode, index) (ESTALE)."""


class RangeBlockedError(NativeError):
    """The file range is blocked by a layout break: no new pins (EAGAIN)."""


class NotPinnedError(NativeError):
    """Unpin of a page that is not pinned (ERANGE); nothing was changed."""


class DMACancelledError(NativeError):
    """The DMA descriptor was cancelled before it started (ECANCELED)."""


_ERRORS: dict[int, type[NativeError]] = {
    _errno.EFAULT: HoleError,
    _errno.ESTALE: OwnerMismatchError,
    _errno.EAGAIN: RangeBlockedError,
    _errno.ERANGE: NotPinnedError,
    _errno.ECANCELED: DMACancelledError,
}


def _fields(ptr: Any) -> dict[str, int]:
    """A pointer to a struct of integers, as a dict."""
    return {name: int(getattr(ptr, name)) for name, _ in _ffi.typeof(ptr[0]).fields}


def error_from_code(code: int, what: str) -> NativeError:
    """The exception for a core return code ``code`` (negative errno)."""
    err = -code if code < 0 else code
    return _ERRORS.get(err, NativeError)(err, f"{what}: {os.strerror(err)}")


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise error_from_code(rc, what)
    return rc


# ---------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class PageInfo:
    pins: int
    flags: int
    ino: int  # 0 = free
    index: int

    @property
    def orphan(self) -> bool:
        """Freed while pinned; stays set until the last pin drops."""
        return bool(self.flags & PG_ORPHAN)


@dataclass(frozen=True, slots=True)
class Extent:
    index: int
    pfn: int
    count: int


class CollisionKind(IntEnum):
    FREE = int(_lib.DAXFS_COLL_FREE)  # owner cleared while pinned
    REUSE = int(_lib.DAXFS_COLL_REUSE)  # pinned page given to another owner


@dataclass(frozen=True, slots=True)
class Collision:
    """A DMA-vs-truncate collision: a pinned page was freed or reused."""

    seq: int
    kind: CollisionKind
    pfn: int
    ino: int  # owner before
    index: int
    new_ino: int  # REUSE: new owner
    pins: int
    time_ns: int  # CLOCK_REALTIME


class Direction(IntEnum):
    TO_PMEM = int(_lib.DAXFS_DMA_TO_PMEM)  # a device write into pmem
    FROM_PMEM = int(_lib.DAXFS_DMA_FROM_PMEM)  # a device read from pmem


@dataclass(frozen=True, slots=True)
class FileTarget:
    """DMA target: bytes [offset, offset+length) of a file, via the pfn map."""

    ino: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class PfnTarget:
    """DMA target: bytes from ``offset`` within pages starting at ``pfn``.

    The pages must already be pinned (e.g. by a registration); the engine
    takes an extra reference for the transfer."""

    pfn: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class BufferIO:
    """The other side is caller memory (kept alive until completion)."""

    buffer: Any


@dataclass(frozen=True, slots=True)
class ShmIO:
    """The other side is a shared memory fd at ``offset`` (mapped by C)."""

    fd: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class FdIO:
    """The other side is read/written with pread/pwrite at ``offset``."""

    fd: int
    offset: int = 0


@dataclass(frozen=True, slots=True)
class PatternIO:
    """Generated bytes (TO_PMEM) or verified bytes (FROM_PMEM; a mismatch
    completes with EILSEQ, ``nbytes`` = offset of the first bad byte).
    See :func:`pattern_bytes`."""

    seed: int
    offset: int = 0


DMAIO = BufferIO | ShmIO | FdIO | PatternIO


@dataclass(frozen=True, slots=True)
class Completion:
    id: int
    status: int  # 0 or -errno
    nbytes: int

    @property
    def ok(self) -> bool:
        return self.status == 0

    def check(self) -> Completion:
        """Return self, or raise the NativeError for a failed transfer."""
        if self.status < 0:
            raise error_from_code(self.status, f"DMA {self.id}")
        return self


def pattern_bytes(seed: int, length: int, offset: int = 0) -> bytes:
    """Bytes [offset, offset+length) of the DMA pattern stream for seed."""
    buf = bytearray(length)
    if length:
        _lib.daxfs_pattern_fill(_ffi.from_buffer(buf), length, seed, offset)
    return bytes(buf)


def pattern_mismatch(data: Any, seed: int, offset: int = 0) -> int | None:
    """Offset of the first byte of ``data`` not matching the pattern, or None."""
    cbuf = _ffi.from_buffer(data)
    r = int(_lib.daxfs_pattern_check(cbuf, len(cbuf), seed, offset))
    return None if r < 0 else r


def _poll_readable(fd: int, timeout: float | None) -> bool:
    p = select.poll()
    p.register(fd, select.POLLIN)
    ms = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
    return bool(p.poll(ms))


# ---------------------------------------------------------------- waiters


class Waiter:
    """A registered wait for a file range to have no pinned page.

    Its :attr:`fd` becomes readable exactly when the last pin in the range
    drops (at once if nothing is pinned at registration) and stays
    readable.  Close it when done (context manager)."""

    def __init__(self, core: Core, ino: int, index: int, count: int) -> None:
        self._w: Any = None  # so __del__ works if registration fails
        out = _ffi.new("daxfs_waiter **")
        _check(_lib.daxfs_waiter_new(core._p, ino, index, count, out), "waiter")
        self._core = core
        self._w = out[0]
        self.ino, self.index, self.count = ino, index, count
        self.fd: int = int(_lib.daxfs_waiter_fd(self._w))
        core._waiters.add(self)

    def __repr__(self) -> str:
        state = "closed" if self._w is None else ("fired" if self.fired else "waiting")
        return f"<Waiter ino={self.ino} [{self.index}+{self.count}) {state}>"

    @property
    def fired(self) -> bool:
        """True once the range has been seen with no pins."""
        if self._w is None:
            raise ValueError("waiter is closed")
        return bool(_lib.daxfs_waiter_fired(self._w))

    def close(self) -> None:
        if self._w is not None:
            w, self._w = self._w, None
            self._core._waiters.discard(self)
            if self._core._c is not None:
                _lib.daxfs_waiter_free(self._core._c, w)

    def __del__(self) -> None:
        self.close()

    def __enter__(self) -> Waiter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def wait(self) -> None:
        """Wait (trio) until the range is unpinned."""
        if not self.fired:
            await trio.lowlevel.wait_readable(self.fd)

    def wait_nowait(self) -> None:
        """Return if the range is unpinned, else raise trio.WouldBlock."""
        if not self.fired:
            raise trio.WouldBlock

    def wait_blocking(self, timeout: float | None = None) -> bool:
        """Block until unpinned (True) or until timeout seconds pass (False)."""
        return self.fired or _poll_readable(self.fd, timeout)

    async def aclose(self) -> None:
        """Close from trio: tell trio the fd goes away first."""
        if self._w is not None:
            trio.lowlevel.notify_closing(self.fd)
        self.close()


# ---------------------------------------------------------------- core


class Core:
    """One daxfs native core: page table, pfn map, waiters, DMA engine,
    collision detector.

    ``pmem`` is the pmem mapping: an address (int), a writable buffer (kept
    referenced), or None when no DMA will run.  Not safe to :meth:`close`
    while other threads still call into it.
    """

    def __init__(self, pmem: int | Any | None, npages: int, *, dma_threads: int = 2) -> None:
        self._c: Any = None
        self._pmem_ref: Any = None
        if pmem is None:
            base = 0
        elif isinstance(pmem, int):
            base = pmem
        else:
            cbuf = _ffi.from_buffer(pmem, require_writable=True)
            if len(cbuf) < npages * PAGE_SIZE:
                raise ValueError(f"pmem buffer smaller than {npages} pages")
            base = int(_ffi.cast("uintptr_t", cbuf))
            self._pmem_ref = (pmem, cbuf)
        out = _ffi.new("daxfs_core **")
        _check(_lib.daxfs_core_new(base, npages, dma_threads, out), "daxfs_core_new")
        self._c = out[0]
        self.npages = npages
        self.base = base
        self._waiters: weakref.WeakSet[Waiter] = weakref.WeakSet()
        self._coll_seq = 0
        self._stamp_buf = _ffi.new("struct daxfs_fast_stamp[]", 256)
        self._runs_buf = _ffi.new("struct daxfs_run[]", _RUNS_CACHED)
        self._runs_n = _ffi.new("uint64_t *")
        self._runs_lock = threading.Lock()
        self._attr_buf = _ffi.new("struct daxfs_attr *")  # trio thread only
        self.dma = DMAEngine(self)

    @property
    def _p(self) -> Any:
        if self._c is None:
            raise ValueError("daxfs core is closed")
        return self._c

    @property
    def closed(self) -> bool:
        return self._c is None

    def close(self) -> None:
        """Shut the DMA engine down (cancel queued, finish running, join),
        free waiters, free the core."""
        if self._c is None:
            return
        for w in list(self._waiters):
            w.close()
        c, self._c = self._c, None
        _lib.daxfs_core_free(c)  # joins the workers: buffers are free after
        self.dma._closed()
        self._pmem_ref = None

    def __del__(self) -> None:
        # Before attributes go: DMA workers may still use our buffers.
        self.close()

    def __enter__(self) -> Core:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self._c is None:
            return "<daxfs Core closed>"
        s = self.stats()
        return (
            f"<daxfs Core npages={self.npages} pinned_pages={s['pinned_pages']} "
            f"collisions={s['collisions']} dma_threads={s['dma_threads']}>"
        )

    # ---- page table

    def set_owner(self, pfn: int, count: int, ino: int, index: int) -> int:
        """Give pfn.. to (ino, index..); returns collisions recorded (reuse
        of a pinned page)."""
        return _check(_lib.daxfs_set_owner(self._p, pfn, count, ino, index), "set_owner")

    def clear_owner(self, pfn: int, count: int) -> int:
        """Free pages; a pinned one is recorded as a collision (and still
        freed).  Returns the number of collisions."""
        return _check(_lib.daxfs_clear_owner(self._p, pfn, count), "clear_owner")

    def pin_pfn(self, pfn: int, count: int, ino: int, index: int) -> int:
        """Pin pages owned by (ino, index..); all or nothing."""
        return _check(_lib.daxfs_pin_pfn(self._p, pfn, count, ino, index), "pin_pfn")

    def unpin_pfn(self, pfn: int, count: int) -> int:
        return _check(_lib.daxfs_unpin_pfn(self._p, pfn, count), "unpin_pfn")

    def first_busy_pfn(self, pfn: int, count: int) -> int | None:
        r = _lib.daxfs_first_busy_pfn(self._p, pfn, count)
        return None if r == -1 else _check(r, "first_busy_pfn")  # -1: none

    def count_pinned(self, pfn: int, count: int) -> int:
        return _check(_lib.daxfs_count_pinned(self._p, pfn, count), "count_pinned")

    def page_info(self, pfn: int) -> PageInfo:
        out = _ffi.new("struct daxfs_page_info *")
        _check(_lib.daxfs_page_info(self._p, pfn, out), "page_info")
        return PageInfo(out.pins, out.flags, out.ino, out.index)

    # ---- pfn map

    def map_extent(self, ino: int, index: int, pfn: int, count: int) -> None:
        _check(_lib.daxfs_map_extent(self._p, ino, index, pfn, count), "map_extent")

    def unmap_range(self, ino: int, index: int, count: int) -> int:
        """Unmap file pages (splitting extents); returns pages unmapped."""
        return _check(_lib.daxfs_unmap_range(self._p, ino, index, count), "unmap_range")

    def drop_inode(self, ino: int) -> bool:
        """Forget an inode's map and blocks; False if it had none."""
        return _lib.daxfs_drop_inode(self._p, ino) == 0

    def lookup(self, ino: int, index: int) -> tuple[int, int] | None:
        """(pfn, pages mapped contiguously from index) or None for a hole."""
        pfn = _ffi.new("uint64_t *")
        run = _ffi.new("uint64_t *")
        r = _lib.daxfs_lookup(self._p, ino, index, pfn, run)
        if r == -_errno.ENODATA:
            return None
        _check(r, "lookup")
        return int(pfn[0]), int(run[0])

    def extents(self, ino: int, index: int = 0) -> list[Extent]:
        """The inode's extents that end after ``index``."""
        res: list[Extent] = []
        buf = _ffi.new("struct daxfs_extent[]", 1024)
        while True:
            n = _check(_lib.daxfs_get_extents(self._p, ino, index, buf, 1024), "extents")
            res.extend(Extent(e.index, e.pfn, e.count) for e in buf[0:n])
            if n < 1024:
                return res
            index = res[-1].index + res[-1].count

    def pin_file(self, ino: int, index: int, count: int) -> int:
        """Pin the pages backing file pages [index, index+count); all or
        nothing.  Raises RangeBlockedError, HoleError, OwnerMismatchError."""
        return _check(
            _lib.daxfs_pin_file(self._p, ino, index, count, _ffi.NULL, 0, _ffi.NULL),
            "pin_file",
        )

    def pin_file_runs(self, ino: int, index: int, count: int) -> list[tuple[int, int]]:
        """Like pin_file, returning the pinned (pfn, count) runs in file
        order, to be released with unpin_pfn (valid even after a truncate)."""
        # A small registration is one control request: reuse one result buffer
        # (whoever holds _runs_lock) rather than allocate two cdata per call.
        if count <= _RUNS_CACHED and self._runs_lock.acquire(blocking=False):
            try:
                runs, n = self._runs_buf, self._runs_n
                _check(_lib.daxfs_pin_file(self._p, ino, index, count, runs,
                                           _RUNS_CACHED, n), "pin_file")
                return [(x.pfn, x.count) for x in runs[0 : n[0]]]
            finally:
                self._runs_lock.release()
        cap = max(1, min(count, 256))
        while True:
            runs = _ffi.new("struct daxfs_run[]", cap)
            n = _ffi.new("uint64_t *")
            r = _lib.daxfs_pin_file(self._p, ino, index, count, runs, cap, n)
            if r == -_errno.E2BIG and cap < count:
                cap = count
                continue
            _check(r, "pin_file")
            return [(x.pfn, x.count) for x in runs[0 : n[0]]]

    def unpin_file(self, ino: int, index: int, count: int) -> int:
        return _check(_lib.daxfs_unpin_file(self._p, ino, index, count), "unpin_file")

    def busy_file(self, ino: int, index: int, count: int) -> int:
        """First pinned file index in the range, or -1."""
        r = _lib.daxfs_busy_file(self._p, ino, index, count)
        return -1 if r == -1 else _check(r, "busy_file")  # -1: none busy

    def block_range(self, ino: int, index: int, count: int) -> int:
        """Refuse new pins on the range (RangeBlockedError) until
        :meth:`unblock` with the returned token."""
        tok = _ffi.new("uint64_t *")
        _check(_lib.daxfs_block_range(self._p, ino, index, count, tok), "block_range")
        return int(tok[0])

    def unblock(self, ino: int, token: int) -> None:
        _check(_lib.daxfs_unblock(self._p, ino, token), "unblock")

    @contextlib.contextmanager
    def blocked(self, ino: int, index: int, count: int) -> Iterator[int]:
        """Context manager around block_range / unblock."""
        tok = self.block_range(ino, index, count)
        try:
            yield tok
        finally:
            if self._c is not None:
                with contextlib.suppress(NativeError):  # inode dropped meanwhile
                    self.unblock(ino, tok)

    # ---- waits

    def waiter(self, ino: int, index: int, count: int) -> Waiter:
        return Waiter(self, ino, index, count)

    async def wait_unpinned(self, ino: int, index: int, count: int) -> None:
        """Wait (trio, event driven) until no page of the file range is
        pinned.  Block the range first if new pins must not restart it."""
        w = Waiter(self, ino, index, count)
        try:
            await w.wait()
        finally:
            await w.aclose()

    def wait_unpinned_nowait(self, ino: int, index: int, count: int) -> None:
        """Raise trio.WouldBlock if a page of the range is pinned."""
        if self.busy_file(ino, index, count) >= 0:
            raise trio.WouldBlock

    def wait_unpinned_blocking(
        self, ino: int, index: int, count: int, timeout: float | None = None
    ) -> bool:
        """Block until the range is unpinned (True) or timeout (False)."""
        with Waiter(self, ino, index, count) as w:
            return w.wait_blocking(timeout)

    # ---- fast data path (see native/fastpath.c)

    @property
    def address(self) -> int:
        """The core pointer, for another native module (fuseext) to call into."""
        return int(_ffi.cast("uintptr_t", self._p))

    @staticmethod
    def fast_entry_points() -> dict[str, int]:
        """Addresses of the data-path functions, for fuseext's reader threads."""
        return {name: int(_ffi.cast("uintptr_t", _ffi.addressof(_lib, name)))
                for name in ("daxfs_fast_read_begin", "daxfs_fast_read_end",
                             "daxfs_fast_write", "daxfs_fast_nocaps", "daxfs_fast_getattr")}

    def fast_set_attr(self, ino: int, size: int, blocks: int, atime: int, mtime: int,
                      ctime: int, mode: int, nlink: int, uid: int, gid: int,
                      rdev: int) -> bool:
        """Publish getattr's answer for ino (blocks: 512-byte units, times: ns).
        False if not published because fast-path stamps wait to be drained."""
        a = self._attr_buf
        a.ino, a.size, a.blocks = ino, size, blocks
        a.atime, a.mtime, a.ctime = atime, mtime, ctime
        a.mode, a.nlink, a.uid, a.gid, a.rdev = mode, nlink, uid, gid, rdev
        r = _lib.daxfs_fast_set_attr(self._p, a)
        if r == -_errno.EAGAIN:
            return False
        _check(r, "fast_set_attr")
        return True

    def fast_clear_attr(self, ino: int) -> None:
        _lib.daxfs_fast_clear_attr(self._p, ino)  # -ENOENT: nothing was published

    def fast_getattr(self, ino: int) -> dict[str, int] | None:
        """The published attributes of ino, or None (tests and status)."""
        out = _ffi.new("struct daxfs_attr *")
        if _lib.daxfs_fast_getattr(self._p, ino, out) < 0:
            return None
        return _fields(out)

    def fast_publish(self, ino: int, size: int, atime_next: int) -> None:
        _check(_lib.daxfs_fast_publish(self._p, ino, size, atime_next), "fast_publish")

    def fast_set_size(self, ino: int, size: int) -> bool:
        """False if ino has no core inode (so nothing is published)."""
        return _lib.daxfs_fast_set_size(self._p, ino, size) == 0

    def fast_set_atime_next(self, ino: int, atime_next: int) -> bool:
        return _lib.daxfs_fast_set_atime_next(self._p, ino, atime_next) == 0

    def fast_set_nocaps(self, ino: int, on: bool) -> None:
        _lib.daxfs_fast_set_nocaps(self._p, ino, int(on))

    def fast_nocaps(self, ino: int) -> bool:
        return bool(_lib.daxfs_fast_nocaps(self._p, ino))

    def fast_unpublish(self, ino: int) -> None:
        _lib.daxfs_fast_unpublish(self._p, ino)

    def fast_published(self, ino: int) -> bool:
        return bool(_lib.daxfs_fast_published(self._p, ino))

    def fast_set_writable(self, on: bool) -> None:
        _lib.daxfs_fast_set_writable(self._p, int(on))

    def fast_pending(self) -> int:
        return int(_lib.daxfs_fast_pending(self._p))

    def fast_drain(self) -> list[tuple[int, int, int]]:
        """(ino, wtime, rtime) stamps the fast path left; 0 = no such stamp."""
        out: list[tuple[int, int, int]] = []
        if not _lib.daxfs_fast_pending(self._p):
            return out
        buf = self._stamp_buf
        while True:
            n = int(_lib.daxfs_fast_drain(self._p, buf, len(buf)))
            out.extend((int(buf[i].ino), int(buf[i].wtime), int(buf[i].rtime))
                       for i in range(n))
            if not _lib.daxfs_fast_pending(self._p):
                return out

    def fast_read(self, ino: int, off: int, length: int) -> bytes | None:
        """Serve a read the way fuseext's threads do (tests); None = slow path."""
        rd = _ffi.new("struct daxfs_fast_read *")
        n = int(_lib.daxfs_fast_read_begin(self._p, ino, off, length, rd))
        if n < 0:
            return None
        try:
            out = bytearray()
            for i in range(rd.nsegs):
                seg = rd.segs[i]
                if seg.dev_off == _lib.DAXFS_FAST_ZEROS:
                    out += bytes(seg.len)
                else:
                    out += _ffi.buffer(_ffi.cast("char *", self.base + seg.dev_off), seg.len)
            return bytes(out)
        finally:
            _lib.daxfs_fast_read_end(self._p, rd)

    def fast_read_pinned(self, ino: int, off: int, length: int) -> Any:
        """Begin a fast read and keep its pins (tests: a copy in progress).
        Returns the handle for :meth:`fast_read_end`, or None (slow path)."""
        rd = _ffi.new("struct daxfs_fast_read *")
        if _lib.daxfs_fast_read_begin(self._p, ino, off, length, rd) < 0:
            return None
        return rd

    def fast_read_end(self, rd: Any) -> None:
        _lib.daxfs_fast_read_end(self._p, rd)

    def fast_write(self, ino: int, off: int, data: bytes) -> int | None:
        """Serve an overwrite the way fuseext's threads do; None = slow path."""
        n = int(_lib.daxfs_fast_write(self._p, ino, off, _ffi.from_buffer(data), len(data)))
        return None if n < 0 else n

    # ---- collisions and statistics

    def collisions_since(self, seq: int = 0) -> tuple[list[Collision], int]:
        """Records with seq >= ``seq`` (oldest first) and the seq to pass
        next time.  The ring keeps the last 1024; a gap between ``seq`` and
        the first record's seq counts lost records."""
        out: list[Collision] = []
        buf = _ffi.new("struct daxfs_collision[]", 256)
        nxt = _ffi.new("uint64_t *")
        while True:
            n = _check(_lib.daxfs_collisions_since(self._p, seq, buf, 256, nxt), "collisions")
            out.extend(
                Collision(
                    r.seq,
                    CollisionKind(r.kind),
                    r.pfn,
                    r.ino,
                    r.index,
                    r.new_ino,
                    r.pins,
                    r.time_ns,
                )
                for r in buf[0:n]
            )
            seq = int(nxt[0])
            if n < 256:
                return out, seq

    def log_new_collisions(self, logger: logging.Logger | None = None) -> list[Collision]:
        """Log a WARNING per collision recorded since the last call."""
        logger = logger or log
        first_wanted = self._coll_seq
        recs, self._coll_seq = self.collisions_since(first_wanted)
        if recs and recs[0].seq > first_wanted:
            logger.warning("%d collision records lost (ring overflow)", recs[0].seq - first_wanted)
        for r in recs:
            logger.warning(
                "DMA vs truncate collision #%d: %s pfn %d (inode %d page %d%s) with %d pin(s)",
                r.seq,
                r.kind.name.lower(),
                r.pfn,
                r.ino,
                r.index,
                f", now inode {r.new_ino}" if r.kind is CollisionKind.REUSE else "",
                r.pins,
            )
        return recs

    def stats(self) -> dict[str, int]:
        """Counters: pinned pages, pins taken, collisions, DMA, waiters..."""
        s = _ffi.new("struct daxfs_stats *")
        _lib.daxfs_core_stats(self._p, s)
        return _fields(s)

    statistics = stats


# ---------------------------------------------------------------- DMA


class DMAEngine:
    """The core's DMA engine (``core.dma``).

    Each completion is delivered once: to :meth:`wait_completion` /
    :meth:`wait` for its id, or to :meth:`next_completion` (any id).
    Buffers given with :class:`BufferIO` are kept referenced until their
    completion has been reaped from the core."""

    _REAP_BATCH = 256

    def __init__(self, core: Core) -> None:
        # A weak reference: no Core <-> DMAEngine cycle, so dropping the
        # last reference to a Core closes it at once.
        self._core_ref = weakref.ref(core)
        self.eventfd: int = int(_lib.daxfs_dma_eventfd(core._p))
        self._lock = threading.Lock()  # protects the three fields below
        self._keep: dict[int, Any] = {}  # id -> objects C is using
        self._outstanding: set[int] = set()  # submitted, not yet reaped
        self._ready: dict[int, Completion] = {}  # reaped, not yet delivered
        self._cbuf = _ffi.new("struct daxfs_completion[]", self._REAP_BATCH)
        self._posted = _ffi.new("uint64_t *")
        self._alock: trio.Lock | None = None
        self._alock_token: object = None

    @property
    def _core(self) -> Core:
        core = self._core_ref()
        if core is None:
            raise ValueError("daxfs core is gone")
        return core

    def __repr__(self) -> str:
        return f"<DMAEngine outstanding={len(self._outstanding)} ready={len(self._ready)}>"

    def _closed(self) -> None:
        with self._lock:
            self._keep.clear()

    # ---- submit / cancel

    def submit(
        self,
        direction: Direction,
        target: FileTarget | PfnTarget,
        io: DMAIO,
        *,
        delay_ns: int = 0,
    ) -> int:
        """Queue a transfer; the target pages are pinned now, so lease /
        block / hole errors are raised here.  Returns the descriptor id."""
        d = _ffi.new("struct daxfs_dma_desc *")
        d.dir = int(direction)
        if isinstance(target, FileTarget):
            d.target = _lib.DAXFS_TGT_FILE
            d.ino = target.ino
        else:
            d.target = _lib.DAXFS_TGT_PFN
            d.pfn = target.pfn
        d.offset = target.offset
        d.length = target.length
        d.delay_ns = delay_ns
        keep: Any = None
        if isinstance(io, BufferIO):
            cbuf = _ffi.from_buffer(io.buffer, require_writable=direction == Direction.FROM_PMEM)
            if len(cbuf) < target.length:
                raise ValueError("buffer shorter than the transfer")
            d.src = _lib.DAXFS_SRC_BUF
            d.buf = cbuf
            keep = (io.buffer, cbuf)
        elif isinstance(io, ShmIO):
            d.src, d.fd, d.src_offset = _lib.DAXFS_SRC_SHM, io.fd, io.offset
        elif isinstance(io, FdIO):
            d.src, d.fd, d.src_offset = _lib.DAXFS_SRC_FD, io.fd, io.offset
        elif isinstance(io, PatternIO):
            d.src, d.seed, d.src_offset = _lib.DAXFS_SRC_PATTERN, io.seed, io.offset
        else:
            raise TypeError(f"not a DMA source/destination: {io!r}")
        with self._lock:  # so a concurrent reap cannot see the id first
            rid = _check(_lib.daxfs_dma_submit(self._core._p, d), "dma_submit")
            self._outstanding.add(rid)
            if keep is not None:
                self._keep[rid] = keep
        return rid

    def cancel(self, rid: int) -> bool:
        """Cancel a queued descriptor (its pins drop; it completes with
        ECANCELED).  False if it already started or finished."""
        r = _lib.daxfs_dma_cancel(self._core._p, rid)
        if r in (-_errno.EBUSY, -_errno.ENOENT):
            return False
        _check(r, "dma_cancel")
        return True

    @property
    def global_delay_ns(self) -> int:
        return self._core.stats()["dma_global_delay_ns"]

    @global_delay_ns.setter
    def global_delay_ns(self, ns: int) -> None:
        _lib.daxfs_dma_set_delay(self._core._p, ns)

    def set_global_delay(self, ns: int) -> None:
        """Delay added before every descriptor's copy from now on."""
        self.global_delay_ns = ns

    def shutdown(self) -> int:
        """Stop accepting, cancel queued descriptors, let running ones
        finish (delays cut short), join the workers.  Returns the number
        cancelled."""
        return _check(_lib.daxfs_dma_shutdown(self._core._p), "dma_shutdown")

    # ---- completions

    def _reap_locked(self) -> int:
        """Move completions from C into _ready; returns C's posted count."""
        c = self._core._p
        while True:
            n = _lib.daxfs_dma_reap(c, self._cbuf, self._REAP_BATCH, self._posted)
            for x in self._cbuf[0:n]:
                rid = int(x.id)
                self._keep.pop(rid, None)
                self._outstanding.discard(rid)
                self._ready[rid] = Completion(rid, int(x.status), int(x.bytes))
            if n < self._REAP_BATCH:
                return int(self._posted[0])

    def poll(self) -> list[Completion]:
        """Take every completion available now (non-blocking)."""
        with self._lock:
            self._reap_locked()
            out = list(self._ready.values())
            self._ready.clear()
        return out

    def next_completion_nowait(self) -> Completion:
        """The oldest undelivered completion, or raise trio.WouldBlock."""
        with self._lock:
            self._reap_locked()
            if not self._ready:
                raise trio.WouldBlock
            rid = next(iter(self._ready))
            return self._ready.pop(rid)

    def _take(self, rid: int) -> Completion | None:
        with self._lock:
            self._reap_locked()
            if rid in self._ready:
                comp = self._ready.pop(rid)
                if self._ready:
                    # Others reaped on the way: wake async consumers.
                    os.write(self.eventfd, struct.pack("=Q", 1))
                return comp
            if rid not in self._outstanding:
                raise KeyError(f"DMA descriptor {rid} unknown or already delivered")
            return None

    def wait_nowait(self, rid: int) -> Completion:
        """Descriptor ``rid``'s completion, or raise trio.WouldBlock."""
        comp = self._take(rid)
        if comp is None:
            raise trio.WouldBlock
        return comp

    def wait_completion(self, rid: int, timeout: float | None = None) -> Completion:
        """Block (GIL released) until descriptor ``rid`` completes.
        Raises TimeoutError."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            comp = self._take(rid)
            if comp is not None:
                return comp
            posted = int(self._posted[0])
            ns = -1
            if deadline is not None:
                ns = max(0, int((deadline - time.monotonic()) * 1e9))
            r = _lib.daxfs_dma_wait_posted(self._core._p, posted, ns)
            if r == -_errno.ETIMEDOUT:
                raise TimeoutError(f"DMA descriptor {rid} not complete after {timeout} s")
            if r == -_errno.ESHUTDOWN and self._take(rid) is None:
                raise error_from_code(r, f"DMA {rid}")

    def _trio_lock(self) -> trio.Lock:
        # One task at a time may wait on the eventfd (trio allows one reader
        # per fd); a lock per trio run.
        token = trio.lowlevel.current_trio_token()
        if self._alock is None or self._alock_token is not token:
            self._alock, self._alock_token = trio.Lock(), token
        return self._alock

    async def next_completion(self) -> Completion:
        """Wait (trio) for the next undelivered completion."""
        async with self._trio_lock():
            while True:
                with contextlib.suppress(trio.WouldBlock):
                    return self.next_completion_nowait()
                await trio.lowlevel.wait_readable(self.eventfd)

    async def wait(self, rid: int) -> Completion:
        """Wait (trio) for descriptor ``rid`` to complete."""
        async with self._trio_lock():
            while True:
                comp = self._take(rid)
                if comp is not None:
                    return comp
                await trio.lowlevel.wait_readable(self.eventfd)

    async def completions(self) -> AsyncIterator[Completion]:
        """Completions as they come, forever."""
        while True:
            yield await self.next_completion()

    def __aiter__(self) -> AsyncIterator[Completion]:
        return self.completions()
