"""ENOSPC under concurrent load, and corruption found while mounted: the mount goes
read-only, the image is marked as needing fsck, and fsck --repair brings it back."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Callable

import pytest

from daxfs import format as fmt
from daxfs.fs import Filesystem

from .conftest import DaxfsMount, Mount, run_daxfs
from .util import statvfs_counts

pytestmark = pytest.mark.daxfs_only

MIB = 1 << 20


def test_enospc_under_concurrent_writers_leaks_nothing(
        daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="48M")
    assert isinstance(m, DaxfsMount)
    empty = statvfs_counts(m.path)
    errors: list[BaseException] = []
    hit_enospc = [False] * 4

    def writer(k: int) -> None:
        d = m.path / f"w{k}"
        d.mkdir()
        chunk = bytes([k + 1]) * (256 * 1024)
        try:
            for i in range(10_000):
                fd = os.open(d / f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644)
                try:
                    for _ in range(4):
                        os.write(fd, chunk)
                finally:
                    os.close(fd)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                errors.append(e)
            hit_enospc[k] = True
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert all(hit_enospc), "every writer should have run into ENOSPC"
    full = os.statvfs(m.path)
    assert full.f_bavail == 0 or full.f_bavail * full.f_frsize < MIB
    for k in range(4):
        d = m.path / f"w{k}"
        for name in os.listdir(d):
            os.unlink(d / name)
        os.rmdir(d)
    assert statvfs_counts(m.path) == empty
    m.teardown()
    res = run_daxfs("fsck", m.image)
    assert res.returncode == 0, res.stdout + res.stderr
    m.mount()


def test_corruption_while_mounted_goes_read_only_and_fsck_repairs(
        daxfs_mount: Callable[..., Mount]) -> None:
    m = daxfs_mount(size="32M")
    assert isinstance(m, DaxfsMount)
    (m.path / "keep").write_bytes(b"survives")
    sub = m.path / "sub"
    sub.mkdir()
    for i in range(50):
        (sub / f"entry{i:03d}").write_bytes(b"x")
    m.teardown()
    fs = Filesystem.from_image(str(m.image))
    try:
        blk = fs.lookup(fmt.ROOT_INO, b"sub").d.aux_block
    finally:
        fs.close()
    assert blk
    m.mount()  # a fresh daemon: the directory is not loaded yet
    m.allow_log(r"metadata corruption|read-only|fsck")
    fd = os.open(m.image, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff" * 64, blk * fmt.BLOCK_SIZE + 200)  # flip a directory block
    finally:
        os.close(fd)
    with pytest.raises(OSError) as ei:
        os.listdir(sub)
    assert ei.value.errno == errno.EIO
    with pytest.raises(OSError) as ei:
        (m.path / "new").write_bytes(b"refused")
    assert ei.value.errno in (errno.EROFS, errno.EIO)
    assert (m.path / "keep").read_bytes() == b"survives"  # reads still work
    m.teardown()
    with open(m.image, "rb") as f:
        f.seek(fmt.SB_STATE_OFF)
        assert int.from_bytes(f.read(8), "little") & fmt.STATE_NEEDS_FSCK
    res = run_daxfs("mount", "--foreground", m.image, m.path, timeout=30)
    assert res.returncode != 0 and "fsck" in res.stderr and "Traceback" not in res.stderr
    res = run_daxfs("fsck", "--repair", m.image)
    assert res.returncode in (1, 4), res.stdout + res.stderr
    res = run_daxfs("fsck", m.image)
    assert res.returncode == 0, res.stdout + res.stderr
    m.mount()
    assert (m.path / "keep").read_bytes() == b"survives"
