#!/usr/bin/env bash
# Build the peers the benchmark harness compares daxfs with:
#   build/bench/passthrough_ll   libfuse's C low-level passthrough example
#   build/bench/passthroughfs.py pyfuse3's own passthrough example (from its sdist)
# Usage: bench/build_passthrough.sh [PYTHON]   (PYTHON: the venv's python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
OUT=build/bench
EX=/usr/share/doc/libfuse3-dev/examples
mkdir -p "$OUT"

if [ ! -x "$OUT/passthrough_ll" ] || [ "$EX/passthrough_ll.c" -nt "$OUT/passthrough_ll" ]; then
  cp "$EX/passthrough_ll.c" "$EX/passthrough_helpers.h" "$OUT/"
  # passthrough_ll.c only tests HAVE_FALLOCATE / HAVE_POSIX_FALLOCATE /
  # HAVE_COPY_FILE_RANGE; the other two are harmless and kept for parity with
  # the libfuse build.
  gcc -O2 -Wall "$OUT/passthrough_ll.c" $(pkg-config --cflags --libs fuse3) \
    -DHAVE_FALLOCATE -DHAVE_SETXATTR -DHAVE_UTIMENSAT -DHAVE_POSIX_FALLOCATE \
    -DHAVE_COPY_FILE_RANGE -o "$OUT/passthrough_ll"
  echo "built $OUT/passthrough_ll"
fi

if [ ! -f "$OUT/passthroughfs.py" ]; then
  VER=$("$PY" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))')
  "$PY" -m pip download -q --no-deps --no-binary :all: "pyfuse3==$VER" -d "$OUT/"
  tar -xzf "$OUT/pyfuse3-$VER.tar.gz" -C "$OUT" "pyfuse3-$VER/examples/passthroughfs.py"
  cp "$OUT/pyfuse3-$VER/examples/passthroughfs.py" "$OUT/passthroughfs.py"
  echo "extracted $OUT/passthroughfs.py (pyfuse3 $VER)"
fi
