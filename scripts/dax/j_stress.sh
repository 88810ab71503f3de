#!/bin/bash
# Scenario j: stress.  Several clients DMA into random ranges of several files
# while truncate / punch / zero-range / extend / rewrite run on them through the
# mount, for a bounded time, checked against a data oracle.  Safe mode: zero
# collisions and zero mismatches.
# GROUP: stress
# TIMEOUT: 180
source "$(dirname "$0")/common.sh"
require_fuse
require_prog fallocate
mount_fs dax=always 128M || { fail mount; finish; }
DURATION="${DURATION:-20}" "$PY" - "$MNT" > "$T/stress.out" 2>&1 <<'PYEOF'
import os, random, subprocess, sys, threading, time
from daxfs.client import Client, ControlError
from daxfs.native import pattern_bytes

mnt = sys.argv[1]
dur = float(os.environ["DURATION"])
NFILES, SIZE = 4, 256 * 1024
stats = {"rounds": 0, "dma_ok": 0, "dma_refused": 0, "mismatches": 0, "ops": {},
         "op_wait_max": 0.0, "op_waits": 0}
lock = threading.Lock()

def dma(st, off, ln, seed):
    e = min(off + ln, len(st[0]) if False else off + ln)
    data = bytearray(st)
    if off + ln > len(data):
        data.extend(bytes(off + ln - len(data)))
    data[off:off + ln] = pattern_bytes(seed, ln)
    return bytes(data)

def apply(st, op, a, b):
    data = bytearray(st)
    if op == "truncate" or op == "extend":
        return bytes(data[:a]) + bytes(max(0, a - len(data)))
    if op in ("punch", "zero"):
        e = min(a + b, len(data))
        if a < e:
            data[a:e] = bytes(e - a)
        if op == "zero" and a + b > len(data):
            data.extend(bytes(a + b - len(data)))
        return bytes(data)
    if op == "rewrite":
        return bytes(data)  # applied separately (through the mount, serialised)
    raise ValueError(op)

def worker(i):
    rnd = random.Random(i)
    name = f"f{i}"
    path = os.path.join(mnt, name)
    state = bytes(rnd.randrange(256) for _ in range(SIZE))
    with open(path, "wb") as f:
        f.write(state)
    c = Client(mnt)
    deadline = time.monotonic() + dur
    seed = i * 1000000
    while time.monotonic() < deadline:
        seed += 1
        size = len(state)
        if size < 8192:
            op = "extend"
        else:
            op = rnd.choice(["truncate", "punch", "zero", "extend", "rewrite", "punch"])
        off = rnd.randrange(0, max(1, size - 4096)) if size > 4096 else 0
        ln = rnd.randrange(1, min(64 * 1024, max(2, size - off)))
        delay = rnd.choice([0, 0.05, 0.1, 0.2])
        res = {}
        def run_dma():
            try:
                c.dma(name, "write", off, ln, pattern=seed, delay=delay)
                res["ok"] = True
            except ControlError as e:
                res["err"] = e.errno
        t = threading.Thread(target=run_dma)
        t.start()
        time.sleep(rnd.choice([0, 0.01, 0.03]))  # stress workload jitter, not synchronisation
        if op == "truncate":
            a, b = rnd.randrange(0, size), 0
        elif op == "extend":
            a, b = size + rnd.randrange(1, 65536), 0
        else:
            a = rnd.randrange(0, size)
            b = rnd.randrange(1, min(65536, size - a) + 1)
        t0 = time.monotonic()
        if op in ("truncate", "extend"):
            os.truncate(path, a)
        elif op == "punch":
            subprocess.run(["fallocate", "-p", "-o", str(a), "-l", str(b), path], check=True)
        elif op == "zero":
            subprocess.run(["fallocate", "-z", "-n", "-o", str(a), "-l", str(b), path],
                           check=True)
        else:
            blob = bytes(rnd.randrange(256) for _ in range(min(b, 4096))) * (b // 4096 + 1)
            blob = blob[:b]
            fd = os.open(path, os.O_WRONLY)
            os.pwrite(fd, blob, a)
            os.close(fd)
        waited = time.monotonic() - t0
        t.join()
        with open(path, "rb") as f:
            got = f.read()
        if op == "rewrite":
            def opf(s):
                d = bytearray(s)
                if a + b > len(d):
                    d.extend(bytes(a + b - len(d)))
                d[a:a + b] = blob
                return bytes(d)
        else:
            def opf(s):
                return apply(s, op, a, b)
        if op == "zero":
            def opf(s, _a=a, _b=b):  # -n: keep size
                d = bytearray(s)
                e = min(_a + _b, len(d))
                if _a < e:
                    d[_a:e] = bytes(e - _a)
                return bytes(d)
        if res.get("ok"):
            cands = [opf(dma(state, off, ln, seed)), dma(opf(state), off, ln, seed)]
        else:
            cands = [opf(state)]
        with lock:
            stats["rounds"] += 1
            stats["ops"][op] = stats["ops"].get(op, 0) + 1
            stats["dma_ok" if res.get("ok") else "dma_refused"] += 1
            if waited > 0.02:
                stats["op_waits"] += 1
            stats["op_wait_max"] = max(stats["op_wait_max"], waited)
            if got not in cands:
                stats["mismatches"] += 1
                print(f"MISMATCH {name} op={op} a={a} b={b} dma={off}+{ln} {res}", flush=True)
        state = got if got in cands else cands[0]
    c.close()

errors = []

def guarded(i):
    try:
        worker(i)
    except Exception as e:
        errors.append(repr(e))
        print(f"WORKER {i} FAILED: {e!r}", flush=True)

ths = [threading.Thread(target=guarded, args=(i,)) for i in range(NFILES)]
for t in ths:
    t.start()
for t in ths:
    t.join()
st = Client(mnt).status()
print(f"rounds={stats['rounds']} dma_ok={stats['dma_ok']} dma_refused={stats['dma_refused']} "
      f"mismatches={stats['mismatches']} collisions={st['collisions']} "
      f"ops_that_waited={stats['op_waits']} max_wait={stats['op_wait_max']:.3f}s "
      f"breaks={st['counters']['breaks']} breaks_waited={st['counters']['breaks_waited']} "
      f"ops={stats['ops']}")
sys.exit(1 if stats["mismatches"] or st["collisions"] or errors else 0)
PYEOF
rc=$?
sed "s/^/[$NAME] /" "$T/stress.out"
[ $rc = 0 ] && pass "$(tail -1 "$T/stress.out")" || fail "stress: see above"
umount_fs
finish
