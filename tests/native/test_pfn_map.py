"""pfn map: extents, lookups, pins through the map, layout-break blocks."""

from __future__ import annotations

import mmap

import pytest

from daxfs.native import (
    PAGE_SIZE,
    Core,
    Extent,
    HoleError,
    NativeError,
    NotPinnedError,
    OwnerMismatchError,
    RangeBlockedError,
)

NPAGES = 4096
INO = 7


@pytest.fixture
def core():
    c = Core(mmap.mmap(-1, NPAGES * PAGE_SIZE), NPAGES, dma_threads=1)
    yield c
    c.close()


def give(core: Core, ino: int, index: int, pfn: int, count: int) -> None:
    """What the allocator does: own the blocks, then map them."""
    core.set_owner(pfn, count, ino, index)
    core.map_extent(ino, index, pfn, count)


def test_map_lookup_and_merge(core):
    give(core, INO, 0, 100, 10)
    give(core, INO, 10, 110, 5)  # contiguous in both: merged
    give(core, INO, 20, 50, 4)
    assert core.extents(INO) == [Extent(0, 100, 15), Extent(20, 50, 4)]
    assert core.lookup(INO, 0) == (100, 15)
    assert core.lookup(INO, 14) == (114, 1)
    assert core.lookup(INO, 15) is None
    assert core.lookup(INO, 22) == (52, 2)
    assert core.lookup(INO, 24) is None
    assert core.lookup(INO + 1, 0) is None
    with pytest.raises(NativeError) as ei:
        core.map_extent(INO, 14, 900, 3)  # overlaps index 14
    assert ei.value.errno == 17  # EEXIST
    assert core.extents(INO, 16) == [Extent(20, 50, 4)]


def test_unmap_splits(core):
    give(core, INO, 0, 100, 100)
    assert core.unmap_range(INO, 10, 5) == 5
    assert core.extents(INO) == [Extent(0, 100, 10), Extent(15, 115, 85)]
    assert core.unmap_range(INO, 5, 20) == 15  # across a hole and two extents
    assert core.extents(INO) == [Extent(0, 100, 5), Extent(25, 125, 75)]
    assert core.unmap_range(INO, 90, 1000) == 10
    assert core.unmap_range(INO, 500, 10) == 0
    assert core.extents(INO) == [Extent(0, 100, 5), Extent(25, 125, 65)]
    assert core.unmap_range(INO, 0, 2**40) == 70
    assert core.extents(INO) == []


def test_many_extents_lookup(core):
    # 2000 one-page extents with holes between them.
    for i in range(2000):
        core.map_extent(INO, 2 * i, i, 1)
    assert len(core.extents(INO)) == 2000
    for i in (0, 1, 999, 1999):
        assert core.lookup(INO, 2 * i) == (i, 1)
        assert core.lookup(INO, 2 * i + 1) is None


def test_drop_inode(core):
    give(core, INO, 0, 0, 8)
    assert core.drop_inode(INO)
    assert not core.drop_inode(INO)
    assert core.lookup(INO, 0) is None


def test_pin_file_and_busy(core):
    give(core, INO, 0, 300, 8)
    give(core, INO, 8, 200, 8)  # second extent, not contiguous in pmem
    assert core.pin_file(INO, 6, 4) == 4
    assert core.count_pinned(300, 8) == 2 and core.count_pinned(200, 8) == 2
    assert core.busy_file(INO, 0, 16) == 6
    assert core.busy_file(INO, 10, 6) == -1
    assert core.pin_file_runs(INO, 7, 3) == [(307, 1), (200, 2)]
    assert core.page_info(200).pins == 2
    core.unpin_pfn(307, 1)
    core.unpin_pfn(200, 2)
    core.unpin_file(INO, 6, 4)
    assert core.busy_file(INO, 0, 16) == -1
    assert core.stats()["pins_held"] == 0


def test_pin_file_hole_fails_nothing_pinned(core):
    give(core, INO, 0, 0, 8)
    give(core, INO, 9, 9, 8)  # hole at file page 8
    with pytest.raises(HoleError):
        core.pin_file(INO, 0, 17)
    with pytest.raises(HoleError):
        core.pin_file(INO, 16, 2)  # runs off the end
    with pytest.raises(HoleError):
        core.pin_file(INO + 1, 0, 1)  # unknown inode
    assert core.count_pinned(0, NPAGES) == 0
    with pytest.raises(HoleError):
        core.unpin_file(INO, 0, 17)


def test_pin_file_owner_disagrees(core):
    give(core, INO, 0, 0, 8)
    give(core, INO, 8, 8, 8)
    core.set_owner(12, 1, INO + 1, 0)  # page table says another file
    with pytest.raises(OwnerMismatchError):
        core.pin_file(INO, 0, 16)
    assert core.count_pinned(0, NPAGES) == 0
    core.clear_owner(3, 1)  # freed under the map
    with pytest.raises(OwnerMismatchError):
        core.pin_file(INO, 0, 8)
    assert core.count_pinned(0, NPAGES) == 0


def test_blocked_range_refuses_new_pins(core):
    give(core, INO, 0, 0, 64)
    core.pin_file(INO, 0, 1)  # existing pin survives the block
    with core.blocked(INO, 32, 8):
        with pytest.raises(RangeBlockedError) as ei:
            core.pin_file(INO, 30, 4)
        assert ei.value.errno == 11  # EAGAIN
        with pytest.raises(RangeBlockedError):  # by pfn, naming the owner
            core.pin_pfn(35, 1, INO, 35)
        assert core.pin_file(INO, 0, 32) == 32  # outside: fine
        assert core.pin_file(INO, 40, 24) == 24
        tok = core.block_range(INO, 0, 64)  # nested, overlapping
        with pytest.raises(RangeBlockedError):
            core.pin_file(INO, 0, 1)
        core.unblock(INO, tok)
        assert core.stats()["blocks"] == 1
        # Unpinning is never refused.
        core.unpin_file(INO, 0, 32)
        core.unpin_file(INO, 40, 24)
    assert core.pin_file(INO, 30, 4) == 4
    core.unpin_file(INO, 30, 4)
    core.unpin_file(INO, 0, 1)
    assert core.count_pinned(0, 64) == 0
    assert core.stats()["blocks"] == 0
    with pytest.raises(NativeError):
        core.unblock(INO, 12345)


def test_unpin_file_not_pinned(core):
    give(core, INO, 0, 0, 8)
    core.pin_file(INO, 0, 4)
    with pytest.raises(NotPinnedError):
        core.unpin_file(INO, 0, 8)
    assert [core.page_info(p).pins for p in range(8)] == [1, 1, 1, 1, 0, 0, 0, 0]
    core.unpin_file(INO, 0, 4)
