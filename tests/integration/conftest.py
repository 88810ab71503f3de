"""Fixtures for the mounted daxfs tests.

Every test here runs against a real kernel mount.  By default that is a daxfs
daemon started in the foreground as ``sys.executable -m daxfs mount
--foreground -o OPTS IMAGE MNT`` on a fresh image; with the environment
variable ``DAXFS_TEST_TARGET=tmpfs`` the same tests run against a fresh tmpfs
mount instead, which checks that the POSIX expectations themselves are right
(tests marked ``daxfs_only`` skip there).

Fixtures:

* ``mnt`` (module scope, parametrized over ``dax=always`` / ``dax=never``): a
  live ``Mount`` shared by the tests of one module.
* ``workdir`` (function scope): a fresh directory inside ``mnt``, removed
  after the test; its teardown also checks that the daemon is still alive and
  logged no traceback or unexpected ERROR during the test.
* ``daxfs_mount`` (function scope): a factory ``daxfs_mount(size=..., opts=...,
  mkfs_args=...)`` returning a ``Mount`` on an image of its own; ``Mount.remount()``
  unmounts and mounts the same image again.

Teardown always unmounts: ``python -m daxfs umount MNT``, falling back to
``fusermount3 -u -z`` and then SIGTERM / SIGKILL; it fails the test if any
fallback was needed, if the daemon exited non-zero, or if its log holds a
"Traceback" or an ERROR/CRITICAL line that the test did not allow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

import pytest

TARGET = os.environ.get("DAXFS_TEST_TARGET", "daxfs").strip().lower() or "daxfs"
IS_TMPFS = TARGET == "tmpfs"
if TARGET not in ("daxfs", "tmpfs"):
    raise pytest.UsageError(f"DAXFS_TEST_TARGET must be 'daxfs' or 'tmpfs', not {TARGET!r}")

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MOUNT_TIMEOUT = 20.0  # seconds for the daemon to make the mount live
UMOUNT_TIMEOUT = 60.0  # seconds for `daxfs umount` (it flushes first)
POLL_INTERVAL = 0.02
DEFAULT_SIZE = "512M"
_BAD_LOG = re.compile(r"Traceback|\b(ERROR|CRITICAL)\b")

_live_mounts: set[Mount] = set()
_counter = itertools.count()


# --------------------------------------------------------------------------- #
# pytest hooks


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "daxfs_only: needs daxfs itself (images, remounts, exact statfs); "
        "skipped when DAXFS_TEST_TARGET=tmpfs"
    )
    config.addinivalue_line("markers", "mount: needs a real FUSE mount")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_tmpfs = pytest.mark.skip(reason="daxfs-specific; DAXFS_TEST_TARGET=tmpfs")
    for item in items:
        if HERE not in Path(str(item.path)).resolve().parents:
            continue
        item.add_marker(pytest.mark.mount)
        if IS_TMPFS and item.get_closest_marker("daxfs_only"):
            item.add_marker(skip_tmpfs)


# --------------------------------------------------------------------------- #
# helpers


def daxfs_env() -> dict[str, str]:
    """Environment for daxfs subprocesses: importable daxfs, faulthandler on."""
    env = dict(os.environ)
    env["PYTHONFAULTHANDLER"] = "1"
    if importlib.util.find_spec("daxfs") is None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
    return env


def run_daxfs(
    *args: str | os.PathLike[str], timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m daxfs ARGS`` to completion, capturing output."""
    return subprocess.run(
        [sys.executable, "-m", "daxfs", *map(str, args)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=daxfs_env(),
    )


def mkfs(image: Path, size: str = DEFAULT_SIZE, args: Sequence[str] = ()) -> None:
    res = run_daxfs("mkfs", "--size", size, *args, image)
    assert res.returncode == 0, f"mkfs failed ({res.returncode}):\n{res.stdout}{res.stderr}"


def mounted_paths() -> set[str]:
    """Mount points from /proc/self/mounts (never blocks on a dead FUSE mount)."""
    out = set()
    with open("/proc/self/mounts") as f:
        for line in f:
            field = line.split()[1]
            out.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field))
    return out


