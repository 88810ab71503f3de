"""In-memory inodes: the on-media fields plus what is loaded lazily (extent map,
xattrs, directory, symlink target) and the runtime counts that decide when an
unlinked inode may be freed."""

from __future__ import annotations

import stat
import struct

from . import format as fmt
from .directory import Directory
from .extents import ExtentMap


class Inode:
    """Invariants: `d` is the authoritative in-memory copy; the on-media copy is stale
    while the inode is in the filesystem's dirty set.  `lookups` counts kernel
    references (lookup/create/readdirplus minus forget), `opens` open file handles;
    an inode with nlink 0 is freed when both reach 0."""

    __slots__ = ("ino", "d", "ext", "ext_leaves", "xattrs", "xattr_blocks", "dir",
                 "symlink", "lookups", "opens", "published", "attrs_out", "__weakref__")

    def __init__(self, ino: int, d: fmt.DiskInode) -> None:
        self.ino = ino
        self.d = d
        self.ext: ExtentMap | None = None
        self.ext_leaves: list[int] = []
        self.xattrs: dict[bytes, bytes] | None = None
        self.xattr_blocks: list[int] = []
        self.dir: Directory | None = None
        self.symlink: bytes | None = None
        self.lookups = 0
        self.opens = 0
        # Its size and complete pfn map are in the core: the fast path serves it.
        self.published = False
        # A copy of its attributes is in the core: the fast path answers GETATTR.
        self.attrs_out = False

    def __repr__(self) -> str:
        return (f"<Inode {self.ino} mode={self.d.mode:o} nlink={self.d.nlink} "
                f"size={self.d.size} lookups={self.lookups} opens={self.opens}>")

    @property
    def mode(self) -> int:
        return self.d.mode

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.d.mode)

    def is_reg(self) -> bool:
        return stat.S_ISREG(self.d.mode)

    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.d.mode)


# -- extent map <-> media ----------------------------------------------------

_EXT = fmt.EXTENT
_LEAF = fmt.EXTENT_LEAF_HDR


def load_extents(inode: Inode, read_block) -> None:
    d, em = inode.d, ExtentMap()
    recs: list[tuple[int, int, int, int]] = []
    if d.ext_head == 0:
        if d.ext_count > fmt.INLINE_EXTENTS:
            raise fmt.CorruptionError(f"inode {inode.ino}: {d.ext_count} inline extents")
        recs = [_EXT.unpack_from(d.inline, i * _EXT.size) for i in range(d.ext_count)]
    else:
        for blk, b in fmt.walk_chain(d.ext_head, fmt.BT_EXTENT, read_block,
                                     f"inode {inode.ino} extents"):
            _nxt, count, _ = _LEAF.unpack_from(b, 0)
            if count > fmt.EXTENTS_PER_LEAF:
                raise fmt.CorruptionError(f"extent leaf {blk}: count {count}", blk)
            for i in range(count):
                recs.append(_EXT.unpack_from(b, _LEAF.size + i * _EXT.size))
            inode.ext_leaves.append(blk)
        if len(recs) != d.ext_count:
            raise fmt.CorruptionError(
                f"inode {inode.ino}: {len(recs)} extents on media, inode says {d.ext_count}")
    prev_end = -1
    for lblk, pblk, count, _flags in recs:
        if count == 0 or lblk < prev_end:
            raise fmt.CorruptionError(f"inode {inode.ino}: extents overlap or are unsorted")
        prev_end = lblk + count
        em.lblk.append(lblk)
        em.pblk.append(pblk)
        em.count.append(count)
    inode.ext = em


def extent_images(inode: Inode, alloc_meta, free_meta) -> dict[int, bytes]:
    """Write the extent map into the inode (inline) or leaf blocks; returns leaf images.

    `alloc_meta()` gives a block for a new leaf; `free_meta(blk)` returns a surplus one.
    """
    assert inode.ext is not None
    runs = inode.ext.runs()
    d = inode.d
    d.ext_count = len(runs)
    out: dict[int, bytes] = {}
    if len(runs) <= fmt.INLINE_EXTENTS:
        for blk in inode.ext_leaves:
            free_meta(blk)
        inode.ext_leaves = []
        d.ext_head = 0
        if not inode.is_lnk():
            d.inline = b"".join(_EXT.pack(lb, pb, c, 0) for lb, pb, c in runs)
        return out
    per = fmt.EXTENTS_PER_LEAF
    need = extent_leaves_needed(len(runs))
    leaves = inode.ext_leaves
    while len(leaves) < need:
        leaves.append(alloc_meta())
    while len(leaves) > need:
        free_meta(leaves.pop())
    for i, blk in enumerate(leaves):
        chunk = runs[i * per : (i + 1) * per]
        nxt = leaves[i + 1] if i + 1 < len(leaves) else 0
        body = _LEAF.pack(nxt, len(chunk), 0) + b"".join(
            _EXT.pack(lb, pb, c, 0) for lb, pb, c in chunk)
        out[blk] = fmt.seal(body, fmt.BT_EXTENT, blk)
    d.ext_head = leaves[0]
    if not inode.is_lnk():
        d.inline = b""
    return out


