"""Block and inode allocation over on-media bitmaps.

The bitmap lives in memory as packed bits (numpy, 1 bit per block: 8 MiB for a
256 GiB device) and is written back through the journal one bitmap block at a time.
Freed blocks are *pending* until the transaction that freed them commits: data is
written in place, outside the journal, so a block reused before its free is durable
could, after a crash, still belong to its old file with the new file's bytes in it.

Policies:
- ``first-fit``: the lowest free run at or after a goal (next to the file's last
  block), like most allocators;
- ``reuse-first``: blocks freed most recently are handed out first (LIFO), so a
  freed block goes straight to the next allocation - the setup that turns a DMA vs
  truncate race into visible corruption of another file.
"""

from __future__ import annotations

import numpy as np

from . import format as fmt
from .errors import FsError

_BITS_PER_BLOCK = fmt.BITS_PER_BITMAP_BLOCK
_BYTES_PER_BLOCK = _BITS_PER_BLOCK // 8


class Bitmap:
    """Packed bitmap of `n` bits (bit set = in use), dirty-tracked per bitmap block.

    Invariants: bits past `n` are set (never allocatable); `used` counts set bits
    below `n`."""

    def __init__(self, n: int, nblocks: int, start_blk: int, btype: int) -> None:
        self.n = n
        self.start_blk = start_blk
        self.btype = btype
        self.bits = np.zeros(nblocks * _BYTES_PER_BLOCK, dtype=np.uint8)
        self.dirty: set[int] = set()
        self.used = 0

    def load(self, read_block) -> None:
        for i in range(len(self.bits) // _BYTES_PER_BLOCK):
            blk = self.start_blk + i
            b = read_block(blk)
            fmt.check(b, self.btype, blk)
            self.bits[i * _BYTES_PER_BLOCK : (i + 1) * _BYTES_PER_BLOCK] = np.frombuffer(
                b, dtype=np.uint8, count=_BYTES_PER_BLOCK)
        self._mark_tail()
        self.used = int(np.unpackbits(self.bits, bitorder="little")[: self.n].sum())

    def _mark_tail(self) -> None:
        total = len(self.bits) * 8
        if total > self.n:
            self._set_range(self.n, total - self.n, 1, track=False)

    def init_empty(self) -> None:
        self.bits[:] = 0
        self._mark_tail()
        self.used = 0
        self.dirty = set(range(len(self.bits) // _BYTES_PER_BLOCK))

    def test(self, i: int) -> bool:
        return bool(self.bits[i >> 3] >> (i & 7) & 1)

    def count_set(self, start: int, count: int) -> int:
        if count <= 0:
            return 0
        b0, b1 = start >> 3, (start + count + 7) >> 3
        bits = np.unpackbits(self.bits[b0:b1], bitorder="little")
        off = start - b0 * 8
        return int(bits[off : off + count].sum())

    def _set_range(self, start: int, count: int, value: int, track: bool = True) -> None:
        if count == 1:  # an inode, a block: no unpack/pack of a numpy slice
            b, m = start >> 3, 1 << (start & 7)
            v = int(self.bits[b])
            self.bits[b] = v | m if value else v & ~m
            if track:
                self.dirty.add(start // _BITS_PER_BLOCK)
            return
        end = start + count
        b0, b1 = start >> 3, (end + 7) >> 3
        bits = np.unpackbits(self.bits[b0:b1], bitorder="little")
        bits[start - b0 * 8 : end - b0 * 8] = value
        self.bits[b0:b1] = np.packbits(bits, bitorder="little")
        if track:
            first, last = start // _BITS_PER_BLOCK, (end - 1) // _BITS_PER_BLOCK
            self.dirty.update(range(first, last + 1))

    def set_range(self, start: int, count: int) -> None:
        self._set_range(start, count, 1)
        self.used += count

    def clear_range(self, start: int, count: int) -> None:
        self._set_range(start, count, 0)
        self.used -= count

    def find_free(self, goal: int, limit: int) -> tuple[int, int] | None:
        """First free run at or after `goal` (wrapping once), at most `limit` long."""
        for lo, hi in ((goal, self.n), (0, goal)):
            if lo >= hi:
                continue
            b0 = lo >> 3
            # The goal's own byte first: with a cursor, that is where the space is.
            byte = int(self.bits[b0])
            if byte != 0xFF:
                for i in range(lo, min(hi, (b0 + 1) * 8)):
                    if not byte >> (i & 7) & 1:
                        return i, self._run_length(i, min(limit, hi - i))
            # Start small: the goal is usually next to free space (a cursor), and
            # a 64 KiB scan per allocation was 5 % of a create.  Grow to 64 KiB.
            chunk = 64
            pos = b0
            while pos * 8 < hi:
                seg = self.bits[pos : pos + chunk]
                cand = np.flatnonzero(seg != 0xFF)
                if len(cand):
                    for c in cand[:64]:
                        byte = int(seg[c])
                        base = (pos + int(c)) * 8
                        for bit in range(8):
                            i = base + bit
                            if i < lo or i >= hi:
                                continue
                            if not byte >> bit & 1:
                                return i, self._run_length(i, min(limit, hi - i))
                pos += chunk
                chunk = min(chunk * 4, 1 << 16)
        return None

    def _run_length(self, start: int, limit: int) -> int:
        if limit <= 1:
            return 1
        b0, b1 = start >> 3, (start + limit + 7) >> 3
        bits = np.unpackbits(self.bits[b0:b1], bitorder="little")[start - b0 * 8 :][:limit]
        used = np.flatnonzero(bits)
        return int(used[0]) if len(used) else len(bits)

    def dirty_blocks(self) -> dict[int, bytes]:
        out = {}
        for i in sorted(self.dirty):
            blk = self.start_blk + i
            payload = self.bits[i * _BYTES_PER_BLOCK : (i + 1) * _BYTES_PER_BLOCK].tobytes()
            out[blk] = fmt.seal(payload, self.btype, blk)
        self.dirty.clear()
        return out


class BlockAllocator:
    """Data block allocator.  Block numbers are absolute (pfns of the device)."""

    def __init__(self, sb: fmt.Superblock, policy: str) -> None:
        if policy not in fmt.ALLOC_POLICIES:
            raise ValueError(f"unknown allocation policy {policy!r} "
                             f"(choose from {', '.join(fmt.ALLOC_POLICIES)})")
        self.policy = policy
        self.first = sb.data_start
        self.bitmap = Bitmap(sb.block_count, sb.bbitmap_blocks, sb.bbitmap_start,
                             fmt.BT_BBITMAP)
        # Invariants: pending runs are set in the bitmap (still in use on media) and
        # released at commit; `recent` holds runs freed by committed transactions,
        # most recent last, consulted first by reuse-first.
        self.pending: list[tuple[int, int]] = []
        self.pending_count = 0
        self.recent: list[tuple[int, int]] = []
        self._cursor = self.first

    def __repr__(self) -> str:
        return (f"<BlockAllocator {self.policy} free={self.free_count()} "
                f"pending={self.pending_count}>")

    def free_count(self) -> int:
        """Blocks free or about to be (pending) - what statfs reports."""
        return self.bitmap.n - self.bitmap.used + self.pending_count

    def init_fresh(self) -> None:
        self.bitmap.init_empty()
        self.bitmap.set_range(0, self.first)

    def available(self, reserve: int = 0) -> int:
        """Blocks an allocation keeping `reserve` back could get now."""
        return max(0, self.bitmap.n - self.bitmap.used - reserve)

    def alloc(self, count: int, goal: int = 0, reserve: int = 0) -> list[tuple[int, int]]:
        """Allocate `count` blocks as one or more runs; all or nothing (ENOSPC).

        `reserve` blocks must stay free afterwards (kept for commit-time metadata)."""
        if count > self.available(reserve):
            raise FsError(28, "no space left on device")
        runs: list[tuple[int, int]] = []
        need = count
        try:
            if self.policy == "reuse-first":
                while need and self.recent:
                    start, n = self.recent.pop()
                    take, skip = 0, 0
                    # The run may have been partly reallocated by first-fit since.
                    while skip < n and self.bitmap.test(start + skip):
                        skip += 1
                    if skip < n:
                        take = self.bitmap._run_length(start + skip, min(need, n - skip))
                        self.bitmap.set_range(start + skip, take)
                        runs.append((start + skip, take))
                        need -= take
                        rest = start + skip + take
                        if rest < start + n:
                            self.recent.append((rest, start + n - rest))
            g = max(goal, self.first) if goal else self._cursor
            while need:
                found = self.bitmap.find_free(g, need)
                if found is None:
                    raise FsError(28, "no space left on device")
                start, n = found
                self.bitmap.set_range(start, n)
                runs.append((start, n))
                need -= n
                g = start + n
            self._cursor = g if g < self.bitmap.n else self.first
        except FsError:
            for start, n in runs:
                self.bitmap.clear_range(start, n)
            raise
        return runs

    def free(self, start: int, count: int) -> None:
        """Free a run; it becomes allocatable after the current transaction commits."""
        if start < self.first or start + count > self.bitmap.n:
            raise AssertionError(f"freeing blocks {start}+{count} outside the data area")
        self.pending.append((start, count))
        self.pending_count += count

    def release_pending(self) -> list[tuple[int, int]]:
        """Clear the bits of pending frees and return the runs.  The caller is building
        a commit: the cleared bitmap blocks go into the same transaction as the
        unmapping, and nothing can allocate before it is durable."""
        released = list(self.pending)
        for start, n in self.pending:
            self.bitmap.clear_range(start, n)
            if self.policy == "reuse-first":
                self.recent.append((start, n))
        if len(self.recent) > 4096:
            del self.recent[:-4096]
        self.pending.clear()
        self.pending_count = 0
        return released


class InodeAllocator:
    def __init__(self, sb: fmt.Superblock) -> None:
        self.bitmap = Bitmap(sb.inode_count + 1, sb.ibitmap_blocks, sb.ibitmap_start,
                             fmt.BT_IBITMAP)
        self._cursor = fmt.ROOT_INO

    def init_fresh(self) -> None:
        self.bitmap.init_empty()
        self.bitmap.set_range(0, 1)  # inode 0 does not exist

    def free_count(self) -> int:
        return self.bitmap.n - self.bitmap.used

    def alloc(self) -> int:
        found = self.bitmap.find_free(self._cursor, 1)
        if found is None:
            raise FsError(28, "no free inodes")
        ino = found[0]
        self.bitmap.set_range(ino, 1)
        self._cursor = ino + 1
        return ino

    def free(self, ino: int) -> None:
        self.bitmap.clear_range(ino, 1)
