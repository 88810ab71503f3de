#!/usr/bin/env python3
"""The long crash-consistency run: power-cut states, kill -9 cycles, corrupted images.

    python scripts/crashtest.py                      # the full run
    python scripts/crashtest.py --states 5000 --kills 20 --images 2000   # scaled down

Prints counts, violations and time; exits 1 if anything was violated.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from daxfs.crash import crash_test, default_workdir, fuzz, kill_cycles  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--states", type=int, default=100_000, help="power-cut crash states")
    p.add_argument("--kills", type=int, default=500, help="kill -9 cycles")
    p.add_argument("--images", type=int, default=20_000, help="corrupted images")
    p.add_argument("--nops", type=int, default=150, help="operations per recorded workload")
    p.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    p.add_argument("--workdir", default=default_workdir())
    p.add_argument("--max-violations", type=int, default=50, help="print at most this many")
    a = p.parse_args(argv)
    print(f"crashtest: seed {a.seed}, workdir {a.workdir}", flush=True)
    violations: list[str] = []
    t0 = time.monotonic()

    if a.states:
        t = time.monotonic()
        states = fences = workloads = 0
        seed = a.seed
        while states < a.states:
            r = crash_test(a.workdir, seed=seed, nops=a.nops, max_states=a.states - states)
            states += r.states
            fences += r.fences
            workloads += 1
            violations += r.violations
            seed += 1
            print(f"\rpower cut: {states} states, {fences} fences, {workloads} workloads, "
                  f"{len(violations)} violations", end="", flush=True)
        print(f" ({time.monotonic() - t:.0f}s)")
        for broken in ("no-data-flush", "no-home-flush"):
            caught = any(crash_test(a.workdir, seed=s, nops=a.nops, broken=broken,
                                    stop_after_violations=1).violations for s in range(10))
            print(f"negative control {broken}: {'caught' if caught else 'MISSED'}")
            if not caught:
                violations.append(f"negative control {broken} was not caught")

    if a.kills:
        t = time.monotonic()
        done, checks, seed = 0, 0, a.seed
        while done < a.kills:
            r = kill_cycles(a.workdir, min(50, a.kills - done), seed=seed)
            done += r.cycles
            checks += r.checked_files
            violations += r.violations
            seed += 1
            print(f"\rkill -9: {done} cycles, {checks} file checks, {len(violations)} "
                  "violations", end="", flush=True)
            if r.cycles == 0:
                break
        print(f" ({time.monotonic() - t:.0f}s)")

    if a.images:
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
        from tests.crash.conftest import build_base

        t = time.monotonic()
        with tempfile.TemporaryDirectory(dir=a.workdir) as d:
            src = os.path.join(d, "src.img")
            build_base(src)
            r = fuzz(src, a.workdir, a.images, seed=a.seed)
        violations += r.failures
        print(f"corrupted images: {r.images} (mounted {r.mounted}, refused {r.refused}; "
              f"fsck {r.fsck_codes}; repair {r.repair_codes}), {len(r.failures)} "
              f"failures ({time.monotonic() - t:.0f}s)")

    for v in violations[: a.max_violations]:
        print("VIOLATION:", v)
    print(f"crashtest: {len(violations)} violations in {time.monotonic() - t0:.0f}s")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
