#!/bin/bash
# Run the DMA-vs-truncate scenarios: scripts/dax/run.sh [-g GROUP] [NAME...]
# Each script's "# GROUP:" and "# TIMEOUT:" header lines are honoured; exit 77
# counts as skipped.  Exit status: 0 if none failed.
HERE="$(cd "$(dirname "$0")" && pwd)"
group=""
if [ "${1:-}" = -g ]; then group="$2"; shift 2; fi
scripts=()
if [ $# -gt 0 ]; then
    for n in "$@"; do scripts+=("$HERE/${n%.sh}.sh"); done
else
    for f in "$HERE"/[a-z]_*.sh; do scripts+=("$f"); done
fi
pass=0 fail=0 skip=0 failed=()
for s in "${scripts[@]}"; do
    name="$(basename "$s" .sh)"
    if [ -n "$group" ] && ! grep -qE "^# GROUP:.*\b$group\b" "$s"; then continue; fi
    to=$(sed -n 's/^# TIMEOUT: *\([0-9]*\).*/\1/p' "$s" | head -1)
    echo "=== $name (timeout ${to:-300}s)"
    timeout -s TERM "${to:-300}" "$s"
    rc=$?
    case $rc in
        0) pass=$((pass + 1)) ;;
        77) skip=$((skip + 1)) ;;
        *) fail=$((fail + 1)); failed+=("$name(rc=$rc)") ;;
    esac
done
echo "=== passed $pass, failed $fail, skipped $skip ${failed[*]}"
[ "$fail" = 0 ]
