"""On-media format v1: superblock, trailers, inodes, journal blocks."""

from __future__ import annotations

import os
import random
import struct

import pytest

from daxfs import format as fmt
from daxfs.errors import CorruptionError, ImageError
from daxfs.fs import Filesystem, mkfs

N_BLOCKS = 2048


def make_sb(**over) -> fmt.Superblock:
    sb = fmt.compute_layout(N_BLOCKS, 512, 256)
    sb.uuid = bytes(range(16))
    sb.mkfs_time_ns = 123456789
    sb.alloc_policy = 1
    for k, v in over.items():
        setattr(sb, k, v)
    return sb


def reseal_sb(block: bytes | bytearray) -> bytes:
    """Recompute the superblock trailer after editing its payload."""
    return fmt.seal(bytes(block[: fmt.PAYLOAD]), fmt.BT_SUPER, 0, (fmt.SB_STATE_OFF,))


def unpack_error(block: bytes, image_size: int = N_BLOCKS * fmt.BLOCK_SIZE) -> str:
    with pytest.raises(ImageError) as ei:
        fmt.Superblock.unpack(block, image_size)
    msg = str(ei.value)
    assert msg and "\n" not in msg
    return msg


# -- superblock ---------------------------------------------------------------------


def test_superblock_round_trip():
    sb = make_sb()
    block = sb.pack()
    assert len(block) == fmt.BLOCK_SIZE
    assert block[:8] == fmt.MAGIC
    back = fmt.Superblock.unpack(block, N_BLOCKS * fmt.BLOCK_SIZE)
    assert back == sb


def test_superblock_unpack_accepts_memoryview_and_larger_image():
    sb = make_sb()
    back = fmt.Superblock.unpack(memoryview(sb.pack()), 10 * N_BLOCKS * fmt.BLOCK_SIZE)
    assert back == sb


def test_superblock_state_word_is_atomic_not_checksummed():
    block = bytearray(make_sb().pack())
    for state in (0, fmt.STATE_CLEAN, fmt.STATE_NEEDS_FSCK, 2**64 - 1):
        block[fmt.SB_STATE_OFF : fmt.SB_STATE_OFF + 8] = state.to_bytes(8, "little")
        assert fmt.Superblock.unpack(bytes(block), N_BLOCKS * fmt.BLOCK_SIZE) == make_sb()
    # The bytes right next to the atomic word are covered.
    for off in (fmt.SB_STATE_OFF - 1, fmt.SB_STATE_OFF + 8):
        bad = bytearray(make_sb().pack())
        bad[off] ^= 0x40
        assert "checksum mismatch" in unpack_error(bytes(bad))


def test_refuses_foreign_data():
    assert "not a daxfs image" in unpack_error(b"\0" * fmt.BLOCK_SIZE)
    assert "not a daxfs image" in unpack_error(random.Random(1).randbytes(fmt.BLOCK_SIZE))
    ext4ish = bytearray(fmt.BLOCK_SIZE)
    ext4ish[1024 + 56 : 1024 + 58] = b"\x53\xef"
    assert "bad magic" in unpack_error(bytes(ext4ish))


def test_refuses_other_daxfs_magic():
    block = bytearray(make_sb().pack())
    block[:8] = b"DAXFSv2\0"
    msg = unpack_error(bytes(block))
    assert "unsupported daxfs format" in msg


def test_refuses_newer_version():
    msg = unpack_error(make_sb(version=fmt.FORMAT_VERSION + 1).pack())
    assert f"format version {fmt.FORMAT_VERSION + 1}" in msg
    assert f"supports up to {fmt.FORMAT_VERSION}" in msg


def test_refuses_version_zero():
    assert "invalid format version 0" in unpack_error(make_sb(version=0).pack())


def test_refuses_checksum_mismatch():
    block = bytearray(make_sb().pack())
    block[40] ^= 1  # inside block_count
    msg = unpack_error(bytes(block))
    assert msg.startswith("corrupt superblock:") and "checksum mismatch" in msg


def test_refuses_wrong_block_number_in_trailer():
    block = bytearray(make_sb().pack())
    struct.pack_into("<Q", block, fmt.PAYLOAD + 8, 7)
    assert "claims to be block 7" in unpack_error(bytes(block))


def test_refuses_truncated_image():
    msg = unpack_error(make_sb().pack(), N_BLOCKS * fmt.BLOCK_SIZE - 1)
    assert "truncated" in msg
    assert str(N_BLOCKS * fmt.BLOCK_SIZE) in msg


def test_refuses_block_smaller_than_a_block():
    assert "smaller than one block" in unpack_error(make_sb().pack()[:100])


@pytest.mark.parametrize("field", ["journal_start", "bbitmap_start", "bbitmap_blocks",
                                   "ibitmap_start", "ibitmap_blocks", "itable_start",
                                   "itable_blocks", "data_start", "fsinfo_block"])
def test_refuses_inconsistent_layout(field):
    sb = make_sb()
    setattr(sb, field, getattr(sb, field) + 1)
    msg = unpack_error(sb.pack())
    assert msg == f"corrupt superblock: inconsistent {field}"


