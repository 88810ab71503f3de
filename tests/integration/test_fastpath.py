"""The C reader threads' fast data path, through a real mount: it really serves
reads and in-place overwrites, hands everything else to Python, and what it
serves keeps POSIX semantics (content, mtime/ctime, relatime atime, fsync
durability across a remount, truncate racing with it)."""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from daxfs.client import Client

from .conftest import Mount

pytestmark = pytest.mark.daxfs_only

BS = 4096


def core_stats(m: Mount) -> dict[str, int]:
    with Client(str(m.path)) as c:
        return dict(c.status()["core"])


def fuse_info(m: Mount) -> dict[str, int]:
    with Client(str(m.path)) as c:
        return dict(c.status()["fuse"])


def pwrite_all(path: Path, data: bytes, off: int = 0, direct: bool = False) -> None:
    flags = os.O_WRONLY | (os.O_DIRECT if direct else 0)
    fd = os.open(path, flags)
    try:
        assert os.pwrite(fd, data, off) == len(data)
    finally:
        os.close(fd)


def make_file(path: Path, size: int) -> bytes:
    data = os.urandom(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def fmnt(daxfs_mount: Callable[..., Mount], dax_mode: str) -> Mount:
    return daxfs_mount(opts=f"dax={dax_mode}")


def test_readers_run_and_serve_reads(fmnt: Mount) -> None:
    f = fmnt.path / "f"
    data = make_file(f, 256 * 1024)
    assert fuse_info(fmnt)["reader_threads"] == 2
    before = core_stats(fmnt)["fast_reads"]
    fd = os.open(f, os.O_RDONLY | os.O_DIRECT)
    try:
        buf = bytearray(64 * 1024)
        for off in range(0, len(data), len(buf)):
            m = mmap.mmap(-1, len(buf))  # O_DIRECT needs an aligned buffer
            n = os.preadv(fd, [m], off)
            assert n == len(buf) and m[:] == data[off:off + n]
            m.close()
    finally:
        os.close(fd)
    if fmnt.dax == "always":
        assert core_stats(fmnt)["fast_reads"] >= before + 4


def test_overwrite_served_in_c_updates_times(fmnt: Mount) -> None:
    f = fmnt.path / "f"
    data = bytearray(make_file(f, 64 * 1024))
    old = 1_000_000_000 * 10**9  # 2001: well before anything the write stamps
    os.utime(f, ns=(old, old))
    st0 = os.stat(f)
    before = core_stats(fmnt)["fast_writes"]
    t0 = time.time_ns()
    with open(f, "r+b") as fh:
        fh.seek(5000)
        fh.write(b"X" * 3000)
        fh.flush()
        os.fsync(fh.fileno())
    data[5000:8000] = b"X" * 3000
    st = os.stat(f)
    assert f.read_bytes() == data
    assert st.st_size == st0.st_size and st.st_blocks == st0.st_blocks
    assert st.st_mtime_ns >= t0 - 10**7 and st.st_mtime_ns > old
    assert st.st_ctime_ns >= st.st_mtime_ns
    assert core_stats(fmnt)["fast_writes"] > before


def direct_read(path: Path, off: int, length: int = BS) -> bytes:
    """An O_DIRECT read: reaches the daemon in every dax mode (no page cache)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    m = mmap.mmap(-1, length)  # page aligned, as O_DIRECT wants
    try:
        return m[:os.preadv(fd, [m], off)]
    finally:
        m.close()
        os.close(fd)


def test_read_after_write_updates_atime_relatime(fmnt: Mount) -> None:
    f = fmnt.path / "f"
    make_file(f, 8192)
    # atime older than mtime: relatime updates it on the next read.
    os.utime(f, ns=(10**18, 15 * 10**17))  # atime 2001, mtime 2017
    t0 = time.time_ns()
    direct_read(f, 0)
    st = os.stat(f)
    assert st.st_atime_ns >= t0 - 10**7
    # atime now newer than mtime and ctime: a second read leaves it alone.
    a1 = st.st_atime_ns
    direct_read(f, 4096)
    assert os.stat(f).st_atime_ns == a1


def test_fast_writes_survive_remount(fmnt: Mount) -> None:
    f = fmnt.path / "f"
    data = bytearray(make_file(f, 1 << 20))
    with open(f, "r+b") as fh:
        for off in range(0, 1 << 20, 64 * 1024):
            fh.seek(off)
            fh.write(b"\xee" * 512)
            data[off:off + 512] = b"\xee" * 512
        fh.flush()
        os.fsync(fh.fileno())
    mtime = os.stat(f).st_mtime_ns
    fmnt.remount()
    assert f.read_bytes() == data
    assert os.stat(f).st_mtime_ns == mtime


def test_sparse_read_holes_are_zeros(fmnt: Mount) -> None:
    f = fmnt.path / "sparse"
    with open(f, "wb") as fh:
        fh.seek(3 * BS)
        fh.write(b"tail")
        fh.seek(0)
        fh.write(b"head")
    got = f.read_bytes()
    assert got == b"head" + bytes(3 * BS - 4) + b"tail"


def test_appends_and_extending_writes_go_to_python(fmnt: Mount) -> None:
    f = fmnt.path / "grow"
    with open(f, "wb") as fh:
        for i in range(50):
            fh.write(bytes([i]) * 1000)
    assert f.read_bytes() == b"".join(bytes([i]) * 1000 for i in range(50))
    assert os.stat(f).st_size == 50_000


def test_no_readers_mount_still_works(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(opts="dax=always,fast_threads=0")
    f = m.path / "f"
    data = make_file(f, 100_000)
    assert fuse_info(m)["reader_threads"] == 0
    pwrite_all(f, b"Z" * 10, 50)
    assert f.read_bytes() == data[:50] + b"Z" * 10 + data[60:]
    assert core_stats(m)["fast_reads"] == 0


def test_truncate_racing_fast_io_frees_nothing_in_use(fmnt: Mount) -> None:
    """Readers and writers stream over a file while another thread truncates and
    regrows it: the core records no collision (no block freed under a copy), and
    content is always either the data or zeros past a truncate."""
    f = fmnt.path / "race"
    size = 512 * 1024
    pattern = bytes(range(256)) * (size // 256)
    f.write_bytes(pattern)
    stop = threading.Event()
    errors: list[str] = []

    def io_loop(write: bool) -> None:
        fd = os.open(f, os.O_RDWR)
        try:
            while not stop.is_set():
                for off in range(0, size, 64 * 1024):
                    if write:
                        os.pwrite(fd, pattern[off:off + 64 * 1024], off)
                    else:
                        got = np.frombuffer(os.pread(fd, 64 * 1024, off), np.uint8)
                        want = np.frombuffer(pattern, np.uint8)[off:off + len(got)]
                        # Past a concurrent truncate (+ regrow), zeros are fine.
                        if not ((got == want) | (got == 0)).all():
                            errors.append(f"bad data at {off}")
                            return
        finally:
            os.close(fd)

    threads = [threading.Thread(target=io_loop, args=(w,)) for w in (True, False)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            os.truncate(f, 100 * 1024 + 123)
            os.truncate(f, size)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors
    s = core_stats(fmnt)
    assert s["collisions"] == 0
    assert s["pins_held"] == 0


def test_write_still_drops_file_capabilities(daxfs_mount: Callable[..., Mount]) -> None:
    """dax=never: before each write the kernel asks for security.capability
    (readers answer "none" for files vouched to have none) and removes it from a
    file that has one: that answer must follow setxattr/removexattr."""
    m = daxfs_mount(opts="dax=never")
    f = m.path / "f"
    make_file(f, 64 * 1024)
    fd = os.open(f, os.O_WRONLY)
    try:
        before = fuse_info(m)["slow_requests"]
        for i in range(50):
            os.pwrite(fd, b"w", i * 100)
        after = fuse_info(m)["slow_requests"]
    finally:
        os.close(fd)
    # 50 writes, each preceded by a capability lookup: none of it reached Python.
    assert after - before < 25
    cap = bytes.fromhex("0100000220000000000000000000000000000000")  # cap_net_bind_service
    os.setxattr(f, "security.capability", cap)
    assert os.getxattr(f, "security.capability") == cap
    pwrite_all(f, b"x", 0)  # as root; the kernel still kills file capabilities
    with pytest.raises(OSError) as e:
        os.getxattr(f, "security.capability")
    assert e.value.errno == errno.ENODATA
