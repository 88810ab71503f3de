#!/bin/bash
# Scenario f: an ODP registration takes no long-term pins: a truncate waits only
# for the DMA in flight on it, then invalidates the range; later DMA there fails.
# GROUP: quick
# TIMEOUT: 60
source "$(dirname "$0")/common.sh"
require_fuse
mount_fs dax=always || { fail mount; finish; }
len=$((1 << 20))
head -c $len /dev/zero | tr '\0' 'A' > "$MNT/A"
"$PY" -m daxfs pin "$MNT/A" --length $len --odp --probe --hold 30 > "$T/pin.out" 2>&1 &
pid=$!
BGPIDS+=("$pid")
wait_for_line "$T/pin.out" "^registered" || { fail "pin: $(cat "$T/pin.out")"; finish; }
mr=$(sed -n 's/^registered mr=\([0-9]*\).*/\1/p' "$T/pin.out")
[ "$(dma_pinned)" = 0 ] || fail "ODP registration pinned pages"
daxfs dma write "$MNT" --mr "$mr" --offset 0 --length 65536 --pattern 9 --delay 1.5 \
    > "$T/dma.out" 2>&1 &
dma=$!
BGPIDS+=("$dma")
wait_dma_inflight || fail "DMA never started"
t1=$(now)
truncate -s 0 "$MNT/A" || fail "truncate"
waited=$(elapsed "$t1")
wait "$dma" || fail "in-flight DMA failed: $(cat "$T/dma.out")"
log "truncate waited ${waited}s (only for the in-flight DMA)"
"$PY" -c "import sys; sys.exit(0 if 0.3 <= $waited <= 2.5 else 1)" || fail "waited ${waited}s"
wait_for_line "$T/pin.out" "^probe:" 10 || fail "no invalidation seen by the holder"
grep -q "probe: post failed EFAULT" "$T/pin.out" || fail "DMA after invalidation: $(cat "$T/pin.out")"
if daxfs dma write "$MNT" --mr "$mr" --length 4096 --pattern 1 > "$T/d2" 2>&1; then
    fail "DMA to the truncated range succeeded"
else
    log "later DMA: $(cat "$T/d2")"
fi
[ "$(collisions)" = 0 ] || fail "collisions"
[ "$FAILED" = 0 ] && pass "ODP: truncate waited ${waited}s for in-flight DMA only; later DMA fails"
umount_fs
finish
