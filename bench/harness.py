"""daxfs benchmark harness: daxfs against tmpfs and two FUSE passthrough peers.

    python bench/harness.py [--quick] [--out bench-results/] [--runs N] [--profile]

Mounts every peer (bench/peers.py) in the same run, runs the workloads
(bench/workloads.py) on each, several repetitions in alternating peer order,
and prints, for every figure, the median [min..max] per peer and the ratio of
each daxfs mode to each peer.  Images and backing directories are on /dev/shm
(RAM): the disk is never measured.  Also measured: daxfs mount time and daemon
RSS for sparse images of several sizes, the C core figures
(bench/native_bench.py), and the control-socket pin/punch figures when the
control plane (daxfs.client) is there.  Writes bench-results/results.json and
bench-results/ratios.png.  Everything is unmounted on exit, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import peers as P  # noqa: E402
import workloads as W  # noqa: E402

Samples = dict[str, dict[str, list[float | None]]]  # figure -> peer -> samples


@dataclass
class Config:
    quick: bool
    runs: int
    fio_size: str
    fio_runtime: str
    meta_count: int
    readdir_count: int
    punch_iters: int
    mount_sizes: list[str]
    native_min_time: float
    native_dma_mib: int
    wake_iters: int

    @classmethod
    def make(cls, quick: bool, runs: int | None) -> Config:
        if quick:
            return cls(True, runs or 3, "32M", "200ms", 1000, 3000, 100, ["1G", "16G"],
                       0.05, 64, 300)
        # 16,000 files, not 20,000: passthrough_ll keeps an fd per live inode and
        # RLIMIT_NOFILE is a hard 20,000 here (no CAP_SYS_RESOURCE to raise it).
        return cls(False, runs or 5, "256M", "1s", 16000, 100000, 1000,
                   ["1G", "16G", "256G"], 0.2, 256, 2000)


UNITS: dict[str, str] = {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def add(samples: Samples, fig: str, peer: str, value: float | None, unit: str) -> None:
    UNITS[fig] = unit
    samples.setdefault(fig, {}).setdefault(peer, []).append(value)


# --------------------------------------------------------------------------- workloads


def run_rep(cfg: Config, peers: list[P.Peer], rep: int, samples: Samples,
            bigdirs: dict[str, Path], out: Path) -> None:
    order = peers if rep % 2 == 0 else list(reversed(peers))
    log(f"rep {rep + 1}/{cfg.runs}: order {', '.join(p.name for p in order)}")
    jobs = W.fio_jobs(cfg.quick)
    for direct in (True, False):
        tag = "direct" if direct else "buffered"
        for p in order:
            keep = out / f"fio-{tag}.fio" if rep == 0 and p is order[0] else None
            res = W.run_fio(jobs, p.mnt, cfg.fio_size, cfg.fio_runtime, direct, keep)
            for j in jobs:
                add(samples, f"fio {j.key} {tag}", p.name, res[j.key], j.unit)
    for p in order:
        m = failsafe(f"meta on {p.name}", lambda p=p: W.metadata(p.mnt, cfg.meta_count))
        for k in ("create", "stat", "unlink", "create+stat+unlink"):
            add(samples, f"meta {k}", p.name, m.get(k) if m else None, "ops/s")
    fig = f"readdir {cfg.readdir_count} entries"
    for p in order:
        if p.name not in bigdirs:
            log(f"  populating {cfg.readdir_count} entries on {p.name}")
            bigdirs[p.name] = W.populate(p.mnt, cfg.readdir_count)
        prev = [v for v in samples.get(fig, {}).get(p.name, []) if v]
        if prev and cfg.readdir_count / prev[0] > READDIR_ONCE_S:
            # passthroughfs lists the whole directory again for every readdir
            # call (quadratic): 100,000 entries take minutes.  Measured once.
            continue
        add(samples, fig, p.name,
            failsafe(f"readdir on {p.name}",
                     lambda p=p: W.readdir(bigdirs[p.name], cfg.readdir_count)), "entries/s")
    for p in order:
        r = failsafe(f"punch loop on {p.name}", lambda p=p: W.punch_loop(p.mnt, cfg.punch_iters))
        add(samples, "write 1M + punch 1M", p.name, r["punch"] if r else None, "iter/s")
        add(samples, "write 1M + truncate 0", p.name, r["truncate"] if r else None, "iter/s")


FAILURES: list[str] = []
READDIR_ONCE_S = 30.0  # a listing slower than this is measured in the first run only


def failsafe(label: str, fn: Callable[[], Any]) -> Any:
    """One failed workload on one peer costs that sample (None), not the run."""
    try:
        return fn()
    except OSError as e:
        msg = f"{label}: {e}"
        log(f"  FAILED {msg}")
        if msg not in FAILURES:
            FAILURES.append(msg)
        return None


# --------------------------------------------------------------------------- daxfs-only


def mount_scaling(cfg: Config, root: Path, samples: Samples) -> None:
    """Mount time (daxfs mount returns once the mount is live) and daemon RSS."""
    d = root / "mountscale"
    d.mkdir(exist_ok=True)
    for size in cfg.mount_sizes:
        P._run([P.PY, "-m", "daxfs", "mkfs", "-q", "--size", size, str(d / f"img-{size}")])
    for rep in range(cfg.runs):
        sizes = cfg.mount_sizes if rep % 2 == 0 else list(reversed(cfg.mount_sizes))
        for size in sizes:
            peer = P.Daxfs(d, "always", size)
            peer.root = d
            peer.image = d / f"img-{size}"
            peer.mnt = d / f"mnt-{size}"
            try:
                peer.mount()
                add(samples, f"mount time {size}", "daxfs-always", peer.mount_seconds, "s")
                rss = peer.rss_kib()
                add(samples, f"daemon RSS {size}", "daxfs-always",
                    None if rss is None else rss / 1024, "MiB")
                anon = P._rss_kib(peer.pid, "RssAnon:")
                add(samples, f"daemon RssAnon {size}", "daxfs-always",
                    None if anon is None else anon / 1024, "MiB")
            finally:
                peer.unmount()


def native_figures(cfg: Config, samples: Samples) -> None:
    """The C core figures, from bench/native_bench.py's own functions."""
    import native_bench as nb

    for _ in range(cfg.runs):
        for name, v in nb.bench_pins(1, cfg.native_min_time):
            add(samples, f"core {' '.join(name.split())}", "core", v / 1e6, "M pages/s")
        ctx = ""
        for name, v, unit in nb.bench_dma(1, cfg.native_dma_mib):
            if name.startswith("DMA engine"):
                ctx = name.split(", ", 1)[1]  # "1 MiB descriptors, 2 workers"
                label = f"core {name}"
            else:  # sub-rows repeat per engine config: name them after it
                label = f"core   {name.strip()} ({ctx})"
            add(samples, label, "core", v, unit)
        med, p99 = nb.bench_wake(cfg.wake_iters)
        add(samples, "core wake latency median", "core", med, "us")
        add(samples, "core wake latency p99", "core", p99, "us")


