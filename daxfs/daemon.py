"""The mount daemon: open the image, mount it with pyfuse3, serve until unmounted.

Layering: daemon -> fuse_ops (pyfuse3) -> fs -> journal/alloc/format -> pmem.  The
native FUSE extension (fallocate, lseek, INIT flags) must be loaded before pyfuse3,
which is why pyfuse3-importing modules are imported inside `serve()`.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from . import runtime
from .errors import ImageError
from .fs import Filesystem, MountOptions

log = logging.getLogger("daxfs")

# Options passed through to libfuse / the kernel.
_FUSE_PASSTHROUGH = {"allow_other", "allow_root", "ro", "noatime", "nodev", "nosuid",
                     "noexec", "dev", "suid", "exec", "rw", "sync", "dirsync"}
# Options mount(8) and fstab use that mean nothing to a FUSE daemon.
_IGNORED = {"defaults", "auto", "noauto", "user", "users", "nouser", "_netdev", "nofail",
            "relatime", "strictatime", "lazytime", "x-systemd.automount", "owner", "group"}


class OptionError(ValueError):
    pass


@dataclass
class DaemonOptions:
    dax: str = "always"
    readonly: bool = False
    alloc_policy: str | None = None
    commit_interval: float = 5.0
    lease_break_time: float = 45.0
    unsafe_free_pinned: bool = False
    fast_threads: int = 2
    fuse: list[str] = field(default_factory=list)


def parse_options(opts: str | None) -> DaemonOptions:
    out = DaemonOptions()
    if not opts:
        return out
    for item in opts.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, val = item.partition("=")
        if key == "dax":
            if val not in ("always", "never", "inode"):
                raise OptionError(f"dax={val}: expected always, never or inode")
            out.dax = "never" if val == "never" else "always"
        elif key in ("alloc", "alloc_policy"):
            if val not in ("first-fit", "reuse-first"):
                raise OptionError(f"{key}={val}: expected first-fit or reuse-first")
            out.alloc_policy = val
        elif key == "commit":
            try:
                out.commit_interval = float(val)
            except ValueError:
                raise OptionError(f"commit={val}: expected seconds")
            if out.commit_interval <= 0:
                raise OptionError("commit= must be positive")
        elif key == "lease_break_time":
            try:
                out.lease_break_time = float(val)
            except ValueError:
                raise OptionError(f"lease_break_time={val}: expected seconds")
        elif key == "fast_threads":
            try:
                out.fast_threads = int(val)
            except ValueError:
                raise OptionError(f"fast_threads={val}: expected a number of threads")
            if not 0 <= out.fast_threads <= 16:
                raise OptionError("fast_threads= must be 0..16")
        elif key == "unsafe_free_pinned":
            out.unsafe_free_pinned = True
        elif key == "ro":
            out.readonly = True
            out.fuse.append("ro")
        elif key == "rw":
            out.readonly = False
        elif key in _FUSE_PASSTHROUGH and not val:
            out.fuse.append(key)
        elif key in _IGNORED or key.startswith("x-") or key.startswith("comment="):
            continue
        else:
            raise OptionError(f"unknown mount option {item!r}")
    return out


def _setup_logging(logfile: str | None, debug: bool) -> None:
    handler: logging.Handler
    handler = logging.FileHandler(logfile) if logfile else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s.%(msecs)03d %(process)d %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)


def serve(image: str, mountpoint: str, opts: DaemonOptions, *, ready_fd: int | None = None,
          logfile: str | None = None) -> int:
    """Mount and serve in this process; returns the exit status.

    `ready_fd`: a pipe to the parent of a daemonizing mount: "OK\\n" once mounted, or
    the one-line reason it failed.
    """

    def report(msg: str) -> None:
        if ready_fd is not None:
            try:
                os.write(ready_fd, msg.encode() + b"\n")
                os.close(ready_fd)
            except OSError:
                pass

    try:
        from . import fuse_ext

        fuse_ext.install()
        fuse_ext.configure(direct_io_allow_mmap=True)
        have_ext = True
    except ImportError as e:
        log.warning("native FUSE extension unavailable (%s): no fallocate/lseek", e)
        have_ext = False

    import pyfuse3
    import trio

    from .fuse_ops import ATTR_TIMEOUT, ExtOperations, Operations

    if not os.path.isdir(mountpoint):
        report(f"mountpoint {mountpoint} is not a directory")
        return 1
    # Resolve once, before mounting: once the mount is live, resolving it from this
    # process would send a request to ourselves before the loop serves it (deadlock).
    mountpoint = os.path.realpath(mountpoint)
    if runtime.is_mounted(mountpoint, resolved=True):
        report(f"{mountpoint} is already a mountpoint")
        return 1
    try:
        fs = Filesystem.from_image(image, MountOptions(
            readonly=opts.readonly, alloc_policy=opts.alloc_policy,
            commit_interval=opts.commit_interval))
    except ImageError as e:
        report(str(e))
        log.error("cannot mount %s: %s", image, e)
        return 1
    from .control import ControlServer
    from .leases import LayoutManager
    from .native import Core
    from .pages import CoreHooks

    core = Core(fs.dev.base_address, fs.sb.block_count, dma_threads=2)
    fs.attach_hooks(CoreHooks(core))
    ops = Operations(fs, dax_always=opts.dax == "always")
    layouts = LayoutManager(fs, core, unsafe=opts.unsafe_free_pinned,
                            lease_break_time=opts.lease_break_time,
                            dax_always=opts.dax == "always")
    ops.layouts = layouts
    ext_ops = ExtOperations(fs)
    ext_ops.layouts = layouts
    control = ControlServer(fs, core, layouts, str(runtime.socket_path(mountpoint, resolved=True)),
                            dax_always=opts.dax == "always")
    try:
        control.bind()  # before "OK": clients may connect as soon as mount returns
    except OSError as e:
        fs.close()
        core.close()
        report(f"cannot create the control socket: {e}")
        return 1
    if have_ext:
        # C threads serve reads, in-place overwrites and GETATTR of inodes whose
        # attributes the filesystem published; pyfuse3 the rest.
        fuse_ext.configure_fast(core, opts.fast_threads, attr_timeout=ATTR_TIMEOUT)
        # ... and record FORGET / RELEASE for ops to apply in bulk (catch_up).
        fuse_ext.set_defer(True)
        ops.deferred = (fuse_ext.deferred_pending, fuse_ext.take_deferred)
        ext_ops.catch_up = ops.catch_up
    fuse_options = set(pyfuse3.default_options)
    fuse_options |= {f"fsname={os.path.abspath(image)}", "subtype=daxfs", *opts.fuse}
    try:
        pyfuse3.init(ops, mountpoint, fuse_options)
    except RuntimeError as e:
        fs.close()
        report(f"cannot mount on {mountpoint}: {e}")
        return 1
    runtime.write_info(mountpoint, {
        "pid": os.getpid(), "image": os.path.abspath(image),
        "mountpoint": mountpoint, "log": logfile, "dax": opts.dax,
        "socket": str(runtime.socket_path(mountpoint, resolved=True)),
    }, resolved=True)
    log.info("mounted %s on %s (dax=%s, alloc=%s, fast_threads=%d)", image, mountpoint,
             opts.dax, fs.balloc.policy,
             fuse_ext.info()["reader_threads"] if have_ext else 0)
    report("OK")

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_signals, nursery)
            nursery.start_soon(_commit_timer, fs, ops.catch_up, opts.commit_interval)
            await nursery.start(layouts.run)
            await nursery.start(control.serve)
            if have_ext:
                nursery.start_soon(fuse_ext.serve, ext_ops)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    async def _signals(nursery: trio.Nursery) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                log.info("signal %d: unmounting", sig)
                _lazy_unmount(mountpoint)
                pyfuse3.terminate()

    status = 0
    try:
        trio.run(main)
    except BaseException:
        log.exception("daemon failed")
        status = 1
    finally:
        try:
            pyfuse3.close(unmount=runtime.is_mounted(mountpoint, resolved=True))
        except Exception:
            log.exception("pyfuse3.close")
        try:
            if have_ext:
                fuse_ext.stop_fast()  # no reader may touch the core once it is gone
                ops.catch_up()  # the last releases and forgets the readers recorded
            core.dma.shutdown()  # no DMA may touch the mapping once it is gone
            fs.close()
            core.close()
            log.info("unmounted; image %s is clean", image)
        except Exception:
            log.exception("closing the filesystem failed")
            status = 1
        runtime.remove_info(mountpoint, resolved=True)
    return status


async def _commit_timer(fs: Filesystem, catch_up: Callable[[], None],
                        interval: float) -> None:
    import trio

    while True:
        await trio.sleep(interval)  # periodic commit, like ext4's commit=5; not a poll
        catch_up()  # what the C readers left (deferred releases, fast-path times)
        if fs.dirty or fs.data_dirty or fs.dirty_dirs or fs.dirty_ext or fs.dirty_xattr:
            fs.commit()


def _lazy_unmount(mountpoint: str) -> None:
    import subprocess

    subprocess.run(["fusermount3", "-u", "-z", mountpoint], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def daemonize_and_serve(image: str, mountpoint: str, opts: DaemonOptions,
                        logfile: str) -> int:
    """Fork; the child mounts and serves, the parent returns once the mount is live."""
    r, w = os.pipe()
    pid = os.fork()
    if pid:
        os.close(w)
        with os.fdopen(r, "rb") as f:
            msg = f.readline().decode().strip()
        if msg == "OK":
            return 0
        _, status = os.waitpid(pid, 0)
        print(f"daxfs: mount failed: {msg or 'daemon exited (see ' + logfile + ')'}",
              file=sys.stderr)
        return 1
    os.close(r)
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    os.makedirs(os.path.dirname(logfile), exist_ok=True)
    logfd = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(devnull, 0)
    os.dup2(logfd, 1)
    os.dup2(logfd, 2)
    os.close(devnull)
    os.close(logfd)
    _setup_logging(logfile, False)
    try:
        code = serve(image, mountpoint, opts, ready_fd=w, logfile=logfile)
    except BaseException:
        log.exception("daemon crashed")
        code = 1
    os._exit(code)
