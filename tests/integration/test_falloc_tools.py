"""fallocate, hole punching, zeroing and SEEK_DATA/SEEK_HOLE through the native
op-table extension, driven by the real tools: fallocate(1), xfs_io, truncate(1), fio.
Each case checks content, size and st_blocks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from .test_tools import need, run
from .util import pattern, read_file, write_file

KIB = 1024
MIB = 1024 * KIB
BLOCK = 4096


def try_run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def blocks(path: Path) -> int:
    """Allocated 4 KiB blocks (st_blocks is in 512-byte units)."""
    return os.stat(path).st_blocks * 512 // BLOCK


def test_fallocate_l_allocates_and_extends(workdir: Path) -> None:
    f = workdir / "f"
    run([need("fallocate"), "-l", "1M", str(f)])
    st = os.stat(f)
    assert st.st_size == MIB
    assert blocks(f) == 256
    assert read_file(f) == bytes(MIB)


def test_fallocate_n_keeps_size(workdir: Path) -> None:
    f = workdir / "f"
    write_file(f, b"abc")
    run([need("fallocate"), "-n", "-o", "0", "-l", "64K", str(f)])
    assert os.stat(f).st_size == 3
    assert blocks(f) == 16
    assert read_file(f) == b"abc"


def test_fallocate_p_punches(workdir: Path) -> None:
    f = workdir / "f"
    data = pattern(MIB, seed=3)
    write_file(f, data)
    # 10 KiB .. 70 KiB: zeroes partial blocks at both ends, frees the 14 whole ones.
    run([need("fallocate"), "-p", "-o", str(10 * KIB), "-l", str(60 * KIB), str(f)])
    want = bytearray(data)
    want[10 * KIB : 70 * KIB] = bytes(60 * KIB)
    assert read_file(f) == bytes(want)
    assert os.stat(f).st_size == MIB
    assert blocks(f) == 256 - 14


@pytest.mark.daxfs_only  # tmpfs has no ZERO_RANGE
def test_fallocate_z_zeroes_and_allocates(workdir: Path) -> None:
    f = workdir / "f"
    data = pattern(256 * KIB, seed=4)
    write_file(f, data)
    run([need("fallocate"), "-z", "-o", str(100 * KIB), "-l", str(300 * KIB), str(f)])
    want = bytearray(data) + bytes(144 * KIB)
    want[100 * KIB : 400 * KIB] = bytes(300 * KIB)
    assert os.stat(f).st_size == 400 * KIB
    assert read_file(f) == bytes(want)
    assert blocks(f) == 100


def test_fallocate_unsupported_mode(workdir: Path) -> None:
    f = workdir / "f"
    write_file(f, b"x" * BLOCK)
    # collapse-range is a mode daxfs does not implement: EOPNOTSUPP, nothing changes.
    r = try_run([need("fallocate"), "-c", "-o", "0", "-l", "4096", str(f)])
    assert r.returncode != 0
    assert "not supported" in r.stderr.lower()
    assert read_file(f) == b"x" * BLOCK


@pytest.mark.daxfs_only  # tmpfs has no ZERO_RANGE
def test_xfs_io_fpunch_fzero_seek(workdir: Path) -> None:
    xfs_io = need("xfs_io")
    f = workdir / "f"
    run([xfs_io, "-f", "-c", "pwrite -q -S 0x5a 0 512k", "-c", "fpunch 128k 64k",
         "-c", "fzero 300k 8k", "-c", "pwrite -q -S 0x11 1m 4k", str(f)])
    data = read_file(f)
    assert len(data) == MIB + 4 * KIB
    want = bytearray(b"\x5a" * (512 * KIB)) + bytes(MIB + 4 * KIB - 512 * KIB)
    want[128 * KIB : 192 * KIB] = bytes(64 * KIB)
    want[300 * KIB : 308 * KIB] = bytes(8 * KIB)
    want[MIB : MIB + 4 * KIB] = b"\x11" * 4 * KIB
    assert data == bytes(want)
    # Map: data 0-128k, hole 128k-192k, data 192k-512k, hole 512k-1m, data 1m-1m+4k.
    out = run([xfs_io, "-r", "-c", "seek -d 0", "-c", "seek -h 0", "-c", "seek -d 128k",
               "-c", "seek -h 192k", "-c", "seek -d 600k", "-c", "seek -h 1m", str(f)]).stdout
    results = [int(line.split()[1]) for line in out.splitlines()
               if line.split() and line.split()[0] in ("DATA", "HOLE")]
    assert results == [0, 128 * KIB, 192 * KIB, 512 * KIB, MIB, MIB + 4 * KIB], out
    assert blocks(f) == (512 - 64) // 4 + 1
    # Past the end: ENXIO.
    with open(f, "rb") as fh, pytest.raises(OSError) as ei:
        os.lseek(fh.fileno(), MIB + 8 * KIB, os.SEEK_DATA)
    assert ei.value.errno == 6  # ENXIO


def test_xfs_io_fiemap_where_supported(workdir: Path) -> None:
    f = workdir / "f"
    write_file(f, b"x" * BLOCK)
    r = try_run([need("xfs_io"), "-r", "-c", "fiemap", str(f)])
    # FUSE does not pass FS_IOC_FIEMAP on; the tool must fail cleanly, not hang.
    assert r.returncode == 0 and "0: [0..7]" in r.stdout or "not supported" in r.stderr


def test_truncate_tool_shrink_and_grow(workdir: Path) -> None:
    f = workdir / "f"
    write_file(f, pattern(64 * KIB, seed=5))
    run([need("truncate"), "-s", "10000", str(f)])
    assert os.stat(f).st_size == 10000
    assert blocks(f) == 3
    run([need("truncate"), "-s", "1M", str(f)])
    assert os.stat(f).st_size == MIB
    assert blocks(f) == 3
    assert read_file(f) == pattern(64 * KIB, seed=5)[:10000] + bytes(MIB - 10000)


def test_fio_fallocate_native(workdir: Path) -> None:
    fio = need("fio")
    r = run([fio, "--name=fa", f"--directory={workdir}", "--rw=write", "--bs=64k",
             "--size=8m", "--ioengine=psync", "--fallocate=native", "--verify=crc32c",
             "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
             "--output-format=json"], cwd=workdir)
    job = json.loads(r.stdout[r.stdout.index("{"):])["jobs"][0]
    assert job["error"] == 0
    files = list(workdir.glob("fa.*"))
    assert len(files) == 1
    assert os.stat(files[0]).st_size == 8 * MIB
    assert blocks(files[0]) == 2048
