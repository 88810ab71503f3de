"""On-media format, version 1: the canonical reference (docs/FORMAT.md explains it).

Layout of an image of N 4 KiB blocks::

    block 0                 superblock
    block 1                 fsinfo (orphan list head)            journaled
    journal_start ...       journal header + transaction area
    bbitmap_start ...       block bitmap, 1 bit per block        journaled
    ibitmap_start ...       inode bitmap, 1 bit per inode        journaled
    itable_start ...        inode table, 15 inodes per block     journaled
    data_start ... N-1      data blocks, extent leaves, directory, xattr and
                            symlink blocks (all from the block allocator)

Every metadata block ends in a 16-byte trailer: block type (u32), crc32 (u32) and
the block's own number (u64), so a misdirected or torn write is detected.  The crc
covers the whole block with the crc field and any *atomic words* zeroed.  Atomic
words are naturally aligned u64 fields that are updated in place with a single
8-byte store (the superblock state, the journal's start sequence); every other
metadata change goes through the journal.  All integers are little-endian.
"""

from __future__ import annotations

import struct
import time
import uuid as uuidlib
import zlib
from dataclasses import dataclass

from .errors import CorruptionError, ImageError

BLOCK_SIZE = 4096
MAGIC = b"DAXFSv1\x00"
FORMAT_VERSION = 1
MAX_NAME = 255
MAX_SYMLINK = 4095  # PATH_MAX - 1: first 120 bytes inline, the rest in one block
MAX_FILE_SIZE = 1 << 44  # 16 TiB: a write or truncate ending beyond it is EFBIG
ROOT_INO = 1

TRAILER = 16
PAYLOAD = BLOCK_SIZE - TRAILER  # 4080 usable bytes per metadata block
_TRAILER = struct.Struct("<IIQ")

# Block types (trailer.type).
BT_SUPER = 0x5355_5045  # "EPUS"
BT_FSINFO = 0x4653_4946
BT_JHEADER = 0x4A48_4452
BT_JDESC = 0x4A44_4553
BT_JCOMMIT = 0x4A43_4F4D
BT_BBITMAP = 0x4242_4D50
BT_IBITMAP = 0x4942_4D50
BT_ITABLE = 0x4954_4142
BT_EXTENT = 0x4558_544E
BT_DIR = 0x4449_5245
BT_XATTR = 0x5841_5454
BT_SYMLINK = 0x5359_4D4C

BLOCK_TYPE_NAMES = {
    BT_SUPER: "superblock",
    BT_FSINFO: "fsinfo",
    BT_JHEADER: "journal header",
    BT_JDESC: "journal descriptor",
    BT_JCOMMIT: "journal commit",
    BT_BBITMAP: "block bitmap",
    BT_IBITMAP: "inode bitmap",
    BT_ITABLE: "inode table",
    BT_EXTENT: "extent leaf",
    BT_DIR: "directory",
    BT_XATTR: "xattr",
    BT_SYMLINK: "symlink",
}

BITS_PER_BITMAP_BLOCK = PAYLOAD * 8


def _crc(block: bytes | bytearray | memoryview, btype: int, blkno: int,
         atomic: tuple[int, ...] = ()) -> int:
    body = bytearray(block[:PAYLOAD]) if atomic else block[:PAYLOAD]
    for off in atomic:
        body[off : off + 8] = b"\0" * 8
    return zlib.crc32(struct.pack("<IQ", btype, blkno), zlib.crc32(body))


def seal(payload: bytes | bytearray, btype: int, blkno: int,
         atomic: tuple[int, ...] = ()) -> bytes:
    """Return the full 4 KiB block: payload padded to 4080 bytes plus trailer."""
    if len(payload) > PAYLOAD:
        raise ValueError(f"payload of {len(payload)} bytes does not fit a block")
    body = bytes(payload) + b"\0" * (PAYLOAD - len(payload))
    return body + _TRAILER.pack(btype, _crc(body, btype, blkno, atomic), blkno)


def check(block: bytes | bytearray | memoryview, btype: int, blkno: int,
          atomic: tuple[int, ...] = ()) -> None:
    """Raise CorruptionError unless `block` is a valid sealed block of that type/number."""
    t, crc, no = _TRAILER.unpack_from(block, PAYLOAD)
    what = BLOCK_TYPE_NAMES.get(btype, hex(btype))
    if t != btype:
        raise CorruptionError(f"block {blkno}: expected {what} block, found type {t:#x}", blkno)
    if no != blkno:
        raise CorruptionError(f"block {blkno}: {what} block claims to be block {no}", blkno)
    if crc != _crc(block, btype, blkno, atomic):
        raise CorruptionError(f"block {blkno}: {what} checksum mismatch", blkno)


