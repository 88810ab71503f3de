"""Directories: a chain of directory blocks on media, a hash table in memory.

Each entry carries a cookie, handed out in increasing order and never reused within
a directory; readdir offsets are cookies, so an offset stays valid while entries
are added and removed (an entry present for the whole listing is returned exactly
once).  Lookup is a dict access; loading a directory reads its chain once.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator

from . import format as fmt
from .errors import CorruptionError

_HDR = fmt.DIR_HDR
_ENT = fmt.DIRENT_HDR
_MAX_ENTRY = _ENT.size + fmt.MAX_NAME


class Directory:
    """Invariants: `names[i]` are the entries stored in block `blocks[i]`, using
    `used[i]` bytes; `cookies` is sorted and `by_cookie` maps it back to names;
    `dirty` holds indices of blocks whose on-media image is stale."""

    __slots__ = ("entries", "blocks", "used", "names", "cookies", "by_cookie", "dirty",
                 "next_cookie", "_spacious")

    def __init__(self, next_cookie: int = fmt.FIRST_COOKIE) -> None:
        self.entries: dict[bytes, tuple[int, int, int, int]] = {}  # ino, cookie, dtype, blk idx
        self.blocks: list[int] = []
        self.used: list[int] = []
        self.names: list[dict[bytes, None]] = []
        self.cookies: list[int] = []
        self.by_cookie: dict[int, bytes] = {}
        self.dirty: set[int] = set()
        self.next_cookie = next_cookie
        self._spacious: set[int] = set()  # blocks with room for any entry

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"<Directory {len(self.entries)} entries in {len(self.blocks)} blocks>"

    @classmethod
    def load(cls, head: int, next_cookie: int, read_block: Callable[[int], bytes]) -> Directory:
        d = cls(next_cookie)
        for blk, b in fmt.walk_chain(head, fmt.BT_DIR, read_block, "directory"):
            _nxt, used, count = _HDR.unpack_from(b, 0)
            idx = len(d.blocks)
            d.blocks.append(blk)
            d.used.append(0)
            d.names.append({})
            off = _HDR.size
            for _ in range(count):
                if off + _ENT.size > fmt.PAYLOAD:
                    raise CorruptionError(f"directory block {blk}: bad entry", blk)
                cookie, ino, dtype, nlen = _ENT.unpack_from(b, off)
                name = bytes(b[off + _ENT.size : off + _ENT.size + nlen])
                off += _ENT.size + nlen
                if (off > fmt.PAYLOAD or not name or cookie >= next_cookie
                        or cookie < fmt.FIRST_COOKIE or cookie in d.by_cookie
                        or name in d.entries):
                    raise CorruptionError(f"directory block {blk}: bad entry", blk)
                d._add_at(idx, name, ino, cookie, dtype)
            if d.used[idx] != used:
                raise CorruptionError(f"directory block {blk}: used bytes mismatch", blk)
            if fmt.DIR_CAPACITY - used >= _MAX_ENTRY:
                d._spacious.add(idx)
        d.cookies.sort()
        d.dirty.clear()
        return d

    def _add_at(self, idx: int, name: bytes, ino: int, cookie: int, dtype: int) -> None:
        self.entries[name] = (ino, cookie, dtype, idx)
        self.names[idx][name] = None
        self.used[idx] += _ENT.size + len(name)
        self.by_cookie[cookie] = name
        self.cookies.append(cookie)

    def get(self, name: bytes) -> tuple[int, int, int, int] | None:
        return self.entries.get(name)

    def add(self, name: bytes, ino: int, dtype: int,
            alloc_block: Callable[[], int]) -> None:
        size = _ENT.size + len(name)
        idx = -1
        if self.blocks and fmt.DIR_CAPACITY - self.used[-1] >= size:
            idx = len(self.blocks) - 1
        else:
            while self._spacious:
                cand = next(iter(self._spacious))
                if fmt.DIR_CAPACITY - self.used[cand] >= size:
                    idx = cand
                    break
                self._spacious.discard(cand)
        if idx < 0:
            blk = alloc_block()
            if self.blocks:
                self.dirty.add(len(self.blocks) - 1)  # its next pointer changes
            self.blocks.append(blk)
            self.used.append(0)
            self.names.append({})
            idx = len(self.blocks) - 1
        cookie = self.next_cookie
        self.next_cookie += 1
        self._add_at(idx, name, ino, cookie, dtype)  # cookie is the largest: stays sorted
        if fmt.DIR_CAPACITY - self.used[idx] < _MAX_ENTRY:
            self._spacious.discard(idx)
        self.dirty.add(idx)

    def remove(self, name: bytes,
               free_block: Callable[[int], None] | None = None) -> tuple[int, int, int, int]:
        """Remove an entry; trailing blocks left empty go back through `free_block`."""
        ent = self.entries.pop(name)
        _, cookie, _, idx = ent
        del self.names[idx][name]
        self.used[idx] -= _ENT.size + len(name)
        del self.by_cookie[cookie]
        i = bisect_right(self.cookies, cookie) - 1
        del self.cookies[i]
        if fmt.DIR_CAPACITY - self.used[idx] >= _MAX_ENTRY:
            self._spacious.add(idx)
        self.dirty.add(idx)
        if free_block is not None:
            while self.blocks and self.used[-1] == 0:
                last = len(self.blocks) - 1
                free_block(self.blocks.pop())
                self.used.pop()
                self.names.pop()
                self._spacious.discard(last)
                self.dirty.discard(last)
                if self.blocks:
                    self.dirty.add(last - 1)  # its next pointer is now 0
        return ent

    def replace(self, name: bytes, ino: int, dtype: int) -> None:
        """Point an existing entry at another inode, keeping its cookie and block."""
        _, cookie, _, idx = self.entries[name]
        self.entries[name] = (ino, cookie, dtype, idx)
        self.dirty.add(idx)

    def after(self, cookie: int) -> Iterator[tuple[bytes, int, int, int]]:
        """Entries with cookie > `cookie`, in cookie order: (name, ino, dtype, cookie)."""
        i = bisect_right(self.cookies, cookie)
        while i < len(self.cookies):
            c = self.cookies[i]
            name = self.by_cookie[c]
            ino, _, dtype, _ = self.entries[name]
            yield name, ino, dtype, c
            # The list may change while the caller holds the iterator: re-find.
            i = bisect_right(self.cookies, c)

    def block_image(self, idx: int) -> bytes:
        blk = self.blocks[idx]
        nxt = self.blocks[idx + 1] if idx + 1 < len(self.blocks) else 0
        parts = [_HDR.pack(nxt, self.used[idx], len(self.names[idx]))]
        for name in self.names[idx]:
            ino, cookie, dtype, _ = self.entries[name]
            parts.append(_ENT.pack(cookie, ino, dtype, len(name)))
            parts.append(name)
        return fmt.seal(b"".join(parts), fmt.BT_DIR, blk)

    def dirty_images(self) -> dict[int, bytes]:
        out = {self.blocks[i]: self.block_image(i) for i in self.dirty if i < len(self.blocks)}
        self.dirty.clear()
        return out


def dtype_of(mode: int) -> int:
    return (mode >> 12) & 0xF

