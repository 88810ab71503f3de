"""Real-mount tests for daxfs.fuse_ext / daxfs._fuseext.

Each test mounts tests/native/fuseext_testfs.py (a subprocess, so that
fuse_ext.install() runs before pyfuse3 is imported) on a tmp dir and talks to
it through ordinary syscalls.  The daemon exposes its handler-call log as the
file ``log`` and fuse_ext.info() as ``info`` on the mount.
"""

from __future__ import annotations

import ctypes
import errno
import json
import mmap
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TESTFS = HERE / "fuseext_testfs.py"
BUILDER = REPO / "native" / "build_fuseext.py"
NATIVE_SOURCES = [REPO / "native" / "fuseext.c", REPO / "native" / "fuseext.h", BUILDER]

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SLOW_LENGTH = 8888
ENOSPC_LENGTH = 7777
BUG_LENGTH = 6666
DIRECT_IO_ALLOW_MMAP = 1 << 36
INO_DATA, INO_OTHER, INO_DIO = 2, 3, 4

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None,
        reason="needs /dev/fuse and fusermount3",
    ),
]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate.restype = ctypes.c_int
_libc.truncate.argtypes = [ctypes.c_char_p, ctypes.c_int64]
_libc.truncate.restype = ctypes.c_int
SET_ATTR_SIZE = 1 << 3


def raw_truncate(path: str, size: int) -> int:
    """truncate(2) without Python's EINTR retry (PEP 475): 0 or the errno."""
    if _libc.truncate(os.fsencode(path), size) == 0:
        return 0
    return ctypes.get_errno()


def raw_fallocate(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2) without glibc/Python retry or emulation: 0 or the errno."""
    if _libc.fallocate(fd, mode, offset, length) == 0:
        return 0
    return ctypes.get_errno()


def _mounted(path: Path) -> bool:
    """From /proc/self/mountinfo, without touching the (maybe hung) mount."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == target:
                return True
    return False


class Mount:
    def __init__(self, workdir: Path, args: tuple[str, ...]) -> None:
        self.path = workdir / "mnt"
        self.path.mkdir(parents=True)
        self.output = workdir / "daemon.log"
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(TESTFS), str(self.path), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while not _mounted(self.path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"test filesystem did not mount:\n{self.daemon_output()}")
            time.sleep(0.05)

    def __truediv__(self, name: str) -> str:
        return str(self.path / name)

    def daemon_output(self) -> str:
        return self.output.read_text(errors="replace")

    def log(self) -> list[dict[str, Any]]:
        with open(self / "log", "rb") as f:
            return [json.loads(line) for line in f.read().splitlines()]

    def calls(self, op: str) -> list[dict[str, Any]]:
        return [e for e in self.log() if e["op"] == op]

    def info(self) -> dict[str, int]:
        with open(self / "info", "rb") as f:
            return json.loads(f.read())

    def ctl(self, cmd: str) -> None:
        fd = os.open(self / "ctl", os.O_WRONLY)
        try:
            os.write(fd, cmd.encode())
        finally:
            os.close(fd)

    def wait_for(self, op: str, timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.calls(op)
            if found:
                return found[-1]
            time.sleep(0.02)
        raise AssertionError(f"no {op!r} in log {self.log()}\n{self.daemon_output()}")

    def stop(self) -> None:
        """fusermount3 -u (lazy if busy), then make sure the daemon is gone."""
        grace = 10.0
        if _mounted(self.path):
            subprocess.run(["fusermount3", "-u", str(self.path)], capture_output=True, timeout=30)
        if _mounted(self.path):
            # Busy (a test thread still has a file open): detach it; the
            # daemon then only exits once killed.
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], capture_output=True)
            grace = 1.0
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if _mounted(self.path):
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)


