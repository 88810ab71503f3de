"""`daxfs` command line: mkfs, mount, umount, status (and more as layers land).

Every failure a user can cause ends in one line on stderr and a non-zero exit,
never a traceback.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys

from . import runtime
from .errors import ImageError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    t = text.strip().lower().removesuffix("ib").removesuffix("b") or "0"
    unit = t[-1] if t[-1] in _UNITS else ""
    num = t[: -1] if unit else t
    try:
        value = float(num) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid size {text!r} (e.g. 512M, 1G)")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


def _die(msg: str, code: int = 1) -> int:
    print(f"daxfs: {msg}", file=sys.stderr)
    return code


def cmd_mkfs(args: argparse.Namespace) -> int:
    from .fs import mkfs

    try:
        sb = mkfs(args.image, args.size, force=args.force, alloc_policy=args.alloc_policy,
                  inodes=args.inodes)
    except (ImageError, OSError, ValueError) as e:
        return _die(str(e))
    if not args.quiet:
        size = sb.block_count * 4096
        print(f"daxfs: created {args.image}: {size / (1 << 20):.0f} MiB, "
              f"{sb.block_count} blocks of 4096, {sb.inode_count} inodes, "
              f"journal {sb.journal_blocks} blocks, allocator "
              f"{args.alloc_policy}")
    return 0


def cmd_mount(args: argparse.Namespace) -> int:
    from .daemon import DaemonOptions, OptionError, daemonize_and_serve, parse_options, serve
    from .daemon import _setup_logging as setup_logging

    if args.mountpoint is None:
        image, mountpoint = None, args.image
    else:
        image, mountpoint = args.image, args.mountpoint
    try:
        opts: DaemonOptions = parse_options(",".join(args.options or []))
    except OptionError as e:
        return _die(str(e))
    if image is None:
        image = str(runtime.default_image())
        if not os.path.exists(image):
            from .fs import mkfs

            os.makedirs(os.path.dirname(image), exist_ok=True)
            try:
                mkfs(image, 1 << 30, alloc_policy=opts.alloc_policy or "first-fit")
            except (ImageError, OSError) as e:
                return _die(str(e))
            print(f"daxfs: created default image {image} (1 GiB)")
    if not os.path.exists(image):
        return _die(f"{image}: no such image file (create one with 'daxfs mkfs')")
    if not os.path.isdir(mountpoint):
        return _die(f"{mountpoint}: mountpoint is not a directory")
    if args.foreground:
        setup_logging(None, args.debug)
        return serve(image, mountpoint, opts)
    logfile = args.log or str(runtime.state_dir() / f"mount-{runtime.mount_key(mountpoint)}.log")
    code = daemonize_and_serve(image, mountpoint, opts, logfile)
    if code == 0:
        print(f"daxfs: mounted {image} on {mountpoint} (dax={opts.dax}); log: {logfile}")
    return code


def _wait_pid_exit(pid: int, timeout: float) -> bool:
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        r, _, _ = select.select([fd], [], [], timeout)
        return bool(r)
    finally:
        os.close(fd)


def cmd_umount(args: argparse.Namespace) -> int:
    mnt = args.mountpoint
    info = runtime.read_info(mnt)
    if not runtime.is_mounted(mnt):
        return _die(f"{mnt}: not mounted")
    try:
        os.sync()  # flush page-cache data (dax=never) to the daemon first
    except OSError:
        pass
    r = subprocess.run(["fusermount3", "-u", mnt], capture_output=True, text=True)
    if r.returncode != 0:
        r2 = subprocess.run(["umount", mnt], capture_output=True, text=True)
        if r2.returncode != 0:
            return _die(f"cannot unmount {mnt}: {(r.stderr or r2.stderr).strip()}")
    if info and info.get("pid") and not _wait_pid_exit(int(info["pid"]), args.timeout):
        return _die(f"daemon {info['pid']} did not exit within {args.timeout}s")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="daxfs", description="filesystem-DAX emulation over FUSE")
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("mkfs", help="create an image")
    m.add_argument("--size", type=parse_size, default=None,
                   help="image size (default 1G, or the existing file's size)")
    m.add_argument("--force", action="store_true", help="overwrite an existing daxfs image")
    m.add_argument("--alloc-policy", choices=("first-fit", "reuse-first"), default="first-fit")
    m.add_argument("--inodes", type=int, default=None, help="number of inodes")
    m.add_argument("-q", "--quiet", action="store_true")
    m.add_argument("image")
    m.set_defaults(func=cmd_mkfs)

    m = sub.add_parser("mount", help="mount an image (default image if none is given)")
    m.add_argument("-o", dest="options", action="append",
                   help="options: dax=always|never, ro, allow_other, alloc=reuse-first, ...")
    m.add_argument("-f", "--foreground", action="store_true")
    m.add_argument("-d", "--debug", action="store_true")
    m.add_argument("--log", help="log file for a background mount")
    m.add_argument("image", help="image file (omit to use the default image)")
    m.add_argument("mountpoint", nargs="?")
    m.set_defaults(func=cmd_mount)

    m = sub.add_parser("umount", help="flush, unmount and wait for the daemon")
    m.add_argument("--timeout", type=float, default=60.0)
    m.add_argument("mountpoint")
    m.set_defaults(func=cmd_umount)

    from . import cli_dax

    cli_dax.add_subcommands(sub)
    cli_dax.add_status(sub)

    from . import fsck

    fsck.add_fsck_subcommand(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130


def entry() -> None:
    sys.exit(main())

