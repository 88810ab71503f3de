"""Benchmarks of the daxfs C core (not a test: prints a table of figures).

    python bench/native_bench.py [--runs N] [--quick]   (from a checkout or installed)

Figures (median of --runs runs):
  - pin+unpin rate in pages/s for batches of 1, 64 and 4096 pages, by pfn
    (with the owner check) and through the pfn map;
  - busy-page scan rate (pages/s) by pfn and through the map;
  - DMA engine bandwidth vs plain memcpy (ctypes.memmove) of the same
    bytes in the same run, and their ratio (see bench_dma for the two
    memcpy baselines);
  - wake latency: last unpin in another thread -> trio task resumes,
    median and p99.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable

import numpy as np
import trio
import trio.testing

# Run from a checkout without installing: the repo root holds daxfs/.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from daxfs.native import (  # noqa: E402
    DMA_COPY_METHOD,
    PAGE_SIZE,
    BufferIO,
    Core,
    Direction,
    FileTarget,
)

INO = 1


def rate(fn: Callable[[], int], min_time: float) -> float:
    """Units per second of fn() (which returns units done), over >= min_time."""
    done = 0
    t0 = time.perf_counter()
    while True:
        done += fn()
        el = time.perf_counter() - t0
        if el >= min_time:
            return done / el


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def bench_pins(runs: int, min_time: float) -> list[tuple[str, float]]:
    npages = 1 << 16
    out = []
    with Core(None, npages, dma_threads=0) as core:
        core.set_owner(0, npages, INO, 0)
        core.map_extent(INO, 0, 0, npages)
        for batch in (1, 64, 4096):

            def by_pfn(batch: int = batch) -> int:
                for _ in range(64):
                    core.pin_pfn(0, batch, INO, 0)
                    core.unpin_pfn(0, batch)
                return 64 * batch

            def by_file(batch: int = batch) -> int:
                for _ in range(64):
                    core.pin_file(INO, 0, batch)
                    core.unpin_file(INO, 0, batch)
                return 64 * batch

            out.append(
                (
                    f"pin+unpin pfn   batch {batch:4d}",
                    median_of(runs, lambda f=by_pfn: rate(f, min_time)),
                )
            )
            out.append(
                (
                    f"pin+unpin file  batch {batch:4d}",
                    median_of(runs, lambda f=by_file: rate(f, min_time)),
                )
            )
    return out


def bench_scan(runs: int, min_time: float) -> list[tuple[str, float]]:
    npages = 1 << 20  # 4 GiB device
    with Core(None, npages, dma_threads=0) as core:
        core.set_owner(0, npages, INO, 0)  # touch the table: resident
        core.map_extent(INO, 0, 0, npages)

        def scan_pfn() -> int:
            assert core.first_busy_pfn(0, npages) is None
            return npages

        def scan_file() -> int:
            assert core.busy_file(INO, 0, npages) == -1
            return npages

        return [
            ("busy scan pfn  (1M pages idle)", median_of(runs, lambda: rate(scan_pfn, min_time))),
            ("busy scan file (1M pages idle)", median_of(runs, lambda: rate(scan_file, min_time))),
        ]


def bench_dma(runs: int, total_mib: int) -> list[tuple[str, float, str]]:
    """DMA engine bandwidth, buffer -> pmem, against memcpy of the same bytes.

    Two memcpy baselines, both single-threaded ctypes.memmove in the same
    run: in chunks of the descriptor size (what the engine's workers do per
    descriptor: the engine's own overhead), and in one call (glibc switches
    to non-temporal stores only for very large single copies, which chunked
    copies never get)."""
    size = total_mib << 20
    npages = size // PAGE_SIZE
    pmem = np.ones(size, dtype=np.uint8)  # pre-faulted
    src = np.full(size, 7, dtype=np.uint8)
    dst_addr, src_addr = pmem.ctypes.data, src.ctypes.data
    view = memoryview(src)
    out: list[tuple[str, float, str]] = []

    def memcpy_once(chunk: int) -> float:
        t0 = time.perf_counter()
        for off in range(0, size, chunk):
            ctypes.memmove(dst_addr + off, src_addr + off, chunk)
        return size / (time.perf_counter() - t0)

    for desc in (1 << 20, size):
        dname = f"{desc >> 20} MiB"
        for threads in (1, 2):
            with Core(pmem, npages, dma_threads=threads) as core:
                core.set_owner(0, npages, INO, 0)
                core.map_extent(INO, 0, 0, npages)

                def dma_once(core: Core = core, desc: int = desc) -> float:
                    t0 = time.perf_counter()
                    ids = [
                        core.dma.submit(
                            Direction.TO_PMEM,
                            FileTarget(INO, off, desc),
                            BufferIO(view[off : off + desc]),
                        )
                        for off in range(0, size, desc)
                    ]
                    for rid in ids:
                        core.dma.wait_completion(rid).check()
                    return size / (time.perf_counter() - t0)

                dma_bw, chunk_bw, whole_bw = [], [], []
                for _ in range(runs):  # interleaved: same conditions
                    dma_bw.append(dma_once())
                    chunk_bw.append(memcpy_once(desc))
                    whole_bw.append(memcpy_once(size))
                d = statistics.median(dma_bw)
                c = statistics.median(chunk_bw)
                w = statistics.median(whole_bw)
                t = f"{threads} worker{'s' if threads > 1 else ''}"
                out.append((f"DMA engine, {dname} descriptors, {t}", d / 2**30, "GiB/s"))
                out.append((f"  memcpy in {dname} chunks, 1 thread", c / 2**30, "GiB/s"))
                out.append(("  ratio DMA / chunked memcpy", d / c, "x"))
                if desc != size:
                    out.append((f"  memcpy {total_mib} MiB in one call", w / 2**30, "GiB/s"))
                    out.append(("  ratio DMA / one-call memcpy", d / w, "x"))
    return out


def bench_wake(iters: int) -> tuple[float, float]:
    """Latency from the last unpin (another thread) to the trio task resuming."""
    lat: list[int] = []
    with Core(None, 16, dma_threads=0) as core:
        core.set_owner(0, 16, INO, 0)
        core.map_extent(INO, 0, 0, 16)

        async def main() -> None:
            for _ in range(iters):
                core.pin_file(INO, 0, 4)
                t_unpin = [0]
                woke = trio.Event()

                async def waiter(t_unpin: list[int] = t_unpin, woke: trio.Event = woke) -> None:
                    await core.wait_unpinned(INO, 0, 16)
                    lat.append(time.perf_counter_ns() - t_unpin[0])
                    woke.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(waiter)
                    await trio.testing.wait_all_tasks_blocked()

                    def unpin(t_unpin: list[int] = t_unpin) -> None:
                        t_unpin[0] = time.perf_counter_ns()
                        core.unpin_file(INO, 0, 4)

                    th = threading.Thread(target=unpin)
                    th.start()
                    await woke.wait()
                th.join()

        trio.run(main)
    lat.sort()
    return statistics.median(lat) / 1e3, lat[int(len(lat) * 0.99) - 1] / 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="runs per figure (median printed)")
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    args = ap.parse_args(argv)
    min_time = 0.05 if args.quick else 0.2
    total_mib = 64 if args.quick else 256

    rows: list[tuple[str, float, str]] = []
    rows += [(n, v / 1e6, "M pages/s") for n, v in bench_pins(args.runs, min_time)]
    rows += [(n, v / 1e9, "G pages/s") for n, v in bench_scan(args.runs, min_time)]
    rows += bench_dma(args.runs, total_mib)
    med, p99 = bench_wake(300 if args.quick else 2000)
    rows += [("wake latency median (unpin -> trio)", med, "us"), ("wake latency p99", p99, "us")]

    print(
        f"daxfs native core benchmarks (median of {args.runs} runs; DMA copies with "
        f"{DMA_COPY_METHOD}, {total_mib} MiB per DMA run)"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'value':>10}  unit")
    print("-" * (width + 20))
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10.2f}  {unit}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
