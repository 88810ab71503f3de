"""The core's fast data path (native/fastpath.c), without a mount: what it serves,
what it hands back to the slow path, the pins it holds, and the stamps it leaves."""

from __future__ import annotations

import mmap
import threading
import time

import pytest

from daxfs.native import PAGE_SIZE, Core

NPAGES = 1024
INO = 7


@pytest.fixture
def pm() -> mmap.mmap:
    return mmap.mmap(-1, NPAGES * PAGE_SIZE)


@pytest.fixture
def core(pm: mmap.mmap):
    c = Core(pm, NPAGES, dma_threads=1)
    c.fast_set_writable(True)
    yield c
    c.close()


def give(core: Core, ino: int, index: int, pfn: int, count: int) -> None:
    core.set_owner(pfn, count, ino, index)
    core.map_extent(ino, index, pfn, count)


def fill(pm: mmap.mmap, pfn: int, count: int, byte: int) -> None:
    pm[pfn * PAGE_SIZE:(pfn + count) * PAGE_SIZE] = bytes([byte]) * (count * PAGE_SIZE)


def test_read_needs_publish(core, pm):
    give(core, INO, 0, 10, 2)
    fill(pm, 10, 2, 0xAB)
    assert core.fast_read(INO, 0, 100) is None  # mapped but not vouched for
    core.fast_publish(INO, 2 * PAGE_SIZE, 2**63 - 1)
    assert core.fast_read(INO, 0, 100) == b"\xab" * 100
    assert core.stats()["fast_fallbacks"] == 1
    assert core.stats()["fast_reads"] == 1


def test_read_clips_at_size_and_eof(core, pm):
    give(core, INO, 0, 10, 2)
    fill(pm, 10, 2, 1)
    core.fast_publish(INO, 5000, 2**63 - 1)
    assert core.fast_read(INO, 4000, 4096) == b"\x01" * 1000
    assert core.fast_read(INO, 5000, 10) == b""
    assert core.fast_read(INO, 1 << 30, 10) == b""


def test_read_spans_extents_and_holes(core, pm):
    give(core, INO, 0, 100, 1)
    give(core, INO, 2, 50, 1)  # page 1 is a hole
    fill(pm, 100, 1, 0x11)
    fill(pm, 50, 1, 0x22)
    core.fast_publish(INO, 3 * PAGE_SIZE, 2**63 - 1)
    got = core.fast_read(INO, PAGE_SIZE - 10, PAGE_SIZE + 20)
    assert got == b"\x11" * 10 + bytes(PAGE_SIZE) + b"\x22" * 10


def test_read_too_fragmented_goes_slow(core):
    for i in range(40):  # every other page: 40 extents, 39 holes
        give(core, INO, 2 * i, 200 + 2 * i, 1)
    core.fast_publish(INO, 80 * PAGE_SIZE, 2**63 - 1)
    assert core.fast_read(INO, 0, 80 * PAGE_SIZE) is None
    assert core.stats()["pins_held"] == 0  # the partial attempt was undone
    assert core.fast_read(INO, 0, 8 * PAGE_SIZE) is not None


def test_read_holds_pins_until_end(core):
    give(core, INO, 0, 10, 4)
    core.fast_publish(INO, 4 * PAGE_SIZE, 2**63 - 1)
    rd = core.fast_read_pinned(INO, PAGE_SIZE, 2 * PAGE_SIZE)
    assert rd is not None
    assert core.busy_file(INO, 0, 4) == 1
    assert core.count_pinned(10, 4) == 2
    w = core.waiter(INO, 0, 4)
    assert not w.fired
    core.fast_read_end(rd)
    assert w.fired  # the last unpin of the copy wakes a truncate that waits
    w.close()
    assert core.stats()["pins_held"] == 0


def test_blocked_range_goes_slow(core):
    give(core, INO, 0, 10, 4)
    core.fast_publish(INO, 4 * PAGE_SIZE, 2**63 - 1)
    with core.blocked(INO, 2, 2):
        assert core.fast_read(INO, 2 * PAGE_SIZE, 10) is None
        assert core.fast_write(INO, 3 * PAGE_SIZE, b"x") is None
        assert core.fast_read(INO, 0, PAGE_SIZE) is not None  # outside the block
    assert core.fast_read(INO, 2 * PAGE_SIZE, 10) is not None


def test_write_in_place(core, pm):
    give(core, INO, 0, 10, 2)
    core.fast_publish(INO, 2 * PAGE_SIZE, 2**63 - 1)
    assert core.fast_write(INO, PAGE_SIZE - 3, b"abcdef") == 6
    assert pm[11 * PAGE_SIZE - 3:11 * PAGE_SIZE + 3] == b"abcdef"
    assert core.stats()["fast_write_bytes"] == 6
    assert core.stats()["pins_held"] == 0


