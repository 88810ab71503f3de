"""Power-cut simulation: record every persistent store and fence, rebuild the image as
it could be after a power cut at any fence, and check it.

`RecordingOps` replaces a mounted Filesystem's `PmemOps`: it applies stores to the
mapping as usual and logs them (offset, bytes), together with `flush` ranges and
`drain` fences.  `CrashSimulator` replays the log over a copy of the image as it was
when recording started, tracking what is durable: a store is durable once a flush
issued after it covers it and a drain follows (the libpmem rule).  At every fence
(before the drain runs) it produces crash images: the durable image plus none, all,
or random subsets of the stores that are not durable yet, and torn versions of those
subsets in which only some naturally aligned 8-byte words of a store made it.

`check_crash_image` then mounts the image (journal replay), runs fsck (which must
find nothing), and compares every file whose fsync'ed content the workload's
`Oracle` vouches for at that point (including renames: old or new, never neither).
"""

from __future__ import annotations

import os
import random
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from . import format as fmt
from .errors import FsError, ImageError
from .fs import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, Filesystem
from .pmem import PmemOps, _page_down, _page_up

BS = fmt.BLOCK_SIZE
STORE, FLUSH, DRAIN = 0, 1, 2
ABSENT = None


class RecordingOps(PmemOps):
    """Applies stores and logs them with flushes and drains (no msync: a simulation)."""

    def __init__(self, base: PmemOps) -> None:
        super().__init__(base.view, base.mm, base.fd)
        self.events: list[tuple] = []

    def memcpy(self, off, data) -> None:
        super().memcpy(off, data)
        n = len(data)
        self.events.append((STORE, off, self.view[off : off + n].copy()))

    def memset(self, off, value, length) -> None:
        super().memset(off, value, length)
        self.events.append((STORE, off, self.view[off : off + length].copy()))

    def zero(self, off, length) -> None:
        # A punched hole is, for the crash model, a store of zeros plus a flush.
        self.memset(off, 0, length)
        self.flush(off, length)

    def flush(self, off, length) -> None:
        if length > 0:
            self.stats.flushes += 1
            self.events.append((FLUSH, _page_down(off), _page_up(off + length)))

    def drain(self) -> None:
        self.stats.drains += 1
        self.events.append((DRAIN,))


class BrokenOps(RecordingOps):
    """A deliberately wrong writer, for the negative controls.

    - ``no-data-flush``: flushes of the data area are dropped, so file data (and
      blocks such as directory blocks) is never made durable before the commit;
    - ``no-home-flush``: flushes of home metadata blocks (bitmaps, inode table,
      fsinfo) are dropped, so a checkpoint retires journal entries whose home
      writes were never made durable.
    """

    def __init__(self, base: PmemOps, sb: fmt.Superblock, mode: str) -> None:
        super().__init__(base)
        self.mode = mode
        self.sb = sb

    def flush(self, off, length) -> None:
        sb = self.sb
        if self.mode == "no-data-flush" and off >= sb.data_start * BS:
            return
        if self.mode == "no-home-flush":
            jlo = sb.journal_start * BS
            jhi = (sb.journal_start + sb.journal_blocks) * BS
            in_journal = jlo <= off < jhi
            if not in_journal and BS <= off < sb.data_start * BS:
                return
        super().flush(off, length)


def install_recorder(fs: Filesystem, ops: RecordingOps | None = None,
                     broken: str | None = None) -> tuple[RecordingOps, np.ndarray]:
    """Swap a mounted filesystem's PmemOps for a recorder; returns it and the durable
    base image (everything before is drained first)."""
    fs.ops.drain()
    base = np.array(fs.dev.view, copy=True)
    if ops is None:
        ops = BrokenOps(fs.ops, fs.sb, broken) if broken else RecordingOps(fs.ops)
    fs.ops = fs.dev.ops = fs.journal.ops = ops
    return ops, base


# -- the oracle ------------------------------------------------------------------------


@dataclass
class Window:
    path: str
    allowed: tuple  # contents (bytes) or ABSENT
    start: int  # event index from which the claim holds
    end: int = 1 << 62