def is_mounted(path: Path) -> bool:
    return str(path) in mounted_paths()


def size_to_bytes(size: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    size = size.strip().upper().removesuffix("B").removesuffix("I")
    if size and size[-1] in units:
        return int(size[:-1]) * units[size[-1]]
    return int(size)


# --------------------------------------------------------------------------- #
# mounts


class Mount:
    """A live mount of the filesystem under test."""

    path: Path
    dax: str
    is_tmpfs: bool = False

    def mount(self) -> None:
        raise NotImplementedError

    def teardown(self) -> list[str]:
        """Unmount (always); return the problems found (empty if clean)."""
        raise NotImplementedError

    def check_health(self) -> list[str]:
        """Problems seen since the last call (daemon died, bad log lines)."""
        return []

    def allow_log(self, regex: str) -> None:
        """Accept log lines matching regex (for tests that provoke errors)."""

    def remount(self, opts: str | None = None) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        """Still mounted (and, for daxfs, the daemon still running)?"""
        return is_mounted(self.path)

    def revive(self) -> None:
        """After a crash: unmount what is left and mount a fresh filesystem."""
        self.teardown()
        self.mount()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path} dax={self.dax}>"


class DaxfsMount(Mount):
    def __init__(
        self, image: Path, path: Path, log: Path, opts: str, size: str = DEFAULT_SIZE,
        mkfs_args: Sequence[str] = (),
    ) -> None:
        self.image = image
        self.path = path
        self.log = log
        self.opts = opts
        self.size = size
        self.mkfs_args = tuple(mkfs_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_fh: IO[bytes] | None = None
        self._log_checked = 0
        self._allowed: list[re.Pattern[str]] = []

    @property
    def dax(self) -> str:  # type: ignore[override]
        for opt in self.opts.split(","):
            if opt.startswith("dax="):
                return opt[4:]
        return "default"

    def allow_log(self, regex: str) -> None:
        self._allowed.append(re.compile(regex))

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def mount(self) -> None:
        assert self.proc is None, "already mounted"
        assert not is_mounted(self.path), f"{self.path} is already a mount point"
        self._log_fh = open(self.log, "ab")  # noqa: SIM115 - closed in teardown
        self._log_fh.write(f"==== mount -o {self.opts}\n".encode())
        self._log_fh.flush()
        argv = [sys.executable, "-m", "daxfs", "mount", "--foreground"]
        if self.opts:
            argv += ["-o", self.opts]
        self.proc = subprocess.Popen(
            [*argv, str(self.image), str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=self._log_fh,
            stderr=self._log_fh,
            env=daxfs_env(),
            start_new_session=True,  # a ^C to pytest must not kill it before teardown
        )
        _live_mounts.add(self)
        deadline = time.monotonic() + MOUNT_TIMEOUT
        # Bounded poll: the one place where waiting on an external process is allowed.
        while not (is_mounted(self.path) and os.path.ismount(self.path)):
            rc = self.proc.poll()
            if rc is not None:
                problems = self.teardown()
                pytest.fail(
                    f"daxfs mount exited with {rc} before the mount was live "
                    f"({'; '.join(problems)}); log:\n{self.log_text()}"
                )
            if time.monotonic() > deadline:
                problems = self.teardown()
                pytest.fail(
                    f"daxfs mount not live after {MOUNT_TIMEOUT}s ({'; '.join(problems)}); "
                    f"log:\n{self.log_text()}"
                )
            time.sleep(POLL_INTERVAL)
        assert self.proc.poll() is None, f"daemon exited after mounting:\n{self.log_text()}"

    def check_health(self) -> list[str]:
        problems = []
        if self.proc is not None and self.proc.poll() is not None:
            problems.append(f"daemon died with exit code {self.proc.returncode}")
        text = self.log_text()
        new, self._log_checked = text[self._log_checked :], len(text)
        for line in new.splitlines():
            if _BAD_LOG.search(line) and not any(a.search(line) for a in self._allowed):
                problems.append(f"daemon log: {line}")
        if any(p.startswith("daemon") for p in problems) and "Traceback" in new:
            problems.append("log excerpt:\n" + new[-4000:])
        return problems

    def teardown(self) -> list[str]:
        problems: list[str] = []
        proc = self.proc
        if proc is None:
            return problems
        if is_mounted(self.path) and proc.poll() is None:
            problems += self._umount_cli(proc)
        if is_mounted(self.path):
            problems.append("still mounted " + ("after `daxfs umount`" if proc.returncode is None
                            else "after the daemon exited") + "; used fusermount3 -u -z")
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)],
                           capture_output=True, timeout=30)
            if is_mounted(self.path):
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
        if proc.poll() is None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                problems.append("daemon still running after unmount; sent SIGTERM")
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    problems.append("daemon ignored SIGTERM; sent SIGKILL")
                    proc.kill()
                    proc.wait()
        if proc.returncode != 0:
            problems.append(f"daemon exited with code {proc.returncode}")
        problems += [p for p in self.check_health() if not p.startswith("daemon died")]
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None
        self.proc = None
        _live_mounts.discard(self)
        if is_mounted(self.path):
            problems.append(f"LEAK: {self.path} is still mounted")
        return problems

    def _umount_cli(self, proc: subprocess.Popen[bytes]) -> list[str]:
        """`daxfs umount`, while reaping the daemon (in case umount waits for its pid)."""
        um = subprocess.Popen(
            [sys.executable, "-m", "daxfs", "umount", str(self.path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=daxfs_env(),
        )
        deadline = time.monotonic() + UMOUNT_TIMEOUT
        while um.poll() is None and time.monotonic() < deadline:
            proc.poll()
            time.sleep(POLL_INTERVAL)
        if um.poll() is None:
            um.kill()
            um.wait()
            return [f"`daxfs umount` did not return within {UMOUNT_TIMEOUT}s"]
        out = um.stdout.read().decode(errors="replace") if um.stdout else ""
        if um.stdout:
            um.stdout.close()
        if um.returncode != 0:
            return [f"`daxfs umount` exited with {um.returncode}: {out.strip()}"]
        return []

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and is_mounted(self.path)

    def revive(self) -> None:
        self.teardown()  # its problems were reported by the test that crashed it
        mkfs(self.image, self.size, [*self.mkfs_args, "--force"])
        self.mount()

    def remount(self, opts: str | None = None) -> None:
        problems = self.teardown()
        assert not problems, "unmount before remount: " + "; ".join(problems)
        if opts is not None:
            self.opts = opts
        self.mount()


class TmpfsMount(Mount):
    is_tmpfs = True

    def __init__(self, path: Path, dax: str, size: str, inodes: int | None) -> None:
        self.path = path
        self.dax = dax
        self.size = size
        self.inodes = inodes

    def mount(self) -> None:
        opts = f"size={size_to_bytes(self.size)},mode=0755"
        if self.inodes:
            opts += f",nr_inodes={self.inodes}"
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(self.path)],
                       check=True, capture_output=True, timeout=30)
        _live_mounts.add(self)

    def teardown(self) -> list[str]:
        problems = []
        if is_mounted(self.path):
            res = subprocess.run(["umount", str(self.path)], capture_output=True, timeout=30)
            if res.returncode != 0:
                problems.append(f"umount failed: {res.stderr.decode().strip()}; lazy umount")
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, timeout=30)
        _live_mounts.discard(self)
        return problems

    def remount(self, opts: str | None = None) -> None:
        pytest.skip("remount persistence is daxfs-specific")


