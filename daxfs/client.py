"""Clients of a mount's control socket (docs/PROTOCOL.md): a blocking `Client`
and a trio `AsyncClient` with lease-break callbacks.

A client finds the socket from the mountpoint alone (`runtime.socket_path`), or
from any path inside the mount (`find_mount`).  Paths of files are sent relative
to the mount root.  Errors come back as `ControlError` (an OSError with the
daemon's errno and message).
"""

from __future__ import annotations

import array
import base64
import errno
import itertools
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from . import runtime, wire

MAX_MESSAGE = 8 << 20


class ControlError(OSError):
    """The daemon refused a request (errno + message)."""


_PREFERRED = {errno.EOPNOTSUPP: "EOPNOTSUPP", errno.EDEADLK: "EDEADLK",
              errno.EAGAIN: "EAGAIN"}


def errname(err: int) -> str:
    """The usual symbolic name of an errno (EOPNOTSUPP, not its alias ENOTSUP)."""
    return _PREFERRED.get(err) or errno.errorcode.get(err, str(err))


def mount_socket(mountpoint: str) -> str | None:
    """The control socket of a daxfs mount, or None.  A mount made by root keeps
    its socket in /run/daxfs, which other users look into too."""
    key = runtime.mount_key(mountpoint)
    for cand in (runtime.socket_path(mountpoint), f"/run/daxfs/{key}.sock"):
        if os.path.exists(cand):
            return str(cand)
    return None


def find_mount(path: str) -> str:
    """The daxfs mountpoint containing ``path`` (a file or the mountpoint)."""
    p = os.path.realpath(path)
    while True:
        if os.path.ismount(p) and mount_socket(p) is not None:
            return p
        parent = os.path.dirname(p)
        if parent == p:
            raise FileNotFoundError(f"{path}: not inside a daxfs mount")
        p = parent


def split_path(path: str, mountpoint: str | None = None) -> tuple[str, str]:
    """(mountpoint, path relative to its root) for a file on a mount."""
    mnt = os.path.realpath(mountpoint) if mountpoint else find_mount(os.path.dirname(
        os.path.abspath(path)) if not os.path.exists(path) else path)
    real = os.path.realpath(path)
    rel = os.path.relpath(real, mnt)
    if rel.startswith(".."):
        raise ValueError(f"{path} is not inside {mnt}")
    return mnt, "" if rel == "." else rel


def socket_for(target: str) -> str:
    if os.path.exists(target) and not os.path.isdir(target) and \
            not os.path.isfile(target):
        return target  # the socket itself
    sock = mount_socket(find_mount(target))
    assert sock is not None
    return sock


def _frame(msg: dict[str, Any]) -> bytes:
    return wire.frame(msg)


def _error(reply: dict[str, Any]) -> ControlError:
    return ControlError(int(reply.get("errno") or 5), str(reply.get("message")))


def _request_msg(op: str, rid: int, nfds: int, kw: dict[str, Any]) -> dict[str, Any]:
    msg = {"id": rid, "op": op, **{k: v for k, v in kw.items() if v is not None}}
    if nfds:
        msg["nfds"] = nfds
    return msg


def _data_field(kw: dict[str, Any]) -> None:
    data = kw.pop("data", None)
    if data is not None:
        kw["data"] = base64.b64encode(bytes(data)).decode()


