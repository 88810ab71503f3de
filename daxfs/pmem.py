"""The pmem device: one image file mapped MAP_SHARED, and the persistence primitives.

Every store to the device that must survive a crash goes through a `PmemOps` table
(`memcpy`, `memset`, `zero`, `flush`, `drain`, `persist`), named as in libpmem.  The
default table applies stores to the mapping and emulates clwb+sfence with msync of
the affected page range: `flush` remembers the range, `drain` msyncs what was
flushed.  Tests swap in a recording table (`daxfs.crash`) to see every store and
fence, which is what the power-cut simulator replays.

Persistence granularity: a store is durable only after a `flush` covering it and
the next `drain`.  Only naturally aligned 8-byte stores are atomic.
"""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from dataclasses import dataclass, field

import numpy as np

from .errors import ImageError

PAGE_SIZE = 4096
_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
# More separate flushed ranges than this and a drain makes one msync of their span.
_MSYNC_SPLIT = 8


def _page_down(off: int) -> int:
    return off & ~(PAGE_SIZE - 1)


def _page_up(off: int) -> int:
    return (off + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


@dataclass
class PmemStats:
    flushes: int = 0
    drains: int = 0
    bytes_stored: int = 0
    msyncs: int = 0


@dataclass
class PmemOps:
    """The one place every persistent store goes through (PMDK's pmem_ops).

    Subclasses may record instead of (or as well as) applying.  `view` is the
    device's mapping as a writable uint8 numpy array.
    """

    view: np.ndarray
    mm: mmap.mmap
    fd: int
    # Invariants: ranges are page-aligned [start, end) byte offsets, merged lazily.
    _pending: list[tuple[int, int]] = field(default_factory=list)
    stats: PmemStats = field(default_factory=PmemStats)

    def memcpy(self, off: int, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Store `data` at device offset `off` (not yet durable: flush + drain)."""
        n = len(data)
        src = data if isinstance(data, np.ndarray) else np.frombuffer(data, dtype=np.uint8)
        self.view[off : off + n] = src
        self.stats.bytes_stored += n

    def memset(self, off: int, value: int, length: int) -> None:
        self.view[off : off + length] = value
        self.stats.bytes_stored += length

    def zero(self, off: int, length: int) -> None:
        """Zero a range; whole pages are punched out of the image so it stays sparse.

        The punch is immediately visible through the mapping (the pages read back as
        zeros), and it is a metadata operation of the host filesystem, so it is as
        durable as a flushed store once the next drain has run.
        """
        start, end = _page_up(off), _page_down(off + length)
        if end - start >= PAGE_SIZE:
            if start > off:
                self.memset(off, 0, start - off)
            fcntl_fallocate(self.fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, start,
                            end - start)
            if off + length > end:
                self.memset(end, 0, off + length - end)
            self.flush(off, length)
        else:
            self.memset(off, 0, length)

    def flush(self, off: int, length: int) -> None:
        """Start write-back of a range (clwb); durable after the next `drain`."""
        if length <= 0:
            return
        self._pending.append((_page_down(off), _page_up(off + length)))
        self.stats.flushes += 1

    def drain(self) -> None:
        """Wait until everything flushed so far is durable (sfence)."""
        self.stats.drains += 1
        if not self._pending:
            return
        ranges = sorted(self._pending)
        self._pending.clear()
        merged = [list(ranges[0])]
        for s, e in ranges[1:]:
            if s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        if len(merged) > _MSYNC_SPLIT:
            # Scattered pages (random allocating writes): one msync over the span.
            # The kernel writes back only the dirty pages in it, and a disk-backed
            # image pays one host-filesystem commit instead of one per range.
            self._msync(merged[0][0], merged[-1][1])
            return
        for s, e in merged:
            self._msync(s, e)

    def persist(self, off: int, length: int) -> None:
        self.flush(off, length)
        self.drain()

    def _msync(self, start: int, end: int) -> None:
        self.stats.msyncs += 1
        self.mm.flush(start, end - start)


_libc = None


def fcntl_fallocate(fd: int, mode: int, off: int, length: int) -> None:
    """fallocate(2) with a mode (os.posix_fallocate has none)."""
    global _libc
    import ctypes

    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    if _libc.fallocate(fd, mode, off, length) != 0:
        e = ctypes.get_errno()
        if e == errno.EOPNOTSUPP and mode & _FALLOC_FL_PUNCH_HOLE:
            # Host filesystem cannot punch: write zeros instead (same visible result).
            os.pwrite(fd, bytes(length), off)
            return
        raise OSError(e, os.strerror(e))


class PmemDevice:
    """The image file, locked and mapped MAP_SHARED.

    The lock (flock, exclusive) is what refuses a second mount of the same image.
    """

    def __init__(self, path: str, *, readonly: bool = False, lock: bool = True) -> None:
        self.path = path
        self.readonly = readonly
        flags = os.O_RDONLY if readonly else os.O_RDWR
        try:
            self.fd = os.open(path, flags | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageError(f"{path}: no such image file")
        except IsADirectoryError:
            raise ImageError(f"{path}: is a directory, not an image file")
        except PermissionError:
            raise ImageError(f"{path}: permission denied")
        try:
            if lock:
                try:
                    fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise ImageError(f"{path}: image is in use (already mounted or being checked)")
            self.size = os.fstat(self.fd).st_size
            if self.size < PAGE_SIZE:
                raise ImageError(f"{path}: too small to be a daxfs image ({self.size} bytes)")
            prot = mmap.PROT_READ if readonly else mmap.PROT_READ | mmap.PROT_WRITE
            self.mm = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, prot)
        except BaseException:
            os.close(self.fd)
            raise
        self.view = np.frombuffer(self.mm, dtype=np.uint8)
        self.ops = PmemOps(self.view, self.mm, self.fd)

    @property
    def base_address(self) -> int:
        """Address of the mapping, for the C core."""
        return int(self.view.ctypes.data)

    def read(self, off: int, length: int) -> bytes:
        return self.mm[off : off + length]

    def close(self) -> None:
        self.ops.drain()
        del self.view
        self.ops.view = None  # type: ignore[assignment]
        # Unlock explicitly: mmap keeps a dup of the fd, and if a view is still alive
        # below (BufferError) that dup would hold the flock until garbage collection.
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        try:
            self.mm.close()
        except BufferError:
            # A numpy view is still alive somewhere; the mapping dies with the process.
            pass
        os.close(self.fd)
