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

    async def fallocate(ino, fh, mode, offset, length, interrupted) -> None
    async def lseek(ino, fh, offset, whence, interrupted) -> int
    async def copy_file_range(ino_in, fh_in, off_in, ino_out, fh_out, off_out,
                              length, flags, interrupted) -> int   # bytes copied

``interrupted`` is a :class:`trio.Event` set when the kernel sends
FUSE_INTERRUPT (the caller got a signal); see :func:`cancel_on_interrupt`.
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

_OFF_MAX = (1 << 63) - 1

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


def info() -> dict[str, int]:
    """State of the interposition and of the INIT handshake (see fuseext.h)."""
    ffi, lib = _require()
    out = ffi.new("struct fuseext_info *")
    lib.fuseext_get_info(out)
    return {name: int(getattr(out, name)) for name, _ in ffi.typeof("struct fuseext_info").fields}


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
    __slots__ = ("id", "method", "args", "length")

    def __init__(self, id: int, method: str, args: tuple[int, ...], length: int) -> None:
        self.id = id
        self.method = method
        self.args = args
        self.length = length


def _decode(lib: Any, ev: Any) -> _Request | None:
    if ev.op == lib.FUSEEXT_OP_FALLOCATE:
        return _Request(
            ev.id, "fallocate", (ev.ino, ev.fh, ev.mode, ev.offset, ev.length), ev.length
        )
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


def _reply(lib: Any, req: _Request, err: int, result: object) -> None:
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
        lib.fuseext_set_accepting(0)
        left = lib.fuseext_reply_all(errno.EIO)
        if left:
            log.debug("fuse_ext: answered %d queued requests on shutdown", left)
        _serving = False