def walk_chain(head: int, btype: int, read_block, what: str):
    """Yield (block number, block) along a chain of sealed blocks whose payload starts
    with the next block's number (0 ends it): extent leaves, directory and xattr
    blocks.  Checks every block and refuses loops."""
    blk, seen = head, set()
    while blk:
        if blk in seen:
            raise CorruptionError(f"{what}: block chain loops at block {blk}", blk)
        seen.add(blk)
        b = read_block(blk)
        check(b, btype, blk)
        yield blk, b
        blk = int.from_bytes(b[:8], "little")


def is_valid(block: bytes | bytearray | memoryview, btype: int, blkno: int,
             atomic: tuple[int, ...] = ()) -> bool:
    try:
        check(block, btype, blkno, atomic)
    except CorruptionError:
        return False
    return True


# ---------------------------------------------------------------------------
# Superblock (block 0)

SB_STATE_OFF = 256  # atomic word
STATE_CLEAN = 1  # unmounted cleanly: nothing to replay
STATE_NEEDS_FSCK = 2  # corruption was seen while mounted

ALLOC_POLICIES = ("first-fit", "reuse-first")

_SB = struct.Struct("<8sII16sQQ QQ QQ QQ QQ Q Q II Q III")
# magic, version, block_size, uuid, block_count, inode_count,
# journal_start, journal_blocks, bbitmap_start, bbitmap_blocks,
# ibitmap_start, ibitmap_blocks, itable_start, itable_blocks,
# data_start, fsinfo_block, alloc_policy, inode_size, mkfs_time_ns,
# feature_compat, feature_incompat, feature_ro_compat


@dataclass
class Superblock:
    block_count: int
    inode_count: int
    journal_start: int
    journal_blocks: int
    bbitmap_start: int
    bbitmap_blocks: int
    ibitmap_start: int
    ibitmap_blocks: int
    itable_start: int
    itable_blocks: int
    data_start: int
    fsinfo_block: int = 1
    alloc_policy: int = 0
    uuid: bytes = b"\0" * 16
    mkfs_time_ns: int = 0
    version: int = FORMAT_VERSION
    feature_compat: int = 0
    feature_incompat: int = 0
    feature_ro_compat: int = 0

    def pack(self) -> bytes:
        body = bytearray(
            _SB.pack(
                MAGIC, self.version, BLOCK_SIZE, self.uuid, self.block_count, self.inode_count,
                self.journal_start, self.journal_blocks, self.bbitmap_start,
                self.bbitmap_blocks, self.ibitmap_start, self.ibitmap_blocks,
                self.itable_start, self.itable_blocks, self.data_start, self.fsinfo_block,
                self.alloc_policy, INODE_SIZE, self.mkfs_time_ns, self.feature_compat,
                self.feature_incompat, self.feature_ro_compat,
            )
        )
        return seal(body, BT_SUPER, 0, (SB_STATE_OFF,))

    @classmethod
    def unpack(cls, block: bytes | memoryview, image_size: int) -> Superblock:
        """Parse and validate; raises ImageError with a one-line reason."""
        if len(block) < BLOCK_SIZE:
            raise ImageError("image is smaller than one block: not a daxfs image")
        magic = bytes(block[:8])
        if magic != MAGIC:
            if magic.startswith(b"DAXFS"):
                raise ImageError(f"unsupported daxfs format {magic!r}")
            raise ImageError("not a daxfs image (bad magic)")
        f = _SB.unpack_from(block, 0)
        version, bsize = f[1], f[2]
        if version > FORMAT_VERSION:
            raise ImageError(
                f"image has format version {version}, this daxfs supports up to {FORMAT_VERSION}"
            )
        if version < 1:
            raise ImageError(f"invalid format version {version}")
        try:
            check(block, BT_SUPER, 0, (SB_STATE_OFF,))
        except CorruptionError as e:
            raise ImageError(f"corrupt superblock: {e}")
        if bsize != BLOCK_SIZE:
            raise ImageError(f"unsupported block size {bsize}")
        sb = cls(
            uuid=f[3], block_count=f[4], inode_count=f[5], journal_start=f[6],
            journal_blocks=f[7], bbitmap_start=f[8], bbitmap_blocks=f[9],
            ibitmap_start=f[10], ibitmap_blocks=f[11], itable_start=f[12],
            itable_blocks=f[13], data_start=f[14], fsinfo_block=f[15], alloc_policy=f[16],
            mkfs_time_ns=f[18], version=version, feature_compat=f[19],
            feature_incompat=f[20], feature_ro_compat=f[21],
        )
        if f[17] != INODE_SIZE:
            raise ImageError(f"unsupported inode size {f[17]}")
        if sb.feature_incompat:
            raise ImageError(f"image uses unknown incompatible features {sb.feature_incompat:#x}")
        sb.validate(image_size)
        return sb

    def validate(self, image_size: int) -> None:
        if self.block_count * BLOCK_SIZE > image_size:
            raise ImageError(
                f"image file is truncated: superblock says {self.block_count * BLOCK_SIZE} "
                f"bytes, file has {image_size}"
            )
        expect = compute_layout(self.block_count, self.inode_count, self.journal_blocks)
        for name in ("journal_start", "bbitmap_start", "bbitmap_blocks", "ibitmap_start",
                     "ibitmap_blocks", "itable_start", "itable_blocks", "data_start",
                     "fsinfo_block"):
            if getattr(self, name) != getattr(expect, name):
                raise ImageError(f"corrupt superblock: inconsistent {name}")
        if self.alloc_policy >= len(ALLOC_POLICIES):
            raise ImageError(f"corrupt superblock: unknown allocation policy {self.alloc_policy}")


