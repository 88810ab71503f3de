"""Bitmaps, the block allocator (first-fit, reuse-first, pending frees) and inodes."""

from __future__ import annotations

import errno

import numpy as np
import pytest

from daxfs import format as fmt
from daxfs.alloc import Bitmap, BlockAllocator, InodeAllocator
from daxfs.errors import CorruptionError, FsError

BITS = fmt.BITS_PER_BITMAP_BLOCK
N = 1024


def make_sb(n: int = N) -> fmt.Superblock:
    return fmt.compute_layout(n, 200, 64)


def allocator(policy: str = "first-fit", n: int = N) -> BlockAllocator:
    a = BlockAllocator(make_sb(n), policy)
    a.init_fresh()
    return a


def snapshot(a: BlockAllocator):
    return a.bitmap.bits.copy(), a.bitmap.used


def used_blocks(a: BlockAllocator) -> set[int]:
    return {i for i in range(a.bitmap.n) if a.bitmap.test(i)}


def flatten(runs) -> list[int]:
    return [s + i for s, n in runs for i in range(n)]


# -- Bitmap ---------------------------------------------------------------------------


def test_bitmap_tail_bits_are_never_free():
    b = Bitmap(10, 1, 50, fmt.BT_BBITMAP)
    b.init_empty()
    assert b.used == 0
    assert all(b.test(i) for i in range(10, 200))
    assert b.find_free(0, 100) == (0, 10)
    b.set_range(0, 10)
    assert b.used == 10
    assert b.find_free(0, 1) is None
    assert b.find_free(5, 1) is None


def test_bitmap_set_clear_count():
    b = Bitmap(1000, 1, 50, fmt.BT_BBITMAP)
    b.init_empty()
    b.set_range(3, 17)
    assert b.used == 17
    assert b.count_set(0, 1000) == 17
    assert b.count_set(3, 17) == 17
    assert b.count_set(0, 3) == 0
    assert b.count_set(19, 2) == 1
    assert b.count_set(5, 0) == 0
    b.clear_range(10, 5)
    assert b.used == 12
    assert [b.test(i) for i in (9, 10, 14, 15)] == [True, False, False, True]


def test_bitmap_find_free_wraps_once():
    b = Bitmap(100, 1, 50, fmt.BT_BBITMAP)
    b.init_empty()
    b.set_range(0, 100)
    b.clear_range(7, 3)
    b.clear_range(60, 1)
    assert b.find_free(50, 10) == (60, 1)
    assert b.find_free(61, 10) == (7, 3)  # nothing after the goal: wrap to the start
    assert b.find_free(8, 10) == (8, 2)
    assert b.find_free(0, 2) == (7, 2)


@pytest.mark.parametrize("seed", range(6))
def test_bitmap_random_against_a_set(seed):
    """Single-bit and run updates, and find_free from any goal, against a model."""
    import random

    rng = random.Random(seed)
    n = 3 * BITS // 2 + 13  # two bitmap blocks, the second one partly tail
    bm = Bitmap(n, 2, 100, fmt.BT_BBITMAP)
    bm.init_empty()
    used: set[int] = set()
    for _ in range(600):
        start = rng.randrange(n)
        count = 1 if rng.random() < 0.6 else rng.randint(1, min(40, n - start))
        if rng.random() < 0.55:
            bm._set_range(start, count, 1)
            used.update(range(start, start + count))
        else:
            bm._set_range(start, count, 0)
            used.difference_update(range(start, start + count))
        goal, limit = rng.randrange(n), rng.randint(1, 20)
        got = bm.find_free(goal, limit)
        first = next((i for i in range(goal, n) if i not in used), None)
        end = n
        if first is None:  # wrapped once
            first, end = next((i for i in range(goal) if i not in used), None), goal
        if first is None:
            assert got is None
            continue
        run = 1
        while run < limit and first + run < end and first + run not in used:
            run += 1
        assert got == (first, run)
    assert all(bm.test(i) == (i in used) for i in range(n))
    assert all(bm.test(i) for i in range(n, len(bm.bits) * 8))  # the tail stays set