def test_refuses_unknown_alloc_policy():
    msg = unpack_error(make_sb(alloc_policy=len(fmt.ALLOC_POLICIES)).pack())
    assert "unknown allocation policy" in msg


def test_refuses_incompat_features_but_not_compat():
    assert "incompatible features 0x4" in unpack_error(make_sb(feature_incompat=4).pack())
    sb = make_sb(feature_compat=1, feature_ro_compat=2)
    assert fmt.Superblock.unpack(sb.pack(), N_BLOCKS * fmt.BLOCK_SIZE) == sb


def test_refuses_other_block_or_inode_size():
    block = bytearray(make_sb().pack())
    struct.pack_into("<I", block, 12, 8192)  # block_size
    assert "unsupported block size 8192" in unpack_error(reseal_sb(block))
    block = bytearray(make_sb().pack())
    off = struct.calcsize("<8sII16sQQ QQ QQ QQ QQ Q Q I")
    struct.pack_into("<I", block, off, 128)  # inode_size
    assert "unsupported inode size 128" in unpack_error(reseal_sb(block))


def test_from_image_refuses_truncated_file(tmp_path):
    path = str(tmp_path / "t.img")
    mkfs(path, 4 << 20)
    os.truncate(path, (4 << 20) - fmt.BLOCK_SIZE)
    with pytest.raises(ImageError, match="truncated"):
        Filesystem.from_image(path)


def test_from_image_refuses_non_daxfs_file(tmp_path):
    path = tmp_path / "junk.img"
    path.write_bytes(b"hello world\n" * 1000)
    with pytest.raises(ImageError, match="bad magic"):
        Filesystem.from_image(str(path))


def test_compute_layout_is_contiguous():
    sb = fmt.compute_layout(100_000, 5000, 300)
    assert sb.journal_start == 2
    assert sb.bbitmap_start == sb.journal_start + sb.journal_blocks
    assert sb.ibitmap_start == sb.bbitmap_start + sb.bbitmap_blocks
    assert sb.itable_start == sb.ibitmap_start + sb.ibitmap_blocks
    assert sb.data_start == sb.itable_start + sb.itable_blocks
    assert sb.bbitmap_blocks * fmt.BITS_PER_BITMAP_BLOCK >= 100_000
    assert sb.itable_blocks * fmt.INODES_PER_BLOCK >= 5001


# -- trailers -----------------------------------------------------------------------------


def test_seal_check_round_trip():
    block = fmt.seal(b"payload", fmt.BT_DIR, 42)
    assert len(block) == fmt.BLOCK_SIZE
    assert block[:7] == b"payload" and not any(block[7 : fmt.PAYLOAD])
    fmt.check(block, fmt.BT_DIR, 42)
    assert fmt.is_valid(block, fmt.BT_DIR, 42)


def test_seal_rejects_oversized_payload():
    fmt.seal(b"x" * fmt.PAYLOAD, fmt.BT_DIR, 1)
    with pytest.raises(ValueError):
        fmt.seal(b"x" * (fmt.PAYLOAD + 1), fmt.BT_DIR, 1)


@pytest.mark.parametrize("off", [0, 1000, fmt.PAYLOAD - 1, fmt.PAYLOAD + 4, fmt.PAYLOAD + 7])
def test_check_detects_flipped_byte(off):
    block = bytearray(fmt.seal(b"some directory bytes" * 10, fmt.BT_DIR, 42))
    block[off] ^= 0x01
    with pytest.raises(CorruptionError, match="checksum mismatch") as ei:
        fmt.check(bytes(block), fmt.BT_DIR, 42)
    assert ei.value.blkno == 42
    assert not fmt.is_valid(bytes(block), fmt.BT_DIR, 42)


def test_check_detects_wrong_block_number():
    block = fmt.seal(b"abc", fmt.BT_XATTR, 42)
    with pytest.raises(CorruptionError, match="claims to be block 42") as ei:
        fmt.check(block, fmt.BT_XATTR, 43)
    assert ei.value.blkno == 43


def test_check_detects_wrong_type():
    block = fmt.seal(b"abc", fmt.BT_XATTR, 42)
    with pytest.raises(CorruptionError, match="expected directory block"):
        fmt.check(block, fmt.BT_DIR, 42)


def test_block_number_and_type_are_in_the_crc():
    """Rewriting the trailer's number or type alone does not make a valid block."""
    block = bytearray(fmt.seal(b"abc", fmt.BT_XATTR, 42))
    struct.pack_into("<Q", block, fmt.PAYLOAD + 8, 43)
    assert not fmt.is_valid(bytes(block), fmt.BT_XATTR, 43)
    block = bytearray(fmt.seal(b"abc", fmt.BT_XATTR, 42))
    struct.pack_into("<I", block, fmt.PAYLOAD, fmt.BT_DIR)
    assert not fmt.is_valid(bytes(block), fmt.BT_DIR, 42)


