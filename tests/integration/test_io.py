"""Data: read/write, O_APPEND/O_TRUNC/O_DIRECT, fsync, sparse files and
st_blocks, SEEK_DATA/SEEK_HOLE, fallocate, mmap, copy_file_range, open but
unlinked files."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import random
from pathlib import Path

import pytest

from .conftest import Mount
from .util import (
    BLOCK,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    expect_errno,
    fallocate,
    pattern,
    read_file,
    statvfs_counts,
    write_file,
)

GIB = 1 << 30
MIB = 1 << 20


def _open(path: Path, flags: int = os.O_RDWR | os.O_CREAT, mode: int = 0o644) -> int:
    return os.open(path, flags, mode)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        assert n > 0
        view, offset = view[n:], offset + n


def _pread_all(fd: int, size: int, offset: int) -> bytes:
    out = bytearray()
    while len(out) < size:
        chunk = os.pread(fd, size - len(out), offset + len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


# --------------------------------------------------------------------------- #
# basic read / write


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 65536 + 3, 3 * MIB + 17])
def test_write_read_roundtrip(workdir: Path, size: int) -> None:
    data = pattern(size, seed=size)
    write_file(workdir / "f", data)
    assert os.stat(workdir / "f").st_size == size
    assert read_file(workdir / "f") == data


@pytest.mark.parametrize("offset", [1, 4095, 4096, 8191, 12345])
def test_unaligned_overwrite(workdir: Path, offset: int) -> None:
    base = pattern(5 * BLOCK, seed=1)
    write_file(workdir / "f", base)
    patch = pattern(BLOCK + 100, seed=2)
    fd = _open(workdir / "f", os.O_RDWR)
    try:
        _pwrite_all(fd, patch, offset)
        expected = bytearray(base)
        expected[offset : offset + len(patch)] = patch
        size = max(len(base), offset + len(patch))
        assert os.fstat(fd).st_size == size
        assert _pread_all(fd, size + 10, 0) == bytes(expected)
        assert os.pread(fd, 7, offset + 3) == patch[3:10]
    finally:
        os.close(fd)


def test_read_at_and_past_eof(workdir: Path) -> None:
    write_file(workdir / "f", b"0123456789")
    fd = _open(workdir / "f", os.O_RDONLY)
    try:
        assert os.pread(fd, 100, 0) == b"0123456789"
        assert os.pread(fd, 100, 7) == b"789"
        assert os.pread(fd, 100, 10) == b""
        assert os.pread(fd, 100, 1 << 40) == b""
        assert os.read(fd, 4) == b"0123"
        assert os.read(fd, 100) == b"456789"
        assert os.read(fd, 100) == b""
    finally:
        os.close(fd)


def test_sequential_writes_and_lseek(workdir: Path) -> None:
    fd = _open(workdir / "f")
    try:
        for i in range(100):
            assert os.write(fd, b"%04d" % i) == 4
        assert os.lseek(fd, 0, os.SEEK_CUR) == 400
        assert os.lseek(fd, -8, os.SEEK_END) == 392
        assert os.read(fd, 8) == b"00980099"
        assert os.lseek(fd, 100, os.SEEK_SET) == 100
        assert os.read(fd, 4) == b"0025"
    finally:
        os.close(fd)


def test_write_past_eof_leaves_zero_gap(workdir: Path) -> None:
    fd = _open(workdir / "f")
    try:
        os.write(fd, b"head")
        os.pwrite(fd, b"tail", 10000)
        assert os.fstat(fd).st_size == 10004
        data = _pread_all(fd, 10004, 0)
        assert data[:4] == b"head" and data[-4:] == b"tail"
        assert data[4:10000] == bytes(9996)
    finally:
        os.close(fd)


def test_large_offsets_beyond_32_bits(workdir: Path) -> None:
    fd = _open(workdir / "f")
    try:
        off = 5 * GIB + 3
        os.pwrite(fd, b"far away", off)
        assert os.fstat(fd).st_size == off + 8
        assert os.pread(fd, 8, off) == b"far away"
        assert os.pread(fd, 16, off - 8) == bytes(8) + b"far away"
    finally:
        os.close(fd)


def test_large_single_write_and_read(workdir: Path) -> None:
    data = pattern(16 * MIB + 5, seed=7)
    fd = _open(workdir / "f")
    try:
        assert os.write(fd, data) == len(data)
        assert hashlib.sha256(_pread_all(fd, len(data), 0)).digest() == \
            hashlib.sha256(data).digest()
        got = os.pread(fd, len(data), 0)
        assert len(got) > 0 and got == data[: len(got)]
    finally:
        os.close(fd)


def test_random_io_matches_model(workdir: Path) -> None:
    rng = random.Random(1234)
    model = bytearray()
    fd = _open(workdir / "f")
    try:
        for step in range(400):
            op = rng.random()
            if op < 0.55:
                off = rng.randrange(0, 3 * MIB)
                size = rng.choice([1, 17, 511, 4096, 4097, 8192, rng.randrange(1, 70000)])
                data = rng.randbytes(size)
                _pwrite_all(fd, data, off)
                if len(model) < off:
                    model += bytes(off - len(model))
                model[off : off + size] = data
            elif op < 0.85:
                off = rng.randrange(0, 3 * MIB + 10000)
                size = rng.randrange(1, 100000)
                got = _pread_all(fd, size, off)
                assert got == bytes(model[off : off + size]), f"step {step}: read {off}+{size}"
            elif op < 0.95:
                new = rng.randrange(0, 3 * MIB)
                os.ftruncate(fd, new)
                if new < len(model):
                    del model[new:]
                else:
                    model += bytes(new - len(model))
            else:
                os.fsync(fd)
            assert os.fstat(fd).st_size == len(model), f"step {step}"
        assert _pread_all(fd, len(model) + 1, 0) == bytes(model)
    finally:
        os.close(fd)
    assert read_file(workdir / "f") == bytes(model)


def test_bad_fd_modes(workdir: Path) -> None:
    write_file(workdir / "f", b"data")
    fd = _open(workdir / "f", os.O_RDONLY)
    try:
        with expect_errno(errno.EBADF):
            os.write(fd, b"x")
        with expect_errno(errno.EBADF, errno.EINVAL):
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    fd = _open(workdir / "f", os.O_WRONLY)
    try:
        with expect_errno(errno.EBADF):
            os.read(fd, 1)
    finally:
        os.close(fd)
    assert read_file(workdir / "f") == b"data"


# --------------------------------------------------------------------------- #
# open flags


def test_o_append(workdir: Path) -> None:
    write_file(workdir / "f", b"start;")
    fd1 = _open(workdir / "f", os.O_WRONLY | os.O_APPEND)
    fd2 = _open(workdir / "f", os.O_WRONLY | os.O_APPEND)
    try:
        os.lseek(fd1, 0, os.SEEK_SET)
        os.write(fd1, b"one;")
        os.write(fd2, b"two;")
        os.lseek(fd1, 2, os.SEEK_SET)
        os.write(fd1, b"three;")
        assert os.lseek(fd1, 0, os.SEEK_CUR) == len(b"start;one;two;three;")
    finally:
        os.close(fd1)
        os.close(fd2)
    assert read_file(workdir / "f") == b"start;one;two;three;"


def test_o_trunc(workdir: Path) -> None:
    write_file(workdir / "f", pattern(5 * BLOCK))
    ino = os.stat(workdir / "f").st_ino
    fd = _open(workdir / "f", os.O_WRONLY | os.O_TRUNC)
    try:
        assert os.fstat(fd).st_size == 0
        os.write(fd, b"short")
        os.fsync(fd)
    finally:
        os.close(fd)
    st = os.stat(workdir / "f")
    assert st.st_ino == ino
    assert st.st_size == 5
    assert st.st_blocks == 8
    assert read_file(workdir / "f") == b"short"


def test_o_direct_aligned_io(workdir: Path, mnt: Mount) -> None:
    buf = mmap.mmap(-1, 4 * BLOCK)
    data = pattern(4 * BLOCK, seed=9)
    buf[:] = data
    try:
        fd = _open(workdir / "f", os.O_RDWR | os.O_CREAT | os.O_DIRECT)
    except OSError as exc:
        if exc.errno == errno.EINVAL and mnt.is_tmpfs:
            pytest.skip("this tmpfs has no O_DIRECT")
        raise
    try:
        assert os.pwritev(fd, [buf], BLOCK) == 4 * BLOCK
        out = mmap.mmap(-1, 4 * BLOCK)
        assert os.preadv(fd, [out], BLOCK) == 4 * BLOCK
        assert out[:] == data
        out.close()
    finally:
        os.close(fd)
        buf.close()
    assert read_file(workdir / "f") == bytes(BLOCK) + data


@pytest.mark.parametrize("flag", ["O_SYNC", "O_DSYNC"])
def test_o_sync_writes(workdir: Path, flag: str) -> None:
    fd = _open(workdir / "f", os.O_RDWR | os.O_CREAT | getattr(os, flag))
    try:
        assert os.write(fd, b"synchronous") == 11
        assert os.pread(fd, 20, 0) == b"synchronous"
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# fsync / fdatasync


def test_fsync_and_fdatasync(workdir: Path) -> None:
    fd = _open(workdir / "f")
    try:
        os.write(fd, pattern(3 * BLOCK))
        assert os.fsync(fd) is None
        os.pwrite(fd, b"X", 5)
        assert os.fdatasync(fd) is None
        assert os.pread(fd, 6, 0)[5:] == b"X"
    finally:
        os.close(fd)
    rfd = _open(workdir / "f", os.O_RDONLY)
    try:
        os.fsync(rfd)
        os.fdatasync(rfd)
    finally:
        os.close(rfd)


def test_fsync_on_directory_fd(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    write_file(workdir / "d" / "f", b"x")
    fd = os.open(workdir / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.fsync(fd) is None
        assert os.fdatasync(fd) is None
    finally:
        os.close(fd)
    assert os.listdir(workdir / "d") == ["f"]


# --------------------------------------------------------------------------- #
# sparse files, st_blocks, SEEK_DATA / SEEK_HOLE


def test_sparse_file_reads_zeros_and_counts_one_block(workdir: Path) -> None:
    data = pattern(BLOCK, seed=3)
    fd = _open(workdir / "sparse")
    try:
        _pwrite_all(fd, data, GIB)
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == GIB + BLOCK
        assert st.st_blocks == 8
        assert os.pread(fd, BLOCK, 0) == bytes(BLOCK)
        assert _pread_all(fd, MIB, GIB // 2) == bytes(MIB)
        assert _pread_all(fd, 2 * BLOCK, GIB - BLOCK) == bytes(BLOCK) + data
    finally:
        os.close(fd)


def test_st_blocks_is_honest(workdir: Path) -> None:
    fd = _open(workdir / "f")
    try:
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 0
        os.pwrite(fd, b"x", 10 * BLOCK + 100)  # one block, inside block 10
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 8
        os.pwrite(fd, b"yy", 20 * BLOCK - 1)  # straddles blocks 19 and 20
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 3 * 8
        os.ftruncate(fd, 100 * BLOCK)  # growing truncate allocates nothing
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 3 * 8
        os.ftruncate(fd, 15 * BLOCK)  # frees blocks 19 and 20
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 8
        os.ftruncate(fd, 0)
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 0
        _pwrite_all(fd, pattern(10 * BLOCK), 0)
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 80
    finally:
        os.close(fd)


def test_truncate_shrink_then_grow_reads_zeros(workdir: Path) -> None:
    write_file(workdir / "f", pattern(3 * BLOCK, seed=4))
    os.truncate(workdir / "f", BLOCK + 10)
    os.truncate(workdir / "f", 3 * BLOCK)
    data = read_file(workdir / "f")
    assert len(data) == 3 * BLOCK
    assert data[: BLOCK + 10] == pattern(3 * BLOCK, seed=4)[: BLOCK + 10]
    assert data[BLOCK + 10 :] == bytes(2 * BLOCK - 10)


def test_seek_data_and_hole(workdir: Path) -> None:
    fd = _open(workdir / "f")
    try:
        os.ftruncate(fd, 8 * MIB)
        os.pwrite(fd, pattern(BLOCK), MIB)
        os.pwrite(fd, pattern(BLOCK), 4 * MIB)
        os.fsync(fd)
        assert os.lseek(fd, 0, os.SEEK_DATA) == MIB
        assert os.lseek(fd, MIB, os.SEEK_HOLE) == MIB + BLOCK
        assert os.lseek(fd, MIB + BLOCK, os.SEEK_DATA) == 4 * MIB
        assert os.lseek(fd, 4 * MIB + 100, os.SEEK_DATA) == 4 * MIB + 100
        assert os.lseek(fd, 4 * MIB, os.SEEK_HOLE) == 4 * MIB + BLOCK
        assert os.lseek(fd, 7 * MIB, os.SEEK_HOLE) == 7 * MIB
        with expect_errno(errno.ENXIO):
            os.lseek(fd, 4 * MIB + BLOCK, os.SEEK_DATA)
        with expect_errno(errno.ENXIO):
            os.lseek(fd, 8 * MIB, os.SEEK_DATA)
        with expect_errno(errno.ENXIO):
            os.lseek(fd, 8 * MIB, os.SEEK_HOLE)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# fallocate


def test_fallocate_allocates_and_extends(workdir: Path) -> None:
    free0, _ = statvfs_counts(workdir)
    fd = _open(workdir / "f")
    try:
        fallocate(fd, 0, 0, MIB)
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == MIB
        assert st.st_blocks == MIB // 512
        assert _pread_all(fd, MIB, 0) == bytes(MIB)
        free1, _ = statvfs_counts(workdir)
        assert free0 - free1 >= MIB // BLOCK
    finally:
        os.close(fd)


def test_fallocate_keep_size(workdir: Path) -> None:
    write_file(workdir / "f", b"abc")
    fd = _open(workdir / "f")
    try:
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 16 * BLOCK)
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == 3
        assert st.st_blocks == 16 * 8
        assert os.pread(fd, 10, 0) == b"abc"
        os.pwrite(fd, b"z", 10 * BLOCK)  # into the preallocated range
        assert os.fstat(fd).st_size == 10 * BLOCK + 1
        assert os.fstat(fd).st_blocks == 16 * 8
        assert os.pread(fd, 2, 10 * BLOCK - 1) == b"\0z"
    finally:
        os.close(fd)


def test_fallocate_punch_hole(workdir: Path) -> None:
    data = pattern(16 * BLOCK, seed=5)
    write_file(workdir / "f", data)
    fd = _open(workdir / "f")
    try:
        os.fsync(fd)
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4 * BLOCK, 4 * BLOCK)
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == 16 * BLOCK
        assert st.st_blocks == 12 * 8
        expected = data[: 4 * BLOCK] + bytes(4 * BLOCK) + data[8 * BLOCK :]
        assert _pread_all(fd, 16 * BLOCK, 0) == expected
        assert os.lseek(fd, 4 * BLOCK, os.SEEK_HOLE) == 4 * BLOCK
        assert os.lseek(fd, 4 * BLOCK, os.SEEK_DATA) == 8 * BLOCK
        # unaligned punch: partial blocks are zeroed, nothing else changes
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 10 * BLOCK + 100, 50)
        expected = expected[: 10 * BLOCK + 100] + bytes(50) + expected[10 * BLOCK + 150 :]
        assert _pread_all(fd, 16 * BLOCK, 0) == expected
        # punching past EOF does not extend the file
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 15 * BLOCK, 10 * BLOCK)
        assert os.fstat(fd).st_size == 16 * BLOCK
    finally:
        os.close(fd)


def test_fallocate_punch_hole_returns_space(workdir: Path) -> None:
    free0, _ = statvfs_counts(workdir)
    write_file(workdir / "f", pattern(MIB))
    fd = _open(workdir / "f")
    try:
        os.fsync(fd)
        free1, _ = statvfs_counts(workdir)
        assert free0 - free1 >= MIB // BLOCK
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, MIB)
        os.fsync(fd)
        assert os.fstat(fd).st_blocks == 0
        free2, _ = statvfs_counts(workdir)
        assert free2 - free1 >= MIB // BLOCK
    finally:
        os.close(fd)


@pytest.mark.daxfs_only
def test_fallocate_zero_range(workdir: Path) -> None:
    data = pattern(8 * BLOCK, seed=6)
    write_file(workdir / "f", data)
    fd = _open(workdir / "f")
    try:
        fallocate(fd, FALLOC_FL_ZERO_RANGE, BLOCK + 10, 2 * BLOCK)
        expected = data[: BLOCK + 10] + bytes(2 * BLOCK) + data[3 * BLOCK + 10 :]
        assert _pread_all(fd, 8 * BLOCK, 0) == expected
        assert os.fstat(fd).st_size == 8 * BLOCK
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 7 * BLOCK, 4 * BLOCK)  # extends the file
        assert os.fstat(fd).st_size == 11 * BLOCK
        assert _pread_all(fd, 4 * BLOCK, 7 * BLOCK) == bytes(4 * BLOCK)
        fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 11 * BLOCK, BLOCK)
        assert os.fstat(fd).st_size == 11 * BLOCK
    finally:
        os.close(fd)


def test_fallocate_errors(workdir: Path) -> None:
    write_file(workdir / "f", b"x")
    fd = _open(workdir / "f")
    try:
        with expect_errno(errno.EINVAL):
            fallocate(fd, 0, -BLOCK, BLOCK)
        with expect_errno(errno.EINVAL):
            fallocate(fd, 0, 0, 0)
        with expect_errno(errno.EOPNOTSUPP):
            fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, BLOCK)  # needs KEEP_SIZE
    finally:
        os.close(fd)
    rfd = _open(workdir / "f", os.O_RDONLY)
    try:
        with expect_errno(errno.EBADF):
            fallocate(rfd, 0, 0, BLOCK)
    finally:
        os.close(rfd)
    assert read_file(workdir / "f") == b"x"


# --------------------------------------------------------------------------- #
# mmap


def test_mmap_shared_write_visible_to_read(workdir: Path) -> None:
    write_file(workdir / "f", bytes(4 * BLOCK))
    fd = _open(workdir / "f")
    try:
        with mmap.mmap(fd, 4 * BLOCK, mmap.MAP_SHARED) as m:
            m[BLOCK : BLOCK + 5] = b"mmap!"
            m[-1:] = b"E"
            m.flush()
            assert os.pread(fd, 5, BLOCK) == b"mmap!"
            assert os.pread(fd, 1, 4 * BLOCK - 1) == b"E"
    finally:
        os.close(fd)
    data = read_file(workdir / "f")
    assert data[BLOCK : BLOCK + 5] == b"mmap!" and data[-1:] == b"E"


def test_mmap_sees_write(workdir: Path) -> None:
    write_file(workdir / "f", bytes(2 * BLOCK))
    fd = _open(workdir / "f")
    try:
        with mmap.mmap(fd, 2 * BLOCK, mmap.MAP_SHARED) as m:
            assert m[:4] == b"\0\0\0\0"
            os.pwrite(fd, b"write()", 100)
            assert m[100:107] == b"write()"
    finally:
        os.close(fd)


def test_mmap_after_extend_and_private(workdir: Path) -> None:
    fd = _open(workdir / "f")
    try:
        os.ftruncate(fd, 3 * BLOCK)
        with mmap.mmap(fd, 3 * BLOCK, mmap.MAP_SHARED) as m:
            m[2 * BLOCK : 2 * BLOCK + 3] = b"abc"
            m.flush()
        with mmap.mmap(fd, 3 * BLOCK, mmap.MAP_PRIVATE) as p:
            assert p[2 * BLOCK : 2 * BLOCK + 3] == b"abc"
            p[0:4] = b"priv"
        assert os.pread(fd, 4, 0) == bytes(4)  # private writes never reach the file
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# copy_file_range / sendfile


def test_copy_file_range_and_sendfile(workdir: Path) -> None:
    data = pattern(3 * MIB + 123, seed=8)
    write_file(workdir / "src", data)
    src = _open(workdir / "src", os.O_RDONLY)
    dst = _open(workdir / "dst")
    dst2 = _open(workdir / "dst2")
    try:
        copied = 0
        while copied < len(data):
            n = os.copy_file_range(src, dst, len(data) - copied)
            assert n > 0
            copied += n
        os.lseek(src, 0, os.SEEK_SET)
        sent = 0
        while sent < len(data):
            n = os.sendfile(dst2, src, sent, len(data) - sent)
            assert n > 0
            sent += n
        n = os.copy_file_range(src, dst, 10, offset_src=5, offset_dst=len(data) + BLOCK)
        assert n == 10
    finally:
        for fd in (src, dst, dst2):
            os.close(fd)
    assert read_file(workdir / "dst2") == data
    assert read_file(workdir / "dst") == data + bytes(BLOCK) + data[5:15]


# --------------------------------------------------------------------------- #
# open but unlinked


def test_unlinked_open_file_keeps_data_until_close(workdir: Path) -> None:
    # A sibling keeps the directory's block allocated throughout (an emptied last
    # directory block goes back to the allocator), so only the file's data counts.
    write_file(workdir / "keep", b"")
    free0, _ = statvfs_counts(workdir)
    data = pattern(MIB, seed=11)
    fd = _open(workdir / "f")
    try:
        _pwrite_all(fd, data, 0)
        os.fsync(fd)
        free1, _ = statvfs_counts(workdir)
        assert free0 - free1 >= MIB // BLOCK
        os.unlink(workdir / "f")
        assert not os.path.lexists(workdir / "f")
        assert os.fstat(fd).st_nlink == 0
        assert _pread_all(fd, MIB, 0) == data
        # still allocated while open, and still writable
        assert statvfs_counts(workdir)[0] <= free1
        os.pwrite(fd, b"more", MIB)
        assert os.pread(fd, 4, MIB) == b"more"
        assert os.fstat(fd).st_size == MIB + 4
    finally:
        os.close(fd)
    # after the last close the blocks go back to the allocator
    assert statvfs_counts(workdir)[0] == free0


def test_unlinked_file_open_twice(workdir: Path) -> None:
    write_file(workdir / "f", b"twice")
    fd1 = _open(workdir / "f", os.O_RDONLY)
    fd2 = _open(workdir / "f", os.O_RDWR)
    try:
        os.unlink(workdir / "f")
        os.close(fd1)
        fd1 = -1
        os.pwrite(fd2, b"T", 0)
        assert os.pread(fd2, 10, 0) == b"Twice"
        write_file(workdir / "f", b"new file")  # the name is free again
        assert os.fstat(fd2).st_ino != os.stat(workdir / "f").st_ino
    finally:
        if fd1 >= 0:
            os.close(fd1)
        os.close(fd2)
    assert read_file(workdir / "f") == b"new file"
