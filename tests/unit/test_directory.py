"""Directory: entries in a chain of blocks, stable readdir cookies."""

from __future__ import annotations

import random
import struct

import pytest

from daxfs import format as fmt
from daxfs.directory import Directory, dtype_of
from daxfs.errors import CorruptionError

DT_REG, DT_DIR = 8, 4


class Store:
    """A dict of block images and a block allocator for one directory."""

    def __init__(self, first: int = 500) -> None:
        self.blocks: dict[int, bytes] = {}
        self.next = first

    def alloc(self) -> int:
        self.next += 3  # not contiguous: the chain must be followed, not assumed
        return self.next

    def write(self, d: Directory) -> None:
        self.blocks.update(d.dirty_images())

    def read(self, blk: int) -> bytes:
        return self.blocks[blk]

    def load(self, d: Directory) -> Directory:
        return Directory.load(d.blocks[0] if d.blocks else 0, d.next_cookie, self.read)


def name(i: int, width: int = 8) -> bytes:
    return f"f{i:0{width}d}".encode()


def listing(d: Directory) -> list[tuple[bytes, int, int, int]]:
    return list(d.after(0))


def test_dtype_of():
    assert dtype_of(0o100644) == DT_REG
    assert dtype_of(0o040755) == DT_DIR
    assert dtype_of(0o120777) == 10


def test_empty_directory():
    d = Directory()
    assert len(d) == 0 and d.blocks == [] and listing(d) == []
    assert d.next_cookie == fmt.FIRST_COOKIE
    assert Directory.load(0, fmt.FIRST_COOKIE, lambda b: pytest.fail("read")).entries == {}


def test_add_lookup_remove():
    s = Store()
    d = Directory()
    d.add(b"a", 10, DT_REG, s.alloc)
    d.add(b"sub", 11, DT_DIR, s.alloc)
    assert len(d) == 2
    assert d.get(b"a")[:3] == (10, fmt.FIRST_COOKIE, DT_REG)
    assert d.get(b"sub")[:3] == (11, fmt.FIRST_COOKIE + 1, DT_DIR)
    assert d.get(b"nope") is None
    ent = d.remove(b"a")
    assert ent[0] == 10
    assert d.get(b"a") is None and len(d) == 1
    with pytest.raises(KeyError):
        d.remove(b"a")
    assert listing(d) == [(b"sub", 11, DT_DIR, fmt.FIRST_COOKIE + 1)]


def test_replace_keeps_cookie():
    s = Store()
    d = Directory()
    d.add(b"x", 10, DT_REG, s.alloc)
    d.add(b"y", 11, DT_REG, s.alloc)
    s.write(d)
    cookie = d.get(b"x")[1]
    d.replace(b"x", 99, DT_DIR)
    assert d.get(b"x")[:3] == (99, cookie, DT_DIR)
    assert d.dirty == {0}
    s.write(d)
    assert s.load(d).get(b"x")[:3] == (99, cookie, DT_DIR)


def test_blocks_fill_then_chain():
    s = Store()
    d = Directory()
    per_entry = fmt.DIRENT_HDR.size + len(name(0))
    per_block = fmt.DIR_CAPACITY // per_entry
    for i in range(per_block):
        d.add(name(i), 100 + i, DT_REG, s.alloc)
    assert len(d.blocks) == 1
    s.write(d)
    d.add(name(per_block), 1, DT_REG, s.alloc)
    assert len(d.blocks) == 2
    # The old last block is rewritten: its next pointer changed.
    assert d.dirty == {0, 1}
    imgs = d.dirty_images()
    nxt = fmt.DIR_HDR.unpack_from(imgs[d.blocks[0]], 0)[0]
    assert nxt == d.blocks[1]
    assert fmt.DIR_HDR.unpack_from(imgs[d.blocks[1]], 0) == (0, per_entry, 1)
    for blk, img in imgs.items():
        fmt.check(img, fmt.BT_DIR, blk)


def test_freed_space_in_earlier_block_is_reused():
    s = Store()
    d = Directory()
    i = 0
    while len(d.blocks) < 3:
        d.add(name(i), i + 10, DT_REG, s.alloc)
        i += 1
    s.write(d)
    # Free room for a maximum-size entry in block 0.
    victims = [n for n, e in d.entries.items() if e[3] == 0][:20]
    for v in victims:
        d.remove(v)
    # Fill block 2 so the new entry cannot go to the last block.
    while fmt.DIR_CAPACITY - d.used[-1] >= fmt.DIRENT_HDR.size + 255:
        d.add(name(i), i + 10, DT_REG, s.alloc)
        i += 1
    nblocks = len(d.blocks)
    long = b"L" * 255
    d.add(long, 7, DT_REG, s.alloc)
    assert len(d.blocks) == nblocks
    assert d.get(long)[3] == 0
    s.write(d)
    d2 = s.load(d)
    assert d2.get(long)[:3] == d.get(long)[:3]