def control_figures(cfg: Config, dax: P.Peer, samples: Samples) -> str | None:
    """Pin+unpin through the control socket and punch-wait latency.  Returns a
    reason string when the control plane is not usable."""
    try:
        from daxfs.client import Client
    except Exception as e:  # noqa: BLE001
        return f"pending (control plane): {e}"
    path = dax.mnt / "ctlfile"
    npages = 4096
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * (npages * 4096))
        rel = "ctlfile"
        with Client(str(dax.mnt)) as c:
            lease = c.lease_acquire(rel, 0, npages * 4096)
            lease_id = lease["lease"] if isinstance(lease, dict) else lease
            for batch in (1, 64, 4096):
                for _ in range(cfg.runs):
                    n, t0 = 0, time.perf_counter()
                    while time.perf_counter() - t0 < (0.1 if cfg.quick else 0.3):
                        mr = c.register(rel, 0, batch * 4096)["mr"]
                        c.deregister(mr)
                        n += batch
                    add(samples, f"socket pin+unpin batch {batch}", dax.name,
                        n / (time.perf_counter() - t0), "pages/s")
            socket_ops(cfg, c, rel, samples, dax.name)
            c.lease_release(lease_id)
            # punch with nothing pinned: the cost of the punch request itself
            for _ in range(cfg.runs):
                lat = []
                for _ in range(20 if cfg.quick else 100):
                    t0 = time.perf_counter()
                    c.punch(rel, 0, 1 << 20)
                    lat.append(time.perf_counter() - t0)
                add(samples, "socket punch 1M, no pins", dax.name,
                    statistics.median(lat) * 1e6, "us")
        punch_wait(cfg, dax, rel, samples)
    except Exception as e:  # noqa: BLE001
        return f"pending (control plane): {type(e).__name__}: {e}"
    finally:
        if path.exists():
            path.unlink()
    return None


