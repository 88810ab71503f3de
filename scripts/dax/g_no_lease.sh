#!/bin/bash
# Scenario g: a long-term registration without a layout lease is refused
# (EOPNOTSUPP); with a lease, or with ODP, it is accepted.
# GROUP: quick
# TIMEOUT: 30
source "$(dirname "$0")/common.sh"
require_fuse
mount_fs dax=always || { fail mount; finish; }
head -c 65536 /dev/zero > "$MNT/A"
if daxfs pin "$MNT/A" --length 64K --no-lease --hold 0 > "$T/out" 2>&1; then
    fail "registration without a lease was accepted: $(cat "$T/out")"
elif grep -q EOPNOTSUPP "$T/out"; then
    pass "no lease: $(cat "$T/out")"
else
    fail "no lease: wrong error: $(cat "$T/out")"
fi
daxfs pin "$MNT/A" --length 64K --hold 0 > "$T/out2" 2>&1 \
    && pass "with a layout lease: $(head -1 "$T/out2")" || fail "with lease: $(cat "$T/out2")"
daxfs pin "$MNT/A" --length 64K --odp --hold 0 > "$T/out3" 2>&1 \
    && pass "odp without a lease: $(head -1 "$T/out3")" || fail "odp: $(cat "$T/out3")"
[ "$(collisions)" = 0 ] || fail "collisions"
umount_fs
finish