def test_cookies_increase_and_never_repeat():
    s = Store()
    d = Directory()
    seen = set()
    last = 0
    for i in range(50):
        d.add(name(i), i + 10, DT_REG, s.alloc)
        c = d.get(name(i))[1]
        assert c > last and c not in seen
        seen.add(c)
        last = c
    for i in range(0, 50, 2):
        d.remove(name(i))
    for i in range(0, 50, 2):  # same names again: new cookies
        d.add(name(i), i + 10, DT_REG, s.alloc)
        c = d.get(name(i))[1]
        assert c > last and c not in seen
        seen.add(c)
        last = c
    s.write(d)
    d2 = s.load(d)
    # After a reload, the counter continues: still no repeat.
    d2.add(b"new", 1, DT_REG, s.alloc)
    assert d2.get(b"new")[1] == last + 1
    cookies = [c for *_x, c in listing(d2)]
    assert cookies == sorted(cookies) and len(set(cookies)) == len(cookies)


def test_after_resumes_from_cookie():
    s = Store()
    d = Directory()
    for i in range(10):
        d.add(name(i), i + 10, DT_REG, s.alloc)
    full = listing(d)
    assert [n for n, *_x in full] == [name(i) for i in range(10)]
    c = full[4][3]
    assert list(d.after(c)) == full[5:]
    d.remove(full[4][0])  # the resume cookie's own entry is gone: still fine
    assert list(d.after(c)) == full[5:]
    assert list(d.after(full[-1][3])) == []


@pytest.mark.parametrize("seed", range(6))
def test_listing_while_mutating_returns_survivors_exactly_once(seed):
    rng = random.Random(seed)
    s = Store()
    d = Directory()
    counter = 0
    for _ in range(150):
        d.add(name(counter), counter, DT_REG, s.alloc)
        counter += 1
    present_at_start = set(d.entries)
    removed: set[bytes] = set()
    returned: list[bytes] = []
    # Alternate between one long-lived iterator and restarting from the last cookie,
    # as readdir does across calls.
    it = d.after(0)
    last_cookie = 0
    while True:
        if rng.random() < 0.3:
            it = d.after(last_cookie)
        try:
            nm, ino, dtype, c = next(it)
        except StopIteration:
            break
        assert c > last_cookie
        last_cookie = c
        assert nm in d.entries and d.entries[nm][0] == ino and dtype == DT_REG
        returned.append(nm)
        for _ in range(rng.randint(0, 3)):
            r = rng.random()
            if r < 0.4 and d.entries:
                victim = rng.choice(sorted(d.entries))
                d.remove(victim)
                removed.add(victim)
            elif r < 0.7:
                d.add(name(counter), counter, DT_REG, s.alloc)
                counter += 1
            elif d.entries:
                # Remove and re-add a name: it gets a new cookie (may be listed again,
                # as a new entry, but never twice under the same cookie).
                victim = rng.choice(sorted(d.entries))
                d.remove(victim)
                removed.add(victim)
                d.add(victim, 5, DT_REG, s.alloc)
    survivors = present_at_start - removed
    assert survivors and removed
    for n in survivors:
        assert returned.count(n) == 1, n
    # A name never removed is listed at most once (added mid-listing: 0 or 1 times);
    # a name removed and re-added may come back only under its new cookie.
    for n in set(returned) - removed:
        assert returned.count(n) == 1, n


def test_after_is_sorted_by_cookie_even_across_blocks():
    s = Store()
    d = Directory()
    for i in range(400):
        d.add(name(i), i, DT_REG, s.alloc)
    for i in range(0, 400, 3):
        d.remove(name(i))
    for i in range(0, 400, 3):
        d.add(name(i), i, DT_REG, s.alloc)  # lands in freed space of early blocks
    cookies = [c for *_x, c in listing(d)]
    assert cookies == sorted(cookies) and len(cookies) == 400


# -- media round trip -----------------------------------------------------------------------


def test_load_round_trip():
    rng = random.Random(7)
    s = Store()
    d = Directory()
    for i in range(600):
        nm = bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(1, 255)))
        if d.get(nm) is None:
            d.add(nm, 1000 + i, rng.choice([DT_REG, DT_DIR]), s.alloc)
        if rng.random() < 0.2 and d.entries:
            d.remove(rng.choice(sorted(d.entries)))
        if rng.random() < 0.1:
            s.write(d)  # write back at random points, like commits
    s.write(d)
    assert len(d.blocks) > 5
    d2 = s.load(d)
    assert d2.entries == d.entries
    assert d2.blocks == d.blocks
    assert d2.used == d.used
    assert listing(d2) == listing(d)
    assert d2.next_cookie == d.next_cookie
    assert d2.dirty == set()