@pytest.mark.parametrize("off,data,why", [
    (2 * PAGE_SIZE - 2, b"abc", "past the size"),
    (2 * PAGE_SIZE, b"a", "at the size (an append)"),
    (3 * PAGE_SIZE, b"a", "over a hole inside the size"),
])
def test_write_needing_metadata_goes_slow(core, pm, off, data, why):
    give(core, INO, 0, 10, 2)
    give(core, INO, 4, 20, 1)
    core.fast_publish(INO, 2 * PAGE_SIZE if "size" in why else 5 * PAGE_SIZE, 2**63 - 1)
    before = bytes(pm[:])
    assert core.fast_write(INO, off, data) is None, why
    assert bytes(pm[:]) == before  # nothing written
    assert core.stats()["pins_held"] == 0


def test_write_refused_when_not_writable(core):
    give(core, INO, 0, 10, 1)
    core.fast_publish(INO, PAGE_SIZE, 2**63 - 1)
    core.fast_set_writable(False)
    assert core.fast_write(INO, 0, b"x") is None
    assert core.fast_read(INO, 0, 1) is not None  # reads still served


def test_size_and_unpublish(core):
    give(core, INO, 0, 10, 2)
    core.fast_publish(INO, PAGE_SIZE, 2**63 - 1)
    assert core.fast_write(INO, PAGE_SIZE, b"x") is None
    assert core.fast_set_size(INO, 2 * PAGE_SIZE)
    assert core.fast_write(INO, PAGE_SIZE, b"x") == 1
    core.fast_unpublish(INO)
    assert not core.fast_published(INO)
    assert core.fast_read(INO, 0, 1) is None
    assert not core.fast_set_size(999, 1)  # no such inode


def test_write_stamps_mtime_once_per_drain(core):
    give(core, INO, 0, 10, 1)
    core.fast_publish(INO, PAGE_SIZE, 2**63 - 1)
    assert core.fast_pending() == 0
    t0 = time.time_ns()
    core.fast_write(INO, 0, b"a")
    core.fast_write(INO, 1, b"b")
    assert core.fast_pending() == 1  # queued once
    ((ino, wtime, rtime),) = core.fast_drain()
    assert ino == INO and t0 <= wtime <= time.time_ns() and rtime == 0
    assert core.fast_pending() == 0 and core.fast_drain() == []
    core.fast_write(INO, 2, b"c")  # after a drain it queues again
    assert [s[0] for s in core.fast_drain()] == [INO]


def test_read_stamps_atime_only_when_due(core):
    give(core, INO, 0, 10, 1)
    core.fast_publish(INO, PAGE_SIZE, time.time_ns() + 3600 * 10**9)
    core.fast_read(INO, 0, 10)
    assert core.fast_drain() == []  # relatime: not due yet
    core.fast_set_atime_next(INO, 0)
    core.fast_read(INO, 0, 10)
    ((ino, wtime, rtime),) = core.fast_drain()
    assert ino == INO and wtime == 0 and rtime > 0


def test_write_makes_next_read_due_an_atime(core):
    give(core, INO, 0, 10, 1)
    core.fast_publish(INO, PAGE_SIZE, 2**63 - 1)
    core.fast_write(INO, 0, b"a")
    core.fast_drain()
    core.fast_read(INO, 0, 1)
    ((_, wtime, rtime),) = core.fast_drain()
    assert wtime == 0 and rtime > 0


def test_dropped_inode_stamps_are_skipped(core):
    give(core, INO, 0, 10, 1)
    core.fast_publish(INO, PAGE_SIZE, 2**63 - 1)
    core.fast_write(INO, 0, b"a")
    core.unmap_range(INO, 0, 1)
    core.clear_owner(10, 1)
    core.drop_inode(INO)
    assert core.fast_drain() == []
    assert core.fast_pending() == 0


ATTR = dict(size=5000, blocks=16, atime=-1_500_000_000, mtime=2 * 10**18, ctime=3,
            mode=0o100644, nlink=1, uid=1000, gid=100, rdev=0)


def test_attr_publish_get_clear(core):
    assert core.fast_getattr(INO) is None  # nothing published: slow path
    core.fast_clear_attr(INO)  # clearing nothing is fine
    assert core.fast_set_attr(INO, **ATTR)
    assert core.fast_getattr(INO) == {"ino": INO, **ATTR}
    assert core.stats()["fast_getattrs"] == 1
    assert core.fast_set_attr(INO, **{**ATTR, "nlink": 2})  # a newer copy replaces it
    assert core.fast_getattr(INO)["nlink"] == 2
    core.fast_clear_attr(INO)
    assert core.fast_getattr(INO) is None
    assert core.stats()["fast_getattrs"] == 2
    core.fast_set_attr(INO, **ATTR)
    core.drop_inode(INO)  # an inode the filesystem let go of takes its copy along
    assert core.fast_getattr(INO) is None


