#!/bin/bash
# Scenario c: a long-term registration whose holder honours the lease break:
# the truncate waits until it deregisters; reads meanwhile see the old data.
# GROUP: quick
# TIMEOUT: 60
source "$(dirname "$0")/common.sh"
require_fuse
mount_fs dax=always || { fail mount; finish; }
len=$((1 << 20))
head -c $len /dev/zero | tr '\0' 'A' > "$T/refA"
cp "$T/refA" "$MNT/A"
"$PY" -m daxfs pin "$MNT/A" --length $len --hold 30 --release-delay 1.5 > "$T/pin.out" 2>&1 &
pid=$!
BGPIDS+=("$pid")
wait_for_line "$T/pin.out" "^registered" || { fail "pin: $(cat "$T/pin.out")"; finish; }
t1=$(now)
truncate -s 0 "$MNT/A" &
tr=$!
wait_for_line "$T/pin.out" "^lease_break" || fail "no lease break notice"
cmp -s "$MNT/A" "$T/refA" && pass "read during the break: old content" \
    || fail "read during the break differs"
wait "$tr" || fail "truncate failed"
waited=$(elapsed "$t1")
wait "$pid" || fail "pin exited non-zero"
grep -q "^released" "$T/pin.out" || fail "holder did not release"
"$PY" -c "import sys; sys.exit(0 if $waited >= 1.4 else 1)" || fail "truncate did not wait (${waited}s)"
[ "$(collisions)" = 0 ] || fail "collisions"
[ "$(stat -c %s "$MNT/A")" = 0 ] || fail "A not truncated"
[ "$FAILED" = 0 ] && pass "truncate waited ${waited}s for the holder to deregister"
umount_fs
finish
