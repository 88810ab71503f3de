"""Everything written through the mount is there, unchanged, after unmount
and remount (in either dax mode)."""

from __future__ import annotations

import mmap
import os
from collections.abc import Callable

import pytest

from .conftest import Mount
from .trees import build_tree
from .util import diff_snapshots, pattern, read_file, snapshot, statvfs_counts, write_file

pytestmark = pytest.mark.daxfs_only

OTHER = {"always": "never", "never": "always"}


def test_tree_survives_remount(daxfs_mount: Callable[..., Mount], dax_mode: str) -> None:
    m = daxfs_mount(size="512M", opts=f"dax={dax_mode}", mkfs_args=["--inodes", "8192"])
    root = m.path / "tree"
    root.mkdir()
    n = build_tree(root, seed=17)
    assert n >= 1000
    before = snapshot(root, extra=("ctime_ns", "blocks", "ino", "linkgroup"))
    counts = statvfs_counts(m.path)
    assert len(before) > 1000

    m.remount()
    after = snapshot(root, extra=("ctime_ns", "blocks", "ino", "linkgroup"))
    diffs = diff_snapshots(before, after, ignore=("ino",))
    assert not diffs, "changed by remount:\n" + "\n".join(diffs)
    assert statvfs_counts(m.path) == counts
    inos = diff_snapshots(before, after)
    assert not inos, "inode numbers changed by remount:\n" + "\n".join(inos)

    m.remount(f"dax={OTHER[dax_mode]},allow_other")
    again = snapshot(root, extra=("ctime_ns", "blocks", "linkgroup"))
    diffs = diff_snapshots(before, again, ignore=("ino",))
    assert not diffs, f"changed by remount with dax={OTHER[dax_mode]}:\n" + "\n".join(diffs)


def test_unsynced_writes_survive_umount(daxfs_mount: Callable[..., Mount], dax_mode: str) -> None:
    m = daxfs_mount(size="128M", opts=f"dax={dax_mode}")
    data = pattern(5 << 20, seed=5)
    write_file(m.path / "plain", data)
    fd = os.open(m.path / "mapped", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 1 << 20)
        with mmap.mmap(fd, 1 << 20) as mm:
            mm[4096:8192] = pattern(4096, seed=6)
    finally:
        os.close(fd)
    fd = os.open(m.path / "appended", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for i in range(100):
            os.write(fd, b"line %d\n" % i)
    finally:
        os.close(fd)
    os.truncate(m.path / "plain", len(data) - 12345)
    os.rename(m.path / "appended", m.path / "renamed")
    m.remount()
    assert read_file(m.path / "plain") == data[: len(data) - 12345]
    mapped = read_file(m.path / "mapped")
    assert mapped[4096:8192] == pattern(4096, seed=6)
    assert mapped[:4096] == bytes(4096) and len(mapped) == 1 << 20
    assert read_file(m.path / "renamed") == b"".join(b"line %d\n" % i for i in range(100))
    assert sorted(os.listdir(m.path)) == ["mapped", "plain", "renamed"]


def test_deletions_and_space_survive_remount(daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="64M")
    for i in range(50):
        write_file(m.path / f"f{i}", pattern(20_000, seed=i))
    os.mkdir(m.path / "d")
    for i in range(0, 50, 2):
        os.unlink(m.path / f"f{i}")
    counts = statvfs_counts(m.path)
    m.remount()
    assert statvfs_counts(m.path) == counts
    assert sorted(os.listdir(m.path)) == sorted(["d"] + [f"f{i}" for i in range(1, 50, 2)])
    for i in range(1, 50, 2):
        assert read_file(m.path / f"f{i}") == pattern(20_000, seed=i)
    os.rmdir(m.path / "d")
    for i in range(1, 50, 2):
        os.unlink(m.path / f"f{i}")
    m.remount()
    assert os.listdir(m.path) == []