def test_attr_of_any_inode_not_only_published_files(core):
    assert core.fast_set_attr(1, **{**ATTR, "mode": 0o40755, "nlink": 7})
    assert not core.fast_published(1)  # attributes do not publish the data path
    assert core.fast_getattr(1)["nlink"] == 7
    assert core.fast_read(1, 0, 10) is None


def test_fast_write_clears_attr_and_blocks_publish_until_drained(core):
    give(core, INO, 0, 10, 1)
    core.fast_publish(INO, PAGE_SIZE, 2**63 - 1)
    assert core.fast_set_attr(INO, **ATTR)
    core.fast_write(INO, 0, b"w")
    assert core.fast_getattr(INO) is None  # the copy lacks the write's mtime
    assert not core.fast_set_attr(INO, **ATTR)  # stamps wait: refused
    assert core.fast_getattr(INO) is None
    assert [s[0] for s in core.fast_drain()] == [INO]
    assert core.fast_set_attr(INO, **ATTR)  # folded: a copy may go out again
    assert core.fast_getattr(INO) is not None


def test_read_due_atime_clears_attr(core):
    give(core, INO, 0, 10, 1)
    core.fast_publish(INO, PAGE_SIZE, time.time_ns() + 3600 * 10**9)
    core.fast_set_attr(INO, **ATTR)
    core.fast_read(INO, 0, 10)
    assert core.fast_getattr(INO) is not None  # relatime: no atime due, copy stays
    core.fast_set_atime_next(INO, 0)
    core.fast_read(INO, 0, 10)
    assert core.fast_getattr(INO) is None
    assert not core.fast_set_attr(INO, **ATTR)
    core.fast_drain()
    assert core.fast_set_attr(INO, **ATTR)


def test_published_copy_never_misses_a_completed_write(core):
    """Writers check, after each write, that any copy they can see has an mtime
    at least their write's; meanwhile the 'filesystem' drains stamps, folds
    them and republishes as fast as it can."""
    give(core, INO, 0, 10, 4)
    core.fast_publish(INO, 4 * PAGE_SIZE, 2**63 - 1)
    stop = threading.Event()
    bad: list[str] = []
    seen = [0]

    def writer(k: int) -> None:
        while not stop.is_set():
            t0 = time.time_ns()
            assert core.fast_write(INO, k * PAGE_SIZE, b"w") == 1
            a = core.fast_getattr(INO)
            if a is not None:
                seen[0] += 1
                if a["mtime"] < t0:
                    bad.append(f"copy mtime {a['mtime']} < write start {t0}")

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    mtime, deadline = 0, time.monotonic() + 1.0
    while time.monotonic() < deadline:
        for _ino, wtime, _rtime in core.fast_drain():
            mtime = max(mtime, wtime)
        core.fast_set_attr(INO, **{**ATTR, "mtime": mtime})
    stop.set()
    for t in threads:
        t.join()
    assert not bad, bad[:3]
    assert seen[0] > 0  # copies were published and seen between writes


def test_concurrent_writers_and_truncate_never_collide(core, pm):
    """Writers hammer a range while a 'truncate' blocks it, waits for the pins,
    frees and remaps it: no page is freed under a copy (no collision), and the
    writers only ever hit the slow path while the range is blocked."""
    give(core, INO, 0, 100, 64)
    core.fast_publish(INO, 64 * PAGE_SIZE, 2**63 - 1)
    stop = threading.Event()
    served = [0, 0]

    def writer(k: int) -> None:
        buf = bytes([k + 1]) * (16 * PAGE_SIZE)
        while not stop.is_set():
            for off in range(0, 64 * PAGE_SIZE, 16 * PAGE_SIZE):
                if core.fast_write(INO, off, buf) is not None:
                    served[k] += 1

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        pfn = 100
        for _ in range(200):
            with core.blocked(INO, 0, 64):
                core.wait_unpinned_blocking(INO, 0, 64, timeout=10)
                core.unmap_range(INO, 0, 64)
                assert core.clear_owner(pfn, 64) == 0  # nothing pinned: no collision
                pfn = 300 if pfn == 100 else 100
                give(core, INO, 0, pfn, 64)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert core.stats()["collisions"] == 0
    assert core.stats()["pins_held"] == 0
    assert sum(served) > 0
