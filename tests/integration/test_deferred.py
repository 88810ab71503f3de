"""FORGET, RELEASE and RELEASEDIR recorded by the C reader threads and applied
by Python in bulk (before its next request, at the periodic commit, at
unmount): close(2) and the kernel's forgetting an inode still have every
effect they had when pyfuse3 handled them one by one."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable

import pytest

from daxfs.client import Client

from .conftest import Mount, run_daxfs
from .util import statvfs_counts

pytestmark = pytest.mark.daxfs_only

MIB = 1 << 20


def fuse_info(m: Mount) -> dict[str, int]:
    with Client(str(m.path)) as c:
        return dict(c.status()["fuse"])


@pytest.fixture
def fmnt(daxfs_mount: Callable[..., Mount], dax_mode: str) -> Mount:
    return daxfs_mount(opts=f"dax={dax_mode}")


def test_release_and_forget_are_recorded_not_sent_to_python(fmnt: Mount) -> None:
    before = fuse_info(fmnt)
    for i in range(20):
        fd = os.open(fmnt.path / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
        os.close(fd)
        os.unlink(fmnt.path / f"f{i}")
    d = os.open(fmnt.path, os.O_RDONLY | os.O_DIRECTORY)
    os.close(d)  # a RELEASEDIR
    after = fuse_info(fmnt)
    assert after["deferred"] - before["deferred"] >= 40  # 20 releases + 20 forgets
    mix = after["slow_by_opcode"]
    assert mix.get("RELEASE", 0) == before["slow_by_opcode"].get("RELEASE", 0)
    assert mix.get("FORGET", 0) == before["slow_by_opcode"].get("FORGET", 0)


def test_space_of_a_closed_unlinked_file_comes_back(fmnt: Mount) -> None:
    (fmnt.path / "keep").write_bytes(b"")  # keeps the directory block allocated
    free0, inodes0 = statvfs_counts(fmnt.path)
    fd = os.open(fmnt.path / "f", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, os.urandom(MIB))
        os.unlink(fmnt.path / "f")
        assert statvfs_counts(fmnt.path)[0] <= free0 - MIB // 4096  # open: still held
    finally:
        os.close(fd)  # the RELEASE is recorded; statfs applies it first
    assert statvfs_counts(fmnt.path) == (free0, inodes0)


def _fsck(m: Mount) -> dict[str, object]:
    res = run_daxfs("fsck", "--json", m.image)
    assert res.returncode == 0, res.stdout + res.stderr
    return dict(json.loads(res.stdout))


def test_unlinked_file_closed_just_before_unmount_is_freed(
        daxfs_mount: Callable[..., Mount]) -> None:
    """A release still recorded when the session ends (umount(8): no request
    reaches Python after the close) leaves a clean image with the inode and its
    blocks free, not an orphan for the next mount."""
    m = daxfs_mount()
    m.teardown()
    base = _fsck(m)
    m.mount()
    fd = os.open(m.path / "f", os.O_CREAT | os.O_RDWR, 0o644)
    os.write(fd, os.urandom(MIB))
    os.unlink(m.path / "f")
    os.close(fd)
    # umount(8), not `daxfs umount` (whose own requests would apply it first):
    # nothing reaches Python between the close and the end of the session.
    subprocess.run(["umount", str(m.path)], check=True, timeout=60)
    assert m.teardown() == []
    got = _fsck(m)
    assert got["status"] == "clean"
    assert (got["inodes_in_use"], got["blocks_referenced"]) == \
        (base["inodes_in_use"], base["blocks_referenced"])


def test_open_files_stay_usable_while_others_are_released(fmnt: Mount) -> None:
    """Releases of other handles, applied in bulk, never touch a live one."""
    keep = os.open(fmnt.path / "keep", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for i in range(50):
            fd = os.open(fmnt.path / f"t{i}", os.O_CREAT | os.O_WRONLY, 0o644)
            os.write(fd, b"t")
            os.close(fd)
            os.pwrite(keep, bytes([i]), i)
        assert os.pread(keep, 50, 0) == bytes(range(50))
        for i in range(50):
            assert (fmnt.path / f"t{i}").read_bytes() == b"t"
    finally:
        os.close(keep)
