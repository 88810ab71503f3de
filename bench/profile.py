"""Where the daxfs daemon's time goes, per request type (py-spy sampling).

    python bench/profile.py [--out bench-results/] [--seconds 4] [--dax always]

Mounts one daxfs (image on /dev/shm), and for each workload -- fio psync
O_DIRECT sequential 1 MiB read and write, random 4 KiB read and overwrite,
and the create+stat+unlink loop -- records the daemon with
``py-spy record --format raw`` (collapsed stacks, idle threads excluded) and
prints: the share of wall time the daemon was on CPU in Python, the top
functions by self time and the top daxfs/pyfuse3 functions by inclusive time.
Raw stacks are kept in OUT/profile-*.txt (feed them to flamegraph.pl or
speedscope).
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peers as P  # noqa: E402
import workloads as W  # noqa: E402

PYSPY = str(Path(P.PY).parent / "py-spy")
RATE = 250


def frame_name(frame: str) -> str:
    """'func (daxfs/fs.py:123)' -> 'fs.py:func'."""
    if " (" not in frame:
        return frame
    func, loc = frame.rsplit(" (", 1)
    loc = loc.rstrip(")").rsplit(":", 1)[0]
    return f"{loc.rsplit('/', 1)[-1]}:{func}"


def analyse(raw: Path, wall: float, top: int = 12) -> list[str]:
    selfc: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        cnt = int(n)
        total += cnt
        frames = [frame_name(f) for f in stack.split(";")]
        # the first frame is "process ..." / "thread ..." headers in raw output
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        selfc[frames[-1]] += cnt
        for f in set(frames):
            incl[f] += cnt
    lines = [f"  samples {total} over {wall:.1f} s at {RATE}/s: daemon busy in Python "
             f"{100 * total / (wall * RATE):.0f}% of one core (all threads)"]
    if not total:
        return lines
    lines.append("  top self time:")
    for f, c in selfc.most_common(top):
        lines.append(f"    {100 * c / total:5.1f}%  {f}")
    lines.append("  top inclusive (daxfs, pyfuse3, trio):")
    keep = [(f, c) for f, c in incl.most_common() if f.split(":")[0].endswith((".py", ".pyx"))
            and not f.startswith(("<", "runpy", "__main__"))]
    for f, c in keep[:top]:
        lines.append(f"    {100 * c / total:5.1f}%  {f}")
    return lines


def cpu_seconds(pid: int) -> float:
    """utime + stime of the whole daemon (all threads: Python and C readers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fuse_counters(mnt: Path) -> dict[str, Any]:
    from daxfs.client import Client

    with Client(str(mnt)) as c:
        return dict(c.status().get("fuse", {}))


def split(wall: float, cpu: float, before: dict[str, Any],
          after: dict[str, Any]) -> list[str]:
    """Who answered the requests and the daemon's CPU per request: the part of the
    story py-spy cannot see (the C reader threads)."""
    keys = ("fast_reads", "fast_writes", "fast_getattrs", "deferred", "slow_requests")
    d = {k: int(after.get(k, 0)) - int(before.get(k, 0)) for k in keys}
    n = sum(d.values())
    per = f"{cpu / n * 1e6:.1f} us of daemon CPU per request" if n else "no requests"
    mix_a, mix_b = after.get("slow_by_opcode", {}), before.get("slow_by_opcode", {})
    mix = {op: mix_a[op] - mix_b.get(op, 0) for op in mix_a if mix_a[op] - mix_b.get(op, 0)}
    return [f"  requests: {d['fast_reads']} fast reads, {d['fast_writes']} fast writes, "
            f"{d['fast_getattrs']} GETATTR (C reader threads), {d['deferred']} "
            f"FORGET/RELEASE recorded for Python in bulk, {d['slow_requests']} to pyfuse3 "
            f"(Python); daemon CPU {cpu:.2f} s in {wall:.2f} s ({cpu / wall:.0%} of a core); "
            f"{per}",
            "  Python's requests by opcode: "
            + (", ".join(f"{op} {n}" for op, n in sorted(mix.items(), key=lambda x: -x[1]))
               or "none")]


def record(pid: int, raw: Path, work: Callable[[], str]) -> tuple[float, str]:
    spy = subprocess.Popen([PYSPY, "record", "--format", "raw", "-r", str(RATE), "--nonblocking",
                            "--pid", str(pid), "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)  # py-spy attaches
    t0 = time.perf_counter()
    res = work()
    wall = time.perf_counter() - t0
    spy.send_signal(signal.SIGINT)
    spy.wait(timeout=30)
    return wall, res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(HERE.parent / "bench-results"))
    ap.add_argument("--seconds", type=float, default=4.0, help="fio runtime per workload")
    ap.add_argument("--dax", default="always", choices=("always", "never"))
    ap.add_argument("--files", type=int, default=5000, help="files in the metadata loop")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    P.install_cleanup()
    root = P.make_root()
    dax = P.Daxfs(root, args.dax)
    report: list[str] = [f"daxfs daemon profile (dax={args.dax}, py-spy raw, {RATE} Hz, "
                         "idle threads excluded)"]
    rt = f"{int(args.seconds * 1000)}ms"
    try:
        dax.mount()
        assert dax.pid is not None
        W.run_fio([W.SEQ_JOBS[0]], dax.mnt, "256M", "500ms", True)  # lay the file out
        cases: list[tuple[str, W.FioJob | None]] = [
            ("seq read 1M O_DIRECT", W.SEQ_JOBS[1]), ("seq write 1M O_DIRECT", W.SEQ_JOBS[0]),
            ("rand read 4k O_DIRECT", W.RAND_J1[0]), ("rand write 4k O_DIRECT", W.RAND_J1[1]),
            ("create+stat+unlink", None)]
        for title, job in cases:
            slug = "-".join(title.replace("+", "-").split()[:3])
            raw = out / f"profile-raw-{args.dax}-{slug}.txt"
            if job is not None:
                def work(job: W.FioJob = job) -> str:
                    r = W.run_fio([job], dax.mnt, "256M", rt, True)[job.key]
                    return f"{r:.0f} {job.unit}" if r else "failed"
            else:
                def work() -> str:
                    r = W.metadata(dax.mnt, args.files)["create+stat+unlink"]
                    return f"{r:.0f} ops/s"
            before, cpu0 = fuse_counters(dax.mnt), cpu_seconds(dax.pid)
            wall, res = record(dax.pid, raw, work)
            cpu = cpu_seconds(dax.pid) - cpu0
            after = fuse_counters(dax.mnt)
            report.append(f"\n{title}: {res} (while sampled)")
            report += split(wall, cpu, before, after)
            report += analyse(raw, wall)
    finally:
        P.cleanup_all()
    text = "\n".join(report)
    print(text)
    (out / f"profile-{args.dax}.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
