"""cffi builder for daxfs._fuseext (API mode, out-of-line).

Used by setup.py as ``native/build_fuseext.py:ffibuilder``.  Run it as a
script to build in place for development::

    python native/build_fuseext.py        # -> daxfs/_fuseext.<abi>.so

The cdef is the region between ``/* CDEF BEGIN */`` and ``/* CDEF END */`` of
native/fuseext.h, so the header stays the single source of the interface.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from cffi import FFI

NATIVE = Path(__file__).resolve().parent
ROOT = NATIVE.parent
HEADER = NATIVE / "fuseext.h"
SOURCE = NATIVE / "fuseext.c"
MODULE = "daxfs._fuseext"


def _cdef_source() -> str:
    text = HEADER.read_text()
    start = text.index("/* CDEF BEGIN */") + len("/* CDEF BEGIN */")
    end = text.index("/* CDEF END */")
    return text[start:end]


def _pkg_config(flag: str) -> list[str]:
    try:
        out = subprocess.run(
            ["pkg-config", flag, "fuse3"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise RuntimeError(
            "pkg-config fuse3 failed; install libfuse3-dev (and pkg-config)"
        ) from exc
    return out.split()


def _make_builder(absolute: bool = False) -> FFI:
    """setuptools wants paths relative to setup.py; cffi's compile() chdirs into its
    tmpdir, so the in-place build needs absolute ones."""
    def path(p: Path) -> str:
        return str(p) if absolute else os.path.relpath(p, ROOT)

    cflags = _pkg_config("--cflags")
    libs = _pkg_config("--libs")
    ffi = FFI()
    ffi.cdef(_cdef_source())
    ffi.set_source(
        MODULE,
        '#include "fuseext.h"\n',
        sources=[path(SOURCE)],
        include_dirs=[path(NATIVE)] + [f[2:] for f in cflags if f.startswith("-I")],
        extra_compile_args=[f for f in cflags if not f.startswith("-I")]
        + ["-Wall", "-Wextra", "-std=gnu11"],
        extra_link_args=libs + ["-ldl"],
        depends=[path(HEADER)],
    )
    return ffi


ffibuilder = _make_builder()


def build_in_place() -> Path:
    """Compile into build/fuseext/ and copy the extension into daxfs/."""
    tmpdir = ROOT / "build" / "fuseext"
    tmpdir.mkdir(parents=True, exist_ok=True)
    built = Path(_make_builder(absolute=True).compile(tmpdir=str(tmpdir), verbose=True))
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    target = ROOT / "daxfs" / ("_fuseext" + suffix)
    # Copy to a temp name and rename, so a running process that has the old
    # file mapped is not disturbed.
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(built, tmp)
    tmp.replace(target)
    return target


if __name__ == "__main__":
    print(build_in_place(), file=sys.stderr)
