"""The metadata journal: physical redo logging of whole metadata blocks.

A commit writes descriptor(s), block images and a commit block into the journal
area, makes them durable with one drain (the commit block's crc covers everything,
so a torn transaction is recognised and ignored), and only then writes the blocks to
their home locations, flushed but not drained: the next drain, or the checkpoint,
makes them durable.  A checkpoint drains, then advances the header's start sequence
(one atomic 8-byte store) and restarts the log at the first block.  Replay at mount
re-applies every committed transaction from the start sequence on; applying a
transaction twice is harmless.
"""

from __future__ import annotations

import logging
import zlib

from . import format as fmt
from .errors import CorruptionError, ImageError
from .pmem import PmemOps

log = logging.getLogger(__name__)


class TransactionTooLarge(Exception):
    pass


class Journal:
    """Invariants: transactions [start_seq, next_seq) occupy area blocks [0, head);
    all of them are durable in the journal; their home writes are flushed."""

    def __init__(self, ops: PmemOps, read_block, sb: fmt.Superblock) -> None:
        self.ops = ops
        self._read = read_block
        self.header_blk = sb.journal_start
        self.area = sb.journal_start + 1
        self.capacity = sb.journal_blocks - 1
        self.start_seq = 0
        self.next_seq = 0
        self.head = 0
        self.commits = 0
        self.checkpoints = 0
        # Home blocks written by transactions since the last checkpoint: replay would
        # write them again.  (The role of jbd2's revoke records.)
        self.logged: set[int] = set()

    def __repr__(self) -> str:
        return (f"<Journal seq={self.start_seq}..{self.next_seq} head={self.head}/"
                f"{self.capacity}>")

    @staticmethod
    def format(ops: PmemOps, sb: fmt.Superblock, start_seq: int = 1) -> None:
        blk = sb.journal_start
        ops.memcpy(blk * fmt.BLOCK_SIZE, fmt.pack_jheader(start_seq, blk))
        ops.flush(blk * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)

    def max_blocks(self) -> int:
        """Largest number of home blocks one transaction may carry."""
        n = self.capacity - 1
        return n - (-(-n // fmt.JDESC_MAX))

    def _load_txn(self, pos: int, seq: int) -> tuple[list[int], list[bytes], int] | None:
        """Read the transaction at area offset `pos` if it is complete and has `seq`."""
        def blk(i: int) -> bytes:
            return self._read(self.area + i)

        homes: list[int] = []
        try:
            s, total, index, part = fmt.unpack_jdesc(blk(pos), self.area + pos)
        except CorruptionError:
            return None
        if s != seq or index != 0 or total == 0:
            return None
        ndesc = -(-total // fmt.JDESC_MAX)
        if pos + ndesc + total + 1 > self.capacity:
            return None
        homes.extend(part)
        crc = zlib.crc32(blk(pos))
        for d in range(1, ndesc):
            b = blk(pos + d)
            try:
                s, t2, index, part = fmt.unpack_jdesc(b, self.area + pos + d)
            except CorruptionError:
                return None
            if s != seq or t2 != total or index != d:
                return None
            homes.extend(part)
            crc = zlib.crc32(b, crc)
        if len(homes) != total:
            return None
        images = []
        for i in range(total):
            b = blk(pos + ndesc + i)
            images.append(b)
            crc = zlib.crc32(b, crc)
        cpos = pos + ndesc + total
        try:
            s, n, dcrc = fmt.unpack_jcommit(blk(cpos), self.area + cpos)
        except CorruptionError:
            return None
        if s != seq or n != total or dcrc != crc:
            return None
        return homes, images, cpos + 1

    def replay(self) -> int:
        """Apply committed transactions; leaves an empty journal.  Returns the count."""
        try:
            self.start_seq = fmt.unpack_jheader(self._read(self.header_blk), self.header_blk)
        except CorruptionError as e:
            raise ImageError(f"corrupt journal header: {e}")
        seq, pos, applied = self.start_seq, 0, 0
        while pos < self.capacity:
            txn = self._load_txn(pos, seq)
            if txn is None:
                break
            homes, images, pos = txn
            for home, image in zip(homes, images, strict=True):
                self.ops.memcpy(home * fmt.BLOCK_SIZE, image)
                self.ops.flush(home * fmt.BLOCK_SIZE, fmt.BLOCK_SIZE)
            seq += 1
            applied += 1
        if applied:
            log.info("journal: replayed %d transaction(s), sequence %d..%d",
                     applied, self.start_seq, seq - 1)
        self.next_seq = seq
        self.head = pos if applied else 0
        self.checkpoint()
        return applied

    def commit(self, blocks: dict[int, bytes]) -> None:
        """Make `blocks` (home block number -> sealed image) durable atomically.

        The caller has flushed the data this transaction exposes; the first drain
        below orders that data before the commit.
        """
        if not blocks:
            return
        total = len(blocks)
        if total > self.max_blocks():
            raise TransactionTooLarge(f"{total} blocks > journal capacity {self.max_blocks()}")
        ndesc = -(-total // fmt.JDESC_MAX)
        need = ndesc + total + 1
        if self.head + need > self.capacity:
            self.checkpoint()
        ops, bs, seq = self.ops, fmt.BLOCK_SIZE, self.next_seq
        ops.drain()  # data before the metadata that exposes it
        homes = sorted(blocks)
        start = self.area + self.head
        crc = 0
        for d in range(ndesc):
            part = homes[d * fmt.JDESC_MAX : (d + 1) * fmt.JDESC_MAX]
            b = fmt.pack_jdesc(seq, total, d, part, start + d)
            ops.memcpy((start + d) * bs, b)
            crc = zlib.crc32(b, crc)
        for i, home in enumerate(homes):
            image = blocks[home]
            ops.memcpy((start + ndesc + i) * bs, image)
            crc = zlib.crc32(image, crc)
        cblk = start + ndesc + total
        ops.memcpy(cblk * bs, fmt.pack_jcommit(seq, total, crc, cblk))
        ops.flush(start * bs, need * bs)
        ops.drain()
        # Committed.  Home writes become durable with the next drain.
        for home in homes:
            ops.memcpy(home * bs, blocks[home])
            ops.flush(home * bs, bs)
        self.head += need
        self.next_seq += 1
        self.commits += 1
        self.logged.update(homes)

    def replays_into(self, runs: list[tuple[int, int]]) -> bool:
        """Would a replay of the current log write into any of these block runs?

        A freed metadata block may be reused for data, which is written in place;
        if a logged transaction still holds an old image of it, a crash and replay
        would write that image over the data.  The caller checkpoints first."""
        logged = self.logged
        if not logged:
            return False
        for start, n in runs:
            if n > len(logged):
                if any(start <= h < start + n for h in logged):
                    return True
            elif any(b in logged for b in range(start, start + n)):
                return True
        return False

    def checkpoint(self) -> None:
        """Make all home writes durable and empty the log."""
        self.ops.drain()
        if self.start_seq == self.next_seq and self.head == 0:
            return
        off = self.header_blk * fmt.BLOCK_SIZE + fmt.JH_START_SEQ_OFF
        self.ops.memcpy(off, self.next_seq.to_bytes(8, "little"))
        self.ops.persist(off, 8)
        self.start_seq = self.next_seq
        self.head = 0
        self.checkpoints += 1
        self.logged.clear()
