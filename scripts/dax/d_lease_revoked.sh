#!/bin/bash
# Scenario d: the holder ignores the break; after lease_break_time (2 s here)
# its registration is revoked, the truncate completes, later DMA on it fails.
# GROUP: quick
# TIMEOUT: 60
source "$(dirname "$0")/common.sh"
require_fuse
mount_fs dax=always,lease_break_time=2 || { fail mount; finish; }
len=$((1 << 20))
head -c $len /dev/zero | tr '\0' 'A' > "$MNT/A"
"$PY" -m daxfs pin "$MNT/A" --length $len --hold 30 --ignore-breaks --probe \
    > "$T/pin.out" 2>&1 &
pid=$!
BGPIDS+=("$pid")
wait_for_line "$T/pin.out" "^registered" || { fail "pin: $(cat "$T/pin.out")"; finish; }
mr=$(sed -n 's/^registered mr=\([0-9]*\).*/\1/p' "$T/pin.out")
t1=$(now)
truncate -s 0 "$MNT/A" || fail "truncate failed"
waited=$(elapsed "$t1")
log "truncate returned after ${waited}s (lease_break_time=2)"
"$PY" -c "import sys; sys.exit(0 if 1.8 <= $waited <= 3.5 else 1)" \
    || fail "truncate waited ${waited}s, expected about 2s"
wait "$pid"
cat "$T/pin.out" | sed "s/^/[$NAME] holder: /"
grep -q "^revoked" "$T/pin.out" || fail "holder was not told of the revocation"
grep -q "probe: post failed EKEYREVOKED" "$T/pin.out" || fail "DMA after revocation did not fail"
if daxfs dma write "$MNT" --mr "$mr" --length 4096 --pattern 1 > "$T/dma.out" 2>&1; then
    fail "remote DMA on the revoked registration succeeded"
else
    log "remote DMA: $(cat "$T/dma.out")"
fi
daxfs status "$MNT" | grep -q "^revoked:" || fail "status does not show the revocation"
[ "$(collisions)" = 0 ] || fail "collisions"
[ "$FAILED" = 0 ] && pass "revoked after ${waited}s; later DMA fails cleanly"
umount_fs
finish