class Oracle:
    """What must hold after a crash: after fsync(path), path has that content until the
    next change to it; after a rename of fsync'ed files, the target is old or new."""

    def __init__(self, rec: RecordingOps) -> None:
        self.rec = rec
        self.open: dict[str, Window] = {}
        self.windows: list[Window] = []

    def now(self) -> int:
        return len(self.rec.events)

    def touch(self, *paths: str) -> None:
        for p in paths:
            w = self.open.pop(p, None)
            if w is not None:
                w.end = self.now()

    def known(self, path: str) -> tuple | None:
        w = self.open.get(path)
        return w.allowed if w is not None and len(w.allowed) == 1 else None

    def vouch(self, path: str, *allowed) -> None:
        self.touch(path)
        w = Window(path, tuple(allowed), self.now())
        self.open[path] = w
        self.windows.append(w)

    def at(self, k: int) -> list[Window]:
        return [w for w in self.windows if w.start <= k < w.end]


# -- a random workload -----------------------------------------------------------------


@dataclass
class Recording:
    base: np.ndarray
    events: list[tuple]
    oracle: Oracle
    ops_done: int = 0
    trace: list[tuple[int, str, str]] = field(default_factory=list)  # (event, op, path)


def run_workload(fs: Filesystem, nops: int, seed: int, broken: str | None = None
                 ) -> Recording:
    """Random operations on `fs` under a recorder: creates, writes, fsyncs, renames,
    truncates, unlinks (also while open), xattrs, mkdir/rmdir, fallocate, links,
    symlinks.  The filesystem is left mounted (the caller decides how it ends)."""
    rec, base = install_recorder(fs, broken=broken)
    orc = Oracle(rec)
    rng = random.Random(seed)
    dirs = {"": fmt.ROOT_INO}
    files: dict[str, bytearray] = {}  # path -> current content
    ino_of: dict[str, int] = {}
    # Names created but possibly not durable: a rename onto them has no known old state.
    fresh = 0

    def split(path: str) -> tuple[int, bytes]:
        d, _, name = path.rpartition("/")
        return dirs[d], name.encode()

    def names_of(ino: int) -> list[str]:
        return [p for p, i in ino_of.items() if i == ino]

    former: dict[int, set[str]] = {}  # names an inode had (rename sources)

    def modified(path: str) -> None:
        ino = ino_of[path]
        orc.touch(*names_of(ino), *former.get(ino, ()))

    def newname(d: str) -> str:
        nonlocal fresh
        fresh += 1
        return f"{d}/f{fresh}" if d else f"f{fresh}"

    done = 0
    trace: list[tuple[int, str, str]] = []
    for _ in range(nops):
        op = rng.choices(
            ["create", "write", "append", "fsync", "rename", "truncate", "unlink",
             "unlink_open", "xattr", "mkdir", "rmdir", "falloc", "link", "symlink",
             "commit", "sparse", "checkpoint"],
            [10, 8, 8, 12, 6, 4, 3, 2, 3, 2, 1, 3, 2, 1, 2, 2, 1])[0]
        paths = sorted(files)
        trace.append((orc.now(), op, ""))
        p = src = dst = ""
        try:
            if op == "create" or not paths:
                d = rng.choice(sorted(dirs))
                p = newname(d)
                par, name = split(p)
                node = fs.mknod(par, name, stat.S_IFREG | 0o644, 0, 0, 0)
                data = rng.randbytes(rng.choice([0, 100, 4096, 5000, 20000]))
                if data:
                    fs.write(node.ino, 0, data)
                files[p] = bytearray(data)
                ino_of[p] = node.ino
                if rng.random() < 0.6:
                    fs.fsync(node.ino)
                    orc.vouch(p, bytes(data))
            elif op in ("write", "append", "sparse"):
                p = rng.choice(paths)
                ino = ino_of[p]
                cur = files[p]
                if op == "append":
                    off = len(cur)
                elif op == "sparse":
                    off = len(cur) + rng.randrange(1, 6) * BS
                else:
                    off = rng.randrange(0, len(cur) + 1)
                data = rng.randbytes(rng.choice([1, 10, 3000, 4096, 9000]))
                modified(p)
                fs.write(ino, off, data)
                if off > len(cur):
                    cur.extend(bytes(off - len(cur)))
                cur[off : off + len(data)] = data
                for q in names_of(ino):
                    files[q] = cur
            elif op == "fsync":
                p = rng.choice(paths)
                fs.fsync(ino_of[p], datasync=rng.random() < 0.3)
                if len(names_of(ino_of[p])) == 1:
                    orc.vouch(p, bytes(files[p]))
            elif op == "rename":
                src = rng.choice(paths)
                if len(names_of(ino_of[src])) != 1:
                    continue
                if rng.random() < 0.5 and len(paths) > 1:
                    dst = rng.choice([q for q in paths if q != src])
                    if len(names_of(ino_of[dst])) != 1:
                        continue
                else:
                    dst = newname(rng.choice(sorted(dirs)))
                new = orc.known(src)
                old = orc.known(dst) if dst in files else (ABSENT,)
                orc.touch(src, dst)
                if new is not None and old is not None:
                    orc.vouch(dst, old[0], new[0])
                    orc.vouch(src, new[0], ABSENT)
                sp, sn = split(src)
                dp, dn = split(dst)
                fs.rename(sp, sn, dp, dn)
                if dst in files:
                    del files[dst], ino_of[dst]
                files[dst] = files.pop(src)
                ino_of[dst] = ino_of.pop(src)
                former.setdefault(ino_of[dst], set()).add(src)
            elif op == "truncate":
                p = rng.choice(paths)
                cur = files[p]
                size = rng.choice([0, len(cur) // 2, len(cur) + 7000, 4096])
                modified(p)
                fs.setattr(ino_of[p], size=size)
                if size < len(cur):
                    del cur[size:]
                else:
                    cur.extend(bytes(size - len(cur)))
            elif op in ("unlink", "unlink_open"):
                p = rng.choice(paths)
                ino = ino_of[p]
                modified(p)
                par, name = split(p)
                if op == "unlink_open":
                    fs.open(ino)
                    fs.get(ino).lookups += 1
                fs.unlink(par, name)
                del files[p], ino_of[p]
                if op == "unlink_open":
                    if rng.random() < 0.5:
                        fs.commit()  # the orphan reaches media
                    fs.release(ino)
                    fs.forget(ino, 1)
            elif op == "xattr":
                p = rng.choice(paths)
                ino = ino_of[p]
                name = f"user.k{rng.randrange(4)}".encode()
                if rng.random() < 0.25:
                    try:
                        fs.removexattr(ino, name)
                    except FsError:
                        pass
                else:
                    fs.setxattr(ino, name, rng.randbytes(rng.choice([3, 500, 3000])))
            elif op == "mkdir":
                name = f"d{rng.randrange(1000)}"
                if name in dirs or len(dirs) > 6:
                    continue
                node = fs.mkdir(fmt.ROOT_INO, name.encode(), 0o755, 0, 0)
                dirs[name] = node.ino
            elif op == "rmdir":
                empty = [d for d in dirs if d and not any(
                    p.startswith(d + "/") for p in files)]
                if not empty:
                    continue
                d = rng.choice(empty)
                fs.rmdir(fmt.ROOT_INO, d.encode())
                del dirs[d]
            elif op == "falloc":
                p = rng.choice(paths)
                ino = ino_of[p]
                cur = files[p]
                mode = rng.choice([0, FALLOC_FL_KEEP_SIZE,
                                   FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                   FALLOC_FL_ZERO_RANGE])
                off = rng.randrange(0, len(cur) + BS)
                length = rng.choice([100, BS, 3 * BS + 5])
                modified(p)
                fs.fallocate(ino, mode, off, length)
                end = off + length
                if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
                    lo, hi = min(off, len(cur)), min(end, len(cur))
                    cur[lo:hi] = bytes(hi - lo)
                if not mode & FALLOC_FL_KEEP_SIZE and end > len(cur):
                    cur.extend(bytes(end - len(cur)))
            elif op == "link":
                p = rng.choice(paths)
                q = newname(rng.choice(sorted(dirs)))
                modified(p)
                par, name = split(q)
                fs.link(ino_of[p], par, name)
                files[q] = files[p]
                ino_of[q] = ino_of[p]
            elif op == "symlink":
                name = f"s{rng.randrange(10**6)}".encode()
                fs.symlink(fmt.ROOT_INO, name, b"t" * rng.choice([5, 200, 3000]), 0, 0)
            elif op == "commit":
                fs.commit()
            elif op == "checkpoint":
                fs.commit()
                fs.journal.checkpoint()
            trace[-1] = (trace[-1][0], op, " ".join(x for x in (p, src, dst) if x))
            done += 1
        except FsError as e:
            if e.errno not in (28, 17):  # ENOSPC, EEXIST are part of the game
                raise
    orc.touch(*list(orc.open))  # nothing is vouched for after the end of the log
    for w in orc.windows:
        w.end = min(w.end, len(rec.events) + 1)
    return Recording(base, rec.events, orc, done, trace)


# -- the simulator -----------------------------------------------------------------------


def _clip(piece: tuple[int, int, np.ndarray], a: int, b: int
          ) -> tuple[list[tuple[int, int, np.ndarray]], tuple[int, int, np.ndarray] | None]:
    """Split a store piece (seq, off, data) by [a, b): (outside pieces, inside piece)."""
    seq, off, data = piece
    end = off + len(data)
    if end <= a or off >= b:
        return [piece], None
    out = []
    if off < a:
        out.append((seq, off, data[: a - off]))
    if end > b:
        out.append((seq, b, data[b - off :]))
    lo, hi = max(off, a), min(end, b)
    return out, (seq, lo, data[lo - off : hi - off])


@dataclass
class CrashState:
    fence: int  # event index of the drain the power was cut before
    label: str
    image: np.ndarray


class CrashSimulator:
    """Replays a recording; `states()` yields crash images at every fence."""

    def __init__(self, rec: Recording, seed: int = 0, random_subsets: int = 2,
                 torn: int = 2) -> None:
        self.rec = rec
        self.rng = np.random.default_rng(seed)
        self.random_subsets = random_subsets
        self.torn = torn

    def states(self, every: int = 1) -> Iterator[CrashState]:
        dur = self.rec.base.copy()
        pending: list[tuple[int, int, np.ndarray]] = []  # not flushed
        flushed: list[tuple[int, int, np.ndarray]] = []  # flushed, not drained
        fence_no = 0
        events = self.rec.events
        for k, ev in enumerate(events + [(DRAIN,)]):
            kind = ev[0]
            if kind == STORE:
                pending.append((k, ev[1], ev[2]))
            elif kind == FLUSH:
                a, b = ev[1], ev[2]
                keep = []
                for p in pending:
                    outside, inside = _clip(p, a, b)
                    keep.extend(outside)
                    if inside is not None:
                        flushed.append(inside)
                pending = keep
            else:
                if fence_no % every == 0 or k == len(events):
                    yield from self._crash_images(k, dur, pending + flushed)
                fence_no += 1
                flushed.sort(key=lambda p: p[0])
                for _seq, off, data in flushed:
                    dur[off : off + len(data)] = data
                # Older unflushed stores under durable newer ones cannot come back.
                if flushed and pending:
                    keep = pending
                    for seq, off, data in flushed:
                        nxt = []
                        for p in keep:
                            if p[0] < seq:
                                outside, _ = _clip(p, off, off + len(data))
                                nxt.extend(outside)
                            else:
                                nxt.append(p)
                        keep = nxt
                    pending = keep
                flushed = []

    def _crash_images(self, k: int, dur: np.ndarray,
                      volatile: list[tuple[int, int, np.ndarray]]) -> Iterator[CrashState]:
        volatile = sorted(volatile, key=lambda p: p[0])
        yield CrashState(k, "none", dur)
        if not volatile:
            return
        img = dur.copy()
        for _s, off, data in volatile:
            img[off : off + len(data)] = data
        yield CrashState(k, "all", img)
        n = len(volatile)
        for i in range(self.random_subsets + self.torn):
            torn = i >= self.random_subsets
            mask = self.rng.random(n) < 0.5
            img = dur.copy()
            for (_s, off, data), take in zip(volatile, mask, strict=True):
                if not take:
                    continue
                if torn and len(data) > 8:
                    # Only aligned 8-byte words are atomic: keep a random subset of them.
                    words = (np.arange(off, off + len(data)) >> 3)
                    first = off >> 3
                    keepw = self.rng.random(words[-1] - first + 1) < 0.5
                    sel = keepw[words - first]
                    seg = img[off : off + len(data)]
                    seg[sel] = data[sel]
                else:
                    img[off : off + len(data)] = data
            yield CrashState(k, f"torn{i}" if torn else f"subset{i}", img)


# -- checking a crash image --------------------------------------------------------------


def _read_path(fs: Filesystem, path: str) -> bytes | None:
    ino = fmt.ROOT_INO
    for part in path.split("/"):
        try:
            ino = fs.lookup(ino, part.encode()).ino
        except FsError:
            return ABSENT
    node = fs.get(ino)
    return bytes(fs.read(ino, 0, node.d.size)) if node.d.size else b""


def check_crash_image(image: np.ndarray, path: str, windows: list[Window]) -> list[str]:
    """Write `image` to `path`, then fsck it (must be clean), mount it, and check
    the oracle's windows.  Returns the violations (empty: fine)."""
    from .fsck import check_image

    with open(path, "wb") as f:
        f.write(memoryview(image))
    out: list[str] = []
    code, c = check_image(path)
    if code != 0:
        why = getattr(c, "error", None) or "; ".join(f.message for f in c.findings[:3])
        out.append(f"fsck exit {code}: {why}")
    try:
        fs = Filesystem.from_image(path)
    except (ImageError, FsError) as e:
        return out + [f"mount failed: {e}"]
    try:
        for w in windows:
            try:
                got = _read_path(fs, w.path)
            except (ImageError, FsError) as e:
                out.append(f"{w.path}: read failed: {e}")
                continue
            if got not in w.allowed:
                desc = "absent" if got is None else f"{len(got)} bytes"
                wants = ["absent" if a is None else f"{len(a)} bytes" for a in w.allowed]
                out.append(f"{w.path}: got {desc}, expected one of {wants}")
    finally:
        fs.close()
    return out


@dataclass
class CrashRun:
    states: int = 0
    fences: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def crash_test(workdir: str, *, seed: int = 0, nops: int = 60, max_states: int | None = None,
               broken: str | None = None, size: int = 4 << 20, every: int = 1,
               stop_after_violations: int | None = None,
               on_state: Callable[[int], None] | None = None) -> CrashRun:
    """Record a random workload on a fresh image and check every crash state."""
    from .fs import mkfs

    t0 = time.monotonic()
    img = os.path.join(workdir, f"crash-src-{seed}.img")
    tgt = os.path.join(workdir, f"crash-{os.getpid()}-{seed}.img")
    mkfs(img, size, force=True)
    fs = Filesystem.from_image(img)
    try:
        rec = run_workload(fs, nops, seed, broken=broken)
    finally:
        fs.dev.close()  # a power cut: no unmount
    run = CrashRun()
    sim = CrashSimulator(rec, seed=seed)
    last = -1
    try:
        for st in sim.states(every=every):
            if st.fence != last:
                run.fences += 1
                last = st.fence
            v = check_crash_image(st.image, tgt, rec.oracle.at(st.fence))
            run.states += 1
            if on_state:
                on_state(run.states)
            run.violations.extend(f"seed {seed} fence {st.fence} {st.label}: {x}" for x in v)
            if max_states is not None and run.states >= max_states:
                break
            if stop_after_violations is not None and len(run.violations) >= \
                    stop_after_violations:
                break
    finally:
        for p in (img, tgt):
            if os.path.exists(p):
                os.unlink(p)
    run.seconds = time.monotonic() - t0
    return run


def default_workdir() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) \
        else tempfile.gettempdir()


# -- corrupted images ----------------------------------------------------------------------


class _Timeout(Exception):
    pass


def _regions(sb: fmt.Superblock, blocks_used: list[int]) -> list[tuple[str, list[int]]]:
    return [
        ("superblock", [0]),
        ("fsinfo", [sb.fsinfo_block]),
        ("journal", list(range(sb.journal_start, sb.journal_start + 8))),
        ("block bitmap", list(range(sb.bbitmap_start, sb.bbitmap_start + sb.bbitmap_blocks))),
        ("inode bitmap", list(range(sb.ibitmap_start, sb.ibitmap_start + sb.ibitmap_blocks))),
        ("inode table", [sb.itable_start, sb.itable_start + 1]),
        ("metadata blocks", blocks_used),
    ]


def corrupt_variants(image: bytes, rng: random.Random, n: int,
                     meta_blocks: list[int]) -> Iterator[tuple[str, bytes]]:
    """`n` corrupted versions of a valid image: byte flips in every metadata region,
    plus truncation, a zeroed superblock, wrong magic, a newer version, foreign files."""
    sb = fmt.Superblock.unpack(image[:BS], len(image))
    regions = _regions(sb, meta_blocks)
    specials = [
        ("zeroed superblock", lambda b: bytes(BS) + b[BS:]),
        ("wrong magic", lambda b: b"NOTDAXFS" + b[8:]),
        ("other daxfs magic", lambda b: b"DAXFSv9\0" + b[8:]),
        ("newer version", lambda b: b[:8] + (2).to_bytes(4, "little") + b[12:]),
        ("truncated", lambda b: b[: rng.randrange(0, len(b))]),
        ("truncated to a block", lambda b: b[: rng.choice([0, 1, 100, BS - 1, BS, 2 * BS])]),
        ("random junk", lambda b: rng.randbytes(rng.choice([10, BS, 3 * BS, 1 << 20]))),
        ("text file", lambda b: b"hello world\n" * 1000),
        ("empty", lambda b: b""),
    ]
    for i in range(n):
        if i % 10 == 9:
            name, fn = specials[(i // 10) % len(specials)]
            yield name, fn(image)
            continue
        rname, blocks = regions[i % len(regions)]
        buf = bytearray(image)
        for _ in range(rng.choice([1, 1, 2, 4, 16])):
            blk = rng.choice(blocks)
            off = blk * BS + rng.randrange(BS)
            if rng.random() < 0.3:
                # A plausible value instead of noise: small integers, block numbers.
                v = rng.choice([0, 1, 2, 0xFFFFFFFF, sb.block_count, sb.block_count - 1,
                                sb.inode_count + 1, 1 << 40])
                off &= ~7
                buf[off : off + 8] = v.to_bytes(8, "little")
                if rng.random() < 0.7:  # reseal so the structure, not the crc, is tested
                    base = blk * BS
                    t = int.from_bytes(buf[base + fmt.PAYLOAD : base + fmt.PAYLOAD + 4],
                                       "little")
                    atomic = {fmt.BT_SUPER: (fmt.SB_STATE_OFF,),
                              fmt.BT_JHEADER: (fmt.JH_START_SEQ_OFF,)}.get(t, ())
                    buf[base : base + BS] = fmt.seal(bytes(buf[base : base + fmt.PAYLOAD]),
                                                     t, blk, atomic)
            else:
                buf[off] ^= 1 << rng.randrange(8)
        yield rname, bytes(buf)


def metadata_blocks_of(path: str) -> list[int]:
    """Data-area blocks holding metadata (directory, extent, xattr, symlink blocks)."""
    out = []
    with open(path, "rb") as f:
        raw = f.read()
    sb = fmt.Superblock.unpack(raw[:BS], len(raw))
    for blk in range(sb.data_start, sb.block_count):
        t = int.from_bytes(raw[blk * BS + fmt.PAYLOAD : blk * BS + fmt.PAYLOAD + 4], "little")
        if t in (fmt.BT_DIR, fmt.BT_EXTENT, fmt.BT_XATTR, fmt.BT_SYMLINK) and \
                fmt.is_valid(raw[blk * BS : (blk + 1) * BS], t, blk):
            out.append(blk)
    return out


@dataclass
class FuzzRun:
    images: int = 0
    mounted: int = 0
    refused: int = 0
    fsck_codes: dict[int, int] = field(default_factory=dict)
    repair_codes: dict[int, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0


def fuzz(src: str, workdir: str, n: int, seed: int = 0, timeout: int = 10) -> FuzzRun:
    """Mount and fsck `n` corrupted copies of the image `src`, in-process.  Each must
    work or fail with ImageError / a one-line fsck reason, within `timeout` seconds."""
    import signal
    import traceback

    from .fsck import check_image

    def alarm(_sig, _frm):
        raise _Timeout()

    t0 = time.monotonic()
    with open(src, "rb") as f:
        image = f.read()
    rng = random.Random(seed)
    run = FuzzRun()
    tgt = os.path.join(workdir, f"fuzz-{os.getpid()}-{seed}.img")
    old = signal.signal(signal.SIGALRM, alarm)
    def stage(what: str, data: bytes, name: str, fn):
        with open(tgt, "wb") as f:
            f.write(data)
        signal.alarm(timeout)
        try:
            return fn()
        except _Timeout:
            run.failures.append(f"{what}: {name} hung for {timeout}s")
        except Exception as e:
            tb = traceback.extract_tb(e.__traceback__)[-1]
            run.failures.append(f"{what}: {name} crashed: {type(e).__name__}: {e} "
                                f"at {os.path.basename(tb.filename)}:{tb.lineno}")
        finally:
            signal.alarm(0)
        return None

    def mount() -> bool:
        try:
            fs = Filesystem.from_image(tgt)
        except ImageError:
            return False
        fs.close()
        return True

    def fsck(repair: bool) -> int:
        code, c = check_image(tgt, repair=repair)
        err = getattr(c, "error", None)
        if code == 8 and (not err or "\n" in err):
            run.failures.append(f"{what}: fsck exit 8 without a one-line reason")
        if repair and code in (0, 1):
            again, c2 = check_image(tgt)
            if again != 0:
                run.failures.append(f"{what}: fsck after repair exit {again}: "
                                    + "; ".join(f.message for f in c2.findings[:3]))
            elif not mount():
                run.failures.append(f"{what}: repaired image does not mount")
        return code

    try:
        for what, data in corrupt_variants(image, rng, n, metadata_blocks_of(src)):
            run.images += 1
            ok = stage(what, data, "mount", mount)
            if ok:
                run.mounted += 1
            elif ok is False:
                run.refused += 1
            code = stage(what, data, "fsck", lambda: fsck(False))
            if code is not None:
                run.fsck_codes[code] = run.fsck_codes.get(code, 0) + 1
            code = stage(what, data, "fsck --repair", lambda: fsck(True))
            if code is not None:
                run.repair_codes[code] = run.repair_codes.get(code, 0) + 1
    finally:
        signal.signal(signal.SIGALRM, old)
        if os.path.exists(tgt):
            os.unlink(tgt)
    run.seconds = time.monotonic() - t0
    return run


# -- kill -9 cycles ----------------------------------------------------------------------


def kill_workload_main(mnt: str, log: str, seed: int) -> None:
    """Run in a child process: file operations through the mount.  Before an operation
    that may change a path it logs the contents the path may have afterwards
    ("intent"); after fsync it logs the only content it may have ("durable")."""
    import hashlib
    import json

    rng = random.Random(seed)
    logf = open(log, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)

    def h(data: bytes | str | None) -> str | None:
        return data if data is None or isinstance(data, str) else hashlib.sha1(
            data).hexdigest()

    def note(kind: str, path: str, *contents: bytes | None) -> None:
        logf.write(json.dumps([kind, path, [h(c) for c in contents]]) + "\n")
        logf.flush()
        os.fsync(logf.fileno())

    state: dict[str, bytes] = {}  # durable content of each name, as far as we know
    try:
        for name in sorted(os.listdir(mnt)):
            if name.startswith("k"):
                with open(os.path.join(mnt, name), "rb") as f:
                    state[name] = f.read()
        _kill_workload_loop(mnt, rng, seed, state, note, logf)
    except OSError:
        pass  # the daemon was killed under us


def _kill_workload_loop(mnt, rng, seed, state, note, logf) -> None:
    import json

    n = 0
    while True:
        n += 1
        op = rng.choice(["create", "create", "replace", "append", "truncate", "unlink"])
        names = sorted(state)
        if op == "create" or not names:
            name = f"k{seed}-{n}"
            data = rng.randbytes(rng.choice([10, 4096, 9000, 50000]))
            note("intent", name, None, data)
            with open(os.path.join(mnt, name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            state[name] = data
            note("durable", name, data)
        elif op == "replace":
            name = rng.choice(names)
            data = rng.randbytes(rng.choice([10, 5000, 30000]))
            tmp = os.path.join(mnt, f"tmp-{seed}-{n}")
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            note("intent", name, state[name], data)
            os.rename(tmp, os.path.join(mnt, name))
            fd = os.open(mnt, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            state[name] = data
            note("durable", name, data)
        elif op == "append":
            name = rng.choice(names)
            data = state[name] + rng.randbytes(rng.choice([1, 4096, 7000]))
            note("intent", name, state[name], data)
            # A crash may leave any prefix between the old and the new content.
            logf.write(json.dumps(["prefix", name, len(state[name]), data.hex()]) + "\n")
            with open(os.path.join(mnt, name), "ab") as f:
                f.write(data[len(state[name]):])
                f.flush()
                os.fsync(f.fileno())
            state[name] = data
            note("durable", name, data)
        elif op == "truncate":
            name = rng.choice(names)
            data = state[name][: len(state[name]) // 2]
            note("intent", name, state[name], data, "*")  # truncate is not atomic
            os.truncate(os.path.join(mnt, name), len(data))
            fd = os.open(os.path.join(mnt, name), os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            state[name] = data
            note("durable", name, data)
        else:
            name = rng.choice(names)
            note("intent", name, state[name], None)
            os.unlink(os.path.join(mnt, name))
            fd = os.open(mnt, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
            del state[name]
            note("durable", name, None)


def _is_mounted(mnt: str) -> bool:
    real = os.path.realpath(mnt)
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == real for line in f)


@dataclass
class KillRun:
    cycles: int = 0
    checked_files: int = 0
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0


def kill_cycles(workdir: str, cycles: int, seed: int = 0, size: int = 64 << 20,
                max_run: float = 1.5) -> KillRun:
    """Mount, run a workload through the mount, kill -9 the daemon at a random moment,
    clean up the dead mount, then fsck and compare the fsync'ed files."""
    import hashlib
    import json
    import signal
    import subprocess
    import sys

    from .fs import mkfs
    from .fsck import check_image

    t0 = time.monotonic()
    rng = random.Random(seed)
    base = os.path.join(workdir, f"kill-{os.getpid()}-{seed}")
    os.makedirs(base, exist_ok=True)
    img, mnt, log = (os.path.join(base, "img"), os.path.join(base, "mnt"),
                     os.path.join(base, "log"))
    os.makedirs(mnt, exist_ok=True)
    mkfs(img, size, force=True)
    open(log, "w").close()
    run = KillRun()
    env = dict(os.environ)
    try:
        for cycle in range(cycles):
            daemon = subprocess.Popen(
                [sys.executable, "-m", "daxfs", "mount", "--foreground", img, mnt],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
            deadline = time.monotonic() + 30
            while not _is_mounted(mnt):
                if daemon.poll() is not None or time.monotonic() > deadline:
                    err = daemon.stderr.read().decode() if daemon.poll() is not None else ""
                    daemon.kill()
                    daemon.wait()
                    run.violations.append(f"cycle {cycle}: mount failed: {err.strip()}")
                    return run
                time.sleep(0.02)
            wl = subprocess.Popen(
                [sys.executable, "-c", "import sys; from daxfs.crash import kill_workload_main;"
                 " kill_workload_main(sys.argv[1], sys.argv[2], int(sys.argv[3]))",
                 mnt, log, str(seed * 100000 + cycle)],
                stdout=subprocess.DEVNULL, stderr=None, env=env)
            time.sleep(rng.uniform(0.05, max_run))
            daemon.send_signal(signal.SIGKILL)
            daemon.wait()
            daemon.stderr.close()
            try:
                wl.wait(timeout=10)
            except subprocess.TimeoutExpired:
                wl.kill()
                wl.wait()
            if wl.returncode not in (0, -signal.SIGKILL):
                run.violations.append(f"cycle {cycle}: workload failed with exit "
                                      f"{wl.returncode}")
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
            run.cycles += 1
            code, c = check_image(img)
            if code != 0:
                why = getattr(c, "error", None) or "; ".join(f.message for f in c.findings[:3])
                run.violations.append(f"cycle {cycle}: fsck exit {code}: {why}")
                check_image(img, repair=True)
            # What each name may hold: the last log line for it decides.
            allowed: dict[str, list] = {}
            prefixes: dict[str, tuple[int, bytes]] = {}
            with open(log) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except ValueError:
                        continue  # the workload died mid-line
                    if rec[0] == "prefix":
                        prefixes[rec[1]] = (rec[2], bytes.fromhex(rec[3]))
                        continue
                    allowed[rec[1]] = rec[2]
                    prefixes.pop(rec[1], None)
            try:
                fs = Filesystem.from_image(img)
            except ImageError as e:
                run.violations.append(f"cycle {cycle}: mount after crash failed: {e}")
                return run
            try:
                for name, hashes in allowed.items():
                    data = _read_path(fs, name)
                    got = None if data is None else hashlib.sha1(data).hexdigest()
                    run.checked_files += 1
                    if "*" in hashes or got in hashes:
                        continue
                    if name in prefixes and data is not None:
                        lo, new = prefixes[name]
                        if lo <= len(data) <= len(new) and new[: len(data)] == data:
                            continue
                    run.violations.append(f"cycle {cycle}: {name}: content {got} not in "
                                          f"{hashes}")
                # Settle every name on what is there now, for the next cycle's workload.
                with open(log, "w") as f:
                    for name in sorted(allowed):
                        data = _read_path(fs, name)
                        if data is not None:
                            f.write(json.dumps(["durable", name,
                                                [hashlib.sha1(data).hexdigest()]]) + "\n")
                for name, _ino, _c in list(fs.readdir(fmt.ROOT_INO, 0)):
                    if name.startswith(b"tmp-"):
                        fs.unlink(fmt.ROOT_INO, name)
            finally:
                fs.close()
    finally:
        if _is_mounted(mnt):
            subprocess.run(["fusermount3", "-u", "-z", mnt], capture_output=True)
        import shutil

        shutil.rmtree(base, ignore_errors=True)
    run.seconds = time.monotonic() - t0
    return run