def test_atomic_words_excluded_from_crc():
    atomic = (16, 64)
    block = bytearray(fmt.seal(b"\x11" * 100, fmt.BT_FSINFO, 9, atomic))
    block[16:24] = b"\xff" * 8
    block[64:72] = (12345).to_bytes(8, "little")
    fmt.check(bytes(block), fmt.BT_FSINFO, 9, atomic)
    with pytest.raises(CorruptionError):
        fmt.check(bytes(block), fmt.BT_FSINFO, 9)  # not atomic for this caller
    block[24] ^= 1
    with pytest.raises(CorruptionError):
        fmt.check(bytes(block), fmt.BT_FSINFO, 9, atomic)


# -- inodes, fsinfo, journal blocks -----------------------------------------------------


def test_disk_inode_round_trip():
    d = fmt.DiskInode(
        mode=0o100644, flags=fmt.IF_ORPHAN, uid=1000, gid=1001, nlink=3, generation=7,
        size=2**44, atime=-5, mtime=1_700_000_000_123_456_789, ctime=3, btime=4, rdev=0x801,
        nblocks=99, ext_head=1234, ext_count=170, inline_len=17, xattr_head=555,
        aux_block=777, next_cookie=2**40, orphan_next=12, parent=1, inline=b"t" * 120,
    )
    packed = d.pack()
    assert len(packed) == fmt.INODE_SIZE
    assert fmt.DiskInode.unpack(packed) == d
    buf = b"\xaa" * fmt.INODE_SIZE + packed
    assert fmt.DiskInode.unpack(buf, fmt.INODE_SIZE) == d


def test_disk_inode_short_inline_is_padded():
    d = fmt.DiskInode(mode=0o120777, inline=b"target", inline_len=6)
    back = fmt.DiskInode.unpack(d.pack())
    assert back.inline == b"target" + b"\0" * (fmt.INLINE_AREA - 6)
    assert back.inline[: back.inline_len] == b"target"


def test_itable_location():
    sb = make_sb()
    assert fmt.itable_location(sb, 0) == (sb.itable_start, 0)
    assert fmt.itable_location(sb, 14) == (sb.itable_start, 14 * fmt.INODE_SIZE)
    assert fmt.itable_location(sb, 15) == (sb.itable_start + 1, 0)
    assert fmt.INODES_PER_BLOCK * fmt.INODE_SIZE <= fmt.PAYLOAD


def test_fsinfo_round_trip():
    assert fmt.unpack_fsinfo(fmt.pack_fsinfo(77, 1), 1) == 77
    with pytest.raises(CorruptionError):
        fmt.unpack_fsinfo(fmt.pack_fsinfo(77, 1), 2)


def test_jheader_start_seq_is_atomic():
    block = bytearray(fmt.pack_jheader(5, 2))
    assert fmt.unpack_jheader(bytes(block), 2) == 5
    off = fmt.JH_START_SEQ_OFF
    block[off : off + 8] = (99).to_bytes(8, "little")
    assert fmt.unpack_jheader(bytes(block), 2) == 99
    block[0] ^= 1
    with pytest.raises(CorruptionError):
        fmt.unpack_jheader(bytes(block), 2)


def test_jheader_bad_magic():
    # A valid seal around the wrong magic.
    body = struct.pack("<8sQQ", b"NOTAJRNL", 1, 0)
    block = fmt.seal(body, fmt.BT_JHEADER, 2, (fmt.JH_START_SEQ_OFF,))
    with pytest.raises(CorruptionError, match="bad journal magic"):
        fmt.unpack_jheader(block, 2)


@pytest.mark.parametrize("n", [0, 1, 3, fmt.JDESC_MAX])
def test_jdesc_round_trip(n):
    homes = [10_000 + 3 * i for i in range(n)]
    block = fmt.pack_jdesc(7, 1000, 2, homes, 50)
    assert fmt.unpack_jdesc(block, 50) == (7, 1000, 2, homes)


def test_jdesc_homes_fill_the_payload_exactly():
    """A full descriptor must fit one block (JDESC_MAX is computed from offset 24)."""
    homes = list(range(1, fmt.JDESC_MAX + 1))
    block = fmt.pack_jdesc(1, fmt.JDESC_MAX, 0, homes, 3)
    assert struct.unpack_from("<Q", block, 24)[0] == 1
    assert struct.unpack_from("<Q", block, fmt.PAYLOAD - 8)[0] == fmt.JDESC_MAX


def test_jdesc_count_too_large_is_corruption():
    body = bytearray(struct.pack("<QIII", 1, 1, 0, fmt.JDESC_MAX + 1))
    block = fmt.seal(bytes(body), fmt.BT_JDESC, 3)
    with pytest.raises(CorruptionError, match="descriptor count"):
        fmt.unpack_jdesc(block, 3)


def test_jcommit_round_trip():
    block = fmt.pack_jcommit(9, 12, 0xDEADBEEF, 77)
    assert fmt.unpack_jcommit(block, 77) == (9, 12, 0xDEADBEEF)
    with pytest.raises(CorruptionError):
        fmt.unpack_jcommit(block, 78)