def test_bitmap_dirty_tracking_per_block():
    b = Bitmap(3 * BITS, 3, 100, fmt.BT_BBITMAP)
    b.init_empty()
    assert b.dirty == {0, 1, 2}
    imgs = b.dirty_blocks()
    assert sorted(imgs) == [100, 101, 102]
    for blk, img in imgs.items():
        fmt.check(img, fmt.BT_BBITMAP, blk)
    assert b.dirty == set() and b.dirty_blocks() == {}
    b.set_range(BITS + 5, 10)
    assert b.dirty == {1}
    b.dirty_blocks()
    b.set_range(BITS - 2, 4)  # straddles blocks 0 and 1
    assert b.dirty == {0, 1}
    b.dirty_blocks()
    b.clear_range(2 * BITS + 1, 1)
    b.set_range(2 * BITS + 1, 1)
    assert b.dirty == {2}
    b.set_range(0, 3 * BITS - 20)  # spans all three
    assert b.dirty == {0, 1, 2}


def test_bitmap_load_round_trip():
    n = 2 * BITS - 77
    b = Bitmap(n, 2, 100, fmt.BT_IBITMAP)
    b.init_empty()
    rng = np.random.default_rng(3)
    for start in rng.integers(0, n - 50, 40):
        b.set_range(int(start), int(rng.integers(1, 50)))
    expect_used = b.count_set(0, n)
    b.used = expect_used  # overlapping set_range calls overcount; load recounts
    store = b.dirty_blocks()
    c = Bitmap(n, 2, 100, fmt.BT_IBITMAP)
    c.load(store.__getitem__)
    assert np.array_equal(c.bits, b.bits)
    assert c.used == expect_used
    assert all(c.test(i) for i in range(n, 2 * BITS))  # tail set again
    assert c.dirty == set()


def test_bitmap_load_detects_corruption():
    b = Bitmap(100, 1, 7, fmt.BT_BBITMAP)
    b.init_empty()
    store = b.dirty_blocks()
    bad = bytearray(store[7])
    bad[0] ^= 1
    store[7] = bytes(bad)
    with pytest.raises(CorruptionError):
        Bitmap(100, 1, 7, fmt.BT_BBITMAP).load(store.__getitem__)
    # An inode bitmap block is not a block bitmap.
    ib = Bitmap(100, 1, 7, fmt.BT_IBITMAP)
    ib.init_empty()
    with pytest.raises(CorruptionError):
        Bitmap(100, 1, 7, fmt.BT_BBITMAP).load(ib.dirty_blocks().__getitem__)


# -- BlockAllocator -----------------------------------------------------------------------


def test_init_fresh_reserves_metadata_area():
    a = allocator()
    first = a.first
    assert first == make_sb().data_start
    assert used_blocks(a) == set(range(first))
    assert a.free_count() == N - first


def test_unknown_policy():
    with pytest.raises(ValueError, match="unknown allocation policy"):
        BlockAllocator(make_sb(), "best-fit")


def test_first_fit_lowest_free_run_at_goal():
    a = allocator()
    f = a.first
    assert a.alloc(10, f) == [(f, 10)]
    for s in (f + 2, f + 5):
        a.free(s, 2)
    a.release_pending()
    assert a.alloc(1, f) == [(f + 2, 1)]
    assert a.alloc(3, f) == [(f + 3, 1), (f + 5, 2)]  # lowest runs, in order
    assert a.alloc(1, f + 1) == [(f + 10, 1)]


def test_first_fit_run_is_capped_by_count():
    a = allocator()
    f = a.first
    assert a.alloc(4, f + 100) == [(f + 100, 4)]
    assert a.alloc(2, f + 100) == [(f + 104, 2)]


