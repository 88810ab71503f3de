"""Directories: readdir completeness, readdir offsets that stay valid while
the directory changes, d_ino/d_type, nlink counting."""

from __future__ import annotations

import collections
import os
import random
import stat
from pathlib import Path

import pytest

from .util import getdents64, write_file

DT_UNKNOWN, DT_FIFO, DT_CHR, DT_DIR, DT_BLK, DT_REG, DT_LNK, DT_SOCK = 0, 1, 2, 4, 6, 8, 10, 12
PAD = "-" + "p" * 120  # long names: a 32 KiB getdents buffer holds only ~200 of them


def _readdir_all(fd: int, bufsize: int = 32768) -> list[tuple[int, int, int, str]]:
    out = []
    while batch := getdents64(fd, bufsize):
        out += batch
    return out


def _names(entries: list[tuple[int, int, int, str]]) -> list[str]:
    return [e[3] for e in entries if e[3] not in (".", "..")]


def test_empty_directory_lists_nothing(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    assert os.listdir(workdir / "d") == []
    assert list(os.scandir(workdir / "d")) == []


def test_listing_1000_entries_exactly_once(workdir: Path) -> None:
    names = {f"entry-{i:04d}{PAD}" for i in range(1000)}
    for n in names:
        os.close(os.open(workdir / n, os.O_CREAT | os.O_WRONLY, 0o644))
    listed = os.listdir(workdir)
    assert len(listed) == len(names)
    assert set(listed) == names
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        small = _names(_readdir_all(fd, 512))  # many small getdents calls
    finally:
        os.close(fd)
    assert sorted(small) == sorted(names)


def test_scandir_while_deleting_and_adding(workdir: Path) -> None:
    rng = random.Random(42)
    stable = {f"s{i:04d}{PAD}" for i in range(600)}
    volatile = [f"v{i:04d}{PAD}" for i in range(400)]
    for n in sorted(stable) + volatile:
        os.close(os.open(workdir / n, os.O_CREAT | os.O_WRONLY, 0o644))
    rng.shuffle(volatile)
    added: list[str] = []
    seen: collections.Counter[str] = collections.Counter()
    with os.scandir(workdir) as it:
        for k, entry in enumerate(it):
            seen[entry.name] += 1
            if k > 20000:
                pytest.fail(f"readdir never reached the end: {k} entries returned, "
                            f"{sum(c - 1 for c in seen.values())} repeats")
            if k % 2 == 0 and volatile:
                os.unlink(workdir / volatile.pop())
            if k % 3 == 0:
                name = f"n{len(added):04d}{PAD}"
                os.close(os.open(workdir / name, os.O_CREAT | os.O_WRONLY, 0o644))
                added.append(name)
    missing = sorted(n[:5] for n in stable if seen[n] == 0)
    dups = sorted(n[:5] for n, c in seen.items() if c > 1)
    unknown = set(seen) - stable - set(added) - {f"v{i:04d}{PAD}" for i in range(400)}
    assert not missing, f"entries present throughout were not returned: {missing[:20]}"
    assert not dups, f"entries returned more than once: {dups[:20]}"
    assert not unknown
    assert len(added) > 100 and len(volatile) < 250  # the directory really changed meanwhile
    assert set(os.listdir(workdir)) == stable | set(added) | set(volatile)


def test_getdents_offsets_stay_valid_while_directory_changes(workdir: Path) -> None:
    rng = random.Random(7)
    stable = {f"s{i:04d}{PAD}" for i in range(500)}
    volatile = [f"v{i:04d}{PAD}" for i in range(500)]
    for n in sorted(stable) + volatile:
        os.close(os.open(workdir / n, os.O_CREAT | os.O_WRONLY, 0o644))
    rng.shuffle(volatile)
    all_volatile = set(volatile)
    added: list[str] = []
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        first: list[str] = []
        saved_off = None
        saved_index = 0
        calls = 0
        while batch := getdents64(fd, 1024):
            calls += 1
            first += [e[3] for e in batch]
            if calls > 3000:
                dups = sum(c - 1 for c in collections.Counter(first).values() if c > 1)
                pytest.fail(f"readdir never reached the end: {calls} getdents calls returned "
                            f"{len(first)} entries ({dups} repeats) for a directory of "
                            f"~{len(stable) + len(volatile) + len(added)}")
            if calls == 10:
                saved_off, saved_index = batch[-1][1], len(first)
                assert os.lseek(fd, 0, os.SEEK_CUR) == saved_off
            for _ in range(3):
                if volatile:
                    os.unlink(workdir / volatile.pop())
            name = f"n{len(added):04d}{PAD}"
            os.close(os.open(workdir / name, os.O_CREAT | os.O_WRONLY, 0o644))
            added.append(name)
        assert saved_off is not None and calls > 20
        counts = collections.Counter(first)
        assert {n for n in stable if counts[n] != 1} == set(), "stable entry missing or repeated"
        assert all(c == 1 for c in counts.values()), "an entry was returned twice"
        assert set(counts) <= stable | all_volatile | set(added) | {".", ".."}

        # seek back to an offset handed out mid-way: the continuation holds the
        # same stable entries as it did the first time
        assert os.lseek(fd, saved_off, os.SEEK_SET) == saved_off
        again = _names(_readdir_all(fd, 1024))
        stable_after_first = [n for n in first[saved_index:] if n in stable]
        stable_after_again = [n for n in again if n in stable]
        assert sorted(stable_after_again) == sorted(stable_after_first)
        assert len(set(again)) == len(again)

        # rewind: a fresh pass sees exactly the current contents
        os.lseek(fd, 0, os.SEEK_SET)
        assert sorted(_names(_readdir_all(fd, 4096))) == sorted(os.listdir(workdir))
    finally:
        os.close(fd)


def test_dirent_inode_and_type(workdir: Path) -> None:
    write_file(workdir / "reg", b"")
    os.mkdir(workdir / "dir")
    os.symlink("reg", workdir / "lnk")
    os.mkfifo(workdir / "fifo")
    os.mknod(workdir / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.mknod(workdir / "blk", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    os.mknod(workdir / "sock", stat.S_IFSOCK | 0o600)
    expected = {"reg": DT_REG, "dir": DT_DIR, "lnk": DT_LNK, "fifo": DT_FIFO, "chr": DT_CHR,
                "blk": DT_BLK, "sock": DT_SOCK}
    fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        entries = {e[3]: e for e in _readdir_all(fd)}
    finally:
        os.close(fd)
    for name, dtype in expected.items():
        ino, _, got_type, _ = entries[name]
        assert ino == os.lstat(workdir / name).st_ino, name
        assert got_type in (dtype, DT_UNKNOWN), f"{name}: d_type {got_type} != {dtype}"
    for entry in os.scandir(workdir):
        st = os.lstat(entry.path)
        assert entry.inode() == st.st_ino
        assert entry.is_dir(follow_symlinks=False) == stat.S_ISDIR(st.st_mode)
        assert entry.is_file(follow_symlinks=False) == stat.S_ISREG(st.st_mode)
        assert entry.is_symlink() == stat.S_ISLNK(st.st_mode)


def test_directory_nlink(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    assert os.stat(workdir / "d").st_nlink == 2
    for i in range(5):
        os.mkdir(workdir / "d" / f"sub{i}")
    for i in range(7):
        write_file(workdir / "d" / f"file{i}", b"")
    os.symlink("sub0", workdir / "d" / "link")
    assert os.stat(workdir / "d").st_nlink == 2 + 5
    for i in range(5):
        assert os.stat(workdir / "d" / f"sub{i}").st_nlink == 2
    os.rmdir(workdir / "d" / "sub4")
    assert os.stat(workdir / "d").st_nlink == 2 + 4
    os.rename(workdir / "d" / "sub3", workdir / "moved")
    assert os.stat(workdir / "d").st_nlink == 2 + 3
    os.rename(workdir / "moved", workdir / "d" / "sub0" / "moved")
    assert os.stat(workdir / "d").st_nlink == 2 + 3
    assert os.stat(workdir / "d" / "sub0").st_nlink == 3


def test_dotdot_and_dot(workdir: Path) -> None:
    os.makedirs(workdir / "a" / "b")
    assert os.stat(workdir / "a" / "b" / "..").st_ino == os.stat(workdir / "a").st_ino
    assert os.stat(os.path.join(workdir / "a", ".")).st_ino == os.stat(workdir / "a").st_ino
    assert os.stat(workdir / "a" / "b" / ".." / "..").st_ino == os.stat(workdir).st_ino


def test_directory_listing_reflects_changes(workdir: Path) -> None:
    for i in range(50):
        write_file(workdir / f"f{i}", b"")
    for i in range(0, 50, 2):
        os.unlink(workdir / f"f{i}")
    for i in range(1, 50, 2):
        os.rename(workdir / f"f{i}", workdir / f"g{i}")
    assert sorted(os.listdir(workdir)) == sorted(f"g{i}" for i in range(1, 50, 2))
