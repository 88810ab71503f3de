"""A truncate(2) waiting for a DMA pin is interruptible, as in the kernel.

A real daxfs mount (dax=always): `daxfs dio --delay` keeps pages of a file
pinned; a child process truncates the file and blocks in break_layout; a
signal to the child (handler installed, no SA_RESTART) makes its truncate fail
with EINTR, the file unchanged; a later truncate waits for the DMA and works.
The size-changing setattr reaches the daemon through the native op-table
extension (daxfs.fuse_ext), which sees FUSE_INTERRUPT; pyfuse3 does not.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from daxfs.client import Client

LEN = 1 << 20
DELAY = 8.0  # seconds the DMA holds its pins: must outlast the interrupt step

pytestmark = [
    pytest.mark.mount,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
                       reason="needs FUSE"),
]

# The child: SIGUSR1 handler without SA_RESTART, then a raw truncate(2) (ctypes,
# so Python's EINTR retry (PEP 475) does not hide the EINTR), errno on stdout.
CHILD = r"""
import ctypes, os, signal, sys
signal.signal(signal.SIGUSR1, lambda *a: None)
signal.siginterrupt(signal.SIGUSR1, True)
libc = ctypes.CDLL(None, use_errno=True)
libc.truncate.argtypes = [ctypes.c_char_p, ctypes.c_int64]
print("ready", flush=True)
rc = libc.truncate(os.fsencode(sys.argv[1]), int(sys.argv[2]))
print("errno", 0 if rc == 0 else ctypes.get_errno(), flush=True)
"""


def daxfs(*args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daxfs", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    img, mnt, log = tmp_path / "pmem.img", tmp_path / "mnt", tmp_path / "daemon.log"
    mnt.mkdir()
    r = daxfs("mkfs", "-q", "--force", "--size", "64M", "--alloc-policy", "reuse-first", str(img))
    assert r.returncode == 0, r.stderr
    r = daxfs("mount", "--log", str(log), "-o", "dax=always", str(img), str(mnt))
    assert r.returncode == 0, r.stdout + r.stderr
    try:
        yield mnt
    finally:
        if daxfs("umount", str(mnt)).returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
        text = log.read_text(errors="replace")
        assert "Traceback" not in text, text


def test_truncate_waiting_for_dma_pin_is_interruptible(mnt: Path, tmp_path: Path) -> None:
    target = mnt / "A"
    target.write_bytes(b"A" * LEN)
    src = tmp_path / "src"
    src.write_bytes(b"S" * LEN)
    client = Client(str(mnt))

    def status() -> dict[str, Any]:
        return client.status()  # type: ignore[no-any-return]

    def breaks() -> list[dict[str, Any]]:
        return [b for f in status()["files"] for b in f["breaks"]]

    dio = subprocess.Popen(
        [sys.executable, "-m", "daxfs", "dio", "--from", str(src), "--to", str(target),
         "--offset", "0", "--length", str(LEN), "--delay", str(DELAY)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    child: subprocess.Popen[str] | None = None
    try:
        wait_until(lambda: status()["core"]["dma_pinned_pages"] > 0, "the DMA to pin")
        t0 = time.monotonic()
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(target), "0"],
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready"
        wait_until(lambda: any(b["state"] == "waiting" for b in breaks()),
                   "the truncate to wait for the pin")
        child.send_signal(signal.SIGUSR1)
        out, _ = child.communicate(timeout=10)
        elapsed = time.monotonic() - t0
        assert out.split() == ["errno", str(errno.EINTR)], out
        assert elapsed < DELAY - 1, f"EINTR after {elapsed:.1f}s: the wait was not cut short"
        # Nothing changed: size and data as before, the range unblocked again.
        assert dio.poll() is None, "the DMA finished before the check"
        assert os.stat(target).st_size == LEN
        assert breaks() == []
        assert status()["core"]["dma_pinned_pages"] > 0

        # A later truncate waits for the DMA, then works.
        os.truncate(target, 0)
        assert dio.wait(timeout=30) == 0, dio.stdout.read() if dio.stdout else ""
        assert os.stat(target).st_size == 0
        assert status()["collisions"] == 0
    finally:
        client.close()
        for p in (child, dio):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