def compute_layout(block_count: int, inode_count: int, journal_blocks: int) -> Superblock:
    bbitmap_blocks = -(-block_count // BITS_PER_BITMAP_BLOCK)
    ibitmap_blocks = -(-(inode_count + 1) // BITS_PER_BITMAP_BLOCK)
    itable_blocks = -(-(inode_count + 1) // INODES_PER_BLOCK)
    journal_start = 2
    bbitmap_start = journal_start + journal_blocks
    ibitmap_start = bbitmap_start + bbitmap_blocks
    itable_start = ibitmap_start + ibitmap_blocks
    data_start = itable_start + itable_blocks
    return Superblock(
        block_count=block_count, inode_count=inode_count, journal_start=journal_start,
        journal_blocks=journal_blocks, bbitmap_start=bbitmap_start,
        bbitmap_blocks=bbitmap_blocks, ibitmap_start=ibitmap_start,
        ibitmap_blocks=ibitmap_blocks, itable_start=itable_start,
        itable_blocks=itable_blocks, data_start=data_start,
    )


def default_geometry(size: int, inodes: int | None = None) -> tuple[int, int, int]:
    """(block_count, inode_count, journal_blocks) for an image of `size` bytes."""
    block_count = size // BLOCK_SIZE
    if inodes is None:
        inodes = max(256, size // 8192)
    inodes = min(inodes, 2**32 - 2)
    journal = min(16384, max(256, block_count // 64))
    return block_count, inodes, journal


# ---------------------------------------------------------------------------
# fsinfo (block 1): filesystem-wide journaled state

_FSINFO = struct.Struct("<QQ")  # orphan_head, reserved


def pack_fsinfo(orphan_head: int, blkno: int) -> bytes:
    return seal(_FSINFO.pack(orphan_head, 0), BT_FSINFO, blkno)


def unpack_fsinfo(block: bytes | memoryview, blkno: int) -> int:
    check(block, BT_FSINFO, blkno)
    return _FSINFO.unpack_from(block, 0)[0]


# ---------------------------------------------------------------------------
# Inodes: 256 bytes, 15 per inode-table block; slot i holds inode number i.

INODE_SIZE = 256
INODES_PER_BLOCK = PAYLOAD // INODE_SIZE  # 15
INLINE_AREA = 120
INLINE_EXTENTS = INLINE_AREA // 24  # 5

_INODE = struct.Struct("<IIIIII Q qqqq Q Q Q II Q Q Q Q Q 120s")
# mode, flags, uid, gid, nlink, generation, size, atime, mtime, ctime, btime, rdev,
# nblocks, ext_head, ext_count, inline_len, xattr_head, aux_block, next_cookie,
# orphan_next, parent, inline
assert _INODE.size == INODE_SIZE

# Inode flags
IF_ORPHAN = 1  # on the orphan list: nlink 0, blocks freed at mount or last close


@dataclass(slots=True)
class DiskInode:
    mode: int = 0
    flags: int = 0
    uid: int = 0
    gid: int = 0
    nlink: int = 0
    generation: int = 0
    size: int = 0
    atime: int = 0
    mtime: int = 0
    ctime: int = 0
    btime: int = 0
    rdev: int = 0
    nblocks: int = 0
    ext_head: int = 0  # first extent leaf block (0: extents are inline)
    ext_count: int = 0
    inline_len: int = 0  # bytes of an inline symlink target
    xattr_head: int = 0  # first xattr block (0: none)
    aux_block: int = 0  # directories: first dir block; long symlinks: target block
    next_cookie: int = 0  # directories: next readdir cookie to hand out
    orphan_next: int = 0
    parent: int = 0  # directories: parent inode (for "..")
    inline: bytes = b""

    def pack(self) -> bytes:
        return _INODE.pack(
            self.mode, self.flags, self.uid, self.gid, self.nlink, self.generation,
            self.size, self.atime, self.mtime, self.ctime, self.btime, self.rdev,
            self.nblocks, self.ext_head, self.ext_count, self.inline_len, self.xattr_head,
            self.aux_block, self.next_cookie, self.orphan_next, self.parent, self.inline,
        )

    @classmethod
    def unpack(cls, buf: bytes | memoryview, off: int = 0) -> DiskInode:
        return cls(*_INODE.unpack_from(buf, off))


def itable_location(sb: Superblock, ino: int) -> tuple[int, int]:
    """(block number, byte offset in block) of inode `ino`."""
    return sb.itable_start + ino // INODES_PER_BLOCK, (ino % INODES_PER_BLOCK) * INODE_SIZE


# ---------------------------------------------------------------------------
# Extents: (file block, physical block, count, flags), 24 bytes.

EXTENT = struct.Struct("<QQII")
EXTENT_LEAF_HDR = struct.Struct("<QII")  # next leaf, count, reserved
EXTENTS_PER_LEAF = (PAYLOAD - EXTENT_LEAF_HDR.size) // EXTENT.size  # 169

# ---------------------------------------------------------------------------
# Directory blocks: header (next block, used bytes, entry count) then entries
# (cookie u64, ino u64, dtype u8, namelen u8, name).  Cookies are per-directory,
# increasing, never reused: they are the readdir offsets.  Cookies 1 and 2 are
# "." and "..".

DIR_HDR = struct.Struct("<QII")
DIRENT_HDR = struct.Struct("<QQBB")
DIR_CAPACITY = PAYLOAD - DIR_HDR.size
FIRST_COOKIE = 3

# ---------------------------------------------------------------------------
# Xattr blocks: header (next block, used bytes, count) then entries
# (namelen u8, reserved u8, valuelen u16, name, value).

XATTR_HDR = struct.Struct("<QII")
XATTR_ENT = struct.Struct("<BBH")
XATTR_CAPACITY = PAYLOAD - XATTR_HDR.size
MAX_XATTR_VALUE = XATTR_CAPACITY - XATTR_ENT.size - MAX_NAME

# ---------------------------------------------------------------------------
# Journal: header block then a linear transaction area, restarted from its first
# block at each checkpoint.  A transaction is: descriptor block(s) listing home
# block numbers, the new images of those blocks, one commit block whose crc covers
# descriptors and images.  Replay applies transactions while their sequence number
# is the expected next one and the commit crc matches.

JH_START_SEQ_OFF = 8  # atomic word in the journal header
_JHEADER = struct.Struct("<8sQQ")  # magic, start_seq (atomic), reserved
JOURNAL_MAGIC = b"DAXFSJNL"
_JDESC = struct.Struct("<QIII")  # seq, total blocks in txn, index of this desc, count here
JDESC_MAX = (PAYLOAD - 24) // 8  # home block numbers per descriptor
_JCOMMIT = struct.Struct("<QII")  # seq, nblocks, data crc


def pack_jheader(start_seq: int, blkno: int) -> bytes:
    return seal(_JHEADER.pack(JOURNAL_MAGIC, start_seq, 0), BT_JHEADER, blkno,
                (JH_START_SEQ_OFF,))


def unpack_jheader(block: bytes | memoryview, blkno: int) -> int:
    check(block, BT_JHEADER, blkno, (JH_START_SEQ_OFF,))
    magic, seq, _ = _JHEADER.unpack_from(block, 0)
    if magic != JOURNAL_MAGIC:
        raise CorruptionError(f"block {blkno}: bad journal magic", blkno)
    return seq


def pack_jdesc(seq: int, total: int, index: int, homes: list[int], blkno: int) -> bytes:
    body = _JDESC.pack(seq, total, index, len(homes)) + struct.pack(f"<4x{len(homes)}Q", *homes)
    return seal(body, BT_JDESC, blkno)


def unpack_jdesc(block: bytes | memoryview, blkno: int) -> tuple[int, int, int, list[int]]:
    check(block, BT_JDESC, blkno)
    seq, total, index, count = _JDESC.unpack_from(block, 0)
    if count > JDESC_MAX:
        raise CorruptionError(f"block {blkno}: journal descriptor count {count}", blkno)
    homes = list(struct.unpack_from(f"<{count}Q", block, 24))
    return seq, total, index, homes


def pack_jcommit(seq: int, nblocks: int, data_crc: int, blkno: int) -> bytes:
    return seal(_JCOMMIT.pack(seq, nblocks, data_crc), BT_JCOMMIT, blkno)


def unpack_jcommit(block: bytes | memoryview, blkno: int) -> tuple[int, int, int]:
    check(block, BT_JCOMMIT, blkno)
    return _JCOMMIT.unpack_from(block, 0)


def new_uuid() -> bytes:
    return uuidlib.uuid4().bytes


def now_ns() -> int:
    return time.time_ns()
