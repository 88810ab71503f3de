#!/bin/sh
# native/sanitize.sh - build the C core with sanitizers and run tests under them.
#
#   1. ASan+UBSan: native/tests/stress.c (many threads: pins, waiters, DMA,
#      layout breaks, unsafe truncates), leak detection on.
#   2. TSan: the same stress driver (TSan and CPython do not mix well, so
#      the threaded coverage comes from the C driver).
#   3. ASan+UBSan inside Python: daxfs._native built instrumented into a
#      scratch copy of the package, and the core's pytest files run against
#      it with libasan preloaded (leak detection off: CPython "leaks").
#
# Usage: native/sanitize.sh [asan|tsan|pytest]...   (default: all three)
# Env:   PYTHON (default python3, needs cffi numpy trio pytest),
#        CC (default gcc), OUT (default build/sanitize).
# Exit status non-zero on the first failure.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
CC=${CC:-gcc}
OUT=${OUT:-$ROOT/build/sanitize}
SRCS="core.c page_table.c pfn_map.c waiters.c dma.c fastpath.c"
CFLAGS="-O1 -g -std=gnu11 -Wall -Wextra -Werror -fno-omit-frame-pointer"
PYTESTS="test_page_table.py test_pfn_map.py test_waiters.py test_contention.py test_dma.py"

mkdir -p "$OUT"
cd "$ROOT/native"
srcs=""
for s in $SRCS; do srcs="$srcs $ROOT/native/$s"; done

run_asan() {
    echo "== ASan+UBSan: native/tests/stress.c"
    # shellcheck disable=SC2086
    $CC $CFLAGS -fsanitize=address,undefined -fno-sanitize-recover=all \
        -I"$ROOT/native" $srcs "$ROOT/native/tests/stress.c" \
        -o "$OUT/stress-asan" -lpthread
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$OUT/stress-asan"
}

run_tsan() {
    echo "== TSan: native/tests/stress.c"
    # shellcheck disable=SC2086
    $CC $CFLAGS -fsanitize=thread -I"$ROOT/native" $srcs \
        "$ROOT/native/tests/stress.c" -o "$OUT/stress-tsan" -lpthread
    # Payload bytes only: descriptors (like DMA hardware, or a process with
    # the file mmap'ed) may write the same pmem bytes at once; the core
    # promises nothing about their order.  Races on any core state (pins,
    # owners, maps, queues) are not suppressed.
    cat >"$OUT/tsan.supp" <<'EOF'
race:copy_segment
race:daxfs_pattern_fill
race:daxfs_pattern_check
EOF
    TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$OUT/tsan.supp" \
        "$OUT/stress-tsan"
}

run_pytest() {
    echo "== ASan+UBSan: daxfs._native under pytest"
    pkg="$OUT/pkg"
    rm -rf "$pkg"
    mkdir -p "$pkg"
    cp -r "$ROOT/daxfs" "$pkg/daxfs"
    rm -f "$pkg"/daxfs/_native*.so
    DAXFS_NATIVE_CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all" \
    DAXFS_NATIVE_LDFLAGS="-fsanitize=address,undefined" \
        "$PYTHON" "$ROOT/native/build_core.py" "$pkg" >/dev/null
    libasan=$($CC -print-file-name=libasan.so)
    tests=""
    for t in $PYTESTS; do tests="$tests $ROOT/tests/native/$t"; done
    cd "$pkg"   # cwd is first on sys.path: the instrumented daxfs wins
    LD_PRELOAD="$libasan" ASAN_OPTIONS=detect_leaks=0 "$PYTHON" -c '
import sys, daxfs._native as m
if not m.__file__.startswith(sys.argv[1]):
    sys.exit("sanitize.sh: imported the wrong daxfs._native: " + m.__file__)' "$pkg"
    # shellcheck disable=SC2086
    LD_PRELOAD="$libasan" \
    ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$PYTHON" -m pytest -q -p no:cacheprovider $tests
    cd "$ROOT/native"
}

steps=${*:-asan tsan pytest}
for step in $steps; do
    case $step in
    asan) run_asan ;;
    tsan) run_tsan ;;
    pytest) run_pytest ;;
    *) echo "unknown step: $step" >&2; exit 2 ;;
    esac
done
echo "sanitize: all clean"
