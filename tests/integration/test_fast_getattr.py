"""GETATTR answered by the C reader threads from the attributes the filesystem
published in the core: whatever changed an inode - a namespace change, chmod,
chown, utime, truncate, a slow-path or a fast-path write, an xattr, a link -
the next GETATTR (forced with statx(AT_STATX_FORCE_SYNC), so the kernel's
attribute cache cannot answer instead) shows it, and most are served in C."""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

from daxfs.client import Client

from .conftest import Mount

pytestmark = pytest.mark.daxfs_only

_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_STATX_FORCE_SYNC = 0x2000
_STATX_BASIC_STATS = 0x7FF


class _Ts(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_int64), ("nsec", ctypes.c_uint32), ("_r", ctypes.c_int32)]


class _Statx(ctypes.Structure):
    _fields_ = [("mask", ctypes.c_uint32), ("blksize", ctypes.c_uint32),
                ("attributes", ctypes.c_uint64), ("nlink", ctypes.c_uint32),
                ("uid", ctypes.c_uint32), ("gid", ctypes.c_uint32),
                ("mode", ctypes.c_uint16), ("_p", ctypes.c_uint16),
                ("ino", ctypes.c_uint64), ("size", ctypes.c_uint64),
                ("blocks", ctypes.c_uint64), ("attributes_mask", ctypes.c_uint64),
                ("atime", _Ts), ("btime", _Ts), ("ctime", _Ts), ("mtime", _Ts),
                ("rdev_major", ctypes.c_uint32), ("rdev_minor", ctypes.c_uint32),
                ("dev_major", ctypes.c_uint32), ("dev_minor", ctypes.c_uint32),
                ("_spare", ctypes.c_uint64 * 14)]


class St(NamedTuple):
    mode: int
    nlink: int
    uid: int
    gid: int
    size: int
    blocks: int
    atime: int
    mtime: int
    ctime: int


_libc = ctypes.CDLL(None, use_errno=True)


def statx(path: Path) -> St:
    """stat that always reaches the filesystem (a GETATTR per call)."""
    buf = _Statx()
    if _libc.statx(_AT_FDCWD, os.fsencode(path), _AT_STATX_FORCE_SYNC | _AT_SYMLINK_NOFOLLOW,
                   _STATX_BASIC_STATS, ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))

    def ns(t: _Ts) -> int:
        return t.sec * 10**9 + t.nsec

    return St(buf.mode, buf.nlink, buf.uid, buf.gid, buf.size, buf.blocks,
              ns(buf.atime), ns(buf.mtime), ns(buf.ctime))


def fast_getattrs(m: Mount) -> int:
    with Client(str(m.path)) as c:
        return int(c.status()["fuse"]["fast_getattrs"])


@pytest.fixture
def fmnt(daxfs_mount: Callable[..., Mount], dax_mode: str) -> Mount:
    return daxfs_mount(opts=f"dax={dax_mode}")


def test_repeated_getattr_is_served_in_c_and_exact(fmnt: Mount) -> None:
    f = fmnt.path / "f"
    f.write_bytes(b"x" * 5000)
    first = statx(f)
    before = fast_getattrs(fmnt)
    for _ in range(20):
        assert statx(f) == first
    assert fast_getattrs(fmnt) >= before + 20
    st = os.stat(f)  # the kernel's view agrees with what C answered
    assert (st.st_mode, st.st_nlink, st.st_size, st.st_blocks, st.st_mtime_ns) == \
        (first.mode, first.nlink, first.size, first.blocks, first.mtime)
    assert first.size == 5000 and first.blocks == 16  # two 4 KiB blocks