# -- xattrs <-> media ----------------------------------------------------------

_XH = fmt.XATTR_HDR
_XE = fmt.XATTR_ENT


def load_xattrs(inode: Inode, read_block) -> None:
    xattrs: dict[bytes, bytes] = {}
    for blk, b in fmt.walk_chain(inode.d.xattr_head, fmt.BT_XATTR, read_block,
                                 f"inode {inode.ino} xattrs"):
        _nxt, _used, count = _XH.unpack_from(b, 0)
        off = _XH.size
        for _ in range(count):
            if off + _XE.size > fmt.PAYLOAD:
                raise fmt.CorruptionError(f"xattr block {blk}: bad entry count", blk)
            nlen, _r, vlen = _XE.unpack_from(b, off)
            off += _XE.size
            name = bytes(b[off : off + nlen])
            value = bytes(b[off + nlen : off + nlen + vlen])
            off += nlen + vlen
            if off > fmt.PAYLOAD or not name:
                raise fmt.CorruptionError(f"xattr block {blk}: bad entry", blk)
            xattrs[name] = value
        inode.xattr_blocks.append(blk)
    inode.xattrs = xattrs


def xattr_entry_size(name: bytes, value: bytes) -> int:
    return _XE.size + len(name) + len(value)


def _xattr_groups(xattrs: dict[bytes, bytes]) -> list[list[tuple[bytes, bytes]]]:
    groups: list[list[tuple[bytes, bytes]]] = []
    used = fmt.XATTR_CAPACITY
    for name, value in xattrs.items():
        size = xattr_entry_size(name, value)
        if used + size > fmt.XATTR_CAPACITY:
            groups.append([])
            used = 0
        groups[-1].append((name, value))
        used += size
    return groups


def xattr_blocks_needed(xattrs: dict[bytes, bytes]) -> int:
    return len(_xattr_groups(xattrs))


def extent_leaves_needed(nruns: int) -> int:
    return 0 if nruns <= fmt.INLINE_EXTENTS else -(-nruns // fmt.EXTENTS_PER_LEAF)


def xattr_images(inode: Inode, alloc_meta, free_meta) -> dict[int, bytes]:
    assert inode.xattrs is not None
    groups = _xattr_groups(inode.xattrs)
    blocks = inode.xattr_blocks
    while len(blocks) < len(groups):
        blocks.append(alloc_meta())
    while len(blocks) > len(groups):
        free_meta(blocks.pop())
    out: dict[int, bytes] = {}
    for i, (blk, group) in enumerate(zip(blocks, groups, strict=True)):
        nxt = blocks[i + 1] if i + 1 < len(blocks) else 0
        parts = [b""]
        for name, value in group:
            parts.append(_XE.pack(len(name), 0, len(value)) + name + value)
        body = b"".join(parts)
        out[blk] = fmt.seal(_XH.pack(nxt, len(body), len(group)) + body, fmt.BT_XATTR, blk)
    inode.d.xattr_head = blocks[0] if blocks else 0
    return out


def symlink_image(target: bytes, blk: int) -> bytes:
    """The block of a long symlink: what does not fit the inode's inline area."""
    tail = target[fmt.INLINE_AREA :]
    return fmt.seal(struct.pack("<I", len(tail)) + tail, fmt.BT_SYMLINK, blk)


def load_symlink(inode: Inode, read_block) -> bytes:
    d = inode.d
    head = bytes(d.inline[: d.inline_len])
    if d.aux_block == 0:
        return head
    b = read_block(d.aux_block)
    fmt.check(b, fmt.BT_SYMLINK, d.aux_block)
    (n,) = struct.unpack_from("<I", b, 0)
    if n > fmt.PAYLOAD - 4 or len(head) + n != d.size:
        raise fmt.CorruptionError(f"symlink block {d.aux_block}: length {n}", d.aux_block)
    return head + bytes(b[4 : 4 + n])
