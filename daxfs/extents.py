"""Per-inode extent map: file block -> device block, as sorted runs.

Lookups are O(log n) by bisection and a request touches its runs, never its pages.
"""

from __future__ import annotations

from bisect import bisect_right

HOLE = -1


class ExtentMap:
    """Invariants: runs are sorted by file block, do not overlap, have count > 0, and
    two runs adjacent both in the file and on the device are merged."""

    __slots__ = ("lblk", "pblk", "count")

    def __init__(self) -> None:
        self.lblk: list[int] = []
        self.pblk: list[int] = []
        self.count: list[int] = []

    def __repr__(self) -> str:
        return f"<ExtentMap {len(self.lblk)} runs, {self.nblocks()} blocks>"

    def __len__(self) -> int:
        return len(self.lblk)

    def runs(self) -> list[tuple[int, int, int]]:
        return list(zip(self.lblk, self.pblk, self.count, strict=True))

    def nblocks(self) -> int:
        return sum(self.count)

    def end(self) -> int:
        """One past the last mapped file block (0 if empty)."""
        return self.lblk[-1] + self.count[-1] if self.lblk else 0

    def segments(self, start: int, n: int) -> list[tuple[int, int, int]]:
        """Cover [start, start+n) with (file block, device block or HOLE, count)."""
        out: list[tuple[int, int, int]] = []
        end = start + n
        i = bisect_right(self.lblk, start) - 1
        if i < 0:
            i = 0
        pos = start
        L, P, C = self.lblk, self.pblk, self.count
        while pos < end:
            if i < len(L) and L[i] + C[i] <= pos:
                i += 1
                continue
            if i >= len(L) or L[i] >= end:
                out.append((pos, HOLE, end - pos))
                break
            if L[i] > pos:
                out.append((pos, HOLE, L[i] - pos))
                pos = L[i]
            take = min(end, L[i] + C[i]) - pos
            out.append((pos, P[i] + (pos - L[i]), take))
            pos += take
            i += 1
        return out

    def mapped(self, start: int, n: int) -> bool:
        """Whether every block of [start, start+n) is mapped (no hole)."""
        L, C = self.lblk, self.count
        i = bisect_right(L, start) - 1
        if i < 0:
            return n <= 0
        pos, end = start, start + n
        while pos < end:
            if i >= len(L) or L[i] > pos or L[i] + C[i] <= pos:
                return False
            pos = L[i] + C[i]
            i += 1
        return True

    def lookup(self, blk: int) -> int:
        i = bisect_right(self.lblk, blk) - 1
        if i >= 0 and blk < self.lblk[i] + self.count[i]:
            return self.pblk[i] + blk - self.lblk[i]
        return HOLE

    def goal(self, blk: int) -> int:
        """A device block to allocate near for file block `blk` (0: no preference)."""
        i = bisect_right(self.lblk, blk) - 1
        if i >= 0:
            return self.pblk[i] + (blk - self.lblk[i])
        return 0

    def insert(self, lblk: int, pblk: int, n: int) -> None:
        """Map a run into what must be a hole."""
        i = bisect_right(self.lblk, lblk)
        L, P, C = self.lblk, self.pblk, self.count
        if i > 0 and L[i - 1] + C[i - 1] > lblk:
            raise AssertionError(f"insert over mapped block {lblk}")
        if i < len(L) and L[i] < lblk + n:
            raise AssertionError(f"insert over mapped block {L[i]}")
        if i > 0 and L[i - 1] + C[i - 1] == lblk and P[i - 1] + C[i - 1] == pblk:
            C[i - 1] += n
            if i < len(L) and lblk + n == L[i] and pblk + n == P[i]:
                C[i - 1] += C[i]
                del L[i], P[i], C[i]
            return
        if i < len(L) and lblk + n == L[i] and pblk + n == P[i]:
            L[i], P[i], C[i] = lblk, pblk, C[i] + n
            return
        L.insert(i, lblk)
        P.insert(i, pblk)
        C.insert(i, n)

    def remove(self, start: int, n: int) -> list[tuple[int, int, int]]:
        """Unmap [start, start+n); returns the removed (file block, device block, count)."""
        end = start + n
        L, P, C = self.lblk, self.pblk, self.count
        i = max(bisect_right(L, start) - 1, 0)
        removed: list[tuple[int, int, int]] = []
        while i < len(L) and L[i] < end:
            ls, le = L[i], L[i] + C[i]
            if le <= start:
                i += 1
                continue
            cs, ce = max(ls, start), min(le, end)
            removed.append((cs, P[i] + cs - ls, ce - cs))
            if cs > ls and ce < le:  # split in two
                L.insert(i + 1, ce)
                P.insert(i + 1, P[i] + ce - ls)
                C.insert(i + 1, le - ce)
                C[i] = cs - ls
                i += 2
            elif cs > ls:
                C[i] = cs - ls
                i += 1
            elif ce < le:
                P[i] += ce - ls
                L[i] = ce
                C[i] = le - ce
                i += 1
            else:
                del L[i], P[i], C[i]
        return removed

    def next_data(self, blk: int) -> int | None:
        """First mapped file block >= blk."""
        i = bisect_right(self.lblk, blk) - 1
        if i >= 0 and blk < self.lblk[i] + self.count[i]:
            return blk
        i += 1
        return self.lblk[i] if i < len(self.lblk) else None

    def next_hole(self, blk: int) -> int:
        """First unmapped file block >= blk."""
        i = bisect_right(self.lblk, blk) - 1
        if i < 0 or blk >= self.lblk[i] + self.count[i]:
            return blk
        pos = self.lblk[i] + self.count[i]
        i += 1
        while i < len(self.lblk) and self.lblk[i] == pos:
            pos += self.count[i]
            i += 1
        return pos
