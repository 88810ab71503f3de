"""ExtentMap: file block -> device block runs."""

from __future__ import annotations

import random

import pytest

from daxfs.extents import HOLE, ExtentMap


def em_of(*runs: tuple[int, int, int]) -> ExtentMap:
    em = ExtentMap()
    for r in runs:
        em.insert(*r)
    return em


def check_invariants(em: ExtentMap) -> None:
    runs = em.runs()
    for lb, _pb, c in runs:
        assert c > 0
        assert lb >= 0
    for (l1, p1, c1), (l2, p2, _c2) in zip(runs, runs[1:], strict=False):
        assert l1 + c1 <= l2, "unsorted or overlapping"
        assert not (l1 + c1 == l2 and p1 + c1 == p2), "mergeable runs left unmerged"


# -- insert and merge -----------------------------------------------------------------


def test_empty():
    em = ExtentMap()
    assert len(em) == 0 and em.nblocks() == 0 and em.end() == 0
    assert em.lookup(0) == HOLE
    assert em.segments(5, 3) == [(5, HOLE, 3)]
    assert em.next_data(0) is None
    assert em.next_hole(7) == 7
    assert em.goal(10) == 0
    assert em.remove(0, 100) == []


def test_insert_separate_runs_sorted():
    em = em_of((10, 500, 2), (0, 100, 3), (5, 900, 1))
    assert em.runs() == [(0, 100, 3), (5, 900, 1), (10, 500, 2)]
    assert em.nblocks() == 6 and em.end() == 12
    check_invariants(em)


def test_insert_merges_with_left():
    em = em_of((0, 100, 3), (3, 103, 2))
    assert em.runs() == [(0, 100, 5)]


def test_insert_merges_with_right():
    em = em_of((3, 103, 2), (0, 100, 3))
    assert em.runs() == [(0, 100, 5)]


def test_insert_merges_both_sides():
    em = em_of((0, 100, 3), (5, 105, 2), (3, 103, 2))
    assert em.runs() == [(0, 100, 7)]


def test_insert_adjacent_in_file_only_not_merged():
    em = em_of((0, 100, 3), (3, 200, 2), (5, 202, 1))
    assert em.runs() == [(0, 100, 3), (3, 200, 3)]
    check_invariants(em)


def test_insert_adjacent_on_device_only_not_merged():
    em = em_of((0, 100, 3), (4, 103, 2))
    assert em.runs() == [(0, 100, 3), (4, 103, 2)]


@pytest.mark.parametrize("run", [(2, 50, 1), (0, 50, 1), (4, 50, 1), (8, 50, 3), (3, 50, 10)])
def test_insert_over_mapped_block_is_a_bug(run):
    em = em_of((0, 100, 5), (10, 200, 5))
    with pytest.raises(AssertionError):
        em.insert(*run)
    assert em.runs() == [(0, 100, 5), (10, 200, 5)]


# -- lookup, segments, goal ----------------------------------------------------------------


def test_lookup():
    em = em_of((2, 100, 3), (10, 50, 1))
    assert [em.lookup(i) for i in range(12)] == [HOLE, HOLE, 100, 101, 102, HOLE, HOLE, HOLE,
                                                 HOLE, HOLE, 50, HOLE]


def test_segments_over_holes():
    em = em_of((2, 100, 3), (10, 50, 2))
    assert em.segments(0, 15) == [(0, HOLE, 2), (2, 100, 3), (5, HOLE, 5), (10, 50, 2),
                                  (12, HOLE, 3)]
    assert em.segments(3, 1) == [(3, 101, 1)]
    assert em.segments(3, 9) == [(3, 101, 2), (5, HOLE, 5), (10, 50, 2)]
    assert em.segments(6, 2) == [(6, HOLE, 2)]
    assert em.segments(11, 1) == [(11, 51, 1)]
    assert em.segments(12, 4) == [(12, HOLE, 4)]
    assert em.segments(0, 2) == [(0, HOLE, 2)]


def test_mapped():
    em = em_of((2, 100, 3), (5, 300, 2), (10, 50, 2))
    assert em.mapped(2, 5)  # two runs, adjacent in the file
    assert em.mapped(3, 1) and em.mapped(10, 2) and em.mapped(11, 1)
    assert not em.mapped(1, 2)  # starts in a hole
    assert not em.mapped(6, 2)  # runs into the hole at 7
    assert not em.mapped(0, 1) and not em.mapped(12, 1) and not em.mapped(2, 11)
    assert not ExtentMap().mapped(0, 1)


def test_segments_adjacent_runs_stay_separate():
    em = em_of((0, 100, 2), (2, 300, 2))
    assert em.segments(1, 2) == [(1, 101, 1), (2, 300, 1)]


def test_goal():
    em = em_of((2, 100, 3))
    assert em.goal(0) == 0
    assert em.goal(3) == 101
    assert em.goal(9) == 107  # continue after the last run's device blocks


# -- remove -------------------------------------------------------------------------------------


