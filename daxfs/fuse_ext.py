"""FUSE operations and INIT flags that pyfuse3 3.5 (on libfuse 3.14) lacks.

Usage (order matters)::

    from daxfs import fuse_ext
    fuse_ext.install()                       # before ``import pyfuse3``
    fuse_ext.configure(direct_io_allow_mmap=True, max_pages=256)
    import pyfuse3
    pyfuse3.init(ops, mountpoint, options)
    async with trio.open_nursery() as nursery:
        await nursery.start(fuse_ext.serve, handler)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()

``install()`` loads the native module ``daxfs._fuseext`` with RTLD_GLOBAL so
that its ``fuse_session_new``/``fuse_session_mount``/``fuse_session_destroy``
interpose libfuse's for pyfuse3 (see native/fuseext.c).  The kernel's
FALLOCATE, LSEEK (SEEK_DATA/SEEK_HOLE) and COPY_FILE_RANGE requests are then
queued by C code and answered by :func:`serve`, which calls the handler's
``async`` methods, each request in its own trio task::

    async def fallocate(ino, fh, mode, offset, length, interrupted[, ctx=]) -> None
    async def lseek(ino, fh, offset, whence, interrupted) -> int
    async def copy_file_range(ino_in, fh_in, off_in, ino_out, fh_out, off_out,
                              length, flags, interrupted) -> int   # bytes copied
    async def setattr_size(ino, fh, fields, ctx, interrupted) -> dict

``interrupted`` is a :class:`trio.Event` set when the kernel sends
FUSE_INTERRUPT (the caller got a signal); see :func:`cancel_on_interrupt`.
``ctx`` is ``{"uid", "gid", "pid"}`` of the caller (pid: its thread id, as
pyfuse3's ``ctx.pid``); fallocate gets it only if it accepts a ``ctx``
keyword.

SETATTR is pyfuse3's, except that while serve() runs with a handler that has
``setattr_size``, those changing the size (truncate(2), ftruncate(2)) are
taken over, because pyfuse3 hides FUSE_INTERRUPT from its handlers and a
truncate may wait long (for DMA pins).  ``fh`` is None without a file handle;
``fields`` holds ``to_set`` (FUSE_SET_ATTR_* bits, see ``SET_ATTR_*`` here)
and ``st_mode``, ``st_uid``, ``st_gid``, ``st_size``, ``st_atime_ns``,
``st_mtime_ns``, ``st_ctime_ns`` as the kernel sent them (meaningful only
where ``to_set`` says so; for ``SET_ATTR_ATIME_NOW``/``MTIME_NOW`` the handler
fills in the current time itself, as pyfuse3 does).  It returns the new
attributes: ``st_ino``, ``st_mode``, ``st_nlink``, ``st_uid``, ``st_gid``,
``st_rdev``, ``st_size``, ``st_blocks``, ``st_blksize``, ``st_atime_ns``,
``st_mtime_ns``, ``st_ctime_ns`` and ``attr_timeout`` (seconds).
An ``OSError``/``pyfuse3.FUSEError`` raised by a method becomes the errno
reply; any other exception is logged and answered with EIO.  A missing method
is answered with ENOSYS, after which the kernel stops sending that operation
(fallocate then fails with EOPNOTSUPP, lseek and copy_file_range fall back to
the kernel's generic implementation).

Requests are only answered while :func:`serve` runs: those that arrive before
it starts wait for it; when it ends, outstanding ones are answered (EINTR if
interrupted, else EIO) and later ones get EIO at once.

This module must be the only importer of ``daxfs._fuseext``, and importing
``daxfs`` itself must not import pyfuse3.
"""

from __future__ import annotations

import ctypes
import errno
import importlib
import importlib.util
import inspect
import logging
import operator
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import trio

__all__ = [
    "DIRECT_IO_ALLOW_MMAP",
    "INIT_EXT",
    "MAX_PAGES",
    "SET_ATTR_ATIME",
    "SET_ATTR_ATIME_NOW",
    "SET_ATTR_CTIME",
    "SET_ATTR_GID",
    "SET_ATTR_MODE",
    "SET_ATTR_MTIME",
    "SET_ATTR_MTIME_NOW",
    "SET_ATTR_SIZE",
    "SET_ATTR_UID",
    "cancel_on_interrupt",
    "configure",
    "info",
    "install",
    "installed",
    "serve",
]

log = logging.getLogger(__name__)

_MODULE = "daxfs._fuseext"

# INIT flag bits (64-bit view: flags | flags2 << 32), for reading info().
MAX_PAGES = 1 << 22
INIT_EXT = 1 << 30
DIRECT_IO_ALLOW_MMAP = 1 << 36

