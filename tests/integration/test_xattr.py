"""Extended attributes: set/get/list/remove, XATTR_CREATE / XATTR_REPLACE,
sizes, directories, hard links, permissions."""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import pytest

from .util import as_nobody, expect_errno, getxattr_raw, pattern, read_file, write_file


@pytest.fixture
def f(workdir: Path) -> Path:
    path = workdir / "f"
    write_file(path, b"data")
    return path


def test_set_get_list_remove(f: Path) -> None:
    assert [n for n in os.listxattr(f) if n.startswith("user.")] == []
    os.setxattr(f, "user.one", b"1")
    os.setxattr(f, "user.two", b"second value")
    assert os.getxattr(f, "user.one") == b"1"
    assert os.getxattr(f, "user.two") == b"second value"
    assert sorted(n for n in os.listxattr(f) if n.startswith("user.")) == ["user.one", "user.two"]
    os.removexattr(f, "user.one")
    assert [n for n in os.listxattr(f) if n.startswith("user.")] == ["user.two"]
    with expect_errno(errno.ENODATA):
        os.getxattr(f, "user.one")
    assert read_file(f) == b"data"


def test_overwrite_value(f: Path) -> None:
    os.setxattr(f, "user.k", b"a long first value" * 10)
    os.setxattr(f, "user.k", b"short")
    assert os.getxattr(f, "user.k") == b"short"
    os.setxattr(f, "user.k", b"grown again " * 50)
    assert os.getxattr(f, "user.k") == b"grown again " * 50


def test_xattr_create_flag(f: Path) -> None:
    os.setxattr(f, "user.k", b"v1", os.XATTR_CREATE)
    with expect_errno(errno.EEXIST):
        os.setxattr(f, "user.k", b"v2", os.XATTR_CREATE)
    assert os.getxattr(f, "user.k") == b"v1"


