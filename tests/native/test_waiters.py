"""Event-driven "range unpinned" waits: exactly when the last pin drops."""

from __future__ import annotations

import mmap
import select
import threading

import pytest
import trio
import trio.testing

from daxfs.native import PAGE_SIZE, Core, Direction, FileTarget, PatternIO

NPAGES = 1024
INO = 3


@pytest.fixture
def core():
    c = Core(mmap.mmap(-1, NPAGES * PAGE_SIZE), NPAGES, dma_threads=2)
    c.set_owner(0, 256, INO, 0)
    c.map_extent(INO, 0, 0, 128)
    c.map_extent(INO, 128, 200, 56)  # a second extent: [128, 184) -> pfn 200..
    c.set_owner(200, 56, INO, 128)
    yield c
    c.close()


def readable(fd: int) -> bool:
    r, _, _ = select.select([fd], [], [], 0)
    return bool(r)


def test_fires_exactly_on_last_unpin(core):
    for i in range(4):
        core.pin_file(INO, 10 + i, 1)
    core.pin_file(INO, 150, 1)  # second extent
    core.pin_file(INO, 12, 1)  # page 12 twice
    with core.waiter(INO, 0, 184) as w:
        assert not readable(w.fd) and not w.fired
        core.unpin_file(INO, 10, 1)
        core.unpin_file(INO, 11, 1)
        core.unpin_file(INO, 12, 1)  # page 12 still has one pin
        assert not readable(w.fd)
        core.unpin_file(INO, 12, 1)
        core.unpin_file(INO, 13, 1)
        assert not readable(w.fd)
        core.unpin_pfn(200 + 22, 1)  # the last one, by pfn (like a bio)
        assert readable(w.fd) and w.fired
        core.pin_file(INO, 0, 1)  # one-shot: stays readable
        assert readable(w.fd)
        core.unpin_file(INO, 0, 1)


def test_immediately_readable_when_idle(core):
    core.pin_file(INO, 100, 1)
    with core.waiter(INO, 0, 100) as w:  # pinned page is outside
        assert readable(w.fd)
    with core.waiter(INO, 101, 10_000) as w:  # holes are not busy
        assert readable(w.fd)
    with core.waiter(INO + 5, 0, 10) as w:  # unknown inode
        assert readable(w.fd)
    core.unpin_file(INO, 100, 1)


def test_pins_outside_range_do_not_fire(core):
    core.pin_file(INO, 50, 1)
    core.pin_file(INO, 60, 1)
    with core.waiter(INO, 50, 1) as w:
        core.unpin_file(INO, 60, 1)
        assert not readable(w.fd)
        core.unpin_file(INO, 50, 1)
        assert readable(w.fd)


def test_unmap_and_drop_fire(core):
    core.pin_file(INO, 5, 1)
    with core.waiter(INO, 0, 10) as w:
        core.unmap_range(INO, 0, 8)  # pinned page leaves the map
        assert readable(w.fd)
    core.unpin_pfn(5, 1)
    core.pin_file(INO, 20, 1)
    with core.waiter(INO, 0, 100) as w:
        assert not readable(w.fd)
        core.drop_inode(INO)
        assert readable(w.fd)
    core.unpin_pfn(20, 1)


def test_wait_unpinned_blocking(core):
    core.pin_file(INO, 1, 1)
    assert core.wait_unpinned_blocking(INO, 0, 4, timeout=0) is False
    t = threading.Thread(target=core.unpin_file, args=(INO, 1, 1))
    with core.waiter(INO, 0, 4) as w:
        t.start()
        assert w.wait_blocking(timeout=30)
    t.join()
    assert core.wait_unpinned_blocking(INO, 0, 4, timeout=0) is True


def test_trio_wait_unpinned(core):
    core.pin_file(INO, 0, 3)
    core.pin_file(INO, 130, 1)

    async def main() -> None:
        woke = trio.Event()

        async def waiter() -> None:
            await core.wait_unpinned(INO, 0, 184)
            woke.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            core.unpin_file(INO, 0, 3)
            await trio.testing.wait_all_tasks_blocked()
            assert not woke.is_set()
            core.unpin_file(INO, 130, 1)
            with trio.fail_after(30):
                await woke.wait()
        assert core.stats()["waiters"] == 0

    trio.run(main)


def test_trio_wait_cancelled_frees_waiter(core):
    core.pin_file(INO, 0, 1)

    async def main() -> None:
        with trio.move_on_after(0):
            await core.wait_unpinned(INO, 0, 1)
        assert core.stats()["waiters"] == 0

    trio.run(main)
    core.unpin_file(INO, 0, 1)


def test_wait_for_dma_completion_unpins(core):
    """The C worker thread drops the last pin: the trio task wakes."""
    core.dma.global_delay_ns = 0

    async def main() -> None:
        rid = core.dma.submit(
            Direction.TO_PMEM,
            FileTarget(INO, 0, 64 * PAGE_SIZE),
            PatternIO(5),
            delay_ns=20_000_000,
        )
        with trio.fail_after(30):
            await core.wait_unpinned(INO, 0, 64)
            comp = await core.dma.wait(rid)
        assert comp.ok and comp.nbytes == 64 * PAGE_SIZE
        assert core.count_pinned(0, 64) == 0

    trio.run(main)


def test_no_lost_wakeups_under_concurrency(core):
    """Many rounds: pins dropped by several threads while a waiter is being
    registered; every waiter must fire once all pins are gone."""
    nthreads, rounds = 4, 300
    for _ in range(rounds):
        for t in range(nthreads):
            core.pin_file(INO, t * 8, 8)
        start = threading.Barrier(nthreads + 1)

        def drop(t: int, start: threading.Barrier = start) -> None:
            start.wait()
            for i in range(8):
                core.unpin_file(INO, t * 8 + i, 1)

        threads = [threading.Thread(target=drop, args=(t,)) for t in range(nthreads)]
        for th in threads:
            th.start()
        start.wait()
        with core.waiter(INO, 0, nthreads * 8) as w:
            for th in threads:
                th.join()
            assert w.wait_blocking(timeout=30), "lost wake-up"
    assert core.count_pinned(0, NPAGES) == 0
