# Shared helpers for the DMA-vs-truncate scenario scripts (sourced, not run).
# Each script: own temp dir, image and mountpoint; cleanup via trap; PASS/FAIL
# lines; exit 0 (pass), 1 (fail) or 77 (skip).

set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
PY="${PY:-$REPO/.venv/bin/python}"
[ -x "$PY" ] || PY=python3
NAME="$(basename "$0" .sh)"
T="$(mktemp -d "${TMPDIR:-/tmp}/daxfs-$NAME.XXXXXX")"
IMG="$T/pmem.img"
MNT="$T/mnt"
LOG="$T/daemon.log"
FAILED=0
BGPIDS=()

daxfs() { "$PY" -m daxfs "$@"; }

log() { echo "[$NAME] $*"; }
pass() { echo "PASS: $NAME: $*"; }
fail() { echo "FAIL: $NAME: $*"; FAILED=1; }
skip() { echo "SKIP: $NAME: $*"; exit 77; }
require_prog() { command -v "$1" >/dev/null 2>&1 || skip "needs $1"; }

require_fuse() {
    [ -e /dev/fuse ] || skip "no /dev/fuse"
    require_prog fusermount3
}

cleanup() {
    local p
    for p in "${BGPIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    for p in "${BGPIDS[@]}"; do wait "$p" 2>/dev/null; done
    if grep -qs " $MNT " /proc/mounts; then
        daxfs umount "$MNT" >/dev/null 2>&1 || fusermount3 -u -z "$MNT" 2>/dev/null
    fi
    if [ "${KEEP:-0}" = 1 ] || [ "$FAILED" = 1 ]; then
        echo "[$NAME] kept $T (daemon log $LOG)"
    else
        rm -rf "$T"
    fi
}
trap cleanup EXIT

# mount_fs OPTS [SIZE]: fresh reuse-first image, mounted on $MNT.
mount_fs() {
    local opts="$1" size="${2:-64M}"
    mkdir -p "$MNT"
    daxfs mkfs -q --force --size "$size" --alloc-policy reuse-first "$IMG" || return 1
    daxfs mount --log "$LOG" -o "$opts" "$IMG" "$MNT" >/dev/null || return 1
}

umount_fs() {
    daxfs umount "$MNT" >/dev/null || { fail "umount"; return 1; }
    if grep -q "Traceback" "$LOG"; then fail "traceback in the daemon log"; fi
}

# Print the collision counter of the mount.
collisions() {
    daxfs status --json "$MNT" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["collisions"])'
}

# wait_for_line FILE REGEX [TIMEOUT]: wait (bounded) until FILE has a matching line.
wait_for_line() {
    local f="$1" re="$2" t="${3:-20}" i=0
    while ! grep -qE "$re" "$f" 2>/dev/null; do
        i=$((i + 1))
        [ "$i" -gt $((t * 20)) ] && return 1
        sleep 0.05
    done
}

# now: seconds since the epoch, with fractions.
now() { date +%s.%N; }
elapsed() { "$PY" -c "print(f'{$(now) - $1:.3f}')"; }

# pattern_file PATH SEED SIZE: a file of the DMA pattern stream.
pattern_file() {
    "$PY" -c "from daxfs.native import pattern_bytes; open('$1','wb').write(pattern_bytes($2, $3))"
}

finish() {
    if [ "$FAILED" = 0 ]; then exit 0; else exit 1; fi
}

# dma_pinned: pages pinned by in-flight DMA descriptors now.
dma_pinned() {
    daxfs status --json "$MNT" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["core"]["dma_pinned_pages"])'
}

# wait_dma_inflight: bounded wait until some DMA holds pins.
wait_dma_inflight() {
    local i=0
    while [ "$(dma_pinned)" = 0 ]; do
        i=$((i + 1)); [ "$i" -gt 200 ] && return 1
        sleep 0.05
    done
}

