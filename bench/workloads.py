"""The workloads: fio job files, metadata loops and the truncate/punch loop.

Every function takes a mounted directory and returns plain figures (a dict of
name -> value, or None for "unsupported"), so the harness can run them on
every peer alike.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


@dataclass(frozen=True)
class FioJob:
    """One fio section: psync, time based, same file sizes on every peer."""

    key: str  # figure name, e.g. "seq-read-1M-j1"
    rw: str  # write | read | randread | randwrite
    bs: str
    numjobs: int
    unit: str  # "MiB/s" or "IOPS"


SEQ_JOBS = [FioJob("seq-write-1M-j1", "write", "1M", 1, "MiB/s"),
            FioJob("seq-read-1M-j1", "read", "1M", 1, "MiB/s")]
RAND_J1 = [FioJob("rand-read-4k-j1", "randread", "4k", 1, "IOPS"),
           FioJob("rand-write-4k-j1", "randwrite", "4k", 1, "IOPS")]
RAND_J2 = [FioJob("rand-read-4k-j2", "randread", "4k", 2, "IOPS"),
           FioJob("rand-write-4k-j2", "randwrite", "4k", 2, "IOPS")]


def fio_jobs(quick: bool) -> list[FioJob]:
    return SEQ_JOBS + RAND_J1 + ([] if quick else RAND_J2)


def fio_jobfile(jobs: list[FioJob], directory: Path, size: str, runtime: str,
                direct: bool) -> str:
    """An fio job file running ``jobs`` one after another (stonewall), each in
    its own reporting group.  Files are ``fiodata.<jobnum>`` in ``directory``,
    shared by all sections, so they are laid out once (by the first write)."""
    lines = [
        "[global]",
        "ioengine=psync",
        f"direct={int(direct)}",
        f"directory={directory}",
        "filename_format=fiodata.$jobnum",
        f"size={size}",
        "time_based=1",
        f"runtime={runtime}",
        "fallocate=none",
        "group_reporting=1",
        "randrepeat=0",
        "",
    ]
    for j in jobs:
        lines += [f"[{j.key}]", "stonewall", "new_group", f"rw={j.rw}", f"bs={j.bs}",
                  f"numjobs={j.numjobs}", ""]
    return "\n".join(lines)


def run_fio(jobs: list[FioJob], directory: Path, size: str, runtime: str,
            direct: bool, keep: Path | None = None) -> dict[str, float | None]:
    """Run the jobs; returns key -> MiB/s or IOPS, None when unsupported
    (fio failed, e.g. EINVAL on O_DIRECT)."""
    text = fio_jobfile(jobs, directory, size, runtime, direct)
    out: dict[str, float | None] = {j.key: None for j in jobs}
    with tempfile.TemporaryDirectory() as td:
        jf, res = Path(td) / "job.fio", Path(td) / "out.json"
        jf.write_text(text)
        if keep is not None:
            keep.write_text(text)
        r = subprocess.run(["fio", "--output-format=json", f"--output={res}", str(jf)],
                           capture_output=True, text=True, timeout=600)
        try:
            data = json.loads(res.read_text())
        except (OSError, ValueError):
            return out
    for jr in data.get("jobs", []):
        key = jr["jobname"]
        job = next((j for j in jobs if j.key == key), None)
        if job is None or jr.get("error"):
            continue
        side = jr["read"] if "read" in job.rw else jr["write"]
        if side["io_bytes"] == 0:
            continue
        out[key] = side["bw_bytes"] / 2**20 if job.unit == "MiB/s" else side["iops"]
    if r.returncode != 0 and all(v is None for v in out.values()):
        err = (r.stderr or "").strip().splitlines()
        print(f"[fio] {directory}: {err[-1] if err else r.returncode}", file=sys.stderr)
    return out


def metadata(directory: Path, count: int) -> dict[str, float]:
    """create (os.open O_CREAT + os.close), os.stat, os.unlink of ``count``
    empty files; ops/s of each phase and of the three together."""
    d = directory / "meta"
    if d.exists():  # a failed earlier run
        shutil.rmtree(d)
    d.mkdir()
    names = [str(d / f"f{i:06d}") for i in range(count)]
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    t0 = time.perf_counter()
    for n in names:
        os.close(os.open(n, flags, 0o644))
    t1 = time.perf_counter()
    for n in names:
        os.stat(n)
    t2 = time.perf_counter()
    for n in names:
        os.unlink(n)
    t3 = time.perf_counter()
    os.rmdir(d)
    drop_caches()
    return {"create": count / (t1 - t0), "stat": count / (t2 - t1),
            "unlink": count / (t3 - t2), "create+stat+unlink": 3 * count / (t3 - t0)}


def populate(directory: Path, count: int) -> Path:
    """A directory of ``count`` empty files (made once per peer)."""
    d = directory / "bigdir"
    if d.exists():
        shutil.rmtree(d)
    d.mkdir()
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    for i in range(count):
        os.close(os.open(str(d / f"entry-{i:07d}"), flags, 0o644))
        if i % 5000 == 4999:
            drop_caches()
    drop_caches()
    return d


def drop_caches() -> None:
    """Evict unused dentries/inodes, so FUSE daemons get their FORGETs (not
    timed).  passthrough_ll holds an fd per inode the kernel knows, and the
    fd limit here is a hard 20,000."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
    except OSError:
        pass


def readdir(d: Path, count: int) -> float:
    """Entries per second of one full listing (os.scandir: getdents only),
    after evicting cached dentries (untimed) so every peer starts alike."""
    drop_caches()
    t0 = time.perf_counter()
    with os.scandir(d) as it:
        n = sum(1 for _ in it)
    dt = time.perf_counter() - t0
    if n != count:
        raise RuntimeError(f"{d}: listed {n} entries, expected {count}")
    return n / dt


def punch_loop(directory: Path, iters: int) -> dict[str, float | None]:
    """Write 1 MiB then punch it (PUNCH_HOLE|KEEP_SIZE), and write 1 MiB then
    ftruncate to 0; iterations/s of each.  Punch is None when the filesystem
    has no fallocate (EOPNOTSUPP/ENOSYS)."""
    buf = b"\xa5" * (1 << 20)
    path = str(directory / "punchfile")
    out: dict[str, float | None] = {}
    fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, buf, 0)
        if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 1 << 20) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(err, os.strerror(err))
            out["punch"] = None
        else:
            t0 = time.perf_counter()
            for _ in range(iters):
                os.pwrite(fd, buf, 0)
                if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                   0, 1 << 20) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, os.strerror(err))
            out["punch"] = iters / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(iters):
            os.pwrite(fd, buf, 0)
            os.ftruncate(fd, 0)
        out["truncate"] = iters / (time.perf_counter() - t0)
    finally:
        os.close(fd)
        os.unlink(path)
    return out
