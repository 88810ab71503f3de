"""Limits and errors: ENAMETOOLONG, EFBIG, EINVAL for negative offsets,
ENOSPC (blocks and inodes) without half-made files or leaked blocks, statfs
numbers, and a 100,000-entry directory."""

from __future__ import annotations

import errno
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import Mount
from .util import (
    BLOCK,
    FALLOC_FL_KEEP_SIZE,
    MAX_FILE_SIZE,
    expect_errno,
    fallocate,
    pattern,
    read_file,
    statvfs_counts,
    write_file,
)

MIB = 1 << 20

# --------------------------------------------------------------------------- #
# ENAMETOOLONG


def test_name_of_255_bytes_works_256_is_enametoolong(workdir: Path) -> None:
    ok = "n" * 255
    bad = "n" * 256
    write_file(workdir / ok, b"x")
    os.mkdir(workdir / ("d" * 255))
    assert read_file(workdir / ok) == b"x"
    ops: dict[str, Callable[[], object]] = {
        "stat": lambda: os.stat(workdir / bad),
        "create": lambda: os.open(workdir / bad, os.O_CREAT | os.O_WRONLY, 0o644),
        "mkdir": lambda: os.mkdir(workdir / bad),
        "mknod": lambda: os.mknod(workdir / bad, stat.S_IFIFO | 0o644),
        "symlink": lambda: os.symlink("target", workdir / bad),
        "link": lambda: os.link(workdir / ok, workdir / bad),
        "rename": lambda: os.rename(workdir / ok, workdir / bad),
        "unlink": lambda: os.unlink(workdir / bad),
        "rmdir": lambda: os.rmdir(workdir / bad),
    }
    for name, op in ops.items():
        try:
            op()
        except OSError as exc:
            assert exc.errno == errno.ENAMETOOLONG, f"{name}: {exc}"
        else:
            pytest.fail(f"{name} with a 256-byte name succeeded")
    assert sorted(os.listdir(workdir)) == sorted([ok, "d" * 255])


def test_name_limit_counts_bytes_not_characters(workdir: Path) -> None:
    ok = "é" * 127 + "a"  # 255 bytes in UTF-8
    bad = "é" * 128  # 256 bytes
    write_file(workdir / ok, b"")
    assert os.listdir(workdir) == [ok]
    with expect_errno(errno.ENAMETOOLONG):
        write_file(workdir / bad, b"")


# --------------------------------------------------------------------------- #
# EFBIG (max file size 2**44)


