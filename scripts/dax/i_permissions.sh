#!/bin/bash
# Scenario i: a user without write permission cannot register for writing, DMA
# or direct-I/O into the file (EACCES); reading is allowed with read permission.
# GROUP: quick
# TIMEOUT: 30
source "$(dirname "$0")/common.sh"
require_fuse
[ "$(id -u)" = 0 ] || skip "needs root to drop privileges"
require_prog setpriv
mount_fs dax=always,allow_other || { fail mount; finish; }
chmod 755 "$T" "$MNT"
head -c 65536 /dev/zero > "$MNT/A"
chmod 644 "$MNT/A"
head -c 4096 /dev/zero > "$T/src"; chmod 644 "$T/src"
asnobody() { setpriv --reuid=nobody --regid=nogroup --clear-groups "$PY" -m daxfs "$@"; }
check_denied() {
    local what="$1"; shift
    if asnobody "$@" > "$T/o" 2>&1; then fail "$what allowed: $(cat "$T/o")"
    elif grep -q EACCES "$T/o"; then pass "$what: EACCES"
    else fail "$what: $(cat "$T/o")"; fi
}
check_denied "register for writing" pin "$MNT/A" --length 4096 --access w --odp --hold 0
check_denied "dma write" dma write "$MNT/A" --length 4096 --pattern 1
check_denied "dio into the file" dio --from "$T/src" --to "$MNT/A" --length 4096
asnobody pin "$MNT/A" --length 4096 --access r --odp --hold 0 > "$T/r" 2>&1 \
    && pass "register for reading: allowed" || fail "read registration: $(cat "$T/r")"
umount_fs
finish
