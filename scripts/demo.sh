#!/usr/bin/env bash
# The quick-start workload behind `make run`: mount the default image (created on
# first use) on $MNT and run a short real workload on it.  Leaves it mounted.
set -euo pipefail
PY=${PY:-python3}
MNT=${MNT:-$PWD/mnt}
daxfs() { "$PY" -m daxfs "$@"; }
step() { printf '\n== %s\n' "$*"; }

mkdir -p "$MNT"
if grep -qs " $(realpath "$MNT") fuse.daxfs " /proc/mounts; then
  echo "daxfs is already mounted on $MNT"
else
  daxfs mount "$MNT"
fi

work="$MNT/demo-$(date +%s)"
mkdir -p "$work"

step "write and read back 64 MiB"
dd if=/dev/urandom of="$work/random.bin" bs=1M count=64 status=none
sum1=$(sha256sum < "$work/random.bin")
sum2=$(cat "$work/random.bin" | sha256sum)
[ "$sum1" = "$sum2" ] && echo "64 MiB written and read back, sha256 matches"

step "copy a source tree in with tar, compare it"
src=$(cd "$(dirname "$0")/.." && pwd)
tar -C "$src" --exclude=.git --exclude=.venv --exclude=mnt --exclude=build -cf - . \
  | tar -C "$work" -xf - && mkdir -p "$work/tree" && mv "$work"/{daxfs,tests,native} "$work/tree/"
diff -r "$src/daxfs" "$work/tree/daxfs" -x __pycache__ -x '*.so' >/dev/null \
  && echo "tree copied: $(find "$work/tree" -type f | wc -l) files, identical"

step "fio: 4 KiB random writes with crc32c verification (16 MiB, 3 s)"
if command -v fio >/dev/null; then
  fio --name=demo --directory="$work" --rw=randwrite --bs=4k --size=16m --ioengine=psync \
      --verify=crc32c --do_verify=1 --time_based=0 --runtime=3 --output-format=terse \
      --terse-version=3 | awk -F';' '{printf "fio: %s write IOPS, verify passed\n", $49}'
fi

step "sparse files, hole punching, SEEK_DATA"
truncate -s 1G "$work/sparse"
echo "data at 512 MiB" | dd of="$work/sparse" bs=1 seek=$((512 << 20)) conv=notrunc status=none
ls -ls "$work/sparse"
fallocate -p -o $((512 << 20)) -l 4096 "$work/sparse" && echo "punched; blocks now: $(stat -c %b "$work/sparse")"

step "filesystem"
df -h "$MNT"
daxfs status "$MNT"
echo
echo "daxfs is mounted on $MNT ($(ls "$MNT" | wc -l) entries at top level)."
echo "Unmount with: make stop   (or: $PY -m daxfs umount $MNT)"
