"""Mounting and unmounting the filesystems the harness compares.

Every peer lives under one scratch directory on /dev/shm (a tmpfs), so images
and backing directories are in RAM and the disk is never what is measured:

  tmpfs          ``mount -t tmpfs`` directly (the kernel, no FUSE)
  passthrough_ll libfuse's C low-level passthrough example over a tmpfs dir
  passthroughfs  pyfuse3's examples/passthroughfs.py over a tmpfs dir
  daxfs-always   daxfs, ``-o dax=always``, image on /dev/shm
  daxfs-never    daxfs, ``-o dax=never``, image on /dev/shm

Every mount is recorded in a module-level registry; ``cleanup_all`` (also
registered with atexit) unmounts whatever is still mounted, so a run
interrupted by Ctrl-C or SIGTERM never leaves a mount behind.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BUILD = REPO / "build" / "bench"
PY = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv").exists() else sys.executable

_LIVE: list[Peer] = []


def _run(cmd: list[str], timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check)


def _wait_mounted(mnt: Path, proc: subprocess.Popen | None, timeout: float = 30.0) -> None:
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if os.path.ismount(mnt):
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{mnt}: daemon exited with {proc.returncode} before mounting")
        time.sleep(0.01)
    raise RuntimeError(f"{mnt}: not mounted after {timeout} s")


def _many_fds() -> None:
    """preexec_fn: passthrough_ll keeps an O_PATH fd per known inode (and dups
    it on flush): with the default 1024 it fails the 20,000-file loop."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    want = 1 << 20
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _rss_kib(pid: int | None, field: str = "VmRSS:") -> int | None:
    """A /proc/PID/status memory field in KiB (VmRSS, RssAnon, RssShmem...)."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        return None
    return None


class Peer:
    """One filesystem under test.  ``mount()`` makes ``self.mnt`` live."""

    name = "peer"
    supports_fallocate = True

    def __init__(self, root: Path) -> None:
        self.root = root / self.name
        self.mnt = self.root / "mnt"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None
        self.mounted = False

    def _start(self) -> None:
        raise NotImplementedError

    def _stop(self) -> None:
        _run(["fusermount3", "-u", str(self.mnt)], check=False)

    def mount(self) -> Peer:
        self.mnt.mkdir(parents=True, exist_ok=True)
        _LIVE.append(self)
        self._start()
        self.mounted = True
        return self

    def unmount(self) -> None:
        if self in _LIVE:
            _LIVE.remove(self)
        if not self.mounted and not os.path.ismount(self.mnt):
            return
        try:
            self._stop()
        except Exception as e:  # noqa: BLE001 - fall through to the lazy unmount
            print(f"[peers] {self.name}: unmount failed ({e}); detaching", file=sys.stderr)
        if os.path.ismount(self.mnt):
            _run(["umount", "-l", str(self.mnt)], check=False)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.mounted = False

    def rss_kib(self) -> int | None:
        return _rss_kib(self.pid)

    def describe(self) -> str:
        return self.name


class Tmpfs(Peer):
    name = "tmpfs"

    def _start(self) -> None:
        _run(["mount", "-t", "tmpfs", "-o", "size=8G", "benchtmpfs", str(self.mnt)])

    def _stop(self) -> None:
        _run(["umount", str(self.mnt)])

    def describe(self) -> str:
        return "kernel tmpfs (mount -t tmpfs), no FUSE"


class PassthroughLL(Peer):
    name = "passthrough_ll"

    def _start(self) -> None:
        exe = BUILD / "passthrough_ll"
        if not exe.exists():
            _run(["bash", str(REPO / "bench" / "build_passthrough.sh"), PY], timeout=300)
        back = self.root / "backing"
        back.mkdir(parents=True, exist_ok=True)
        # -f: stay in the foreground so the harness holds the pid; multithreaded
        # (the example's default), cache=auto (its default).
        self.proc = subprocess.Popen(
            [str(exe), "-f", "-o", f"source={back}", str(self.mnt)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_many_fds,
        )
        self.pid = self.proc.pid
        _wait_mounted(self.mnt, self.proc)

    def describe(self) -> str:
        return "libfuse example passthrough_ll (C, multithreaded, cache=auto) over /dev/shm"


class PassthroughFS(Peer):
    name = "passthroughfs"
    supports_fallocate = False

    def _start(self) -> None:
        script = BUILD / "passthroughfs.py"
        if not script.exists():
            _run(["bash", str(REPO / "bench" / "build_passthrough.sh"), PY], timeout=300)
        back = self.root / "backing"
        back.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [PY, str(script), str(back), str(self.mnt)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=_many_fds,
        )
        self.pid = self.proc.pid
        _wait_mounted(self.mnt, self.proc)

    def describe(self) -> str:
        return "pyfuse3 examples/passthroughfs.py (Python, trio) over /dev/shm"


def daxfs_pid(mnt: Path) -> int | None:
    r = _run([PY, "-m", "daxfs", "status", "--json", str(mnt)], check=False)
    if r.returncode != 0:
        return None
    try:
        return int(json.loads(r.stdout)["info"]["pid"])
    except (ValueError, KeyError, TypeError):
        return None


class Daxfs(Peer):
    def __init__(self, root: Path, dax: str = "always", size: str = "2G") -> None:
        self.dax = dax
        self.size = size
        self.name = f"daxfs-{dax}"
        super().__init__(root)
        self.image = self.root / "image"
        self.mount_seconds: float | None = None

    def _start(self) -> None:
        if not self.image.exists():
            _run([PY, "-m", "daxfs", "mkfs", "-q", "--size", self.size, str(self.image)])
        t0 = time.perf_counter()
        _run([PY, "-m", "daxfs", "mount", "-o", f"dax={self.dax}", str(self.image),
              str(self.mnt)])
        self.mount_seconds = time.perf_counter() - t0
        _wait_mounted(self.mnt, None, timeout=10)
        self.pid = daxfs_pid(self.mnt)

    def _stop(self) -> None:
        r = _run([PY, "-m", "daxfs", "umount", str(self.mnt)], check=False, timeout=120)
        if r.returncode != 0 and os.path.ismount(self.mnt):
            _run(["fusermount3", "-u", str(self.mnt)], check=False)
        # the daemon is not our child: wait for it to go away
        t_end = time.monotonic() + 15
        while self.pid is not None and time.monotonic() < t_end:
            if not Path(f"/proc/{self.pid}").exists():
                break
            time.sleep(0.02)

    def describe(self) -> str:
        return f"daxfs -o dax={self.dax}, {self.size} image on /dev/shm"


def all_peers(root: Path) -> list[Peer]:
    return [Tmpfs(root), PassthroughLL(root), PassthroughFS(root),
            Daxfs(root, "always"), Daxfs(root, "never")]


def cleanup_all() -> None:
    """Unmount every peer still mounted (idempotent; atexit and finally)."""
    for peer in list(reversed(_LIVE)):
        try:
            peer.unmount()
        except Exception as e:  # noqa: BLE001 - keep unmounting the others
            print(f"[peers] could not unmount {peer.mnt}: {e}", file=sys.stderr)


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def install_cleanup() -> None:
    atexit.register(cleanup_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def make_root() -> Path:
    root = Path("/dev/shm") / f"daxfs-bench-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    atexit.register(remove_root, root)
    return root


def remove_root(root: Path) -> None:
    cleanup_all()
    # never rm -rf through a live mount
    with open("/proc/mounts") as f:
        if any(str(root) in line for line in f):
            print(f"[peers] {root} still has mounts; not removing it", file=sys.stderr)
            return
    with contextlib.suppress(OSError):
        shutil.rmtree(root)