def test_directory_after_each_create_and_unlink(fmnt: Mount) -> None:
    d = fmnt.path / "d"
    d.mkdir()
    before = fast_getattrs(fmnt)
    prev = statx(d)
    for i in range(10):
        t0 = time.time_ns()
        (d / f"f{i}").write_bytes(b"")
        (d / f"s{i}").mkdir()
        st = statx(d)
        assert st.mtime >= t0 - 10**7 and st.mtime >= prev.mtime
        assert st.nlink == 2 + i + 1  # each subdirectory's ".."
        prev = st
    for i in range(10):
        (d / f"f{i}").unlink()
        (d / f"s{i}").rmdir()
        assert statx(d).nlink == 2 + 10 - i - 1
    assert statx(d).nlink == 2
    assert fast_getattrs(fmnt) > before  # the directory's GETATTRs were served in C


def test_every_attribute_change_is_seen(fmnt: Mount) -> None:
    f = fmnt.path / "f"
    f.write_bytes(b"a" * 8192)
    statx(f)
    os.chmod(f, 0o600)
    assert statx(f).mode & 0o7777 == 0o600
    statx(f)
    os.chown(f, 1234, 5678)
    st = statx(f)
    assert (st.uid, st.gid) == (1234, 5678)
    os.utime(f, ns=(10**18, 2 * 10**18))
    st = statx(f)
    assert (st.atime, st.mtime) == (10**18, 2 * 10**18)
    os.truncate(f, 100)
    st = statx(f)
    assert st.size == 100 and st.blocks == 8
    with open(f, "ab") as fh:  # extends: the slow path
        fh.write(b"b" * 10000)
    st = statx(f)
    assert st.size == 10100 and st.blocks == 24
    os.link(f, fmnt.path / "g")
    assert statx(f).nlink == 2
    os.unlink(fmnt.path / "g")
    assert statx(f).nlink == 1
    c0 = statx(f).ctime
    os.setxattr(f, "user.k", b"v")
    assert statx(f).ctime >= c0
    os.truncate(f, 0)
    assert statx(f)[4:6] == (0, 0)


def test_fast_write_then_getattr_shows_its_mtime(fmnt: Mount) -> None:
    """A write served in C leaves a stamp and clears the published copy: the next
    GETATTR comes to Python, which folds the stamp, and the one after (in C
    again) still shows it."""
    f = fmnt.path / "f"
    f.write_bytes(b"\0" * 65536)
    old = 10**18
    os.utime(f, ns=(old, old))
    assert statx(f).mtime == old
    fd = os.open(f, os.O_WRONLY | os.O_DIRECT)
    m = mmap.mmap(-1, 4096)
    m.write(b"z" * 4096)
    try:
        for i in range(5):
            t0 = time.time_ns()
            assert os.pwritev(fd, [m], i * 4096) == 4096
            st = statx(f)
            assert st.mtime >= t0 - 10**7 and st.ctime >= st.mtime
            assert statx(f) == st  # the copy published after the fold agrees
    finally:
        m.close()
        os.close(fd)
    assert statx(f).size == 65536


def test_fast_threads_0_serves_getattr_in_python(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(opts="fast_threads=0")
    f = m.path / "f"
    f.write_bytes(b"q")
    for _ in range(5):
        assert statx(f).size == 1
    assert fast_getattrs(m) == 0


def test_changes_from_the_control_socket_are_seen(fmnt: Mount) -> None:
    """The control plane changes inodes outside any FUSE request: the published
    copy must go at once, not at the end of the next FUSE request."""
    f = fmnt.path / "f"
    f.write_bytes(b"c" * 3 * 4096)
    assert statx(f).size == 3 * 4096
    with Client(str(fmnt.path)) as c:
        c.truncate("f", 4096)
        assert statx(f).size == 4096
        c.truncate("f", 10 * 4096)
        assert statx(f).size == 10 * 4096
        c.punch("f", 0, 4096)
        assert statx(f).blocks == 0
        c.dma("f", "write", 12 * 4096, 4096, data=b"d" * 4096)  # extends the file
        st = statx(f)
        assert st.size == 13 * 4096 and st.blocks == 8