def _inodes_from(mkfs_args: Sequence[str]) -> int | None:
    args = list(mkfs_args)
    for i, a in enumerate(args):
        if a == "--inodes" and i + 1 < len(args):
            return int(args[i + 1])
        if a.startswith("--inodes="):
            return int(a.split("=", 1)[1])
    return None


def new_mount(
    factory: pytest.TempPathFactory,
    *,
    size: str = DEFAULT_SIZE,
    opts: str = "dax=always",
    mkfs_args: Sequence[str] = (),
    allow_other: bool = True,
    mount: bool = True,
) -> Mount:
    """Make a fresh image + mount point and (unless mount=False) mount it."""
    base = factory.mktemp(f"daxfs{next(_counter)}")
    path = base / "mnt"
    path.mkdir()
    if allow_other and "allow_other" not in opts.split(","):
        opts = f"{opts},allow_other" if opts else "allow_other"
    m: Mount
    if IS_TMPFS:
        dax = next((o[4:] for o in opts.split(",") if o.startswith("dax=")), "default")
        m = TmpfsMount(path, dax, size, _inodes_from(mkfs_args))
    else:
        image = base / "image.pmem"
        mkfs(image, size, mkfs_args)
        m = DaxfsMount(image, path, base / "daemon.log", opts, size, mkfs_args)
    if mount:
        m.mount()
    return m