def test_dirty_images_clears_and_only_dirty_blocks():
    s = Store()
    d = Directory()
    for i in range(300):
        d.add(name(i), i, DT_REG, s.alloc)
    s.write(d)
    assert d.dirty_images() == {}
    d.remove(name(0))
    imgs = d.dirty_images()
    assert list(imgs) == [d.blocks[0]]


# -- corruption -------------------------------------------------------------------------------


def two_block_dir() -> tuple[Store, Directory]:
    s = Store()
    d = Directory()
    i = 0
    while len(d.blocks) < 2:
        d.add(name(i), i + 10, DT_REG, s.alloc)
        i += 1
    s.write(d)
    return s, d


def seal_dir(blk: int, nxt: int, entries: list[tuple[int, int, int, bytes]],
             used: int | None = None) -> bytes:
    body = b"".join(fmt.DIRENT_HDR.pack(c, ino, t, len(n)) + n for c, ino, t, n in entries)
    u = len(body) if used is None else used
    return fmt.seal(fmt.DIR_HDR.pack(nxt, u, len(entries)) + body, fmt.BT_DIR, blk)


def test_load_detects_loop():
    s, d = two_block_dir()
    b1 = d.blocks[1]
    img = bytearray(s.blocks[b1])
    struct.pack_into("<Q", img, 0, d.blocks[0])  # last block points back to the first
    s.blocks[b1] = fmt.seal(bytes(img[: fmt.PAYLOAD]), fmt.BT_DIR, b1)
    with pytest.raises(CorruptionError, match="loops"):
        s.load(d)


def test_load_detects_self_loop():
    s = Store()
    s.blocks[7] = seal_dir(7, 7, [(3, 10, DT_REG, b"a")])
    with pytest.raises(CorruptionError, match="loops"):
        Directory.load(7, 10, s.read)


def test_load_detects_checksum_error():
    s, d = two_block_dir()
    img = bytearray(s.blocks[d.blocks[1]])
    img[30] ^= 1
    s.blocks[d.blocks[1]] = bytes(img)
    with pytest.raises(CorruptionError, match="checksum"):
        s.load(d)


def test_load_detects_wrong_block_type():
    s = Store()
    s.blocks[7] = fmt.seal(b"", fmt.BT_XATTR, 7)
    with pytest.raises(CorruptionError):
        Directory.load(7, 10, s.read)


@pytest.mark.parametrize("entries, used, why", [
    ([(3, 10, DT_REG, b"")], None, "empty name"),
    ([(10, 10, DT_REG, b"a")], None, "cookie not below next_cookie"),
    ([(3, 10, DT_REG, b"a")], 99, "used bytes mismatch"),
    ([(2, 10, DT_REG, b"a")], None, "cookie of '..'"),
    ([(0, 10, DT_REG, b"a")], None, "cookie 0"),
    ([(3, 10, DT_REG, b"a"), (3, 11, DT_REG, b"b")], None, "duplicate cookie"),
    ([(3, 10, DT_REG, b"a"), (4, 11, DT_REG, b"a")], None, "duplicate name"),
])
def test_load_detects_bad_entry(entries, used, why):
    """Duplicate cookies would make readdir skip an entry; cookies 1 and 2 are the
    offsets of "." and "..", so such an entry would never be listed."""
    s = Store()
    s.blocks[7] = seal_dir(7, 0, entries, used)
    with pytest.raises(CorruptionError) as ei:
        Directory.load(7, 10, s.read)
    assert ei.value.blkno == 7


def test_load_detects_count_overrunning_block():
    """An entry count larger than what the block holds is corruption, however the
    names happen to line up with the end of the payload."""
    for pad in range(0, 40):
        s = Store()
        # One entry whose end lands near the end of the payload, then a claimed second.
        nlen = min(255, fmt.DIR_CAPACITY - fmt.DIRENT_HDR.size - pad)
        entries = [(3, 10, DT_REG, b"n" * nlen)]
        body = b"".join(fmt.DIRENT_HDR.pack(c, i, t, len(n)) + n for c, i, t, n in entries)
        while len(body) < fmt.DIR_CAPACITY - pad:
            extra = min(255, fmt.DIR_CAPACITY - pad - len(body) - fmt.DIRENT_HDR.size)
            if extra < 1:
                break
            e = (4 + len(entries), 11, DT_REG, b"m" * extra)
            entries.append(e)
            body += fmt.DIRENT_HDR.pack(e[0], e[1], e[2], len(e[3])) + e[3]
        blk = fmt.seal(fmt.DIR_HDR.pack(0, len(body), len(entries) + 1) + body, fmt.BT_DIR, 7)
        s.blocks[7] = blk
        with pytest.raises(CorruptionError):
            Directory.load(7, 1000, s.read)