def socket_ops(cfg: Config, c: Any, rel: str, samples: Samples, name: str) -> None:
    """Control requests per second (register + deregister of one page, each a
    request): one at a time, and pipelined 64 deep (the client sends 64, then
    reads 64 replies) - what a client with requests in flight gets."""
    from daxfs.client import _frame, _request_msg

    rid = 1 << 40

    def batch(op: str, kws: list[dict[str, Any]]) -> list[dict[str, Any]]:
        nonlocal rid
        ids = list(range(rid, rid + len(kws)))
        rid += len(kws)
        c.sock.sendall(b"".join(_frame(_request_msg(op, i, 0, kw))
                                for i, kw in zip(ids, kws, strict=True)))
        got: dict[int, dict[str, Any]] = {}
        while len(got) < len(ids):
            m = c.recv()
            if m is not None and "id" in m:
                if not m.get("ok"):
                    raise RuntimeError(f"{op}: {m}")
                got[m["id"]] = m
        return [got[i] for i in ids]

    reg = {"path": rel, "offset": 0, "length": 4096, "access": "rw", "odp": False}
    for depth in (1, 64):
        for _ in range(cfg.runs):
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < (0.2 if cfg.quick else 0.5):
                mrs = batch("register", [reg] * depth)
                batch("deregister", [{"mr": m["mr"]} for m in mrs])
                n += 2 * depth
            add(samples, f"socket ops/s, {depth} in flight", name,
                n / (time.perf_counter() - t0), "ops/s")


def punch_wait(cfg: Config, dax: P.Peer, rel: str, samples: Samples) -> None:
    """A client holds a lease + registration; another punches the range.  The
    holder drops both on the break event; the punch returns after that.
    Figure: punch latency (us) minus nothing -- the whole break round trip."""
    from daxfs.client import Client

    for _ in range(cfg.runs):
        lat = []
        for _ in range(5 if cfg.quick else 20):
            holder = Client(str(dax.mnt))
            try:
                lease = holder.lease_acquire(rel, 0, 1 << 20)
                lease_id = lease["lease"] if isinstance(lease, dict) else lease
                mr = holder.register(rel, 0, 1 << 20)["mr"]
                done = threading.Event()

                def release(h: Any = holder, m: int = mr, lid: int = lease_id,
                            ev: threading.Event = done) -> None:
                    h.wait_event(timeout=10)
                    h.deregister(m)
                    h.lease_release(lid)
                    ev.set()

                th = threading.Thread(target=release, daemon=True)
                th.start()
                with Client(str(dax.mnt)) as puncher:
                    t0 = time.perf_counter()
                    puncher.punch(rel, 0, 1 << 20)
                    lat.append(time.perf_counter() - t0)
                th.join(timeout=10)
            finally:
                holder.close()
        add(samples, "socket punch-wait (break round trip)", dax.name,
            statistics.median(lat) * 1e6, "us")


# --------------------------------------------------------------------------- output


def summary(vals: list[float | None]) -> dict[str, Any] | None:
    xs = [v for v in vals if v is not None]
    if not xs:
        return None
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "n": len(xs),
            "samples": xs}


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    a = abs(v)
    if a >= 1e6:
        return f"{v / 1e6:.2f}M"
    if a >= 1e4:
        return f"{v / 1e3:.1f}k"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


DAX_PEERS = ("daxfs-always", "daxfs-never")
NO_RATIO: set[str] = set()  # lower-is-better figures (RSS) get no ratio
BASE_PEERS = ("tmpfs", "passthrough_ll", "passthroughfs")
SHORT = {"tmpfs": "tmpfs", "passthrough_ll": "p_ll", "passthroughfs": "pfs",
         "daxfs-always": "dax=always", "daxfs-never": "dax=never"}