def test_first_fit_wraps_to_lowest():
    a = allocator()
    f = a.first
    a.alloc(N - f, f)  # everything
    a.free(f + 3, 2)
    a.free(N - 1, 1)
    a.release_pending()
    assert a.alloc(1, N - 1) == [(N - 1, 1)]
    assert a.alloc(2, N - 1) == [(f + 3, 2)]  # past the end: wrap to the lowest free


def test_goal_below_data_area_is_clamped():
    a = allocator()
    assert a.alloc(1, 5) == [(a.first, 1)]


def test_no_goal_continues_from_cursor():
    a = allocator()
    f = a.first
    assert a.alloc(3) == [(f, 3)]
    assert a.alloc(2) == [(f + 3, 2)]


def test_pending_frees_not_reallocated_before_release():
    a = allocator()
    f = a.first
    a.alloc(N - f, f)
    a.free(f + 10, 5)
    assert a.pending_count == 5
    assert a.free_count() == 5  # statfs counts what is about to be free
    assert all(a.bitmap.test(f + 10 + i) for i in range(5))  # still in use on media
    with pytest.raises(FsError) as ei:
        a.alloc(1, f)
    assert ei.value.errno == errno.ENOSPC
    a.release_pending()
    assert a.pending_count == 0 and a.free_count() == 5
    assert a.alloc(5, f) == [(f + 10, 5)]


def test_pending_free_skipped_by_first_fit():
    a = allocator()
    f = a.first
    a.alloc(4, f)
    a.free(f, 1)
    assert a.alloc(1, f) == [(f + 4, 1)]
    a.release_pending()
    assert a.alloc(1, f) == [(f, 1)]


def test_free_count_counts_pending():
    a = allocator()
    f = a.first
    total = a.free_count()
    a.alloc(7, f)
    assert a.free_count() == total - 7
    a.free(f + 1, 3)
    assert a.free_count() == total - 4
    a.release_pending()
    assert a.free_count() == total - 4


def test_free_outside_data_area_is_a_bug():
    a = allocator()
    with pytest.raises(AssertionError):
        a.free(a.first - 1, 1)
    with pytest.raises(AssertionError):
        a.free(N - 1, 2)


def test_enospc_is_all_or_nothing():
    a = allocator()
    f = a.first
    a.alloc(100, f)
    for s in range(f, f + 100, 4):
        a.free(s, 1)
    a.release_pending()
    bits, used = snapshot(a)
    free = a.free_count()
    with pytest.raises(FsError) as ei:
        a.alloc(free + 1, f)
    assert ei.value.errno == errno.ENOSPC
    assert np.array_equal(a.bitmap.bits, bits) and a.bitmap.used == used
    runs = a.alloc(free, f)  # exactly what is free still works
    assert sum(n for _s, n in runs) == free
    assert a.free_count() == 0


def test_enospc_midway_rolls_back(monkeypatch):
    """Even when the search fails after some runs were taken, nothing stays allocated."""
    a = allocator()
    f = a.first
    a.alloc(10, f)
    a.free(f + 2, 2)
    a.release_pending()
    bits, used = snapshot(a)
    real = Bitmap.find_free
    calls = []

    def flaky(self, goal, limit):
        calls.append(goal)
        return real(self, goal, limit) if len(calls) == 1 else None

    monkeypatch.setattr(Bitmap, "find_free", flaky)
    with pytest.raises(FsError) as ei:
        a.alloc(5, f)
    assert ei.value.errno == errno.ENOSPC
    assert len(calls) == 2
    assert np.array_equal(a.bitmap.bits, bits) and a.bitmap.used == used


def test_alloc_marks_bitmap_dirty():
    a = allocator()
    a.bitmap.dirty_blocks()
    a.alloc(1, a.first)
    assert a.bitmap.dirty == {0}
    imgs = a.bitmap.dirty_blocks()
    assert list(imgs) == [make_sb().bbitmap_start]


