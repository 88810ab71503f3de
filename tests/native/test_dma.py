"""DMA engine: data lands, pins drop, delays, cancel, shutdown."""

from __future__ import annotations

import errno
import gc
import os
import tempfile
import time

import numpy as np
import pytest
import trio

from daxfs.native import (
    PAGE_SIZE,
    BufferIO,
    CollisionKind,
    Core,
    Direction,
    DMACancelledError,
    FdIO,
    FileTarget,
    HoleError,
    NativeError,
    PatternIO,
    PfnTarget,
    RangeBlockedError,
    ShmIO,
    pattern_bytes,
    pattern_mismatch,
)

NPAGES = 1024
INO = 9
MS = 1_000_000


def make_core(threads: int = 2) -> tuple[Core, np.ndarray]:
    pm = np.zeros(NPAGES * PAGE_SIZE, dtype=np.uint8)
    c = Core(pm, NPAGES, dma_threads=threads)
    # File pages 0..63 -> pfn 512..575, 64..127 -> pfn 100..163.
    c.set_owner(512, 64, INO, 0)
    c.map_extent(INO, 0, 512, 64)
    c.set_owner(100, 64, INO, 64)
    c.map_extent(INO, 64, 100, 64)
    return c, pm


@pytest.fixture
def core_pm():
    c, pm = make_core()
    yield c, pm
    c.close()


def file_bytes(pm: np.ndarray, offset: int, length: int) -> bytes:
    """Read file INO's bytes from pmem through the fixture's layout."""
    out = bytearray()
    while length:
        index, off = divmod(offset, PAGE_SIZE)
        pfn = 512 + index if index < 64 else 100 + index - 64
        n = min(length, PAGE_SIZE - off)
        start = pfn * PAGE_SIZE + off
        out += pm[start : start + n].tobytes()
        offset += n
        length -= n
    return bytes(out)


def test_pattern_lands_across_extents(core_pm):
    core, pm = core_pm
    off, length = 60 * PAGE_SIZE + 123, 10 * PAGE_SIZE + 7
    rid = core.dma.submit(Direction.TO_PMEM, FileTarget(INO, off, length), PatternIO(99))
    comp = core.dma.wait_completion(rid, timeout=30)
    assert comp.ok and comp.nbytes == length
    assert file_bytes(pm, off, length) == pattern_bytes(99, length)
    assert pattern_mismatch(file_bytes(pm, off, length), 99) is None
    # Reading back with the pattern verifies in C.
    rid = core.dma.submit(Direction.FROM_PMEM, FileTarget(INO, off, length), PatternIO(99))
    assert core.dma.wait_completion(rid, timeout=30).ok
    # A wrong seed fails with EILSEQ and says where.
    rid = core.dma.submit(Direction.FROM_PMEM, FileTarget(INO, off, length), PatternIO(98))
    comp = core.dma.wait_completion(rid, timeout=30)
    assert comp.status == -errno.EILSEQ and comp.nbytes < 8
    with pytest.raises(NativeError):
        comp.check()
    s = core.stats()
    assert s["dma_pinned_pages"] == 0 and s["pins_held"] == 0 and s["dma_failed"] == 1


def test_pattern_offset_is_stream_position():
    a = pattern_bytes(5, 100)
    assert pattern_bytes(5, 50, offset=50) == a[50:]
    assert pattern_bytes(5, 3, offset=13) == a[13:16]
    assert pattern_mismatch(a[:40] + b"x" + a[41:], 5) == 40