def build_report(samples: Samples, peer_names: list[str]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    ratios: dict[str, dict[str, float | None]] = {}
    for fig, per in samples.items():
        figures[fig] = {"unit": UNITS.get(fig, ""),
                        "peers": {p: summary(v) for p, v in per.items()}}
        for d in DAX_PEERS:
            if d not in per or fig in NO_RATIO or fig.startswith("daemon "):
                continue
            for b in BASE_PEERS:
                if b not in per:
                    continue
                sd, sb = summary(per[d]), summary(per[b])
                key = f"{d}/{b}"
                ratios.setdefault(fig, {})[key] = (
                    sd["median"] / sb["median"] if sd and sb and sb["median"] else None)
    return {"figures": figures, "ratios": ratios, "peers": peer_names}


def print_tables(report: dict[str, Any], peer_names: list[str], notes: list[str]) -> str:
    lines: list[str] = []
    figs = report["figures"]
    comp = [f for f in figs if any(p in figs[f]["peers"] for p in BASE_PEERS)]
    other = [f for f in figs if f not in comp]
    w = max([len(f) for f in comp] + [10])
    wo = max([len(f) for f in other] + [10])
    lines.append("Peers compared (median of runs; [min..max]; '-' = unsupported):")
    head = f"{'figure':<{w}} {'unit':<9}" + "".join(
        f" {SHORT.get(p, p):>21}" for p in peer_names)
    lines += [head, "-" * len(head)]
    for f in comp:
        row = f"{f:<{w}} {figs[f]['unit']:<9}"
        for p in peer_names:
            s = figs[f]["peers"].get(p)
            cell = "-" if s is None else f"{fmt(s['median'])} [{fmt(s['min'])}..{fmt(s['max'])}]"
            row += f" {cell:>21}"
        lines.append(row)
    lines.append("")
    lines.append("Ratios daxfs / peer (median / median; >1 = daxfs faster):")
    cols = [f"{d}/{b}" for d in DAX_PEERS for b in BASE_PEERS]
    head = f"{'figure':<{w}}" + "".join(
        f" {SHORT[c.split('/')[0]] + '/' + SHORT[c.split('/')[1]]:>16}" for c in cols)
    lines += [head, "-" * len(head)]
    for f in comp:
        r = report["ratios"].get(f, {})
        row = f"{f:<{w}}" + "".join(
            f" {('-' if r.get(c) is None else f'{r[c]:.2f}x'):>16}" for c in cols)
        lines.append(row)
    lines.append("")
    lines.append("daxfs only / C core (median [min..max]):")
    for f in other:
        for p, s in figs[f]["peers"].items():
            cell = "-" if s is None else f"{fmt(s['median'])} [{fmt(s['min'])}..{fmt(s['max'])}]"
            lines.append(f"{f:<{wo}} {figs[f]['unit']:<10} {cell:>24}  ({p})")
    for n in notes:
        lines.append(f"note: {n}")
    text = "\n".join(lines)
    print(text)
    return text


def chart(report: dict[str, Any], path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib missing: pip install -e '.[bench]'"
    figs = [f for f, r in report["ratios"].items() if any(v is not None for v in r.values())]
    cols = [f"{d}/{b}" for d in DAX_PEERS for b in BASE_PEERS]
    fig, ax = plt.subplots(figsize=(12, max(4, 0.45 * len(figs) + 1.5)))
    h = 0.8 / len(cols)
    for i, c in enumerate(cols):
        ys = [report["ratios"][f].get(c) for f in figs]
        pos = [k + i * h for k in range(len(figs))]
        ax.barh(pos, [y or 0 for y in ys], height=h,
                label=f"{SHORT[c.split('/')[0]]} / {SHORT[c.split('/')[1]]}")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks([k + 0.4 - h / 2 for k in range(len(figs))])
    ax.set_yticklabels(figs, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("daxfs / peer (median ratio, log scale; >1 = daxfs faster)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("daxfs vs peers")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def cmd_out(cmd: list[str]) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
        return (r.stdout or r.stderr).strip().splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "?"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    except OSError:
        pass

    def ver(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "?"

    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory": mem, "kernel": platform.release(),
        "libfuse": cmd_out(["pkg-config", "--modversion", "fuse3"]),
        "pyfuse3": ver("pyfuse3"), "trio": ver("trio"), "python": platform.python_version(),
        "fio": cmd_out(["fio", "--version"]),
        "daxfs_git": cmd_out(["git", "-C", str(HERE.parent), "describe", "--always", "--dirty"]),
        "storage": "images and backing dirs on /dev/shm (tmpfs, RAM): the disk is not measured",
    }


TARGETS: list[tuple[str, str, str, float]] = [
    # (label, figure, ratio column or "" for an absolute figure, threshold)
    ("seq 1M read  >= 1.5x p_ll", "fio seq-read-1M-j1 direct", "daxfs-always/passthrough_ll", 1.5),
    ("seq 1M read  >= 1.3x pfs", "fio seq-read-1M-j1 direct", "daxfs-always/passthroughfs", 1.3),
    ("seq 1M write >= 1.0x p_ll", "fio seq-write-1M-j1 direct", "daxfs-always/passthrough_ll", 1.0),
    ("seq 1M write >= 1.2x pfs", "fio seq-write-1M-j1 direct", "daxfs-always/passthroughfs", 1.2),
    ("rand 4k read >= 0.5x p_ll", "fio rand-read-4k-j1 direct", "daxfs-always/passthrough_ll", 0.5),
    ("rand 4k read >= 2.5x pfs", "fio rand-read-4k-j1 direct", "daxfs-always/passthroughfs", 2.5),
    ("rand 4k overwrite >= 0.4x p_ll", "fio rand-write-4k-j1 direct",
     "daxfs-always/passthrough_ll", 0.4),
    ("rand 4k overwrite >= 1.5x pfs", "fio rand-write-4k-j1 direct",
     "daxfs-always/passthroughfs", 1.5),
    ("create+stat+unlink >= 2x pfs", "meta create+stat+unlink", "daxfs-always/passthroughfs", 2.0),
]


def check_targets(report: dict[str, Any]) -> list[str]:
    """The issue's targets (daxfs dax=always, fio psync 1 job O_DIRECT): met or not."""
    out: list[str] = []
    figs, ratios = report["figures"], report["ratios"]

    def verdict(label: str, v: float | None, ok: bool | None, shown: str) -> None:
        state = "n/a" if ok is None else ("MET" if ok else "NOT MET")
        out.append(f"  {label:<44} {shown:>12}  {state}")

    for label, fig, col, thr in TARGETS:
        v = ratios.get(fig, {}).get(col)
        verdict(label, v, None if v is None else v >= thr, "-" if v is None else f"{v:.2f}x")

    def med(fig: str) -> float | None:
        f = figs.get(fig)
        if not f:
            return None
        s = next(iter(f["peers"].values()))
        return None if s is None else s["median"]

    w = med("core wake latency median")
    verdict("wake latency median < 1 ms", w, None if w is None else w < 1000,
            "-" if w is None else f"{w:.0f} us")
    for b in (64, 4096):
        pin = med(f"core pin+unpin file batch {b}")
        verdict(f"core pin+unpin >= 10M pages/s (batch {b})", pin,
                None if pin is None else pin >= 10, "-" if pin is None else f"{pin:.1f}M/s")
    ops = med("socket ops/s, 64 in flight")
    verdict("socket >= 20k ops/s (64 in flight)", ops,
            None if ops is None else ops >= 20000, "-" if ops is None else f"{ops:.0f}/s")
    # One request at a time measures the round trip between two Python processes
    # (client + daemon CPU + two wake-ups), not what the socket can carry: shown,
    # without a verdict (docs/PERFORMANCE.md).
    ops = med("socket ops/s, 1 in flight")
    out.append(f"  {'socket ops/s, 1 in flight (round trip)':<44} "
               f"{'-' if ops is None else f'{ops:.0f}/s':>12}  (no target)")
    dma = med("core   ratio DMA / chunked memcpy (1 MiB descriptors, 1 worker)")
    verdict("DMA >= 0.8x memcpy (1 MiB desc, 1 worker)", dma,
            None if dma is None else dma >= 0.8, "-" if dma is None else f"{dma:.2f}x")
    sizes = report["config"]["mount_sizes"]
    for k, v in report.get("scaling", {}).items():
        if k.startswith("mount time"):
            verdict(f"mount time {sizes[-1]} within 2x of {sizes[0]}", v, v <= 2, f"{v:.2f}x")
        elif k.startswith("daemon RSS"):
            verdict(f"RSS not proportional to size ({sizes[-1]}/{sizes[0]})", v, v <= 2,
                    f"{v:.2f}x")
    return out


def render(report: dict[str, Any], out: Path, tag: str) -> None:
    """Print the tables and targets, write table-TAG.txt and ratios-TAG.png."""
    UNITS.update({f: v["unit"] for f, v in report["figures"].items()})
    peer_names = report["peers"]
    mach = report["machine"]
    head = (f"daxfs benchmark ({tag}), {report['date']}, {mach['cpu']}, {mach['cores']} cores, "
            f"{mach['memory']}, kernel {mach['kernel']}, libfuse {mach['libfuse']}, "
            f"pyfuse3 {mach['pyfuse3']}, python {mach['python']}, {mach['fio']}")
    print(head)
    text = head + "\n" + print_tables(report, peer_names, report["notes"])
    extra = [f"scaling: {k} = {v:.2f}x" for k, v in report.get("scaling", {}).items()]
    extra += ["", "targets (dax=always, fio psync 1 job O_DIRECT):"] + check_targets(report)
    print("\n".join(extra))
    text += "\n" + "\n".join(extra)
    (out / f"table-{tag}.txt").write_text(text + "\n")
    err = chart(report, out / f"ratios-{tag}.png")
    if err:
        log(err)


# --------------------------------------------------------------------------- main


def guarded(label: str, fn: Callable[[], Any], notes: list[str]) -> Any:
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - one failed section must not lose the rest
        log(f"{label} failed: {type(e).__name__}: {e}")
        notes.append(f"{label} failed: {type(e).__name__}: {e}")
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer/shorter runs (< 2 min)")
    ap.add_argument("--out", default=str(HERE.parent / "bench-results"))
    ap.add_argument("--runs", type=int, default=None, help="repetitions (3 quick, 5 full)")
    ap.add_argument("--skip", default="", help="comma list of: peers,mount,native,control")
    ap.add_argument("--from-json", metavar="FILE",
                    help="no run: re-print tables/targets/chart of a results-*.json")
    args = ap.parse_args(argv)
    if args.from_json:
        src = Path(args.from_json)
        rep = json.loads(src.read_text())
        render(rep, src.parent, src.stem.removeprefix("results-"))
        return 0
    cfg = Config.make(args.quick, args.runs)
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        log("warning: not root; mount -t tmpfs will fail")

    P.install_cleanup()
    root = P.make_root()
    samples: Samples = {}
    notes: list[str] = [
        "all images and backing directories on /dev/shm (tmpfs): the disk is not measured",
        f"fio psync, time_based {cfg.fio_runtime}/job, {cfg.fio_size} file per job, "
        f"{cfg.runs} runs, peer order alternating per run",
    ]
    t_start = time.monotonic()
    peers: list[P.Peer] = P.all_peers(root)
    peer_names = [p.name for p in peers]
    interrupted = False
    try:
        if "peers" not in skip:
            for p in peers:
                log(f"mounting {p.name}: {p.describe()}")
                p.mount()
            bigdirs: dict[str, Path] = {}
            for rep in range(cfg.runs):
                run_rep(cfg, peers, rep, samples, bigdirs, out)
            for p in peers:
                for field in ("VmRSS:", "RssAnon:"):
                    rss = P._rss_kib(p.pid, field)
                    if rss is not None:
                        add(samples, f"daemon {field[:-1]} after workloads", p.name,
                            rss / 1024, "MiB")
            dax = next(p for p in peers if p.name == "daxfs-always")
            if "control" not in skip:
                log("control socket figures")
                why = guarded("control", lambda: control_figures(cfg, dax, samples), notes)
                if why:
                    notes.append(f"socket pin+unpin / punch-wait: {why}")
                    log(why)
        P.cleanup_all()
        if "mount" not in skip:
            log(f"mount time / RSS for {', '.join(cfg.mount_sizes)}")
            guarded("mount scaling", lambda: mount_scaling(cfg, root, samples), notes)
        if "native" not in skip:
            log("native core figures (bench/native_bench.py)")
            guarded("native", lambda: native_figures(cfg, samples), notes)
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e}): writing what was measured")
        notes.append(f"INTERRUPTED ({e}): partial results")
    finally:
        P.cleanup_all()

    notes += [f"failed (sample recorded as '-'): {f}" for f in FAILURES]
    report = build_report(samples, peer_names)
    report["machine"] = machine()
    report["config"] = cfg.__dict__
    report["notes"] = notes
    report["peers_described"] = {p.name: p.describe() for p in peers}
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    report["date"] = datetime.datetime.now().isoformat(timespec="seconds")
    m = report["figures"]
    for a in ("mount time", "daemon RSS"):
        big, small = f"{a} {cfg.mount_sizes[-1]}", f"{a} {cfg.mount_sizes[0]}"
        if big in m and small in m:
            sb, ss = m[big]["peers"]["daxfs-always"], m[small]["peers"]["daxfs-always"]
            if sb and ss:
                report.setdefault("scaling", {})[f"{a} {cfg.mount_sizes[-1]}/"
                                                 f"{cfg.mount_sizes[0]}"] = (
                    sb["median"] / ss["median"])
    tag = ("quick" if cfg.quick else "full") + ("-partial" if interrupted else "")
    (out / f"results-{tag}.json").write_text(json.dumps(report, indent=1))
    render(report, out, tag)
    if interrupted:
        return 130
    log(f"wrote {out}/results-{tag}.json, table-{tag}.txt, ratios-{tag}.png "
        f"in {report['elapsed_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
