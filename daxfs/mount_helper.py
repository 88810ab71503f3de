"""`mount.fuse.daxfs`: lets `mount -t fuse.daxfs IMAGE MNT -o OPTS` and fstab work.

mount(8) runs `/sbin/mount.fuse.daxfs IMAGE MNT [-n] [-s] [-f] [-v] [-o OPTS]`;
this turns that into `daxfs mount -o OPTS IMAGE MNT` (daemonized).
"""

from __future__ import annotations

import sys

from .cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    positional: list[str] = []
    opts: list[str] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-o" and i + 1 < len(args):
            opts.append(args[i + 1])
            i += 2
            continue
        if a.startswith("-o") and len(a) > 2:
            opts.append(a[2:])
        elif a in ("-n", "-s", "-f", "-v", "-r", "-w"):
            if a == "-r":
                opts.append("ro")
        elif a.startswith("-"):
            print(f"mount.fuse.daxfs: unknown flag {a}", file=sys.stderr)
            return 1
        else:
            positional.append(a)
        i += 1
    if len(positional) != 2:
        print("usage: mount.fuse.daxfs IMAGE MOUNTPOINT [-o OPTIONS]", file=sys.stderr)
        return 1
    image, mnt = positional
    cmd = ["mount"]
    if opts:
        cmd += ["-o", ",".join(opts)]
    return cli_main(cmd + [image, mnt])


def entry() -> None:
    sys.exit(main())