def test_buffer_roundtrip_and_pins_released(core_pm):
    core, pm = core_pm
    data = os.urandom(5 * PAGE_SIZE)
    rid = core.dma.submit(
        Direction.TO_PMEM,
        FileTarget(INO, 62 * PAGE_SIZE, len(data)),
        BufferIO(data),
        delay_ns=10 * MS,
    )
    # Pinned from submit until completion.
    assert core.busy_file(INO, 62, 5) == 62
    with pytest.raises(trio.WouldBlock):
        core.dma.wait_nowait(rid)
    assert core.stats()["dma_pinned_pages"] == 5
    assert core.dma.wait_completion(rid, timeout=30).ok
    assert core.busy_file(INO, 0, 128) == -1
    assert core.stats()["dma_pinned_pages"] == 0
    assert file_bytes(pm, 62 * PAGE_SIZE, len(data)) == data
    out = bytearray(len(data))
    rid = core.dma.submit(
        Direction.FROM_PMEM, FileTarget(INO, 62 * PAGE_SIZE, len(data)), BufferIO(out)
    )
    assert core.dma.wait_completion(rid, timeout=30).ok
    assert out == data
    with pytest.raises(BufferError):  # FROM_PMEM needs writable memory
        core.dma.submit(Direction.FROM_PMEM, FileTarget(INO, 0, 10), BufferIO(b"x" * 10))


def test_shm_and_fd_sources(core_pm):
    core, pm = core_pm
    data = os.urandom(3 * PAGE_SIZE)
    fd = os.memfd_create("dma-test")
    try:
        os.pwrite(fd, data, PAGE_SIZE + 17)
        rid = core.dma.submit(
            Direction.TO_PMEM, FileTarget(INO, 0, len(data)), ShmIO(fd, PAGE_SIZE + 17)
        )
        assert core.dma.wait_completion(rid, timeout=30).ok
        assert file_bytes(pm, 0, len(data)) == data
        rid = core.dma.submit(Direction.FROM_PMEM, FileTarget(INO, 0, len(data)), ShmIO(fd, 0))
        assert core.dma.wait_completion(rid, timeout=30).ok
        assert os.pread(fd, len(data), 0) == data
    finally:
        os.close(fd)
    with tempfile.TemporaryFile() as f:
        f.write(data)
        f.flush()
        rid = core.dma.submit(
            Direction.TO_PMEM, FileTarget(INO, 70 * PAGE_SIZE, len(data)), FdIO(f.fileno())
        )
        assert core.dma.wait_completion(rid, timeout=30).nbytes == len(data)
        assert file_bytes(pm, 70 * PAGE_SIZE, len(data)) == data
        rid = core.dma.submit(
            Direction.FROM_PMEM, FileTarget(INO, 70 * PAGE_SIZE, 100), FdIO(f.fileno(), 10**6)
        )
        assert core.dma.wait_completion(rid, timeout=30).ok
        f.seek(10**6)
        assert f.read() == data[:100]
        # Short read at EOF: a short transfer, not an error.
        rid = core.dma.submit(
            Direction.TO_PMEM, FileTarget(INO, 0, PAGE_SIZE), FdIO(f.fileno(), 10**6 + 40)
        )
        comp = core.dma.wait_completion(rid, timeout=30)
        assert comp.ok and comp.nbytes == 60


def test_pfn_target_needs_pinned_pages(core_pm):
    core, pm = core_pm
    with pytest.raises(HoleError):  # not pinned: bad DMA address
        core.dma.submit(Direction.TO_PMEM, PfnTarget(512, 0, 100), PatternIO(1))
    core.pin_file(INO, 0, 2)
    rid = core.dma.submit(Direction.TO_PMEM, PfnTarget(512, 4000, 200), PatternIO(1))
    assert core.dma.wait_completion(rid, timeout=30).ok
    assert pm[512 * PAGE_SIZE + 4000 : 512 * PAGE_SIZE + 4200].tobytes() == pattern_bytes(1, 200)
    assert core.page_info(512).pins == 1 and core.page_info(513).pins == 1
    core.unpin_file(INO, 0, 2)


