"""The command-line contract: mkfs, mount (foreground and daemonized), umount,
signals, read-only mounts, and refusal of foreign, corrupt or busy images."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import (
    MOUNT_TIMEOUT,
    DaxfsMount,
    Mount,
    daxfs_env,
    is_mounted,
    mkfs,
    run_daxfs,
)
from .util import expect_errno, pattern, read_file, write_file

pytestmark = pytest.mark.daxfs_only

REFUSE_TIMEOUT = 20.0  # a refused mount must fail at least this quickly


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def _daxfs_pids(mnt: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names daxfs and mnt."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and os.fsencode(mnt) in argv and any(b"daxfs" in a for a in argv):
            pids.append(int(entry))
    return pids


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    """A directory for images and mount points; nothing may stay mounted in it."""
    yield tmp_path
    leftovers = [p for p in tmp_path.iterdir() if is_mounted(p)]
    for p in leftovers:
        subprocess.run(["fusermount3", "-u", "-z", str(p)], capture_output=True, timeout=30)
    for p in tmp_path.iterdir():
        for pid in _daxfs_pids(p):
            os.kill(pid, signal.SIGKILL)
    assert not leftovers, f"left mounted: {leftovers}"


def _mountpoint(base: Path, name: str = "mnt") -> Path:
    p = base / name
    p.mkdir()
    return p


def _umount(mnt: Path) -> subprocess.CompletedProcess[str]:
    return run_daxfs("umount", mnt, timeout=90)


# --------------------------------------------------------------------------- #
# mkfs


def test_mkfs_makes_a_sparse_image_of_the_given_size(scratch: Path) -> None:
    image = scratch / "img"
    res = run_daxfs("mkfs", "--size", "256M", image)
    assert res.returncode == 0, res.stderr
    st = os.stat(image)
    assert st.st_size == 256 << 20
    assert st.st_blocks * 512 < (256 << 20) // 4, "image is not sparse"
    assert "Traceback" not in res.stderr


def test_mkfs_refuses_to_overwrite_a_daxfs_image(scratch: Path) -> None:
    image = scratch / "img"
    mkfs(image, "32M")
    before = _sha(image)
    res = run_daxfs("mkfs", "--size", "32M", image)
    assert res.returncode != 0
    assert len(_lines(res.stderr)) == 1 and "Traceback" not in res.stderr, res.stderr
    assert _sha(image) == before
    res = run_daxfs("mkfs", "--size", "32M", "--force", image)
    assert res.returncode == 0, res.stderr
    assert _sha(image) != before  # new uuid at least


@pytest.mark.parametrize("force", [False, True], ids=["plain", "force"])
def test_mkfs_refuses_a_non_daxfs_file(scratch: Path, force: bool) -> None:
    victim = scratch / "precious"
    data = pattern(1 << 20, seed=1)
    victim.write_bytes(data)
    args = ["mkfs", "--size", "32M", *(["--force"] if force else []), str(victim)]
    res = run_daxfs(*args)
    assert res.returncode != 0
    assert len(_lines(res.stderr)) == 1 and "Traceback" not in res.stderr, res.stderr
    assert victim.read_bytes() == data


@pytest.mark.parametrize("policy", ["first-fit", "reuse-first"])
def test_mkfs_alloc_policies_mount(daxfs_mount: Callable[..., Mount], policy: str) -> None:
    m = daxfs_mount(size="32M", mkfs_args=["--alloc-policy", policy])
    for i in range(20):
        write_file(m.path / f"f{i}", pattern(3 * 4096, seed=i))
    for i in range(0, 20, 2):
        os.unlink(m.path / f"f{i}")
    for i in range(20, 30):
        write_file(m.path / f"f{i}", pattern(5 * 4096, seed=i))
    for i in list(range(1, 20, 2)) + list(range(20, 30)):
        size = 3 * 4096 if i < 20 else 5 * 4096
        assert read_file(m.path / f"f{i}") == pattern(size, seed=i), i


def test_mount_option_alloc_reuse_first(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="32M", opts="dax=always,alloc=reuse-first")
    write_file(m.path / "a", pattern(8 * 4096, seed=1))
    os.unlink(m.path / "a")
    write_file(m.path / "b", pattern(8 * 4096, seed=2))
    assert read_file(m.path / "b") == pattern(8 * 4096, seed=2)


# --------------------------------------------------------------------------- #
# mount / umount


def test_daemonized_mount_and_umount(scratch: Path) -> None:
    image = scratch / "img"
    mkfs(image, "64M")
    mnt = _mountpoint(scratch)
    res = run_daxfs("mount", "-o", "dax=always", image, mnt, timeout=MOUNT_TIMEOUT + 10)
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    assert is_mounted(mnt), "mount returned before the mount was live"
    pids = _daxfs_pids(mnt)
    assert pids, "no daemon process found for the mount"
    write_file(mnt / "f", b"persist me")  # no fsync: umount must flush
    res = _umount(mnt)
    assert res.returncode == 0, res.stderr
    assert not is_mounted(mnt)
    assert not [p for p in pids if p in _daxfs_pids(mnt)], "umount returned before daemon exit"
    res = run_daxfs("mount", image, mnt, timeout=MOUNT_TIMEOUT + 10)
    assert res.returncode == 0, res.stderr
    try:
        assert read_file(mnt / "f") == b"persist me"
    finally:
        assert _umount(mnt).returncode == 0


def test_umount_cli_stops_foreground_daemon(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="32M")
    assert isinstance(m, DaxfsMount) and m.proc is not None
    proc = m.proc
    write_file(m.path / "f", b"x")
    problems = m.teardown()
    assert problems == []
    assert proc.returncode == 0
    assert not is_mounted(m.path)


def test_fusermount_unmount_makes_daemon_exit(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="32M", opts="dax=never")
    assert isinstance(m, DaxfsMount) and m.proc is not None
    write_file(m.path / "f", b"via fusermount")
    res = subprocess.run(["fusermount3", "-u", str(m.path)], capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert m.proc.wait(timeout=30) == 0
    assert m.teardown() == []
    m.mount()
    assert read_file(m.path / "f") == b"via fusermount"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signal_unmounts_cleanly(daxfs_mount: Callable[..., Mount], sig: int) -> None:
    m = daxfs_mount(size="32M", opts="dax=never")
    assert isinstance(m, DaxfsMount) and m.proc is not None
    data = pattern(300_000, seed=sig)
    write_file(m.path / "f", data)  # no fsync
    m.proc.send_signal(sig)
    assert m.proc.wait(timeout=30) == 0
    assert not is_mounted(m.path)
    assert m.teardown() == []
    m.mount()
    assert read_file(m.path / "f") == data


def test_read_only_mount(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="32M")
    write_file(m.path / "f", b"read me")
    os.mkdir(m.path / "d")
    m.remount("dax=always,ro,allow_other")
    assert read_file(m.path / "f") == b"read me"
    assert os.statvfs(m.path).f_flag & os.ST_RDONLY
    assert not os.access(m.path / "f", os.W_OK)
    with expect_errno(errno.EROFS):
        os.open(m.path / "f", os.O_WRONLY)
    with expect_errno(errno.EROFS):
        write_file(m.path / "new", b"")
    with expect_errno(errno.EROFS):
        os.mkdir(m.path / "d2")
    with expect_errno(errno.EROFS):
        os.unlink(m.path / "f")
    with expect_errno(errno.EROFS):
        os.setxattr(m.path / "f", "user.k", b"v")
    with expect_errno(errno.EROFS):
        os.chmod(m.path / "f", 0o600)
    m.remount("dax=always,allow_other")
    write_file(m.path / "new", b"writable again")
    assert sorted(os.listdir(m.path)) == ["d", "f", "new"]


# --------------------------------------------------------------------------- #
# refusals


def _make_foreign(kind: str, image: Path) -> None:
    if kind == "random":
        image.write_bytes(os.urandom(1 << 20))
        os.truncate(image, 64 << 20)
    elif kind == "zeros":
        image.write_bytes(b"")
        os.truncate(image, 64 << 20)
    elif kind == "empty":
        image.write_bytes(b"")
    elif kind == "text":
        image.write_text("just some text, not a filesystem\n" * 1000)
    elif kind == "truncated":
        mkfs(image, "64M")
        os.truncate(image, 8192)
    elif kind.startswith("flip"):
        mkfs(image, "64M")
        start, end = {"flip-magic": (0, 16), "flip-header": (16, 64),
                      "flip-tail": (2048, 4096)}[kind]
        with open(image, "r+b") as f:
            block = bytearray(f.read(4096))
            for i in range(start, end):
                block[i] ^= 0x5A
            f.seek(0)
            f.write(block)
    else:
        raise AssertionError(kind)


FOREIGN = ["random", "zeros", "empty", "text", "truncated", "flip-magic", "flip-header",
           "flip-tail"]


def _assert_refused_quickly(argv: list[str], mnt: Path) -> str:
    """Run a mount that must fail; return its stderr."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=daxfs_env(),
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=REFUSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        if is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, timeout=30)
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"mount did not fail within {REFUSE_TIMEOUT}s (mounted: {is_mounted(mnt)});"
                    f" stderr:\n{err}")
    if proc.returncode == 0 or is_mounted(mnt):
        if is_mounted(mnt):
            _umount(mnt)
        pytest.fail(f"mount succeeded (rc={proc.returncode}); stderr:\n{err}")
    assert "Traceback" not in out + err, err
    assert _lines(err), "no reason given on stderr"
    assert time.monotonic() - t0 < REFUSE_TIMEOUT
    assert not _daxfs_pids(mnt), "a daemon is still running after the refused mount"
    return err


