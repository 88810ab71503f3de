"""Attributes: getattr, chmod, chown, truncate, utimes (ns, UTIME_NOW/OMIT),
timestamps as POSIX says, access(2)."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .util import (
    BLOCK,
    NOW,
    OMIT,
    expect_errno,
    read_file,
    utimensat,
    write_file,
)

OLD_ATIME_NS = 1_000_000_000 * 1_000_000_000 + 111  # 2001-09-09
OLD_MTIME_NS = 1_000_000_000 * 1_000_000_000 + 222
SLACK_NS = 5 * 1_000_000_000  # "now" within 5 s (kernel clocks may be coarse)
TICK_NS = 25_000_000  # longer than a jiffy at HZ=100


def _age(*paths: Path) -> dict[Path, os.stat_result]:
    """Set atime/mtime far in the past; return the stat after that.

    ctime cannot be set, so it is "now"; to tell a later ctime update from
    none, wait until the clock is a coarse kernel tick (jiffy) past it.  This
    is not synchronisation with anything: timestamps must become distinct.
    """
    out = {}
    for p in paths:
        os.utime(p, ns=(OLD_ATIME_NS, OLD_MTIME_NS), follow_symlinks=False)
        st = os.lstat(p)
        assert st.st_mtime_ns == OLD_MTIME_NS
        out[p] = st
    newest = max(st.st_ctime_ns for st in out.values())
    while time.time_ns() < newest + TICK_NS:
        time.sleep(TICK_NS / 4e9)
    return out


def _is_now(ns: int, t0: int) -> bool:
    return t0 - SLACK_NS <= ns <= time.time_ns() + SLACK_NS


# --------------------------------------------------------------------------- #
# getattr


def test_getattr_fields(workdir: Path) -> None:
    t0 = time.time_ns()
    write_file(workdir / "f", b"12345")
    st = os.stat(workdir / "f")
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 5
    assert st.st_nlink == 1
    assert st.st_uid == 0 and st.st_gid == 0
    assert st.st_dev == os.stat(workdir).st_dev
    assert st.st_ino != os.stat(workdir).st_ino
    for ns in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns):
        assert _is_now(ns, t0)
    fst = os.stat(workdir / "f")
    assert (fst.st_ino, fst.st_size, fst.st_mtime_ns) == (st.st_ino, st.st_size, st.st_mtime_ns)


def test_fstat_matches_stat(workdir: Path) -> None:
    write_file(workdir / "f", b"x" * 100)
    fd = os.open(workdir / "f", os.O_RDONLY)
    try:
        a, b = os.fstat(fd), os.stat(workdir / "f")
        for field in ("st_ino", "st_mode", "st_nlink", "st_uid", "st_gid", "st_size",
                      "st_mtime_ns", "st_ctime_ns", "st_blocks"):
            assert getattr(a, field) == getattr(b, field), field
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- #
# chmod / chown


@pytest.mark.parametrize("mode", [0o000, 0o644, 0o755, 0o4755, 0o2755, 0o1777, 0o7777, 0o600])
def test_chmod(workdir: Path, mode: int) -> None:
    write_file(workdir / "f", b"")
    os.chmod(workdir / "f", mode)
    st = os.stat(workdir / "f")
    assert stat.S_IMODE(st.st_mode) == mode
    assert stat.S_ISREG(st.st_mode)


def test_chmod_directory_and_fchmod(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    os.chmod(workdir / "d", 0o3751)
    st = os.stat(workdir / "d")
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o3751
    write_file(workdir / "f", b"")
    fd = os.open(workdir / "f", os.O_RDONLY)
    try:
        os.fchmod(fd, 0o640)
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o640
    finally:
        os.close(fd)


def test_chmod_follows_symlink(workdir: Path) -> None:
    write_file(workdir / "t", b"")
    os.symlink("t", workdir / "l")
    os.chmod(workdir / "l", 0o600)
    assert stat.S_IMODE(os.stat(workdir / "t").st_mode) == 0o600
    assert stat.S_ISLNK(os.lstat(workdir / "l").st_mode)


def test_chown(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.chown(workdir / "f", 1234, 5678)
    st = os.stat(workdir / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    os.chown(workdir / "f", -1, 42)
    st = os.stat(workdir / "f")
    assert (st.st_uid, st.st_gid) == (1234, 42)
    os.chown(workdir / "f", 7, -1)
    st = os.stat(workdir / "f")
    assert (st.st_uid, st.st_gid) == (7, 42)
    os.chown(workdir / "f", 2**32 - 2, 2**31 + 5)  # large ids survive
    st = os.stat(workdir / "f")
    assert (st.st_uid, st.st_gid) == (2**32 - 2, 2**31 + 5)


def test_lchown_changes_link_not_target(workdir: Path) -> None:
    write_file(workdir / "t", b"")
    os.symlink("t", workdir / "l")
    os.lchown(workdir / "l", 300, 301)
    assert (os.lstat(workdir / "l").st_uid, os.lstat(workdir / "l").st_gid) == (300, 301)
    assert (os.stat(workdir / "t").st_uid, os.stat(workdir / "t").st_gid) == (0, 0)
    os.chown(workdir / "l", 400, 401)
    assert (os.stat(workdir / "t").st_uid, os.stat(workdir / "t").st_gid) == (400, 401)
    assert os.lstat(workdir / "l").st_uid == 300


def test_chown_clears_setuid_and_setgid(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.chmod(workdir / "f", 0o6755)
    os.chown(workdir / "f", 1000, 1000)
    # Linux: changing the owner of a regular file clears S_ISUID, and S_ISGID
    # when group-execute is set, even for root.
    assert stat.S_IMODE(os.stat(workdir / "f").st_mode) == 0o755
    os.mkdir(workdir / "d")
    os.chmod(workdir / "d", 0o2755)
    os.chown(workdir / "d", 1000, 1000)
    assert stat.S_IMODE(os.stat(workdir / "d").st_mode) == 0o2755  # not on directories


# --------------------------------------------------------------------------- #
# truncate


def test_truncate_path_and_fd(workdir: Path) -> None:
    write_file(workdir / "f", b"0123456789")
    os.truncate(workdir / "f", 4)
    assert read_file(workdir / "f") == b"0123"
    os.truncate(workdir / "f", 8)
    assert read_file(workdir / "f") == b"0123\0\0\0\0"
    fd = os.open(workdir / "f", os.O_RDWR)
    try:
        os.ftruncate(fd, 2)
        assert os.fstat(fd).st_size == 2
        assert os.pread(fd, 10, 0) == b"01"
        os.ftruncate(fd, 3 * BLOCK)
        assert os.pread(fd, 3 * BLOCK, 0) == b"01" + bytes(3 * BLOCK - 2)
    finally:
        os.close(fd)


def test_truncate_directory_is_eisdir(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    with expect_errno(errno.EISDIR):
        os.truncate(workdir / "d", 0)


# --------------------------------------------------------------------------- #
# utimes


@pytest.mark.parametrize(
    "atime_ns,mtime_ns",
    [
        (1_234_567_890_123_456_789, 987_654_321_987_654_321),
        (1, 999_999_999),
        (0, 0),
        (2**33 * 10**9 + 999_999_999, (2**32 + 1) * 10**9 + 1),  # beyond 2038 and 2106
    ],
    ids=["ns", "tiny", "epoch", "far-future"],
)
def test_utime_nanoseconds(workdir: Path, atime_ns: int, mtime_ns: int) -> None:
    write_file(workdir / "f", b"")
    os.utime(workdir / "f", ns=(atime_ns, mtime_ns))
    st = os.stat(workdir / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime_ns, mtime_ns)


def test_utime_before_epoch(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    atime = -(10 * 365 * 86400) * 10**9 + 5  # 1960
    mtime = -1 * 10**9 + 999_999_999  # 1969-12-31 23:59:59.999999999
    os.utime(workdir / "f", ns=(atime, mtime))
    st = os.stat(workdir / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)


def test_utime_on_fd_and_directory(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    os.utime(workdir / "d", ns=(5 * 10**18 // 1000, 6 * 10**18 // 1000))
    st = os.stat(workdir / "d")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5 * 10**15, 6 * 10**15)
    write_file(workdir / "f", b"")
    fd = os.open(workdir / "f", os.O_RDONLY)
    try:
        os.utime(fd, ns=(123, 456))
        assert (os.fstat(fd).st_atime_ns, os.fstat(fd).st_mtime_ns) == (123, 456)
    finally:
        os.close(fd)


def test_utimensat_now_and_omit(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    st0 = _age(workdir / "f")[workdir / "f"]
    t0 = time.time_ns()
    utimensat(workdir / "f", OMIT, NOW)
    st = os.stat(workdir / "f")
    assert st.st_atime_ns == OLD_ATIME_NS
    assert _is_now(st.st_mtime_ns, t0)
    assert st.st_ctime_ns > st0.st_ctime_ns
    utimensat(workdir / "f", NOW, OMIT)
    st2 = os.stat(workdir / "f")
    assert _is_now(st2.st_atime_ns, t0)
    assert st2.st_mtime_ns == st.st_mtime_ns
    utimensat(workdir / "f", (77, 88), OMIT)
    st3 = os.stat(workdir / "f")
    assert (st3.st_atime_ns, st3.st_mtime_ns) == (77 * 10**9 + 88, st.st_mtime_ns)


def test_utimensat_both_omit_changes_nothing(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    st0 = _age(workdir / "f")[workdir / "f"]
    utimensat(workdir / "f", OMIT, OMIT)
    st = os.stat(workdir / "f")
    assert (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns) == \
        (st0.st_atime_ns, st0.st_mtime_ns, st0.st_ctime_ns)


def test_utimensat_invalid_nsec_is_einval(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    with expect_errno(errno.EINVAL):
        utimensat(workdir / "f", (0, 10**9), OMIT)


def test_utimensat_symlink_nofollow(workdir: Path) -> None:
    write_file(workdir / "t", b"")
    os.symlink("t", workdir / "l")
    t_before = os.stat(workdir / "t").st_mtime_ns
    utimensat(workdir / "l", (1000, 1), (2000, 2), follow_symlinks=False)
    lst = os.lstat(workdir / "l")
    assert (lst.st_atime_ns, lst.st_mtime_ns) == (1000 * 10**9 + 1, 2000 * 10**9 + 2)
    assert os.stat(workdir / "t").st_mtime_ns == t_before


# --------------------------------------------------------------------------- #
# timestamps as POSIX says


def _assert_changed(path: Path, before: os.stat_result, t0: int, *, m: bool, c: bool) -> None:
    st = os.lstat(path)
    if m:
        assert st.st_mtime_ns != OLD_MTIME_NS and _is_now(st.st_mtime_ns, t0), "mtime not updated"
    else:
        assert st.st_mtime_ns == before.st_mtime_ns, "mtime changed"
    if c:
        assert st.st_ctime_ns > before.st_ctime_ns, "ctime not updated"
        assert _is_now(st.st_ctime_ns, t0)
    else:
        assert st.st_ctime_ns == before.st_ctime_ns, "ctime changed"


Op = Callable[[Path], None]

def _link_and_unlink(d: Path) -> None:
    os.link(d / "f", d / "f2")
    os.unlink(d / "f2")


def _read(d: Path) -> None:
    assert read_file(d / "f")


def _o_trunc(d: Path) -> None:
    os.close(os.open(d / "f", os.O_WRONLY | os.O_TRUNC))


FILE_OPS: dict[str, tuple[Op, bool, bool]] = {
    # name: (operation on workdir/"f", mtime changes, ctime changes)
    "write": (lambda d: _write_at(d / "f", b"new", 1), True, True),
    "append": (lambda d: _append(d / "f", b"more"), True, True),
    "truncate-shrink": (lambda d: os.truncate(d / "f", 1), True, True),
    "truncate-grow": (lambda d: os.truncate(d / "f", 100000), True, True),
    "o_trunc": (_o_trunc, True, True),
    "chmod": (lambda d: os.chmod(d / "f", 0o600), False, True),
    "chown": (lambda d: os.chown(d / "f", 1, 1), False, True),
    "link": (lambda d: os.link(d / "f", d / "f2"), False, True),
    "unlink-other-link": (_link_and_unlink, False, True),
    "rename": (lambda d: _rename_back(d), False, True),
    "setxattr": (lambda d: os.setxattr(d / "f", "user.t", b"v"), False, True),
    "read": (_read, False, False),
    "stat": (lambda d: None if os.stat(d / "f") else None, False, False),
}


def _write_at(path: Path, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _append(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _rename_back(d: Path) -> None:
    os.rename(d / "f", d / "g")
    os.rename(d / "g", d / "f")


@pytest.mark.parametrize("op", sorted(FILE_OPS))
def test_file_timestamps(workdir: Path, op: str) -> None:
    fn, m, c = FILE_OPS[op]
    write_file(workdir / "f", b"0123456789")
    before = _age(workdir / "f")[workdir / "f"]
    t0 = time.time_ns()
    fn(workdir)
    _assert_changed(workdir / "f", before, t0, m=m, c=c)


DIR_OPS: dict[str, Op] = {
    "create": lambda d: write_file(d / "new", b""),
    "mkdir": lambda d: os.mkdir(d / "newdir"),
    "mknod": lambda d: os.mkfifo(d / "fifo"),
    "symlink": lambda d: os.symlink("x", d / "sl"),
    "link": lambda d: os.link(d / "old", d / "hl"),
    "unlink": lambda d: os.unlink(d / "old"),
    "rmdir": lambda d: os.rmdir(d / "olddir"),
    "rename-within": lambda d: os.rename(d / "old", d / "renamed"),
}


@pytest.mark.parametrize("op", sorted(DIR_OPS))
def test_parent_timestamps(workdir: Path, op: str) -> None:
    os.mkdir(workdir / "p")
    write_file(workdir / "p" / "old", b"")
    os.mkdir(workdir / "p" / "olddir")
    before = _age(workdir / "p")[workdir / "p"]
    t0 = time.time_ns()
    DIR_OPS[op](workdir / "p")
    _assert_changed(workdir / "p", before, t0, m=True, c=True)


def test_rename_across_dirs_updates_both_parents(workdir: Path) -> None:
    os.mkdir(workdir / "a")
    os.mkdir(workdir / "b")
    write_file(workdir / "a" / "f", b"")
    before = _age(workdir / "a", workdir / "b", workdir / "a" / "f")
    t0 = time.time_ns()
    os.rename(workdir / "a" / "f", workdir / "b" / "f")
    _assert_changed(workdir / "a", before[workdir / "a"], t0, m=True, c=True)
    _assert_changed(workdir / "b", before[workdir / "b"], t0, m=True, c=True)
    _assert_changed(workdir / "b" / "f", before[workdir / "a" / "f"], t0, m=False, c=True)


def test_new_file_times_are_now(workdir: Path) -> None:
    t0 = time.time_ns()
    write_file(workdir / "f", b"")
    os.mkdir(workdir / "d")
    os.symlink("f", workdir / "l")
    for name in ("f", "d", "l"):
        st = os.lstat(workdir / name)
        for ns in (st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns):
            assert _is_now(ns, t0), name


def test_mmap_write_updates_mtime(workdir: Path) -> None:
    import mmap

    write_file(workdir / "f", bytes(BLOCK))
    before = _age(workdir / "f")[workdir / "f"]
    t0 = time.time_ns()
    fd = os.open(workdir / "f", os.O_RDWR)
    try:
        with mmap.mmap(fd, BLOCK) as m:
            m[0:1] = b"x"
            m.flush()
        os.fsync(fd)
    finally:
        os.close(fd)
    _assert_changed(workdir / "f", before, t0, m=True, c=True)


def test_read_updates_atime_relatime(workdir: Path) -> None:
    write_file(workdir / "f", b"some data")
    # relatime: an atime older than mtime is updated by the next read
    os.utime(workdir / "f", ns=(OLD_ATIME_NS, OLD_MTIME_NS + 10**12))
    t0 = time.time_ns()
    assert read_file(workdir / "f") == b"some data"
    assert _is_now(os.stat(workdir / "f").st_atime_ns, t0)


# --------------------------------------------------------------------------- #
# access(2) as root (unprivileged checks are in test_permissions.py)


def test_access_as_root(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.chmod(workdir / "f", 0o000)
    assert os.access(workdir / "f", os.F_OK)
    assert os.access(workdir / "f", os.R_OK | os.W_OK)
    assert not os.access(workdir / "f", os.X_OK)  # root needs one x bit to execute
    os.chmod(workdir / "f", 0o010)
    assert os.access(workdir / "f", os.X_OK)
    assert not os.access(workdir / "missing", os.F_OK)
    os.mkdir(workdir / "d", 0o000)
    assert os.access(workdir / "d", os.R_OK | os.W_OK | os.X_OK)