def test_xattr_replace_flag(f: Path) -> None:
    with expect_errno(errno.ENODATA):
        os.setxattr(f, "user.k", b"v", os.XATTR_REPLACE)
    assert "user.k" not in os.listxattr(f)
    os.setxattr(f, "user.k", b"v1")
    os.setxattr(f, "user.k", b"v2", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.k") == b"v2"


def test_missing_attribute_errors(f: Path) -> None:
    with expect_errno(errno.ENODATA):
        os.getxattr(f, "user.missing")
    with expect_errno(errno.ENODATA):
        os.removexattr(f, "user.missing")


@pytest.mark.parametrize("size", [0, 1, 255, 3000])
def test_value_sizes_and_binary(f: Path, size: int) -> None:
    value = bytes((i * 7 + 3) % 256 for i in range(size))
    if size > 2:
        value = b"\0" + value[1:-1] + b"\0"
    os.setxattr(f, "user.bin", value)
    assert os.getxattr(f, "user.bin") == value


@pytest.mark.parametrize("size", [4000, 16384, 65536])
def test_large_value_all_or_nothing(f: Path, size: int) -> None:
    """A value past the filesystem's limit fails with ENOSPC/E2BIG and changes nothing."""
    os.setxattr(f, "user.big", b"old")
    value = pattern(size, seed=size)
    try:
        os.setxattr(f, "user.big", value)
    except OSError as exc:
        assert exc.errno in (errno.ENOSPC, errno.E2BIG), exc
        assert os.getxattr(f, "user.big") == b"old"
        assert sorted(n for n in os.listxattr(f) if n.startswith("user.")) == ["user.big"]
    else:
        assert os.getxattr(f, "user.big") == value
    os.setxattr(f, "user.small", b"still works")
    assert os.getxattr(f, "user.small") == b"still works"


def test_erange_for_small_buffer(f: Path) -> None:
    os.setxattr(f, "user.k", b"0123456789")
    assert getxattr_raw(f, "user.k", 0) == 10  # size query
    with expect_errno(errno.ERANGE):
        getxattr_raw(f, "user.k", 5)
    assert getxattr_raw(f, "user.k", 10) == 10


def test_name_limits(f: Path) -> None:
    long_ok = "user." + "n" * 250  # 255 bytes
    os.setxattr(f, long_ok, b"v")
    assert os.getxattr(f, long_ok) == b"v"
    with expect_errno(errno.ERANGE):
        os.setxattr(f, "user." + "n" * 251, b"v")  # 256 bytes: over XATTR_NAME_MAX


def test_unknown_namespace_is_eopnotsupp(f: Path) -> None:
    with expect_errno(errno.EOPNOTSUPP, errno.ENOTSUP):
        os.setxattr(f, "bogusns.k", b"v")
    with expect_errno(errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENODATA):
        os.getxattr(f, "bogusns.k")


def test_many_attributes(f: Path) -> None:
    names = {f"user.attr{i:03d}": b"value-%d" % i for i in range(100)}
    for n, v in names.items():
        os.setxattr(f, n, v)
    assert {n for n in os.listxattr(f) if n.startswith("user.")} == set(names)
    for n, v in names.items():
        assert os.getxattr(f, n) == v
    for i, n in enumerate(sorted(names)):
        if i % 2:
            os.removexattr(f, n)
    left = {n for n in os.listxattr(f) if n.startswith("user.")}
    assert left == {n for i, n in enumerate(sorted(names)) if i % 2 == 0}


def test_xattr_on_directory(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    os.setxattr(workdir / "d", "user.dir", b"on a dir")
    assert os.getxattr(workdir / "d", "user.dir") == b"on a dir"
    write_file(workdir / "d" / "child", b"")
    assert "user.dir" not in os.listxattr(workdir / "d" / "child")


def test_xattr_shared_by_hard_links(f: Path) -> None:
    os.link(f, f.with_name("g"))
    os.setxattr(f, "user.k", b"shared")
    assert os.getxattr(f.with_name("g"), "user.k") == b"shared"


def test_xattr_survives_rename(f: Path) -> None:
    os.setxattr(f, "user.k", b"moves along")
    os.rename(f, f.with_name("renamed"))
    assert os.getxattr(f.with_name("renamed"), "user.k") == b"moves along"


def test_posix_acl_xattr_sets_mode_or_is_refused(f: Path) -> None:
    """cp -a and tar --acls set system.posix_acl_access instead of chmod when
    the filesystem accepts it: it must then change the mode, or be refused."""
    os.chmod(f, 0o600)
    entries = [(0x01, 6), (0x04, 4), (0x20, 0)]  # user::rw- group::r-- other::---
    acl = struct.pack("<I", 2) + b"".join(
        struct.pack("<HHI", tag, perm, 0xFFFFFFFF) for tag, perm in entries)
    try:
        os.setxattr(f, "system.posix_acl_access", acl)
    except OSError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.ENOTSUP), exc
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    else:
        assert stat.S_IMODE(os.stat(f).st_mode) == 0o640, "ACL stored but mode not changed"


def test_user_xattr_on_symlink_is_eperm(workdir: Path) -> None:
    os.symlink("target", workdir / "l")
    with expect_errno(errno.EPERM):
        os.setxattr(workdir / "l", "user.k", b"v", follow_symlinks=False)


def test_trusted_namespace_as_root(f: Path) -> None:
    os.setxattr(f, "trusted.k", b"root only")
    assert os.getxattr(f, "trusted.k") == b"root only"
    assert "trusted.k" in os.listxattr(f)


def test_xattr_fd_variants(f: Path) -> None:
    fd = os.open(f, os.O_RDONLY)
    try:
        os.setxattr(fd, "user.fd", b"via fd")
        assert os.getxattr(fd, "user.fd") == b"via fd"
        assert "user.fd" in os.listxattr(fd)
        os.removexattr(fd, "user.fd")
        assert "user.fd" not in os.listxattr(f)
    finally:
        os.close(fd)


def test_xattr_needs_write_permission(workdir: Path) -> None:
    write_file(workdir / "ro", b"")
    os.chmod(workdir / "ro", 0o644)
    os.setxattr(workdir / "ro", "user.k", b"v")
    write_file(workdir / "rw", b"")
    os.chmod(workdir / "rw", 0o666)
    with expect_errno(errno.EACCES):
        as_nobody(os.setxattr, "ro", "user.k", b"x", cwd=workdir)
    assert as_nobody(os.getxattr, "ro", "user.k", cwd=workdir) == b"v"
    as_nobody(os.setxattr, "rw", "user.k", b"by nobody", cwd=workdir)
    assert os.getxattr(workdir / "rw", "user.k") == b"by nobody"
    os.chmod(workdir / "ro", 0o600)
    with expect_errno(errno.EACCES):
        as_nobody(os.getxattr, "ro", "user.k", cwd=workdir)
    assert os.getxattr(workdir / "ro", "user.k") == b"v"


def test_xattr_removed_with_file(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.setxattr(workdir / "f", "user.k", b"old")
    os.unlink(workdir / "f")
    write_file(workdir / "f", b"")
    assert "user.k" not in os.listxattr(workdir / "f")