def test_submit_errors_are_synchronous(core_pm):
    core, _ = core_pm
    with pytest.raises(HoleError):
        core.dma.submit(
            Direction.TO_PMEM, FileTarget(INO, 127 * PAGE_SIZE, 2 * PAGE_SIZE), PatternIO(1)
        )
    with core.blocked(INO, 10, 1), pytest.raises(RangeBlockedError):
        core.dma.submit(Direction.TO_PMEM, FileTarget(INO, 0, 11 * PAGE_SIZE), PatternIO(1))
    with pytest.raises(NativeError):
        core.dma.submit(Direction.TO_PMEM, FileTarget(INO, 0, 0), PatternIO(1))
    with pytest.raises(NativeError):
        core.dma.submit(Direction.TO_PMEM, FileTarget(INO, 0, 10), ShmIO(-1))
    assert core.stats()["pins_held"] == 0


def test_per_descriptor_delay(core_pm):
    core, _ = core_pm
    delay = 150 * MS
    t0 = time.monotonic_ns()
    rid = core.dma.submit(Direction.TO_PMEM, FileTarget(INO, 0, 100), PatternIO(1), delay_ns=delay)
    assert core.dma.wait_completion(rid, timeout=30).ok
    assert time.monotonic_ns() - t0 >= delay


def test_global_delay(core_pm):
    core, _ = core_pm
    core.dma.global_delay_ns = 120 * MS
    assert core.stats()["dma_global_delay_ns"] == 120 * MS
    t0 = time.monotonic_ns()
    rid = core.dma.submit(
        Direction.TO_PMEM, FileTarget(INO, 0, 100), PatternIO(1), delay_ns=30 * MS
    )
    assert core.dma.wait_completion(rid, timeout=30).ok
    assert time.monotonic_ns() - t0 >= 150 * MS
    core.dma.set_global_delay(0)
    assert core.dma.global_delay_ns == 0


def test_cancel_queued():
    core, _ = make_core(threads=1)
    try:
        # The single worker sits in a long delay: B and C stay queued.
        a = core.dma.submit(
            Direction.TO_PMEM, FileTarget(INO, 0, PAGE_SIZE), PatternIO(1), delay_ns=60_000 * MS
        )
        b = core.dma.submit(
            Direction.TO_PMEM, FileTarget(INO, 4 * PAGE_SIZE, PAGE_SIZE), PatternIO(2)
        )
        c = core.dma.submit(
            Direction.TO_PMEM, FileTarget(INO, 8 * PAGE_SIZE, PAGE_SIZE), PatternIO(3)
        )
        assert core.busy_file(INO, 4, 1) == 4
        assert core.dma.cancel(b)
        assert not core.dma.cancel(b)  # already done
        comp = core.dma.wait_completion(b, timeout=30)
        assert comp.status == -errno.ECANCELED
        with pytest.raises(DMACancelledError):
            comp.check()
        assert core.busy_file(INO, 4, 1) == -1  # its pins dropped
        assert core.busy_file(INO, 8, 1) == 8
        assert core.dma.cancel(c)
        assert core.dma.wait_completion(c, timeout=30).status == -errno.ECANCELED
        assert core.stats()["dma_cancelled"] == 2
        # Shutdown cuts A's delay short (or cancels it if not started).
        t0 = time.monotonic()
        core.dma.shutdown()
        assert time.monotonic() - t0 < 30
        assert core.dma.wait_completion(a, timeout=0).status in (0, -errno.ECANCELED)
        assert core.stats()["pins_held"] == 0
        with pytest.raises(NativeError) as ei:
            core.dma.submit(Direction.TO_PMEM, FileTarget(INO, 0, 1), PatternIO(1))
        assert ei.value.errno == errno.ESHUTDOWN
        with pytest.raises(KeyError):
            core.dma.wait_completion(b, timeout=0)  # delivered already
    finally:
        core.close()


def _nthreads() -> int:
    return len(os.listdir("/proc/self/task"))