class _Ops:
    """Request builders shared by both clients (``self._call`` does the I/O)."""

    def _call(self, op: str, fds: tuple[int, ...] = (), **kw: Any) -> Any:
        raise NotImplementedError

    def hello(self) -> Any:
        return self._call("hello")

    def status(self) -> Any:
        return self._call("status")

    def lease_acquire(self, path: str, offset: int, length: int, *,
                      exclusive: bool = False) -> Any:
        return self._call("lease_acquire", path=path, offset=offset, length=length,
                          exclusive=exclusive)

    def lease_release(self, lease: int) -> Any:
        return self._call("lease_release", lease=lease)

    def register(self, path: str, offset: int, length: int, *, access: str = "rw",
                 odp: bool = False) -> Any:
        return self._call("register", path=path, offset=offset, length=length,
                          access=access, odp=odp)

    def deregister(self, mr: int) -> Any:
        return self._call("deregister", mr=mr)

    def _transfer(self, op: str, target: dict[str, Any], kind: str, offset: int,
                  length: int, data: bytes | None, pattern: int | None, shm_fd: int | None,
                  shm_offset: int, delay: float) -> Any:
        """post and dma share their payload: inline data, a pattern or a shm buffer."""
        kw: dict[str, Any] = {**target, "kind": kind, "offset": offset, "length": length,
                              "pattern": pattern, "delay": delay, "data": data}
        _data_field(kw)
        fds: tuple[int, ...] = ()
        if shm_fd is not None:
            kw.update(shm=True, shm_offset=shm_offset)
            fds = (shm_fd,)
        return self._call(op, fds, **kw)

    def post(self, mr: int, kind: str, offset: int, length: int, *, data: bytes | None = None,
             pattern: int | None = None, shm_fd: int | None = None, shm_offset: int = 0,
             delay: float = 0) -> Any:
        return self._transfer("post", {"mr": mr}, kind, offset, length, data, pattern,
                              shm_fd, shm_offset, delay)

    def dma(self, path: str, kind: str, offset: int, length: int, *,
            data: bytes | None = None, pattern: int | None = None,
            shm_fd: int | None = None, shm_offset: int = 0, delay: float = 0) -> Any:
        return self._transfer("dma", {"path": path}, kind, offset, length, data, pattern,
                              shm_fd, shm_offset, delay)

    def dio(self, path: str, fd: int, offset: int, length: int, *,
            direction: str = "to_file", fd_offset: int = 0, delay: float = 0) -> Any:
        return self._call("dio", (fd,), path=path, offset=offset, length=length,
                          direction=direction, fd_offset=fd_offset, delay=delay)

    def truncate(self, path: str, size: int) -> Any:
        return self._call("truncate", path=path, size=size)

    def punch(self, path: str, offset: int, length: int, *, zero: bool = False) -> Any:
        return self._call("punch", path=path, offset=offset, length=length, zero=zero)


class Client(_Ops):
    """Blocking client.  Events (lease breaks, revocations) that arrive while a
    request waits are queued in ``events`` and passed to ``on_event``."""

    def __init__(self, target: str, on_event: Callable[[dict[str, Any]], None] | None = None,
                 *, timeout: float | None = None) -> None:
        self.path = socket_for(target)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError:
            self.sock.close()
            raise
        self.on_event = on_event
        self.events: deque[dict[str, Any]] = deque()
        self._ids = itertools.count(1)
        self._buf = bytearray()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, msg: dict[str, Any], fds: tuple[int, ...] = ()) -> None:
        data = _frame(msg)
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            n = self.sock.sendmsg([data], anc)
            data = data[n:]
        self.sock.sendall(data)

    def recv(self, timeout: float | None = -1.0) -> dict[str, Any] | None:
        """The next message; None on timeout (timeout -1: the socket's own)."""
        old = self.sock.gettimeout()
        if timeout != -1.0:
            self.sock.settimeout(timeout)
        try:
            while True:
                if len(self._buf) >= 4:
                    n = int.from_bytes(self._buf[:4], "big")
                    if len(self._buf) >= 4 + n:
                        msg = wire.loads(bytes(self._buf[4 : 4 + n]))
                        del self._buf[: 4 + n]
                        return msg
                try:
                    chunk = self.sock.recv(1 << 16)
                except TimeoutError:
                    return None
                if not chunk:
                    raise ConnectionError("daxfs daemon closed the control connection")
                self._buf += chunk
        finally:
            if timeout != -1.0:
                self.sock.settimeout(old)

    def _event(self, msg: dict[str, Any]) -> None:
        self.events.append(msg)
        if self.on_event is not None:
            self.on_event(msg)

    def wait_event(self, timeout: float | None = None) -> dict[str, Any] | None:
        """The next event (lease_break, revoked, invalidated) or None on timeout."""
        if self.events:
            return self.events.popleft()
        msg = self.recv(timeout)
        if msg is None:
            return None
        if "event" in msg:
            if self.on_event is not None:
                self.on_event(msg)
            return msg
        raise RuntimeError(f"unexpected reply {msg!r}")

    def _call(self, op: str, fds: tuple[int, ...] = (), **kw: Any) -> Any:
        rid = next(self._ids)
        self.send(_request_msg(op, rid, len(fds), kw), fds)
        while True:
            msg = self.recv()
            assert msg is not None
            if "event" in msg:
                self._event(msg)
                continue
            if msg.get("id") not in (rid, None):
                continue
            if not msg.get("ok"):
                raise _error(msg)
            return msg