@pytest.mark.daxfs_only
def test_write_at_max_file_size(workdir: Path) -> None:
    fd = os.open(workdir / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert os.pwrite(fd, b"L", MAX_FILE_SIZE - 1) == 1  # ends exactly at the limit
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == MAX_FILE_SIZE
        assert st.st_blocks == 8
        assert os.pread(fd, 10, MAX_FILE_SIZE - 1) == b"L"
        with expect_errno(errno.EFBIG):
            os.pwrite(fd, b"x", MAX_FILE_SIZE)
        with expect_errno(errno.EFBIG):
            os.pwrite(fd, b"xy", MAX_FILE_SIZE - 1)  # ends beyond the limit
        with expect_errno(errno.EFBIG):
            os.pwrite(fd, b"z", MAX_FILE_SIZE + 12345 * BLOCK)
        assert os.fstat(fd).st_size == MAX_FILE_SIZE
        assert os.pread(fd, 10, MAX_FILE_SIZE - 1) == b"L"
    finally:
        os.close(fd)


@pytest.mark.daxfs_only
def test_truncate_beyond_max_file_size(workdir: Path) -> None:
    write_file(workdir / "f", b"abc")
    os.truncate(workdir / "f", MAX_FILE_SIZE)
    assert os.stat(workdir / "f").st_size == MAX_FILE_SIZE
    with expect_errno(errno.EFBIG):
        os.truncate(workdir / "f", MAX_FILE_SIZE + 1)
    fd = os.open(workdir / "f", os.O_RDWR)
    try:
        with expect_errno(errno.EFBIG):
            os.ftruncate(fd, 2**50)
        with expect_errno(errno.EFBIG):
            fallocate(fd, FALLOC_FL_KEEP_SIZE, MAX_FILE_SIZE - BLOCK, 2 * BLOCK)
        assert os.fstat(fd).st_size == MAX_FILE_SIZE
        os.ftruncate(fd, 3)
    finally:
        os.close(fd)
    assert read_file(workdir / "f") == b"abc"


# --------------------------------------------------------------------------- #
# EINVAL


def test_negative_offsets_are_einval(workdir: Path) -> None:
    write_file(workdir / "f", b"0123456789")
    fd = os.open(workdir / "f", os.O_RDWR)
    try:
        with expect_errno(errno.EINVAL):
            os.pread(fd, 4, -1)
        with expect_errno(errno.EINVAL):
            os.pwrite(fd, b"x", -BLOCK)
        with expect_errno(errno.EINVAL):
            os.lseek(fd, -1, os.SEEK_SET)
        with expect_errno(errno.EINVAL):
            os.lseek(fd, -11, os.SEEK_END)
        with expect_errno(errno.EINVAL):
            os.ftruncate(fd, -1)
        with expect_errno(errno.EINVAL):
            os.preadv(fd, [bytearray(4)], -2)
        with expect_errno(errno.EINVAL):
            os.lseek(fd, 0, 42)  # bad whence
    finally:
        os.close(fd)
    with expect_errno(errno.EINVAL):
        os.truncate(workdir / "f", -5)
    assert read_file(workdir / "f") == b"0123456789"


# --------------------------------------------------------------------------- #
# statfs


def _prewarm(directory: Path, *names: str) -> None:
    """Create and remove entries once, so that space the directory itself
    needs for them is already allocated before free counts are taken."""
    for n in names:
        write_file(directory / n, b"")
    for n in names:
        os.unlink(directory / n)


@pytest.mark.daxfs_only
def test_statfs_geometry(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="64M", mkfs_args=["--inodes", "1000"])
    sv = os.statvfs(m.path)
    assert sv.f_bsize == BLOCK
    assert sv.f_frsize == BLOCK
    assert sv.f_namemax == 255
    total = 64 * MIB // BLOCK
    assert total // 2 < sv.f_blocks <= total, "f_blocks is not the device size less metadata"
    assert 0 < sv.f_bfree <= sv.f_blocks
    assert sv.f_bavail <= sv.f_bfree
    assert sv.f_files == 1000
    assert 0 < sv.f_ffree < sv.f_files
    write_file(m.path / "f", b"x")
    assert os.stat(m.path / "f").st_blksize == BLOCK
    assert os.statvfs(m.path).f_ffree == sv.f_ffree - 1


def test_statfs_tracks_blocks_written(workdir: Path) -> None:
    _prewarm(workdir, "f")
    free_before_create, files_before = statvfs_counts(workdir)
    fd = os.open(workdir / "f", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.fsync(fd)
        free0, _ = statvfs_counts(workdir)
        os.write(fd, pattern(64 * BLOCK))
        os.fsync(fd)
        free1, _ = statvfs_counts(workdir)
        assert 64 <= free0 - free1 <= 64 + 2, f"64 blocks written, free dropped {free0 - free1}"
        assert os.fstat(fd).st_blocks == 64 * 8
        os.ftruncate(fd, 16 * BLOCK)
        os.fsync(fd)
        free2, _ = statvfs_counts(workdir)
        assert free2 - free1 == 48
    finally:
        os.close(fd)
    os.unlink(workdir / "f")
    assert statvfs_counts(workdir) == (free_before_create, files_before)


# --------------------------------------------------------------------------- #
# ENOSPC


def _fill(path: Path, chunk: bytes, limit: int) -> int:
    """Write chunk repeatedly until ENOSPC; return the bytes accepted."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    written = 0
    try:
        while True:
            assert written <= limit, "wrote more than the device holds without ENOSPC"
            try:
                n = os.write(fd, chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, f"expected ENOSPC, got {exc}"
                break
            assert n > 0
            written += n
        os.fsync(fd)
    finally:
        os.close(fd)
    return written


def test_enospc_leaves_no_half_made_file_or_leak(
    daxfs_mount: Callable[..., Mount], dax_mode: str
) -> None:
    m = daxfs_mount(size="16M", opts=f"dax={dax_mode}")
    root = m.path
    _prewarm(root, "big", "small", "dir", "link", "again")
    free0, files0 = statvfs_counts(root)
    chunk = pattern(256 * 1024, seed=3)
    written = _fill(root / "big", chunk, 16 * MIB)
    assert written > 8 * MIB, f"only {written} bytes fit in a 16 MiB image"
    st = os.stat(root / "big")
    assert st.st_size == written
    assert st.st_blocks * 512 >= written
    expected = (chunk * (written // len(chunk) + 1))[:written]
    assert read_file(root / "big") == expected
    sv = os.statvfs(root)
    assert sv.f_bavail <= 16, (
        f"ENOSPC while statfs reports f_bavail={sv.f_bavail} f_bfree={sv.f_bfree} blocks "
        f"(writes were {len(chunk)} bytes; a write should fill what is left, as POSIX says)")

    # the device is full: every operation either works completely or leaves nothing
    try:
        write_file(root / "small", b"x" * BLOCK)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        if os.path.lexists(root / "small"):
            assert os.stat(root / "small").st_size == 0
            assert os.stat(root / "small").st_blocks == 0
    try:
        os.mkdir(root / "dir")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        assert not os.path.lexists(root / "dir")
    target = "t" * 3000
    try:
        os.symlink(target, root / "link")
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
        assert not os.path.lexists(root / "link")
    else:
        assert os.readlink(root / "link") == target
    fd = os.open(root / "big", os.O_RDWR)
    try:
        blocks = os.fstat(fd).st_blocks
        with expect_errno(errno.ENOSPC):
            fallocate(fd, 0, written, 4 * MIB)
        assert os.fstat(fd).st_size == written
        assert os.fstat(fd).st_blocks == blocks
    finally:
        os.close(fd)

    for name in ("big", "small", "link"):
        if os.path.lexists(root / name):
            os.unlink(root / name)
    if os.path.lexists(root / "dir"):
        os.rmdir(root / "dir")
    right_after_delete = statvfs_counts(root)
    if not m.is_tmpfs:
        m.remount()
        assert statvfs_counts(root) == (free0, files0), "blocks or inodes leaked (after remount)"
    assert right_after_delete == (free0, files0), (
        f"statfs right after the deletes: {right_after_delete}, before: {(free0, files0)}"
        + ("" if m.is_tmpfs else "; after a remount it was right: space is returned late"))
    # the same space can be filled again
    assert _fill(root / "again", chunk, 16 * MIB) == written
    os.unlink(root / "again")
    assert statvfs_counts(root) == (free0, files0)


def test_enospc_for_inodes(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="64M", mkfs_args=["--inodes", "64"])
    _, files0 = statvfs_counts(m.path)
    created = 0
    while True:
        assert created <= 64, "created more files than there are inodes"
        try:
            os.close(os.open(m.path / f"f{created}", os.O_CREAT | os.O_WRONLY, 0o644))
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
            break
        created += 1
    assert created == files0, f"f_ffree said {files0} inodes were free, {created} were"
    assert not os.path.lexists(m.path / f"f{created}")
    assert statvfs_counts(m.path)[1] == 0
    with expect_errno(errno.ENOSPC):
        os.mkdir(m.path / "d")
    with expect_errno(errno.ENOSPC):
        os.symlink("x", m.path / "l")
    for i in range(created):
        os.unlink(m.path / f"f{i}")
    assert statvfs_counts(m.path)[1] == files0, "inodes leaked"


# --------------------------------------------------------------------------- #
# a huge directory


def _time_stats(paths: list[Path]) -> float:
    t0 = time.perf_counter()
    for p in paths:
        try:
            os.stat(p)
        except FileNotFoundError:
            pass
    return time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_directory_with_100000_entries(daxfs_mount: Callable[..., Mount]) -> None:
    n_big = 100_000
    m = daxfs_mount(size="1G", mkfs_args=["--inodes", "120000"])
    big = m.path / "big"
    os.mkdir(big)
    for i in range(n_big):
        os.mknod(big / f"entry-{i:06d}")
    smalls = [m.path / f"small{k}" for k in range(10)]  # 10 x 100 entries
    for s in smalls:
        os.mkdir(s)
        for i in range(100):
            os.mknod(s / f"entry-{i:06d}")
    if not m.is_tmpfs:
        m.remount()  # cold dentry cache: every lookup below reaches the daemon

    rng = random.Random(99)
    big_hits = [big / f"entry-{i:06d}" for i in rng.sample(range(n_big), 1000)]
    small_hits = [s / f"entry-{i:06d}" for s in smalls for i in range(100)]
    rng.shuffle(small_hits)
    t_big_hit = _time_stats(big_hits)
    t_small_hit = _time_stats(small_hits)
    t_big_miss = min(_time_stats([big / f"miss-{r}-{i}" for i in range(1000)]) for r in range(3))
    t_small_miss = min(
        _time_stats([smalls[i % 10] / f"miss-{r}-{i}" for i in range(1000)]) for r in range(3)
    )
    ratio_hit = t_big_hit / t_small_hit
    ratio_miss = t_big_miss / t_small_miss
    assert ratio_hit < 20, f"lookup in 100k dir {ratio_hit:.1f}x slower ({t_big_hit:.3f}s)"
    assert ratio_miss < 20, f"negative lookup {ratio_miss:.1f}x slower ({t_big_miss:.3f}s)"

    assert len(os.listdir(big)) == n_big
    gone = rng.sample(range(n_big), 500)
    for i in gone:
        os.unlink(big / f"entry-{i:06d}")
    for i in gone[:50]:
        assert not os.path.lexists(big / f"entry-{i:06d}")
    keep = next(i for i in range(n_big) if i not in set(gone))
    assert stat.S_ISREG(os.stat(big / f"entry-{keep:06d}").st_mode)
    assert len(os.listdir(big)) == n_big - 500