def test_remove_whole_runs():
    em = em_of((0, 100, 2), (5, 200, 2), (9, 300, 1))
    assert em.remove(0, 7) == [(0, 100, 2), (5, 200, 2)]
    assert em.runs() == [(9, 300, 1)]


def test_remove_splits_a_run_in_two():
    em = em_of((0, 100, 10))
    assert em.remove(3, 4) == [(3, 103, 4)]
    assert em.runs() == [(0, 100, 3), (7, 107, 3)]
    check_invariants(em)


def test_remove_cuts_both_ends():
    em = em_of((0, 100, 5), (5, 300, 5), (10, 500, 5))
    assert em.remove(3, 9) == [(3, 103, 2), (5, 300, 5), (10, 500, 2)]
    assert em.runs() == [(0, 100, 3), (12, 502, 3)]


def test_remove_head_and_tail_of_single_run():
    em = em_of((10, 100, 10))
    assert em.remove(5, 7) == [(10, 100, 2)]
    assert em.runs() == [(12, 102, 8)]
    assert em.remove(18, 100) == [(18, 108, 2)]
    assert em.runs() == [(12, 102, 6)]


def test_remove_hole_only():
    em = em_of((0, 100, 2), (10, 200, 2))
    assert em.remove(3, 5) == []
    assert em.runs() == [(0, 100, 2), (10, 200, 2)]
    assert em.remove(0, 0) == []


def test_remove_then_reinsert_merges_back():
    em = em_of((0, 100, 10))
    em.remove(4, 2)
    em.insert(4, 104, 2)
    assert em.runs() == [(0, 100, 10)]


# -- next_data / next_hole ------------------------------------------------------------------


def test_next_data():
    em = em_of((2, 100, 3), (10, 50, 1))
    assert em.next_data(0) == 2
    assert em.next_data(3) == 3
    assert em.next_data(5) == 10
    assert em.next_data(10) == 10
    assert em.next_data(11) is None


def test_next_hole():
    em = em_of((2, 100, 3), (5, 200, 2), (10, 50, 1))  # 2..7 mapped in two runs
    assert em.next_hole(0) == 0
    assert em.next_hole(2) == 7
    assert em.next_hole(6) == 7
    assert em.next_hole(7) == 7
    assert em.next_hole(10) == 11
    assert em.next_hole(100) == 100


# -- model test -----------------------------------------------------------------------------


def model_segments(model: dict[int, int], start: int, n: int) -> list[tuple[int, int, int]]:
    """Maximal segments of [start, start+n): holes, and device-contiguous mapped blocks.
    ExtentMap may split a device-contiguous stretch only where two runs meet, which
    cannot happen here because adjacent mergeable runs are always merged."""
    out: list[list[int]] = []
    for b in range(start, start + n):
        p = model.get(b, HOLE)
        if out:
            lb, pb, c = out[-1]
            if (pb == HOLE and p == HOLE) or (pb != HOLE and p == pb + c):
                out[-1][2] += 1
                continue
        out.append([b, p, 1])
    return [tuple(s) for s in out]


@pytest.mark.parametrize("seed", range(8))
def test_random_model(seed):
    rng = random.Random(seed)
    span = 120
    em = ExtentMap()
    model: dict[int, int] = {}
    next_dev = 1000
    for _step in range(400):
        op = rng.random()
        if op < 0.55:
            # Insert into a hole: pick a hole and a run inside it.
            start = rng.randrange(span)
            if start in model:
                continue
            end = start
            while end < span and end not in model and end - start < 8:
                end += 1
            n = rng.randint(1, end - start)
            choice = rng.random()
            left = model.get(start - 1)
            right = model.get(start + n)
            if choice < 0.3 and left is not None:
                pblk = left + 1  # device-contiguous with the left neighbour
            elif choice < 0.5 and right is not None and right - n >= 0:
                pblk = right - n  # ... with the right one
            else:
                pblk = next_dev
                next_dev += n + rng.randint(0, 2)
            em.insert(start, pblk, n)
            for i in range(n):
                model[start + i] = pblk + i
        else:
            start = rng.randrange(span)
            n = rng.randint(1, 30)
            removed = em.remove(start, n)
            expect = {b: p for b, p in model.items() if start <= b < start + n}
            got = {lb + i: pb + i for lb, pb, c in removed for i in range(c)}
            assert got == expect
            for b in expect:
                del model[b]
            for (l1, _p1, c1), (l2, _p2, _c2) in zip(removed, removed[1:], strict=False):
                assert l1 + c1 <= l2
        check_invariants(em)
        assert em.nblocks() == len(model)
        assert em.end() == (max(model) + 1 if model else 0)
        for b in range(span + 5):
            assert em.lookup(b) == model.get(b, HOLE)
        s, n = rng.randrange(span), rng.randint(1, 40)
        assert em.segments(s, n) == model_segments(model, s, n)
        assert em.mapped(s, n) == all(b in model for b in range(s, s + n))
        b = rng.randrange(span + 5)
        data = [x for x in sorted(model) if x >= b]
        assert em.next_data(b) == (data[0] if data else None)
        hole = b
        while hole in model:
            hole += 1
        assert em.next_hole(b) == hole