class AsyncClient(_Ops):
    """trio client: requests may run concurrently; ``on_event`` (sync or async)
    is called for each event, e.g. a lease break.  Use ``async with``."""

    def __init__(self, target: str,
                 on_event: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None
                 ) -> None:
        self.path = socket_for(target)
        self.on_event = on_event
        self._ids = itertools.count(1)
        self._pending: dict[int, list[Any]] = {}
        self._send_lock = trio.Lock()
        self.sock: trio.socket.SocketType | None = None
        self._nursery: trio.Nursery | None = None
        self._cm: Any = None
        self.events: trio.MemorySendChannel[dict[str, Any]]
        self.events, self.event_stream = trio.open_memory_channel[dict[str, Any]](1024)

    async def __aenter__(self) -> AsyncClient:
        self.sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await self.sock.connect(self.path)
        self._cm = trio.open_nursery()
        self._nursery = await self._cm.__aenter__()
        self._nursery.start_soon(self._reader)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._nursery is not None and self.sock is not None
        self._nursery.cancel_scope.cancel()
        await self._cm.__aexit__(None, None, None)
        self.sock.close()

    async def _reader(self) -> None:
        assert self.sock is not None
        buf = bytearray()
        while True:
            chunk = await self.sock.recv(1 << 16)
            if not chunk:
                for slot in self._pending.values():
                    slot[1] = {"ok": False, "errno": 104, "message": "connection closed"}
                    slot[0].set()
                return
            buf += chunk
            while len(buf) >= 4:
                n = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + n:
                    break
                msg = wire.loads(bytes(buf[4 : 4 + n]))
                del buf[: 4 + n]
                if "event" in msg:
                    self.events.send_nowait(msg)
                    if self.on_event is not None:
                        r = self.on_event(msg)
                        if r is not None and self._nursery is not None:
                            self._nursery.start_soon(_await, r)
                    continue
                slot = self._pending.pop(msg.get("id"), None)
                if slot is not None:
                    slot[1] = msg
                    slot[0].set()

    async def _acall(self, op: str, fds: tuple[int, ...], kw: dict[str, Any]) -> Any:
        assert self.sock is not None
        rid = next(self._ids)
        slot: list[Any] = [trio.Event(), None]
        self._pending[rid] = slot
        data = _frame(_request_msg(op, rid, len(fds), kw))
        async with self._send_lock:
            if fds:
                anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
                n = await self.sock.sendmsg([data], anc)
                data = data[n:]
            view = memoryview(data)
            while view:
                view = view[await self.sock.send(view):]
        await slot[0].wait()
        reply = slot[1]
        if not reply.get("ok"):
            raise _error(reply)
        return reply

    def _call(self, op: str, fds: tuple[int, ...] = (), **kw: Any) -> Any:
        return self._acall(op, fds, kw)  # a coroutine: await it


async def _await(aw: Awaitable[None]) -> None:
    await aw