@pytest.fixture(scope="session")
def extension_built() -> None:
    """Build daxfs/_fuseext in place if it is missing or older than its sources.

    Python prefers the cpython-specific suffix the in-place builder writes over
    the abi3 one setuptools writes, so a rebuild always takes effect.
    """
    newest = max(p.stat().st_mtime for p in NATIVE_SOURCES)
    built = [REPO / "daxfs" / ("_fuseext" + suffix) for suffix in EXTENSION_SUFFIXES]
    existing = [p for p in built if p.exists()]
    if existing and existing[0].stat().st_mtime >= newest:
        return
    res = subprocess.run([sys.executable, str(BUILDER)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.fail(f"building daxfs._fuseext failed:\n{res.stdout}\n{res.stderr}")


@pytest.fixture
def start_fs(tmp_path: Path, extension_built: None) -> Iterator[Callable[..., Mount]]:
    mounts: list[Mount] = []

    def start(*args: str) -> Mount:
        mount = Mount(tmp_path / f"fs{len(mounts)}", args)
        mounts.append(mount)
        return mount

    try:
        yield start
    finally:
        for mount in mounts:
            mount.stop()
        for mount in mounts:
            assert not _mounted(mount.path)


@pytest.fixture
def fs(start_fs: Callable[..., Mount]) -> Mount:
    return start_fs()


class Worker(threading.Thread):
    """Runs fn() in a daemon thread, keeping its result."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:
            self.error = exc


# ---------------------------------------------------------------- build


def test_native_source_is_warning_free() -> None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    cflags = subprocess.run(
        ["pkg-config", "--cflags", "fuse3"], capture_output=True, text=True, check=True
    ).stdout.split()
    res = subprocess.run(
        [
            cc,
            "-fsyntax-only",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-std=gnu11",
            *cflags,
            f"-I{REPO / 'native'}",
            str(REPO / "native" / "fuseext.c"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr


def test_install_refuses_after_pyfuse3(extension_built: None) -> None:
    code = (
        "import pyfuse3\n"
        "from daxfs import fuse_ext\n"
        "try:\n"
        "    fuse_ext.install()\n"
        "except RuntimeError as e:\n"
        "    print('refused:', e)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert "refused: daxfs.fuse_ext.install() must be called before pyfuse3" in res.stdout, (
        res.stdout + res.stderr
    )


def test_reply_validates_handler_results() -> None:
    sys.path.insert(0, str(REPO))
    from daxfs import fuse_ext

    class FakeLib:
        def __init__(self) -> None:
            self.calls: list[tuple[str, int, int]] = []

        def fuseext_reply_err(self, id: int, err: int) -> int:
            self.calls.append(("err", id, err))
            return 0

        def fuseext_reply_lseek(self, id: int, off: int) -> int:
            self.calls.append(("lseek", id, off))
            return 0

        def fuseext_reply_write(self, id: int, count: int) -> int:
            self.calls.append(("write", id, count))
            return 0

    lib = FakeLib()
    lseek = fuse_ext._Request(1, "lseek", (), 0)
    copy = fuse_ext._Request(2, "copy_file_range", (), 100)
    falloc = fuse_ext._Request(3, "fallocate", (), 100)
    fuse_ext._reply(lib, lseek, 0, 4096)
    fuse_ext._reply(lib, lseek, 0, -1)
    fuse_ext._reply(lib, lseek, 0, 1 << 63)
    fuse_ext._reply(lib, lseek, 0, "12")
    fuse_ext._reply(lib, copy, 0, 100)
    fuse_ext._reply(lib, copy, 0, 101)
    fuse_ext._reply(lib, falloc, 0, None)
    fuse_ext._reply(lib, falloc, errno.ENOSPC, None)
    assert lib.calls == [
        ("lseek", 1, 4096),
        ("err", 1, errno.EIO),
        ("err", 1, errno.EIO),
        ("err", 1, errno.EIO),
        ("write", 2, 100),
        ("err", 2, errno.EIO),
        ("err", 3, 0),
        ("err", 3, errno.ENOSPC),
    ]
    assert fuse_ext._errno_of(OSError(errno.ENXIO, "x")) == errno.ENXIO
    assert fuse_ext._errno_of(OSError("no errno")) == errno.EIO
    assert fuse_ext._errno_of(KeyError("bug")) == errno.EIO
    group = ExceptionGroup("x", [ExceptionGroup("y", [OSError(errno.EDQUOT, "q")])])
    assert fuse_ext._errno_of(group) == errno.EDQUOT
    two = ExceptionGroup("x", [OSError(errno.EDQUOT, "q"), OSError(errno.EIO, "q")])
    assert fuse_ext._errno_of(two) == errno.EIO


def test_cancel_on_interrupt() -> None:
    sys.path.insert(0, str(REPO))
    import trio

    from daxfs import fuse_ext

    async def body(interrupted: trio.Event, exc: BaseException | None) -> str:
        with fuse_ext.cancel_on_interrupt(interrupted):
            if exc is not None:
                raise exc
            await trio.sleep(30)
        return "completed"

    async def main() -> None:
        # Interrupt while waiting -> EINTR, promptly.
        ev = trio.Event()
        caught: list[int | None] = []

        async def interrupter() -> None:
            await trio.sleep(0.05)
            fuse_ext._interrupt(ev)

        with trio.fail_after(5):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(interrupter)
                try:
                    await body(ev, None)
                except OSError as exc:
                    caught.append(exc.errno)
        assert caught == [errno.EINTR]
        # Already interrupted -> EINTR at the first checkpoint.
        with trio.fail_after(5), pytest.raises(OSError) as info:
            await body(ev, None)
        assert info.value.errno == errno.EINTR
        # Other exceptions pass through unchanged (no ExceptionGroup).
        with pytest.raises(OSError) as info:
            await body(trio.Event(), OSError(errno.ENOSPC, "full"))
        assert info.value.errno == errno.ENOSPC
        # Cancellation from outside stays cancellation.
        with trio.move_on_after(0.05) as outer:
            await body(trio.Event(), None)
        assert outer.cancelled_caught
        assert fuse_ext._interrupt_scopes == {}

    trio.run(main)


# ------------------------------------------------------------ INIT / setup


def test_session_is_extended(fs: Mount) -> None:
    info = fs.info()
    assert info["session_wrapped"] == 1
    assert info["custom_io"] == 1
    assert info["init_seen"] == 1 and info["init_patched"] == 1
    assert info["ops_installed"] == (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4)
    # No splice with the custom io: every request passes through its read().
    splice_caps = (1 << 7) | (1 << 8) | (1 << 9)
    assert info["conn_capable"] & splice_caps == 0
    assert info["conn_want"] & splice_caps == 0
    assert info["kernel_minor"] >= 39
    assert info["sent_flags"] & DIRECT_IO_ALLOW_MMAP


# -------------------------------------------------------------- fallocate


def test_fallocate_modes_reach_handler(fs: Mount) -> None:
    fd = os.open(fs / "data", os.O_RDWR)
    try:
        os.posix_fallocate(fd, 4096, 100000)
        assert os.fstat(fd).st_size == 4096 + 100000
        assert raw_fallocate(fd, FALLOC_FL_KEEP_SIZE, 200000, 5000) == 0
        assert os.fstat(fd).st_size == 4096 + 100000
        os.pwrite(fd, b"x" * 8192, 0)
        assert raw_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096) == 0
        assert os.pread(fd, 8192, 0) == bytes(4096) + b"x" * 4096
        assert raw_fallocate(fd, FALLOC_FL_ZERO_RANGE, 4096, 4096) == 0
        assert os.pread(fd, 8192, 0) == bytes(8192)
        calls = fs.calls("fallocate")
    finally:
        os.close(fd)
    got = [(c["mode"], c["offset"], c["length"]) for c in calls]
    assert got == [
        (0, 4096, 100000),
        (FALLOC_FL_KEEP_SIZE, 200000, 5000),
        (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 4096),
        (FALLOC_FL_ZERO_RANGE, 4096, 4096),
    ]
    assert all(c["ino"] == INO_DATA and c["fh_ino"] == INO_DATA for c in calls)
    # The handler accepts ctx=, so it gets the caller's (thread) id.
    assert all(c["pid"] == threading.get_native_id() for c in calls)


def test_fallocate_util(fs: Mount) -> None:
    if shutil.which("fallocate") is None:
        pytest.skip("util-linux fallocate missing")
    for opts, mode in (
        (["-n"], FALLOC_FL_KEEP_SIZE),
        (["-p"], FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
        (["-z"], FALLOC_FL_ZERO_RANGE),
        ([], 0),
    ):
        fs.ctl("clear")
        subprocess.run(["fallocate", *opts, "-o", "8192", "-l", "12288", fs / "data"], check=True)
        (call,) = fs.calls("fallocate")
        assert (call["mode"], call["offset"], call["length"]) == (mode, 8192, 12288)


def test_fallocate_errno_reaches_caller(fs: Mount) -> None:
    fd = os.open(fs / "data", os.O_RDWR)
    try:
        with pytest.raises(OSError) as exc:
            os.posix_fallocate(fd, 0, ENOSPC_LENGTH)
        assert exc.value.errno == errno.ENOSPC
        assert raw_fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, ENOSPC_LENGTH) == errno.ENOSPC
        # A non-OSError exception in the handler becomes EIO (and is logged).
        assert raw_fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, BUG_LENGTH) == errno.EIO
        # The filesystem still works afterwards.
        assert raw_fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 4096) == 0
    finally:
        os.close(fd)
    assert "test: not an OSError" in fs.daemon_output()


def test_slow_fallocate_does_not_block_other_requests(fs: Mount) -> None:
    fd = os.open(fs / "data", os.O_RDWR)
    try:
        slow = Worker(lambda: raw_fallocate(fd, 0, 0, SLOW_LENGTH))
        slow.start()
        fs.wait_for("fallocate_wait")

        t0 = time.monotonic()
        reader = Worker(lambda: Path(fs / "other").read_bytes())
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "read of another file blocked behind fallocate"
        assert reader.result == b"other-content"
        assert time.monotonic() - t0 < 5
        assert [c for c in fs.calls("read") if c["ino"] == INO_OTHER]
        # Another fallocate on another file is served meanwhile too.
        fd2 = os.open(fs / "other", os.O_RDWR)
        try:
            assert raw_fallocate(fd2, FALLOC_FL_KEEP_SIZE, 0, 4096) == 0
        finally:
            os.close(fd2)
        assert slow.is_alive() and not fs.calls("fallocate_done")

        fs.ctl("release")
        slow.join(10)
        assert not slow.is_alive()
        assert slow.result == 0
        fs.wait_for("fallocate_done")
    finally:
        os.close(fd)


def test_interrupted_fallocate_sets_event(fs: Mount) -> None:
    got_signal = threading.Event()
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got_signal.set())
    fd = os.open(fs / "data", os.O_RDWR)
    try:
        worker = Worker(lambda: raw_fallocate(fd, 0, 0, SLOW_LENGTH))
        worker.start()
        fs.wait_for("fallocate_wait")
        assert worker.ident is not None
        signal.pthread_kill(worker.ident, signal.SIGUSR1)
        worker.join(10)
        assert not worker.is_alive(), "fallocate not answered after the interrupt"
        assert worker.result == errno.EINTR
        fs.wait_for("interrupted")
        assert not fs.calls("fallocate_done")
        assert fs.info()["interrupts"] >= 1
    finally:
        os.close(fd)
        signal.signal(signal.SIGUSR1, old)
        fs.ctl("release")
    # The handler's wait must have ended because of the interrupt.
    assert got_signal.wait(5)


def test_missing_handler_methods_get_enosys(start_fs: Callable[..., Mount]) -> None:
    fs = start_fs("--missing", "fallocate", "--missing", "lseek")
    fd = os.open(fs / "data", os.O_RDWR)
    try:
        # ENOSYS from the fs: the kernel reports EOPNOTSUPP and stops asking.
        assert raw_fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 4096) == errno.EOPNOTSUPP
        assert raw_fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 4096) == errno.EOPNOTSUPP
        # lseek falls back to the kernel's generic SEEK_DATA/SEEK_HOLE.
        assert os.lseek(fd, 10, os.SEEK_DATA) == 10
        assert os.lseek(fd, 10, os.SEEK_HOLE) == 65536
        assert os.lseek(fd, 20, os.SEEK_DATA) == 20
    finally:
        os.close(fd)
    assert fs.info()["requests"] == 2  # one FALLOCATE, one LSEEK; then none
    assert not fs.calls("fallocate") and not fs.calls("lseek")


def test_serve_cancelled_answers_outstanding(fs: Mount) -> None:
    fd = os.open(fs / "data", os.O_RDWR)
    try:
        worker = Worker(lambda: raw_fallocate(fd, 0, 0, SLOW_LENGTH))
        worker.start()
        fs.wait_for("fallocate_wait")
        fs.ctl("stop-serve")
        worker.join(10)
        assert not worker.is_alive()
        assert worker.result == errno.EIO
        # With serve() gone new requests are refused at once, not queued.
        assert raw_fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 4096) == errno.EIO
        # Ordinary pyfuse3 requests are unaffected.
        assert Path(fs / "other").read_bytes() == b"other-content"
    finally:
        os.close(fd)


# ------------------------------------------------------------------ lseek


def test_lseek_data_hole(fs: Mount) -> None:
    fd = os.open(fs / "data", os.O_RDONLY)
    try:
        assert os.lseek(fd, 10, os.SEEK_DATA) == 110
        assert os.lseek(fd, 0, os.SEEK_CUR) == 110
        assert os.lseek(fd, 10, os.SEEK_HOLE) == 65536
        for off, whence in ((65500, os.SEEK_DATA), (70000, os.SEEK_DATA), (65536, os.SEEK_HOLE)):
            with pytest.raises(OSError) as exc:
                os.lseek(fd, off, whence)
            assert exc.value.errno == errno.ENXIO
    finally:
        os.close(fd)
    got = [(c["offset"], c["whence"], c["ino"]) for c in fs.calls("lseek")]
    assert got == [
        (10, os.SEEK_DATA, INO_DATA),
        (10, os.SEEK_HOLE, INO_DATA),
        (65500, os.SEEK_DATA, INO_DATA),
        (70000, os.SEEK_DATA, INO_DATA),
        (65536, os.SEEK_HOLE, INO_DATA),
    ]


# -------------------------------------------------------- copy_file_range


def test_copy_file_range(fs: Mount) -> None:
    src = os.open(fs / "data", os.O_RDONLY)
    dst = os.open(fs / "other", os.O_RDWR)
    try:
        assert os.copy_file_range(src, dst, 20, 100, 5) == 20
    finally:
        os.close(src)
        os.close(dst)
    (call,) = fs.calls("copy_file_range")
    assert (call["ino_in"], call["off_in"], call["ino_out"], call["off_out"], call["length"]) == (
        INO_DATA,
        100,
        INO_OTHER,
        5,
        20,
    )
    assert Path(fs / "other").read_bytes() == b"other" + b"d" * 20


# ---------------------------------------------------- direct_io + mmap


def test_mmap_shared_direct_io(fs: Mount) -> None:
    fd = os.open(fs / "dio", os.O_RDWR)
    try:
        pattern = bytes(range(256)) * 32  # 8 KiB
        assert os.pwrite(fd, pattern, 0) == len(pattern)
        fs.ctl("clear")
        m = mmap.mmap(fd, 16384, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            assert m[: len(pattern)] == pattern
            assert m[8192:8200] == b"i" * 8
            m[100:105] = b"HELLO"
            m.flush()
        finally:
            m.close()
        assert [c for c in fs.calls("read") if c["ino"] == INO_DIO]
        writes = [c for c in fs.calls("write") if c["ino"] == INO_DIO]
        assert writes and writes[0]["offset"] == 0
        # Read back through the daemon (direct_io: no page cache involved).
        assert os.pread(fd, 10, 98) == pattern[98:100] + b"HELLO" + pattern[105:108]

        # Without msync: munmap of a shared writable map writes back too.
        fs.ctl("clear")
        m = mmap.mmap(fd, 8192, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        m[0:5] = b"WORLD"
        m.close()
        assert [c for c in fs.calls("write") if c["ino"] == INO_DIO]
        assert os.pread(fd, 7, 0) == b"WORLD" + pattern[5:7]
    finally:
        os.close(fd)


def test_mmap_shared_direct_io_needs_flag(start_fs: Callable[..., Mount]) -> None:
    fs = start_fs("--no-allow-mmap")
    assert not fs.info()["sent_flags"] & DIRECT_IO_ALLOW_MMAP
    fd = os.open(fs / "dio", os.O_RDWR)
    try:
        with pytest.raises(OSError) as exc:
            mmap.mmap(fd, 4096, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert exc.value.errno == errno.ENODEV
        m = mmap.mmap(fd, 4096, mmap.MAP_PRIVATE, mmap.PROT_READ)
        assert m[:4] == b"iiii"
        m.close()
    finally:
        os.close(fd)


# -------------------------------------------------------------- max_pages


def _big_io(fs: Mount) -> tuple[list[int], list[int]]:
    """1 MiB direct_io write + read from page-aligned buffers; request sizes seen.

    Alignment matters: the kernel limits a request by the number of user pages
    it pins (max_pages), and an unaligned 1 MiB buffer spans 257 pages.
    """
    fd = os.open(fs / "dio", os.O_RDWR)
    buf = mmap.mmap(-1, 1 << 20)  # anonymous mapping: page-aligned
    try:
        fs.ctl("clear")
        buf.write(b"w" * (1 << 20))
        assert os.pwritev(fd, [buf], 0) == 1 << 20
        buf.seek(0)
        buf.write(bytes(1 << 20))
        assert os.preadv(fd, [buf], 0) == 1 << 20
        assert buf[:] == b"w" * (1 << 20)
    finally:
        buf.close()
        os.close(fd)
    writes = [c["size"] for c in fs.calls("write") if c["ino"] == INO_DIO]
    reads = [c["size"] for c in fs.calls("read") if c["ino"] == INO_DIO]
    return writes, reads


def test_one_mib_io_is_one_request(fs: Mount) -> None:
    info = fs.info()
    assert info["libfuse_max_pages"] == 256 and info["sent_max_pages"] == 256
    writes, reads = _big_io(fs)
    assert writes == [1 << 20]
    assert reads == [1 << 20]


def test_max_pages_configurable(start_fs: Callable[..., Mount]) -> None:
    fs = start_fs("--max-pages", "64")
    assert fs.info()["sent_max_pages"] == 64
    writes, reads = _big_io(fs)
    assert writes == [256 << 10] * 4
    assert reads == [256 << 10] * 4


# ---------------------------------------------------------------- setattr


def test_size_setattr_reaches_handler_others_pyfuse3(fs: Mount) -> None:
    os.truncate(fs / "data", 1000)
    assert os.stat(fs / "data").st_size == 1000
    fd = os.open(fs / "data", os.O_RDWR)
    try:
        os.ftruncate(fd, 5000)
        assert os.fstat(fd).st_size == 5000
        assert os.pread(fd, 5000, 0) == b"d" * 1000 + bytes(4000)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as exc:
        os.truncate(fs / "data", ENOSPC_LENGTH)
    assert exc.value.errno == errno.ENOSPC
    assert os.stat(fs / "data").st_size == 5000
    # chmod and utimes are still pyfuse3's.
    os.chmod(fs / "data", 0o600)
    os.utime(fs / "data", ns=(10**18, 2 * 10**18))

    sized = fs.calls("setattr_size")
    assert [(c["ino"], c["fields"]["st_size"]) for c in sized] == [
        (INO_DATA, 1000),
        (INO_DATA, 5000),
        (INO_DATA, ENOSPC_LENGTH),
    ]
    assert all(c["fields"]["to_set"] & SET_ATTR_SIZE for c in sized)
    assert sized[0]["fh"] is None and sized[1]["fh"] is not None
    me = threading.get_native_id()
    assert all(c["ctx"] == {"uid": os.getuid(), "gid": os.getgid(), "pid": me} for c in sized)
    plain = fs.calls("setattr")
    assert len(plain) == 2 and not any(c["update_size"] for c in plain)
    assert plain[0]["update_mode"] and plain[0]["mode"] & 0o7777 == 0o600
    assert fs.info()["requests"] == 3


def test_interrupted_truncate(fs: Mount) -> None:
    got_signal = threading.Event()
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: got_signal.set())
    try:
        worker = Worker(lambda: raw_truncate(fs / "data", SLOW_LENGTH))
        worker.start()
        fs.wait_for("setattr_wait")
        assert worker.ident is not None
        signal.pthread_kill(worker.ident, signal.SIGUSR1)
        worker.join(10)
        assert not worker.is_alive(), "truncate not answered after the interrupt"
        assert worker.result == errno.EINTR
        fs.wait_for("interrupted")
        assert os.stat(fs / "data").st_size == 65536
    finally:
        signal.signal(signal.SIGUSR1, old)
        fs.ctl("release")
    assert got_signal.wait(5)
    # Not stuck afterwards.
    assert raw_truncate(fs / "data", 10) == 0
    assert os.stat(fs / "data").st_size == 10


def test_setattr_stays_pyfuse3s_without_handler(start_fs: Callable[..., Mount]) -> None:
    fs = start_fs("--missing", "setattr_size")
    os.truncate(fs / "data", 123)
    assert os.stat(fs / "data").st_size == 123
    (call,) = fs.calls("setattr")
    assert call["update_size"]
    assert not fs.calls("setattr_size")
    assert fs.info()["requests"] == 0


def test_setattr_back_to_pyfuse3_after_serve(fs: Mount) -> None:
    fs.ctl("stop-serve")
    # serve() gone: size changes are pyfuse3's again, not refused with EIO.
    os.truncate(fs / "data", 321)
    assert os.stat(fs / "data").st_size == 321
    assert [c["update_size"] for c in fs.calls("setattr")] == [True]


def test_accepts_ctx() -> None:
    sys.path.insert(0, str(REPO))
    from daxfs import fuse_ext

    async def old(ino: int, fh: int, mode: int, off: int, length: int, interrupted: Any) -> None:
        pass

    async def new(*args: Any, ctx: Any = None) -> None:
        pass

    async def kw(*args: Any, **extra: Any) -> None:
        pass

    assert not fuse_ext._accepts_ctx(old)
    assert fuse_ext._accepts_ctx(new) and fuse_ext._accepts_ctx(kw)