# FUSE_SET_ATTR_* (libfuse's values; the C side asserts they match).
SET_ATTR_MODE = 1 << 0
SET_ATTR_UID = 1 << 1
SET_ATTR_GID = 1 << 2
SET_ATTR_SIZE = 1 << 3
SET_ATTR_ATIME = 1 << 4
SET_ATTR_MTIME = 1 << 5
SET_ATTR_ATIME_NOW = 1 << 7
SET_ATTR_MTIME_NOW = 1 << 8
SET_ATTR_CTIME = 1 << 10

_OFF_MAX = (1 << 63) - 1
# What a setattr_size handler returns: dict key -> struct fuseext_attr field.
_ATTR_FIELDS = (
    ("st_ino", "ino"),
    ("st_mode", "mode"),
    ("st_nlink", "nlink"),
    ("st_uid", "uid"),
    ("st_gid", "gid"),
    ("st_rdev", "rdev"),
    ("st_size", "size"),
    ("st_blocks", "blocks"),
    ("st_blksize", "blksize"),
    ("st_atime_ns", "atime_ns"),
    ("st_mtime_ns", "mtime_ns"),
    ("st_ctime_ns", "ctime_ns"),
)

_ffi: Any = None
_lib: Any = None
_config: dict[str, int] = {"direct_io_allow_mmap": 0, "max_pages": 0}
_serving = False
# trio.Event (identity-hashed) -> cancel scopes of cancel_on_interrupt() bodies
_interrupt_scopes: dict[trio.Event, list[trio.CancelScope]] = {}


def install() -> None:
    """Load the native module with RTLD_GLOBAL.  Must precede ``import pyfuse3``.

    Idempotent.  Raises RuntimeError if pyfuse3 is already imported (its
    libfuse symbols would already be bound) and ImportError if the extension
    is not built.
    """
    global _ffi, _lib
    if _lib is not None:
        return
    if "pyfuse3" in sys.modules:
        raise RuntimeError(
            "daxfs.fuse_ext.install() must be called before pyfuse3 is imported: "
            "pyfuse3 is already loaded, so fuse_session_new cannot be interposed"
        )
    if _MODULE in sys.modules:
        raise RuntimeError(f"{_MODULE} was imported without RTLD_GLOBAL; use fuse_ext.install()")
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or spec.origin is None:
        raise ImportError(
            f"{_MODULE} is not built; run `python native/build_fuseext.py` (or `pip install -e .`)"
        )
    # dlopen it globally first; the import below then finds the same handle
    # (already loaded), so only this file becomes global.
    ctypes.CDLL(spec.origin, mode=os.RTLD_NOW | os.RTLD_GLOBAL)
    mod = importlib.import_module(_MODULE)
    _ffi, _lib = mod.ffi, mod.lib
    _lib.fuseext_configure(_config["direct_io_allow_mmap"], _config["max_pages"])


def installed() -> bool:
    return _lib is not None


def configure(*, direct_io_allow_mmap: bool = True, max_pages: int | None = None) -> None:
    """Set what the FUSE_INIT reply asks for; effective at the next mount.

    direct_io_allow_mmap: set FUSE_DIRECT_IO_ALLOW_MMAP (protocol 7.39, kernel
        6.6+) so MAP_SHARED mmap of FOPEN_DIRECT_IO files works instead of
        failing with ENODEV.  Only sent if the kernel offers it.
    max_pages: pages per request (FUSE_MAX_PAGES, 7.28); None keeps libfuse's
        value (libfuse 3.14 derives it from max_write: 256 = 1 MiB with 4 KiB
        pages).  The kernel caps it at /proc/sys/fs/fuse/max_pages_limit
        (default 256) and writes are further capped by libfuse's max_write
        (1 MiB).  max_pages counts the user pages a direct_io request pins,
        so with 256 a 1 MiB read/write arrives in one request only from a
        page-aligned buffer; an unaligned one spans 257 pages and is split
        (1 MiB - misalignment, then the rest).  max_pages=257 together with
        ``sysctl fs.fuse.max_pages_limit>=257`` avoids that split.
        pyfuse3's own options cannot do any of this: libfuse 3.14 rejects
        ``-o max_write=``/``-o max_pages=`` in fuse_session_new(); only the
        mount option ``max_read=`` (a cap on reads) is accepted.

    Installs the native module if needed (so it too must precede pyfuse3).
    """
    if max_pages is not None:
        max_pages = operator.index(max_pages)
        if not 1 <= max_pages <= 65535:
            raise ValueError("max_pages must be in 1..65535")
    install()
    _config["direct_io_allow_mmap"] = int(bool(direct_io_allow_mmap))
    _config["max_pages"] = max_pages or 0
    _lib.fuseext_configure(_config["direct_io_allow_mmap"], _config["max_pages"])


