"""How flushes become msyncs: adjacent ranges merge, many scattered ones make
one msync of their span, and a fragmented file is flushed as one span."""

from __future__ import annotations

import mmap
import os
import stat
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from daxfs import format as fmt
from daxfs.fs import Filesystem
from daxfs.pmem import PAGE_SIZE, PmemOps

ROOT = fmt.ROOT_INO
BS = fmt.BLOCK_SIZE


class CountingOps(PmemOps):
    def __init__(self, base: PmemOps) -> None:
        super().__init__(base.view, base.mm, base.fd)
        self.msynced: list[tuple[int, int]] = []
        self.flushed: list[tuple[int, int]] = []

    def flush(self, off: int, length: int) -> None:
        self.flushed.append((off, length))
        super().flush(off, length)

    def _msync(self, start: int, end: int) -> None:
        self.msynced.append((start, end))
        super()._msync(start, end)


@pytest.fixture
def ops(tmp_path: Path) -> CountingOps:
    path = tmp_path / "dev"
    path.write_bytes(bytes(64 * PAGE_SIZE))
    fd = os.open(path, os.O_RDWR)
    mm = mmap.mmap(fd, 64 * PAGE_SIZE)
    o = CountingOps(PmemOps(np.frombuffer(mm, dtype=np.uint8), mm, fd))
    yield o
    del o.view
    os.close(fd)


def test_adjacent_and_overlapping_flushes_merge(ops: CountingOps) -> None:
    ops.flush(0, 100)
    ops.flush(PAGE_SIZE, 10)  # next page: adjacent once page-aligned
    ops.flush(5 * PAGE_SIZE + 1, PAGE_SIZE)  # two pages
    ops.drain()
    assert ops.msynced == [(0, 2 * PAGE_SIZE), (5 * PAGE_SIZE, 7 * PAGE_SIZE)]
    ops.drain()  # nothing pending: nothing to do
    assert len(ops.msynced) == 2


def test_scattered_flushes_make_one_msync_of_their_span(ops: CountingOps) -> None:
    pages = [3, 9, 15, 21, 27, 33, 39, 45, 51, 57]  # ten separate pages
    for p in reversed(pages):
        ops.flush(p * PAGE_SIZE, 8)
    ops.drain()
    assert ops.msynced == [(3 * PAGE_SIZE, 58 * PAGE_SIZE)]


def test_fragmented_file_is_flushed_as_one_span(mount: Callable[..., Filesystem]) -> None:
    fs = mount()
    node = fs.mknod(ROOT, b"f", stat.S_IFREG | 0o644, 0, 0, 0)
    for i in range(0, 2 * 100, 2):  # every other block: 100 extents
        fs.write(node.ino, i * BS, b"x")
    em = fs.get(node.ino).ext
    assert em is not None and len(em.pblk) == 100
    counting = CountingOps(fs.ops)
    fs.ops = counting
    fs.flush_data(fs.get(node.ino))
    lo, hi = min(em.pblk), max(p + c for p, c in zip(em.pblk, em.count, strict=True))
    assert counting.flushed == [(lo * BS, (hi - lo) * BS)]
    small = fs.mknod(ROOT, b"g", stat.S_IFREG | 0o644, 0, 0, 0)
    fs.write(small.ino, 0, b"y")
    fs.write(small.ino, 5 * BS, b"z")
    counting.flushed.clear()
    fs.flush_data(fs.get(small.ino))
    sem = fs.get(small.ino).ext
    assert sorted(counting.flushed) == sorted((p * BS, c * BS)
                                              for _, p, c in sem.runs())
