"""kill -9 of the mounted daemon at random moments: after each, fsck is clean (after
journal replay) and every fsync'ed file has its content (renames: old or new)."""

from __future__ import annotations

import shutil

import pytest

from daxfs.crash import default_workdir, kill_cycles

pytestmark = [pytest.mark.mount, pytest.mark.slow]


@pytest.mark.skipif(shutil.which("fusermount3") is None, reason="needs fusermount3")
def test_kill9_cycles():
    run = kill_cycles(default_workdir(), 20, seed=7)
    if run.cycles == 0 and run.violations and "mount failed" in run.violations[0]:
        pytest.skip(f"the daemon cannot mount here: {run.violations[0][-300:]}")
    print(f"{run.cycles} kill -9 cycles, {run.checked_files} file checks, "
          f"{run.seconds:.1f}s")
    assert run.violations == []
    assert run.cycles == 20
