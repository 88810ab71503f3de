#!/bin/bash
# Scenario e: an exclusive layout lease: a conflicting truncate / punch fails at
# once with ETXTBSY; the holder breaking its own lease gets EDEADLK.
# GROUP: quick
# TIMEOUT: 30
source "$(dirname "$0")/common.sh"
require_fuse
require_prog fallocate
mount_fs dax=always || { fail mount; finish; }
head -c 1M /dev/zero | tr '\0' 'A' > "$MNT/A"
"$PY" -m daxfs lease "$MNT/A" --length 1M --exclusive --hold 30 > "$T/lease.out" 2>&1 &
pid=$!
BGPIDS+=("$pid")
wait_for_line "$T/lease.out" "^lease=" || { fail "lease: $(cat "$T/lease.out")"; finish; }
t1=$(now)
if truncate -s 0 "$MNT/A" 2> "$T/tr.err"; then fail "truncate succeeded"; fi
w=$(elapsed "$t1")
grep -qi "text file busy" "$T/tr.err" && pass "truncate: ETXTBSY after ${w}s" \
    || fail "truncate: $(cat "$T/tr.err")"
if fallocate -p -o 0 -l 4096 "$MNT/A" 2> "$T/p.err"; then fail "punch succeeded"; fi
grep -qi "text file busy" "$T/p.err" && pass "punch: ETXTBSY" || fail "punch: $(cat "$T/p.err")"
kill "$pid"; wait "$pid" 2>/dev/null
daxfs lease "$MNT/A" --length 1M --exclusive --hold 0 --then-truncate 0 > "$T/own.out" 2>&1
grep -q "own truncate: failed EDEADLK" "$T/own.out" && pass "own break: EDEADLK" \
    || fail "own break: $(cat "$T/own.out")"
[ "$(stat -c %s "$MNT/A")" = 1048576 ] || fail "A changed"
umount_fs
finish