def configure_fast(core: Any | None, threads: int = 2,
                   attr_timeout: float | None = None) -> None:
    """Serve reads and in-place overwrites from C reader threads over ``core``'s
    fast path (a `daxfs.native.Core`, None = off); effective at the next mount.

    ``threads`` readers own /dev/fuse; everything they do not serve goes on to
    pyfuse3 as before.  With ``attr_timeout`` (seconds, > 0) they also answer
    GETATTR from the attributes the filesystem published in the core, with
    that timeout.  The core must outlive the session (or `stop_fast`)."""
    install()
    if core is None or threads <= 0:
        r = _lib.fuseext_fast_configure(0, 0, 0, 0, 0, 0, 0, 0, 0)
    else:
        fns = core.fast_entry_points()
        getattr_fn, valid_ns = 0, 0
        if attr_timeout:
            getattr_fn, valid_ns = fns["daxfs_fast_getattr"], int(attr_timeout * 1e9)
        r = _lib.fuseext_fast_configure(core.address, core.base,
                                        fns["daxfs_fast_read_begin"],
                                        fns["daxfs_fast_read_end"],
                                        fns["daxfs_fast_write"],
                                        fns["daxfs_fast_nocaps"], getattr_fn, valid_ns,
                                        threads)
    if r < 0:
        raise OSError(-r, f"fuseext_fast_configure: {os.strerror(-r)}")


def stop_fast() -> None:
    """Join the reader threads now (before the core they use is freed)."""
    if _lib is not None:
        _lib.fuseext_fast_stop()


def info() -> dict[str, int]:
    """State of the interposition and of the INIT handshake (see fuseext.h)."""
    ffi, lib = _require()
    out = ffi.new("struct fuseext_info *")
    lib.fuseext_get_info(out)
    return {name: int(getattr(out, name)) for name, _ in ffi.typeof("struct fuseext_info").fields}


# FUSE opcodes by number (linux/fuse.h), for the request mix in status.
_OPCODE_NAMES = {
    1: "LOOKUP", 2: "FORGET", 3: "GETATTR", 4: "SETATTR", 5: "READLINK", 6: "SYMLINK",
    8: "MKNOD", 9: "MKDIR", 10: "UNLINK", 11: "RMDIR", 12: "RENAME", 13: "LINK",
    14: "OPEN", 15: "READ", 16: "WRITE", 17: "STATFS", 18: "RELEASE", 20: "FSYNC",
    21: "SETXATTR", 22: "GETXATTR", 23: "LISTXATTR", 24: "REMOVEXATTR", 25: "FLUSH",
    26: "INIT", 27: "OPENDIR", 28: "READDIR", 29: "RELEASEDIR", 30: "FSYNCDIR",
    31: "GETLK", 32: "SETLK", 33: "SETLKW", 34: "ACCESS", 35: "CREATE", 36: "INTERRUPT",
    37: "BMAP", 38: "DESTROY", 39: "IOCTL", 40: "POLL", 41: "NOTIFY_REPLY",
    42: "BATCH_FORGET", 43: "FALLOCATE", 44: "READDIRPLUS", 45: "RENAME2", 46: "LSEEK",
    47: "COPY_FILE_RANGE", 48: "SETUPMAPPING", 49: "REMOVEMAPPING", 50: "SYNCFS",
    51: "TMPFILE", 52: "STATX",
}


DEFERRED_FORGET = 2
DEFERRED_RELEASE = 18
DEFERRED_RELEASEDIR = 29
_TAKE_BATCH = 1024
_take_buf: Any = None


def set_defer(on: bool) -> None:
    """Let the reader threads record FORGET / RELEASE / RELEASEDIR for
    `take_deferred` instead of handing each to pyfuse3.  Whoever turns this on
    must call take_deferred before every request and periodically."""
    _require()[1].fuseext_set_defer(1 if on else 0)


def deferred_pending() -> int:
    return int(_lib.fuseext_deferred_pending()) if _lib is not None else 0


def take_deferred() -> list[tuple[int, int, int]]:
    """The recorded (opcode, inode, nlookup or fh), oldest first."""
    global _take_buf
    ffi, lib = _require()
    if _take_buf is None:
        _take_buf = ffi.new("struct fuseext_deferred[]", _TAKE_BATCH)
    out: list[tuple[int, int, int]] = []
    while lib.fuseext_deferred_pending():
        n = lib.fuseext_take_deferred(_take_buf, _TAKE_BATCH)
        out += [(d.opcode, d.nodeid, d.arg) for d in _take_buf[0:n]]
    return out


