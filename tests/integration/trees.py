"""A deterministic tree with every kind of thing a filesystem must keep:
small and large files, sparse files, xattrs, hard links, symlinks (short,
long, dangling), fifos, device nodes, sockets, deep nesting, odd modes,
owners and nanosecond mtimes."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

from .util import pattern, write_file

MIB = 1 << 20
GIB = 1 << 30
GROUP = 4242


def build_tree(
    root: Path,
    *,
    seed: int = 0,
    n_small: int = 1000,
    big_sizes: tuple[int, ...] = (3 * MIB + 1, 4 * MIB, 5 * MIB - 7),
    sparse_unit: int = GIB,
    devices: bool = True,
    sockets: bool = True,
    owners: bool = True,
) -> int:
    """Populate root (which must exist); return the number of non-directories.

    The sparse file is 4 * sparse_unit long with data at 0, sparse_unit and
    3 * sparse_unit (0 leaves sparse files out).
    """
    rng = random.Random(seed)
    count = 0
    dirs = []
    for a in range(10):
        for b in range(5):
            d = root / f"dir{a}" / f"sub{b}"
            d.mkdir(parents=True, exist_ok=True)
            dirs.append(d)
    (root / "empty-dir").mkdir()

    files = []
    for i in range(n_small):
        p = dirs[i % len(dirs)] / f"file{i:04d}"
        size = rng.choice([0, 1, 100, 4095, 4096, 4097, 8192, rng.randrange(0, 20000)])
        write_file(p, rng.randbytes(size))
        files.append(p)
    count += len(files)
    for k, size in enumerate(big_sizes):
        write_file(root / f"large{k}", pattern(size, seed=seed * 100 + k))
        count += 1
    if sparse_unit:
        fd = os.open(root / "sparse", os.O_CREAT | os.O_WRONLY, 0o644)
        try:
            os.pwrite(fd, b"head", 0)
            os.pwrite(fd, pattern(8192, seed=seed + 7), sparse_unit)
            os.pwrite(fd, b"tail", 3 * sparse_unit)
            os.ftruncate(fd, 4 * sparse_unit)
        finally:
            os.close(fd)
        write_file(root / "all-hole", b"")
        os.truncate(root / "all-hole", sparse_unit // 8 + 12345)
        count += 2

    for p in rng.sample(files, 50):
        os.setxattr(p, "user.small", rng.randbytes(rng.randrange(1, 100)))
        os.setxattr(p, "user.empty", b"")
        if rng.random() < 0.3:
            os.setxattr(p, "user.big", pattern(3000, seed=rng.randrange(1000)))
    os.setxattr(dirs[0], "user.dir", b"on a directory")
    os.setxattr(root / "large1", "user.on-large", b"x" * 200)

    if big_sizes:
        os.link(root / "large0", dirs[3] / "large0-link1")
        os.link(root / "large0", dirs[7] / "large0-link2")
        count += 2
    for p in rng.sample(files, 20):
        os.link(p, p.with_name(p.name + ".hl"))
        count += 1

    links = {
        root / "rel-link": "dir0/sub0/file0000",
        dirs[12] / "up-link": "../../large1",
        root / "dangling": "no/such/target",
        root / "long-link": "L" * 3000,
        root / "dir-link": "dir5",
        root / "abs-link": "/etc/hostname",
    }
    for p, target in links.items():
        os.symlink(target, p)
    count += len(links)

    if devices:
        os.mkfifo(root / "fifo", 0o640)
        os.mknod(root / "chr", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        os.mknod(root / "blk", stat.S_IFBLK | 0o660, os.makedev(7, 5))
        count += 3
    if sockets:
        os.mknod(root / "sock", stat.S_IFSOCK | 0o755)
        count += 1

    deep = root
    for i in range(30):
        deep = deep / f"deep{i:02d}"
        deep.mkdir()
    write_file(deep / "leaf", b"deep leaf")
    count += 1

    # owners first: chown clears set-id bits
    modes = [0o644, 0o600, 0o755, 0o444, 0o640, 0o4755, 0o2711, 0o000, 0o1644, 0o777]
    for p in files:
        if owners and rng.random() < 0.3:
            os.chown(p, rng.randrange(1, 70000), rng.randrange(1, 70000))
        os.chmod(p, rng.choice(modes))
    if owners:
        os.lchown(root / "rel-link", 1234, 4321)
        os.chown(dirs[2], 0, GROUP)
    os.chmod(dirs[1], 0o1777)
    os.chmod(dirs[2], 0o2755)
    os.chmod(dirs[4], 0o700)

    # mtimes (ns) last, directories bottom-up
    for p in files + [root / f"large{k}" for k in range(len(big_sizes))]:
        os.utime(p, ns=(rng.randrange(0, 2**62), rng.randrange(0, 2**61)))
    for p in links:
        os.utime(p, ns=(123_456_789, rng.randrange(0, 2**60)), follow_symlinks=False)
    for dirpath, _, _ in sorted(os.walk(root), key=lambda t: -t[0].count(os.sep)):
        os.utime(dirpath, ns=(1, rng.randrange(0, 2**60)))
    return count