@pytest.mark.parametrize("kind", FOREIGN)
def test_foreign_or_corrupt_image_is_refused(scratch: Path, kind: str) -> None:
    image = scratch / "img"
    _make_foreign(kind, image)
    before = _sha(image)
    mnt = _mountpoint(scratch)
    err = _assert_refused_quickly(
        [sys.executable, "-m", "daxfs", "mount", "-o", "dax=always", str(image), str(mnt)], mnt)
    assert len(_lines(err)) == 1, f"expected a one-line reason, got:\n{err}"
    _assert_refused_quickly(
        [sys.executable, "-m", "daxfs", "mount", "--foreground", str(image), str(mnt)], mnt)
    assert _sha(image) == before, "a refused mount modified the image"


def test_image_already_mounted_is_refused(
    daxfs_mount: Callable[..., Mount], scratch: Path
) -> None:
    m = daxfs_mount(size="32M")
    assert isinstance(m, DaxfsMount)
    write_file(m.path / "f", b"first mount")
    mnt2 = _mountpoint(scratch, "second")
    err = _assert_refused_quickly(
        [sys.executable, "-m", "daxfs", "mount", str(m.image), str(mnt2)], mnt2)
    assert len(_lines(err)) == 1, f"expected a one-line reason, got:\n{err}"
    _assert_refused_quickly(
        [sys.executable, "-m", "daxfs", "mount", "--foreground", str(m.image), str(mnt2)], mnt2)
    # the first mount is unharmed
    write_file(m.path / "g", b"still fine")
    assert read_file(m.path / "f") == b"first mount"
    assert read_file(m.path / "g") == b"still fine"


