#!/bin/bash
# Scenario h: a client SIGKILLed while its DMA is in flight: the DMA drains, its
# pins drop, the truncate proceeds, nothing is corrupted.
# GROUP: quick
# TIMEOUT: 60
source "$(dirname "$0")/common.sh"
require_fuse
mount_fs dax=always || { fail mount; finish; }
len=$((1 << 20))
head -c $len /dev/zero | tr '\0' 'B' > "$T/refB"
head -c $len /dev/zero | tr '\0' 'A' > "$MNT/A"
"$PY" -m daxfs dma write "$MNT/A" --length $len --pattern 5 --delay 2 > "$T/dma.out" 2>&1 &
pid=$!
BGPIDS+=("$pid")
wait_dma_inflight || { fail "DMA never started"; finish; }
kill -9 "$pid"
wait "$pid" 2>/dev/null
log "client $pid killed with its DMA in flight"
t1=$(now)
truncate -s 0 "$MNT/A" || fail "truncate"
log "truncate returned after $(elapsed "$t1")s"
dd if="$T/refB" of="$MNT/B" bs=1M status=none conv=fsync
cmp -s "$MNT/B" "$T/refB" || fail "B corrupted"
st=$(daxfs status --json "$MNT")
read -r coll pinned clients < <(echo "$st" | "$PY" -c '
import json, sys; s = json.load(sys.stdin)
busy = [c for c in s["clients"] if c["inflight"] or c["registrations"]]
print(s["collisions"], s["core"]["pinned_pages"], len(busy))')
[ "$coll" = 0 ] || fail "$coll collisions"
[ "$pinned" = 0 ] || fail "$pinned pages still pinned"
[ "$clients" = 0 ] || fail "$clients clients still hold DMA or registrations"
[ "$FAILED" = 0 ] && pass "killed client: DMA drained, pins dropped, truncate done, B intact"
umount_fs
finish
