"""Where a mount's runtime files live (pid, info, control socket) and where the
default image and logs go.  Everything is keyed by the mountpoint's real path, so a
client finds a mount from the mountpoint alone."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def runtime_dir() -> Path:
    if os.geteuid() == 0:
        base = Path("/run/daxfs")
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "daxfs"
    else:
        base = Path(f"/tmp/daxfs-{os.geteuid()}")
    base.mkdir(mode=0o755, parents=True, exist_ok=True)
    return base


def data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(base) / "daxfs"


def state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "daxfs"


def default_image() -> Path:
    return data_dir() / "pmem0.img"


def _real(mountpoint: str, resolved: bool) -> str:
    # realpath lstat()s every component: inside the daemon, once its mount is live,
    # that would be a request to itself.  The daemon resolves once and says so.
    return mountpoint if resolved else os.path.realpath(mountpoint)


def mount_key(mountpoint: str, resolved: bool = False) -> str:
    real = _real(mountpoint, resolved)
    return hashlib.sha1(real.encode()).hexdigest()[:16]


def info_path(mountpoint: str, resolved: bool = False) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint, resolved)}.json"


def socket_path(mountpoint: str, resolved: bool = False) -> Path:
    return runtime_dir() / f"{mount_key(mountpoint, resolved)}.sock"


def write_info(mountpoint: str, info: dict, resolved: bool = False) -> None:
    p = info_path(mountpoint, resolved)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, p)


def read_info(mountpoint: str) -> dict | None:
    try:
        return json.loads(info_path(mountpoint).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def remove_info(mountpoint: str, resolved: bool = False) -> None:
    for p in (info_path(mountpoint, resolved), socket_path(mountpoint, resolved)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass


def is_mounted(mountpoint: str, resolved: bool = False) -> bool:
    real = _real(mountpoint, resolved)
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 2 and parts[1].replace("\\040", " ") == real:
                return True
    return False