def fail_on(problems: list[str], what: str) -> None:
    if problems:
        pytest.fail(f"{what}:\n  " + "\n  ".join(problems), pytrace=False)


# --------------------------------------------------------------------------- #
# fixtures


@pytest.fixture(scope="session", autouse=True)
def _session_guard() -> Iterator[None]:
    """Umask 022 for predictable modes; no mount may outlive the session."""
    old = os.umask(0o022)
    yield
    os.umask(old)
    leaked = list(_live_mounts)
    problems = []
    for m in leaked:
        problems += [f"{m}: {p}" for p in m.teardown()]
    if leaked:
        fail_on([f"mount left behind by a fixture: {m}" for m in leaked] + problems,
                "leaked mounts")


@pytest.fixture(scope="session")
def mount_env() -> None:
    """Skip everything if this machine cannot mount; fail if daxfs cannot start."""
    if os.geteuid() != 0:
        pytest.skip("mounted tests run as root")
    if IS_TMPFS:
        return
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        pytest.skip("FUSE (/dev/fuse, fusermount3) not available")
    res = run_daxfs("--help")
    if res.returncode != 0:
        pytest.fail(f"`{sys.executable} -m daxfs --help` failed ({res.returncode}):\n"
                    f"{res.stdout}{res.stderr}", pytrace=False)


@pytest.fixture(scope="module", params=["always", "never"], ids=lambda d: f"dax={d}")
def mnt(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, mount_env: None
) -> Iterator[Mount]:
    m = new_mount(tmp_path_factory, opts=f"dax={request.param}")
    try:
        yield m
    finally:
        fail_on(m.teardown(), f"unmounting {m}")


@pytest.fixture
def workdir(mnt: Mount, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory (mode 0755) in the shared mount, removed afterwards.

    If an earlier test killed the daemon, the mount is replaced by a fresh
    one first, so that one crash fails one test (and a test never runs on
    the bare mount point directory).
    """
    if not mnt.alive():
        mnt.revive()
    assert mnt.alive()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", request.node.name)[:100]
    path = mnt.path / f"{name}-{next(_counter)}"
    path.mkdir()
    os.chmod(path, 0o755)
    yield path
    problems = mnt.check_health()
    if not problems:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(path)
        problems = mnt.check_health()
    fail_on(problems, f"daemon health after {request.node.name}")


@pytest.fixture
def daxfs_mount(
    tmp_path_factory: pytest.TempPathFactory, mount_env: None
) -> Iterator[Callable[..., Mount]]:
    """Factory for mounts on images of their own (torn down after the test)."""
    made: list[Mount] = []

    def make(
        size: str = DEFAULT_SIZE,
        opts: str = "dax=always",
        mkfs_args: Sequence[str] = (),
        allow_other: bool = True,
        mount: bool = True,
    ) -> Mount:
        m = new_mount(tmp_path_factory, size=size, opts=opts, mkfs_args=mkfs_args,
                      allow_other=allow_other, mount=mount)
        made.append(m)
        return m

    yield make
    problems: list[str] = []
    for m in made:
        problems += [f"{m}: {p}" for p in m.teardown()]
    fail_on(problems, "unmounting test mounts")


@pytest.fixture(params=["always", "never"], ids=lambda d: f"dax={d}")
def dax_mode(request: pytest.FixtureRequest) -> str:
    """For tests with their own mounts that must run in both modes."""
    return str(request.param)