def test_reuse_first_hands_out_most_recent_first():
    a = allocator("reuse-first")
    f = a.first
    assert a.alloc(20, f) == [(f, 20)]
    a.free(f + 3, 1)
    a.release_pending()  # an older commit
    a.free(f + 10, 2)
    a.free(f + 15, 1)
    a.release_pending()  # the latest commit
    assert a.alloc(1) == [(f + 15, 1)]
    assert a.alloc(1) == [(f + 10, 1)]
    assert a.alloc(2) == [(f + 11, 1), (f + 3, 1)]
    # Nothing recent left: a fresh block.
    assert a.alloc(1) == [(f + 20, 1)]


def test_reuse_first_ignores_goal_for_recent_blocks():
    a = allocator("reuse-first")
    f = a.first
    a.alloc(10, f)
    a.free(f + 1, 1)
    a.release_pending()
    assert a.alloc(1, N - 10) == [(f + 1, 1)]


def test_reuse_first_needs_release():
    a = allocator("reuse-first")
    f = a.first
    a.alloc(10, f)
    a.free(f + 4, 1)
    assert a.alloc(1) == [(f + 10, 1)]  # the pending block is not handed out
    a.release_pending()
    assert a.alloc(1) == [(f + 4, 1)]


def test_reuse_first_skips_reallocated_part_of_recent_run():
    a = allocator("reuse-first")
    f = a.first
    a.alloc(10, f)
    a.free(f, 6)
    a.release_pending()
    a.bitmap.set_range(f, 2)  # taken meanwhile by another path
    a.bitmap.set_range(f + 4, 1)
    assert a.alloc(3) == [(f + 2, 2), (f + 5, 1)]


def test_reuse_first_partial_run_goes_back():
    a = allocator("reuse-first")
    f = a.first
    a.alloc(10, f)
    a.free(f + 2, 5)
    a.release_pending()
    assert a.alloc(2) == [(f + 2, 2)]
    assert a.alloc(10) == [(f + 4, 3), (f + 10, 7)]


def test_reuse_first_recent_list_is_bounded():
    a = allocator("reuse-first", n=16 * 1024)
    f = a.first
    a.alloc(10_000, f)
    for i in range(0, 10_000, 2):
        a.free(f + i, 1)
    a.release_pending()
    assert len(a.recent) == 4096
    assert a.alloc(1) == [(f + 9998, 1)]


def test_reuse_first_enospc_all_or_nothing():
    a = allocator("reuse-first")
    f = a.first
    a.alloc(N - f, f)
    a.free(f + 1, 3)
    a.release_pending()
    bits, used = snapshot(a)
    with pytest.raises(FsError):
        a.alloc(4)
    assert np.array_equal(a.bitmap.bits, bits) and a.bitmap.used == used


# -- InodeAllocator -------------------------------------------------------------------------


def test_inode_allocator():
    sb = fmt.compute_layout(N, 20, 64)
    ia = InodeAllocator(sb)
    ia.init_fresh()
    assert ia.free_count() == 20
    got = [ia.alloc() for _ in range(5)]
    assert got == [1, 2, 3, 4, 5]
    assert ia.free_count() == 15
    ia.free(2)
    assert ia.free_count() == 16
    assert ia.alloc() == 6  # the cursor moves on before reusing
    rest = [ia.alloc() for _ in range(15)]
    assert rest == list(range(7, 21)) + [2]  # wrapped to the freed one
    assert ia.free_count() == 0
    with pytest.raises(FsError) as ei:
        ia.alloc()
    assert ei.value.errno == errno.ENOSPC
    ia.free(13)
    assert ia.alloc() == 13


def test_inode_zero_never_allocated():
    sb = fmt.compute_layout(N, 3, 64)
    ia = InodeAllocator(sb)
    ia.init_fresh()
    assert sorted(ia.alloc() for _ in range(3)) == [1, 2, 3]
    with pytest.raises(FsError):
        ia.alloc()
    assert ia.bitmap.test(0)
