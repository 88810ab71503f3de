"""Pin counts stay exact under contention from Python and C threads."""

from __future__ import annotations

import mmap
import threading

import pytest

from daxfs.native import (
    PAGE_SIZE,
    BufferIO,
    Core,
    Direction,
    FileTarget,
    PatternIO,
    PfnTarget,
    RangeBlockedError,
)

NPAGES = 2048
INO = 11
FILE_PAGES = 512


@pytest.fixture
def core():
    c = Core(mmap.mmap(-1, NPAGES * PAGE_SIZE), NPAGES, dma_threads=4)
    # The file is 4 extents scattered over pmem.
    for k in range(4):
        pfn = 1000 - k * 200
        c.set_owner(pfn, 128, INO, k * 128)
        c.map_extent(INO, k * 128, pfn, 128)
    yield c
    c.close()


def pins(core: Core, index: int, count: int) -> list[int]:
    out = []
    for i in range(index, index + count):
        loc = core.lookup(INO, i)
        assert loc is not None
        out.append(core.page_info(loc[0]).pins)
    return out


def test_python_threads_exact_counts(core):
    nthreads, iters = 8, 400
    barrier = threading.Barrier(nthreads + 1)
    held = threading.Barrier(nthreads + 1)
    errors: list[BaseException] = []

    def worker(t: int) -> None:
        try:
            barrier.wait()
            # Overlapping ranges: [t*16, t*16+300) across extents.
            for _ in range(iters):
                core.pin_file(INO, t * 16, 300)
                core.unpin_file(INO, t * 16, 300)
            for _ in range(iters):
                core.pin_file(INO, 100, 100)
            held.wait()  # everyone holds iters pins on [100, 200)
            held.wait()  # main thread checked
            for _ in range(iters):
                core.unpin_file(INO, 100, 100)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
            raise

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    barrier.wait()
    held.wait()
    assert pins(core, 100, 100) == [nthreads * iters] * 100
    assert pins(core, 99, 1) == [0] and pins(core, 200, 1) == [0]
    s = core.stats()
    assert s["pins_held"] == nthreads * iters * 100
    assert s["pinned_pages"] == 100
    held.wait()
    for th in threads:
        th.join()
    assert not errors
    s = core.stats()
    assert s["pins_held"] == 0 and s["pinned_pages"] == 0
    assert s["pins_taken"] == s["pins_released"] == nthreads * iters * (300 + 100)


def test_c_worker_threads_exact_counts(core):
    """Python threads submit DMA (pins at submit) and pin/unpin directly,
    while 4 C workers drop DMA pins; a long-term pin (like a registration)
    must end exactly where it started."""
    core.pin_file(INO, 0, FILE_PAGES)  # the "registration" pin
    reg = core.pin_file_runs(INO, 0, FILE_PAGES)  # a second reference
    nthreads, per_thread = 4, 150
    ids: list[list[int]] = [[] for _ in range(nthreads)]
    buf = bytearray(PAGE_SIZE * 8)

    def submitter(t: int) -> None:
        for i in range(per_thread):
            index = (t * 37 + i * 11) % (FILE_PAGES - 8)
            if i % 3 == 0:
                # Target already-pinned pages by pfn (an MR's DMA).
                pfn, _ = core.lookup(INO, index) or (0, 0)
                tgt: FileTarget | PfnTarget = PfnTarget(pfn, 0, PAGE_SIZE)
            else:
                tgt = FileTarget(INO, index * PAGE_SIZE + 5, 6 * PAGE_SIZE)
            io = BufferIO(buf) if i % 2 else PatternIO(i)
            ids[t].append(core.dma.submit(Direction.TO_PMEM, tgt, io))
            core.pin_file(INO, index, 8)
            core.unpin_file(INO, index, 8)

    threads = [threading.Thread(target=submitter, args=(t,)) for t in range(nthreads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for lst in ids:
        for rid in lst:
            assert core.dma.wait_completion(rid, timeout=60).ok
    for pfn, n in reg:
        core.unpin_pfn(pfn, n)
    assert pins(core, 0, FILE_PAGES) == [1] * FILE_PAGES
    core.unpin_file(INO, 0, FILE_PAGES)
    s = core.stats()
    assert s["pins_held"] == 0 and s["pinned_pages"] == 0 and s["dma_pinned_pages"] == 0
    assert s["pins_taken"] == s["pins_released"]
    assert s["dma_completed"] == nthreads * per_thread


def test_block_races_with_pinners(core):
    """While a block is in place no new pin enters; once the wait fires the
    range is idle and stays idle until unblock."""
    stop = threading.Event()
    refused = [0]

    def pinner() -> None:
        while not stop.is_set():
            try:
                core.pin_file(INO, 50, 20)
            except RangeBlockedError:
                refused[0] += 1
                continue
            core.unpin_file(INO, 50, 20)

    threads = [threading.Thread(target=pinner) for _ in range(3)]
    for th in threads:
        th.start()
    try:
        for _ in range(50):
            with core.blocked(INO, 0, FILE_PAGES):
                assert core.wait_unpinned_blocking(INO, 0, FILE_PAGES, timeout=30)
                assert core.busy_file(INO, 0, FILE_PAGES) == -1
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert core.stats()["pins_held"] == 0
