"""Run every scenario script in scripts/dax (each mounts its own image and
cleans up); exit 0 = pass, 77 = skip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[2] / "scripts" / "dax").glob("[a-z]_*.sh"))


@pytest.mark.mount
@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/fuse") or not shutil.which("fusermount3"),
                    reason="needs FUSE")
@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_scenario(script: Path) -> None:
    m = re.search(r"^# TIMEOUT: *(\d+)", script.read_text(), re.M)
    env = {**os.environ, "PY": sys.executable, "DURATION": os.environ.get("DURATION", "10")}
    r = subprocess.run([str(script)], capture_output=True, text=True, env=env,
                       timeout=int(m.group(1)) if m else 300)
    if r.returncode == 77:
        pytest.skip(r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "skipped")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "FAIL" not in r.stdout