def slow_by_opcode() -> dict[str, int]:
    """Requests the C readers handed to Python, by FUSE opcode name (nonzero only)."""
    ffi, lib = _require()
    n = int(lib.FUSEEXT_OPCODES)
    out = ffi.new("uint64_t[]", n)
    n = lib.fuseext_slow_by_opcode(out, n)
    return {_OPCODE_NAMES.get(i, f"op{i}" if i else "other"): int(out[i])
            for i in range(n) if out[i]}


@contextmanager
def cancel_on_interrupt(interrupted: trio.Event) -> Iterator[trio.CancelScope]:
    """Cancel the body when the request is interrupted, then raise OSError(EINTR).

    For handler methods that want to abort on FUSE_INTERRUPT::

        with fuse_ext.cancel_on_interrupt(interrupted):
            await long_operation()

    ``interrupted`` must be the event serve() passed in (serve cancels the
    scopes registered here when it sets the event).  Exceptions from the body
    propagate unchanged; cancellation from outside is not turned into EINTR.
    """
    scope = trio.CancelScope()
    if interrupted.is_set():
        scope.cancel()
    scopes = _interrupt_scopes.setdefault(interrupted, [])
    scopes.append(scope)
    try:
        with scope:
            yield scope
    finally:
        scopes.remove(scope)
        if not scopes:
            _interrupt_scopes.pop(interrupted, None)
    if scope.cancelled_caught and interrupted.is_set():
        raise OSError(errno.EINTR, "interrupted")


def _interrupt(event: trio.Event) -> None:
    event.set()
    for scope in _interrupt_scopes.get(event, ()):
        scope.cancel()


def _require() -> tuple[Any, Any]:
    if _lib is None:
        raise RuntimeError("daxfs.fuse_ext.install() has not been called")
    return _ffi, _lib


class _Request:
    __slots__ = ("id", "method", "args", "length", "ctx")

    def __init__(
        self,
        id: int,
        method: str,
        args: tuple[Any, ...],
        length: int,
        ctx: dict[str, int] | None = None,
    ) -> None:
        self.id = id
        self.method = method
        self.args = args
        self.length = length
        self.ctx = ctx  # passed as ctx= (fallocate, if the method accepts it)


def _accepts_ctx(method: Any) -> bool:
    """Whether ``method`` takes a ``ctx`` keyword (older handlers do not)."""
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "ctx" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _decode(lib: Any, ev: Any) -> _Request | None:
    ctx = {"uid": ev.ctx_uid, "gid": ev.ctx_gid, "pid": ev.ctx_pid}
    if ev.op == lib.FUSEEXT_OP_FALLOCATE:
        return _Request(
            ev.id, "fallocate", (ev.ino, ev.fh, ev.mode, ev.offset, ev.length), ev.length, ctx
        )
    if ev.op == lib.FUSEEXT_OP_SETATTR:
        fields = {
            "to_set": ev.to_set,
            "st_mode": ev.st_mode,
            "st_uid": ev.st_uid,
            "st_gid": ev.st_gid,
            "st_size": ev.st_size,
            "st_atime_ns": ev.st_atime_ns,
            "st_mtime_ns": ev.st_mtime_ns,
            "st_ctime_ns": ev.st_ctime_ns,
        }
        fh = ev.fh if ev.has_fh else None
        return _Request(ev.id, "setattr_size", (ev.ino, fh, fields, ctx), 0)
    if ev.op == lib.FUSEEXT_OP_LSEEK:
        return _Request(ev.id, "lseek", (ev.ino, ev.fh, ev.offset, ev.whence), 0)
    if ev.op == lib.FUSEEXT_OP_COPY_FILE_RANGE:
        args = (ev.ino, ev.fh, ev.offset, ev.ino_out, ev.fh_out, ev.offset_out, ev.length, ev.flags)
        return _Request(ev.id, "copy_file_range", args, ev.length)
    return None


