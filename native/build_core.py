"""cffi builder for daxfs._native, the C core (API mode, out-of-line).

Used by setup.py (``cffi_modules=["native/build_core.py:ffibuilder"]``) and
runnable as a script to build the module in place for development::

    python native/build_core.py            # -> daxfs/_native.*.so

The cdef is read from native/daxfs_core.h between the CDEF markers, so the
header is the single source of truth for the interface.  Extra C flags can
be added through the DAXFS_NATIVE_CFLAGS / DAXFS_NATIVE_LDFLAGS environment
variables (native/sanitize.sh uses them for ASan/UBSan builds).
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from cffi import FFI

try:
    _HERE = os.path.dirname(os.path.abspath(__file__))
except NameError:  # exec'd without __file__: cffi runs us from the repo root
    _HERE = os.path.abspath("native")
ROOT = os.path.dirname(_HERE)

HEADER = "daxfs_core.h"
# Sources relative to the repo root (setuptools wants relative paths).
SOURCES = [
    "native/core.c",
    "native/page_table.c",
    "native/pfn_map.c",
    "native/waiters.c",
    "native/dma.c",
    "native/fastpath.c",
]
CFLAGS = ["-O2", "-Wall", "-Wextra", "-std=gnu11"]


def read_cdef(path: str | None = None) -> str:
    """Return the declarations between the CDEF markers of the header."""
    path = path or os.path.join(_HERE, HEADER)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S)
    if not m:
        raise RuntimeError(f"{path}: CDEF-BEGIN/CDEF-END markers not found")
    return m.group(1)


def make_ffibuilder(base: str = "") -> FFI:
    """A builder for daxfs._native; paths relative to base ("" = cwd)."""
    ffi = FFI()
    ffi.cdef(read_cdef())
    ffi.set_source(
        "daxfs._native",
        f'#include "{HEADER}"',
        sources=[os.path.join(base, s) for s in SOURCES],
        include_dirs=[os.path.join(base, "native")],
        depends=[os.path.join(base, "native", h) for h in (HEADER, "core_internal.h")],
        extra_compile_args=CFLAGS + shlex.split(os.environ.get("DAXFS_NATIVE_CFLAGS", "")),
        extra_link_args=["-lpthread"] + shlex.split(os.environ.get("DAXFS_NATIVE_LDFLAGS", "")),
    )
    return ffi


# The entry point setup.py names; setuptools runs it from the repo root.
ffibuilder = make_ffibuilder()


def main(argv: list[str] | None = None) -> int:
    """Build daxfs/_native in place (or under the directory given)."""
    argv = sys.argv[1:] if argv is None else argv
    dest = os.path.abspath(argv[0]) if argv else ROOT
    # Separate temp dirs: a sanitizer build elsewhere never shares objects.
    tmp = os.path.join(dest, "build", "native-core")
    os.makedirs(tmp, exist_ok=True)
    # cffi compiles from inside tmpdir: give it absolute paths.
    so = make_ffibuilder(ROOT).compile(tmpdir=tmp, verbose=bool(os.environ.get("VERBOSE")))
    target = os.path.join(dest, "daxfs", os.path.basename(so))
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Replace atomically: a running process keeps its old mapping.
    os.replace(so, target + ".tmp")
    os.replace(target + ".tmp", target)
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