def test_missing_image_or_mountpoint_is_refused(scratch: Path) -> None:
    image = scratch / "img"
    mkfs(image, "32M")
    mnt = _mountpoint(scratch)
    err = _assert_refused_quickly(
        [sys.executable, "-m", "daxfs", "mount", str(scratch / "nope"), str(mnt)], mnt)
    assert len(_lines(err)) == 1, err
    missing = scratch / "no-such-dir"
    err = _assert_refused_quickly(
        [sys.executable, "-m", "daxfs", "mount", str(image), str(missing)], missing)
    assert len(_lines(err)) == 1, err


# --------------------------------------------------------------------------- #
# default image, the system's mount(8), fstab, the clean flag


def _state_word(image: Path) -> int:
    from daxfs import format as fmt

    with open(image, "rb") as f:
        f.seek(fmt.SB_STATE_OFF)
        return int.from_bytes(f.read(8), "little")


def test_mount_without_image_uses_default_image(scratch: Path) -> None:
    env = daxfs_env()
    env["XDG_DATA_HOME"] = str(scratch / "data")
    mnt = _mountpoint(scratch)
    argv = [sys.executable, "-m", "daxfs"]
    res = subprocess.run([*argv, "mount", str(mnt)], capture_output=True, text=True,
                         timeout=MOUNT_TIMEOUT + 30, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    image = scratch / "data" / "daxfs" / "pmem0.img"
    try:
        assert image.exists() and is_mounted(mnt)
        assert image.stat().st_size == 1 << 30
        write_file(mnt / "f", b"default")
    finally:
        assert _umount(mnt).returncode == 0
    assert _state_word(image) == 1  # STATE_CLEAN
    res = subprocess.run([*argv, "mount", str(mnt)], capture_output=True, text=True,
                         timeout=MOUNT_TIMEOUT + 30, env=env, stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    try:
        assert read_file(mnt / "f") == b"default"
    finally:
        assert _umount(mnt).returncode == 0


def test_image_is_dirty_while_mounted_and_clean_after(scratch: Path) -> None:
    image = scratch / "img"
    mkfs(image, "32M")
    assert _state_word(image) == 1
    mnt = _mountpoint(scratch)
    assert run_daxfs("mount", image, mnt, timeout=MOUNT_TIMEOUT + 10).returncode == 0
    try:
        assert _state_word(image) == 0
    finally:
        assert _umount(mnt).returncode == 0
    assert _state_word(image) == 1


HELPER = Path("/sbin/mount.fuse.daxfs")


@pytest.mark.skipif(not HELPER.exists(), reason="mount.fuse.daxfs is not installed (make venv)")
def test_mount_t_fuse_daxfs_and_fstab(scratch: Path) -> None:
    image = scratch / "img"
    mkfs(image, "32M")
    mnt = _mountpoint(scratch)
    res = subprocess.run(["mount", "-t", "fuse.daxfs", str(image), str(mnt), "-o", "dax=never"],
                         capture_output=True, text=True, timeout=MOUNT_TIMEOUT + 10,
                         env=daxfs_env(), stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    try:
        assert is_mounted(mnt)
        write_file(mnt / "f", b"via mount -t")
    finally:
        assert _umount(mnt).returncode == 0
    # An fstab line, through mount's --fstab option so the system's fstab is untouched.
    fstab = scratch / "fstab"
    fstab.write_text(f"{image} {mnt} fuse.daxfs dax=always,nofail 0 0\n")
    res = subprocess.run(["mount", "--fstab", str(fstab), str(mnt)], capture_output=True,
                         text=True, timeout=MOUNT_TIMEOUT + 10, env=daxfs_env(),
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stderr
    try:
        assert read_file(mnt / "f") == b"via mount -t"
    finally:
        assert _umount(mnt).returncode == 0