def _errno_of(exc: BaseException) -> int:
    """errno for an exception raised by a handler method (EIO if none)."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]  # a lone error that crossed a nursery
    pyfuse3 = sys.modules.get("pyfuse3")
    code = None
    if isinstance(exc, OSError) or (pyfuse3 is not None and isinstance(exc, pyfuse3.FUSEError)):
        code = getattr(exc, "errno", None)
    if isinstance(code, int) and 0 < code < 4096:
        return code
    log.error("fuse_ext: handler raised %r, replying EIO", exc, exc_info=exc)
    return errno.EIO


def _reply_attr(lib: Any, req: _Request, result: object) -> int:
    """fuseext_reply_attr() from a setattr_size result, or EIO if it is unusable."""
    try:
        if not isinstance(result, dict):
            raise TypeError(type(result).__name__)
        init = {field: operator.index(result[key]) for key, field in _ATTR_FIELDS}
        timeout = float(result["attr_timeout"])
        if not 0 <= timeout < float("inf"):
            raise ValueError(timeout)
        attr = _ffi.new("struct fuseext_attr *", init)
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        log.error("fuse_ext: setattr_size returned invalid %r (%r), replying EIO", result, exc)
        return lib.fuseext_reply_err(req.id, errno.EIO)
    return lib.fuseext_reply_attr(req.id, attr, timeout)


def _reply(lib: Any, req: _Request, err: int, result: object) -> None:
    if not err and req.method == "setattr_size":
        ret = _reply_attr(lib, req, result)
        if ret < 0:
            log.debug("fuse_ext: reply to %s failed: %s", req.method, os.strerror(-ret))
        return
    if not err and req.method != "fallocate":
        try:
            value = operator.index(result)  # type: ignore[arg-type]
            limit = req.length if req.method == "copy_file_range" else _OFF_MAX
            if not 0 <= value <= limit:
                raise ValueError(value)
        except (TypeError, ValueError):
            log.error("fuse_ext: %s returned invalid %r, replying EIO", req.method, result)
            err = errno.EIO
        else:
            if req.method == "lseek":
                ret = lib.fuseext_reply_lseek(req.id, value)
            else:
                ret = lib.fuseext_reply_write(req.id, value)
            if ret < 0:
                log.debug("fuse_ext: reply to %s failed: %s", req.method, os.strerror(-ret))
            return
    ret = lib.fuseext_reply_err(req.id, err)
    if ret < 0:
        log.debug("fuse_ext: reply to %s failed: %s", req.method, os.strerror(-ret))


async def _handle(
    lib: Any, handler: object, req: _Request, interrupted: trio.Event, live: dict[int, trio.Event]
) -> None:
    err = errno.EIO
    result: object = None
    try:
        method = getattr(handler, req.method, None)
        if method is None:
            err = errno.ENOSYS
        else:
            if req.method == "fallocate" and req.ctx is not None and _accepts_ctx(method):
                result = await method(*req.args, interrupted, ctx=req.ctx)
            else:
                result = await method(*req.args, interrupted)
            err = 0
    except trio.Cancelled:
        err = errno.EINTR if interrupted.is_set() else errno.EIO
        raise
    except Exception as exc:
        err = _errno_of(exc)
    finally:
        # Also on BaseException: every request gets exactly one reply.
        live.pop(req.id, None)
        _reply(lib, req, err, result)


async def serve(
    handler: object, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer the extension requests with ``handler`` until cancelled."""
    global _serving
    ffi, lib = _require()
    if _serving:
        raise RuntimeError("fuse_ext.serve() is already running")
    efd = lib.fuseext_eventfd()
    if efd < 0:
        raise OSError(-efd, f"eventfd: {os.strerror(-efd)}")
    _serving = True
    live: dict[int, trio.Event] = {}
    ev = ffi.new("struct fuseext_event *")
    lib.fuseext_set_accepting(1)
    # Take size-changing setattr over from pyfuse3 only if someone answers it.
    lib.fuseext_set_setattr_size(int(callable(getattr(handler, "setattr_size", None))))
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(efd)
                try:
                    os.read(efd, 8)  # reset before draining: no lost wakeups
                except BlockingIOError:
                    pass
                while lib.fuseext_next_event(ev):
                    if ev.kind == lib.FUSEEXT_EV_INTERRUPT:
                        event = live.get(ev.id)
                        if event is not None:
                            _interrupt(event)
                        continue
                    req = _decode(lib, ev)
                    if req is None:
                        lib.fuseext_reply_err(ev.id, errno.ENOSYS)
                        continue
                    interrupted = trio.Event()
                    live[req.id] = interrupted
                    nursery.start_soon(
                        _handle,
                        lib,
                        handler,
                        req,
                        interrupted,
                        live,
                        name=f"fuse_ext.{req.method}#{req.id}",
                    )
    finally:
        # setattr back to pyfuse3 first: it can still answer, we no longer can.
        lib.fuseext_set_setattr_size(0)
        lib.fuseext_set_accepting(0)
        left = lib.fuseext_reply_all(errno.EIO)
        if left:
            log.debug("fuse_ext: answered %d queued requests on shutdown", left)
        _serving = False
