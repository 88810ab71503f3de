"""Power-cut simulation (recorded stores and fences), negative controls, and corrupted
images: mount and fsck must never crash or hang."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from daxfs.crash import crash_test, default_workdir, fuzz

from .conftest import build_base

WORK = default_workdir()


def test_power_cut_states_have_no_violations():
    states, violations, seed = 0, [], 0
    while states < 1000:
        run = crash_test(WORK, seed=seed, nops=80)
        states += run.states
        violations += run.violations
        seed += 1
    print(f"{states} crash states from {seed} workloads")
    assert states >= 1000
    assert violations == []


def test_replay_never_writes_over_a_reused_block():
    """Regression (found by the long crash run, seed 16528): a metadata block freed
    and reused for file data while the log still held an old image of it; a crash,
    then replay, wrote the stale metadata over fsync'ed data.  Commit now
    checkpoints before such a block can be reused."""
    run = crash_test(WORK, seed=16528, nops=150, max_states=500)
    assert run.states == 500
    assert run.violations == []


def test_orphan_list_naming_a_free_inode_is_refused_in_one_line(tmp_path):
    """Regression (the long fuzz run): an fsinfo block whose orphan head names a free
    inode made mount raise FsError(ESTALE) instead of refusing the image."""
    from daxfs import format as fmt
    from daxfs.errors import ImageError
    from daxfs.fs import Filesystem, mkfs

    img = str(tmp_path / "img")
    sb = mkfs(img, 8 << 20)
    with open(img, "r+b") as f:
        f.seek(sb.fsinfo_block * fmt.BLOCK_SIZE)
        f.write(fmt.pack_fsinfo(77, sb.fsinfo_block))  # inode 77 is free
    with pytest.raises(ImageError, match="corrupt"):
        Filesystem.from_image(img)


@pytest.mark.parametrize("broken", ["no-data-flush", "no-home-flush"])
def test_negative_control_broken_writer_is_caught(broken):
    """A writer that skips a required flush must produce violations."""
    found = []
    for seed in range(6):
        run = crash_test(WORK, seed=seed, nops=120, broken=broken, stop_after_violations=1)
        found += run.violations
        if found:
            break
    assert found, f"the checker missed the {broken} writer"


def test_corrupted_images_never_crash_mount_or_fsck(tmp_path):
    src = str(tmp_path / "src.img")
    build_base(src)
    run = fuzz(src, WORK, 1000, seed=1, timeout=10)
    print(f"{run.images} images: mounted {run.mounted}, refused {run.refused}, "
          f"fsck {run.fsck_codes}, repair {run.repair_codes}")
    assert run.images >= 1000
    assert run.failures == []


CLI_CASES = {
    "zeroed": lambda b: bytes(4096) + b[4096:],
    "magic": lambda b: b"NOTDAXFS" + b[8:],
    "version": lambda b: b[:8] + (7).to_bytes(4, "little") + b[12:],
    "truncated": lambda b: b[: len(b) // 3],
    "junk": lambda b: os.urandom(50000),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_cli_mount_refuses_corrupt_image_in_one_line(tmp_path, case):
    src = str(tmp_path / "src.img")
    build_base(src)
    with open(src, "rb") as f:
        data = CLI_CASES[case](f.read())
    bad = tmp_path / "bad.img"
    bad.write_bytes(data)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run([sys.executable, "-m", "daxfs", "mount", "--foreground", str(bad),
                        str(mnt)], capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    r = subprocess.run([sys.executable, "-m", "daxfs.fsck", str(bad)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 8 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