def test_shutdown_with_dma_in_flight():
    gc.collect()  # cores of earlier tests must not exit their threads meanwhile
    before = _nthreads()
    core, pm = make_core(threads=3)
    assert _nthreads() == before + 3
    ids = [
        core.dma.submit(
            Direction.TO_PMEM,
            FileTarget(INO, i * PAGE_SIZE, PAGE_SIZE),
            PatternIO(i),
            delay_ns=60_000 * MS,
        )
        for i in range(20)
    ]
    assert core.stats()["dma_pinned_pages"] == 20
    t0 = time.monotonic()
    core.close()  # shutdown + join
    assert time.monotonic() - t0 < 30
    assert _nthreads() == before
    assert core.closed
    del ids, pm


def test_shutdown_reports_and_leaves_no_pin():
    core, _ = make_core(threads=2)
    try:
        ids = [
            core.dma.submit(
                Direction.TO_PMEM,
                FileTarget(INO, i * PAGE_SIZE, PAGE_SIZE),
                PatternIO(i),
                delay_ns=60_000 * MS,
            )
            for i in range(10)
        ]
        cancelled = core.dma.shutdown()
        comps = [core.dma.wait_completion(r, timeout=0) for r in ids]
        assert sum(c.status == -errno.ECANCELED for c in comps) == cancelled >= 8
        assert all(c.ok for c in comps if c.status != -errno.ECANCELED)
        s = core.stats()
        assert s["dma_pinned_pages"] == 0 and s["pins_held"] == 0
        assert s["dma_queued"] == 0 and s["dma_running"] == 0
    finally:
        core.close()


def test_truncate_under_dma_is_a_collision(core_pm):
    """The bug being emulated: blocks freed while DMA holds their pages."""
    core, pm = core_pm
    rid = core.dma.submit(
        Direction.TO_PMEM,
        FileTarget(INO, 64 * PAGE_SIZE, 2 * PAGE_SIZE),
        PatternIO(7),
        delay_ns=50 * MS,
    )
    # Unsafe truncate: unmap + free without waiting for the pins.
    core.unmap_range(INO, 64, 64)
    assert core.clear_owner(100, 64) == 2
    recs, _ = core.collisions_since(0)
    assert [(r.kind, r.pfn, r.ino, r.index) for r in recs] == [
        (CollisionKind.FREE, 100, INO, 64),
        (CollisionKind.FREE, 101, INO, 65),
    ]
    # The late DMA still lands in the freed pages and releases them.
    assert core.dma.wait_completion(rid, timeout=30).ok
    assert pm[100 * PAGE_SIZE : 102 * PAGE_SIZE].tobytes() == pattern_bytes(7, 2 * PAGE_SIZE)
    assert core.count_pinned(0, NPAGES) == 0
    assert core.stats()["late_unpins"] == 2


def test_safe_truncate_waits_and_is_silent(core_pm):
    core, pm = core_pm

    async def main() -> None:
        rid = core.dma.submit(
            Direction.TO_PMEM,
            FileTarget(INO, 64 * PAGE_SIZE, PAGE_SIZE),
            PatternIO(7),
            delay_ns=30 * MS,
        )
        with core.blocked(INO, 64, 64):
            await core.wait_unpinned(INO, 64, 64)
            core.unmap_range(INO, 64, 64)
            assert core.clear_owner(100, 64) == 0
        assert (await core.dma.wait(rid)).ok

    trio.run(main)
    assert core.collisions_since(0) == ([], 0)


def test_trio_completion_stream(core_pm):
    core, _ = core_pm

    async def main() -> None:
        ids = {
            core.dma.submit(
                Direction.TO_PMEM,
                FileTarget(INO, i * PAGE_SIZE, 64),
                PatternIO(i),
                delay_ns=(i % 3) * MS,
            )
            for i in range(30)
        }
        got = set()
        with trio.fail_after(30):
            async for comp in core.dma:
                assert comp.ok
                got.add(comp.id)
                if got == ids:
                    break
        with pytest.raises(trio.WouldBlock):
            core.dma.next_completion_nowait()

    trio.run(main)