# race_case MODE OP: direct I/O (2 s delay) into A, OP (punch|truncate|zero) on
# A's range meanwhile, then B written with a known pattern on reuse-first.
# MODE safe: OP waits for the DMA, B intact, A's range zeros, no collision.
# MODE unsafe: a collision is recorded and B (or A, for zero) is corrupted.
race_case() {
    local mode="$1" op="$2" len=$((1 << 20)) opts="dax=always" delay="${DELAY:-2}"
    [ "$mode" = unsafe ] && opts="$opts,unsafe_free_pinned"
    mount_fs "$opts" || { fail "$mode/$op: mount"; return; }
    head -c $len /dev/zero | tr '\0' 'A' > "$T/refA"
    head -c $len /dev/zero | tr '\0' 'B' > "$T/refB"
    pattern_file "$T/src" 7 $len
    dd if="$T/refA" of="$MNT/A" bs=1M status=none conv=fsync
    local t0 t1 waited dio_out="$T/dio.$mode.$op"
    t0=$(now)
    daxfs dio --from "$T/src" --to "$MNT/A" --offset 0 --length $len --delay "$delay" \
        > "$dio_out" 2>&1 &
    local dio=$!
    BGPIDS+=("$dio")
    wait_dma_inflight || { fail "$mode/$op: the DMA never started"; cat "$dio_out"; return; }
    t1=$(now)
    case "$op" in
        punch) fallocate -p -o 0 -l $len "$MNT/A" ;;
        zero) fallocate -z -o 0 -l $len "$MNT/A" ;;
        truncate) truncate -s 0 "$MNT/A" ;;
    esac || fail "$mode/$op: $op failed"
    local t2
    t2=$(now)
    waited=$("$PY" -c "print(f'{$t2 - $t1:.3f}')")
    log "$mode/$op: $op returned after ${waited}s"
    dd if="$T/refB" of="$MNT/B" bs=1M status=none conv=fsync
    wait "$dio" || { fail "$mode/$op: dio failed: $(cat "$dio_out")"; }
    local done_at gap
    done_at=$(sed -n 's/.*done_at=\([0-9.]*\).*/\1/p' "$dio_out")
    gap=$("$PY" -c "print(f'{$t2 - ${done_at:-0}:+.3f}')")
    log "$mode/$op: $op returned ${gap}s relative to the DMA completion (dio: $(cat "$dio_out"))"
    local ncoll b_ok=1 a_ok=1
    ncoll=$(collisions)
    cmp -s "$MNT/B" "$T/refB" || b_ok=0
    if [ "$op" = truncate ]; then
        [ "$(stat -c %s "$MNT/A")" = 0 ] || a_ok=0
    else
        cmp -s -n $len "$MNT/A" /dev/zero || a_ok=0
    fi
    log "$mode/$op: collisions=$ncoll B_intact=$b_ok A_range_zero=$a_ok"
    echo "WAIT $mode $op ${waited} gap ${gap}" >> "${DAX_WAITS:-/dev/null}"
    if [ "$mode" = safe ]; then
        [ "$ncoll" = 0 ] || fail "$mode/$op: $ncoll collision(s) in safe mode"
        [ "$b_ok" = 1 ] || fail "$mode/$op: B corrupted in safe mode"
        [ "$a_ok" = 1 ] || fail "$mode/$op: A's range does not read zeros"
        "$PY" -c "import sys; sys.exit(0 if $waited > 0.3 and abs($gap) < 0.3 else 1)" \
            || fail "$mode/$op: waited ${waited}s, ${gap}s from the DMA completion (want < 0.3s)"
        [ "$FAILED" = 0 ] && pass "safe/$op waited ${waited}s for the DMA; B intact; no collision"
    else
        [ "$ncoll" -gt 0 ] || fail "$mode/$op: no collision detected in unsafe mode"
        if [ "$b_ok" = 1 ] && [ "$a_ok" = 1 ]; then
            fail "$mode/$op: nothing corrupted in unsafe mode (race not triggered)"
        fi
        "$PY" -c "import sys; sys.exit(0 if $waited < 0.5 else 1)" \
            || fail "$mode/$op: unsafe $op waited ${waited}s"
        [ "$FAILED" = 0 ] && pass "unsafe/$op: returned in ${waited}s, $ncoll collision(s), corruption reproduced (B_intact=$b_ok A_zero=$a_ok)"
    fi
    umount_fs
}
