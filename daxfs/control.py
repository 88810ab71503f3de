"""The per-mount control socket: registrations (RDMA MRs), DMA, direct I/O,
layout leases and lease-break notices for clients.  A trio task in the daemon.

Layering: daemon -> control -> leases -> fs + native.Core.  Wire format in
docs/PROTOCOL.md: 4-byte big-endian length + a UTF-8 JSON object, fds by
SCM_RIGHTS.  Each request runs in its own task, so a slow transfer on one
connection delays nobody.  A client is identified by SO_PEERCRED; the file's
permission bits decide what it may pin or write.  A client that goes away has
its queued DMA cancelled, its in-flight DMA drained, then its registrations,
pins and leases dropped.
"""

from __future__ import annotations

import array
import base64
import contextlib
import errno
import logging
import os
import socket
import stat
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from . import format as fmt
from . import wire
from .client import errname
from .errors import FsError
from .leases import ALLOCATED, EXCLUSIVE, LAYOUT, LayoutManager, Registration
from .native import (
    PAGE_SIZE,
    BufferIO,
    Completion,
    Core,
    Direction,
    FdIO,
    FileTarget,
    HoleError,
    NativeError,
    PatternIO,
    PfnTarget,
    RangeBlockedError,
    ShmIO,
)

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1
MAX_MESSAGE = 8 << 20  # bytes of JSON per message
_LEN = struct.Struct(">I")  # the frame header
MAX_FDS_PER_MESSAGE = 4
FALLOC_FL_KEEP_SIZE = 0x01


@dataclass
class Limits:
    """Per-client limits (a clear EDQUOT error when exceeded)."""

    registrations: int = 64
    pinned_pages: int = 1 << 18  # 1 GiB of long-term + in-flight pins
    inflight: int = 256


class ProtocolError(Exception):
    """Malformed request arguments: an EINVAL reply; the connection stays."""


class FatalProtocolError(Exception):
    """Unparseable or oversized message: an error reply, then the connection closes."""


def _peercred(sock: socket.socket) -> tuple[int, int, int]:
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _groups(pid: int, gid: int) -> set[int]:
    out = {gid}
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Groups:"):
                out.update(int(g) for g in line.split()[1:])
    return out


def encode(msg: dict[str, Any]) -> bytes:
    return wire.frame(msg)


class Outbox:
    """A connection's queue of framed replies and events, drained by its writer.

    A list and an event rather than a memory channel: a reply is queued per
    request, and the channel's bookkeeping cost as much as the request.  Bounded
    like the channel was: a client that never reads loses messages past
    ``limit`` rather than growing the daemon without end."""

    __slots__ = ("_q", "_wake", "_limit", "closed", "dropped")

    def __init__(self, limit: int = 1024) -> None:
        self._q: list[bytes] = []
        self._wake = trio.Event()
        self._limit = limit
        self.closed = False
        self.dropped = 0

    def put(self, data: bytes) -> None:
        if self.closed:
            return
        if len(self._q) >= self._limit:
            self.dropped += 1
            return
        self._q.append(data)
        if len(self._q) == 1:
            self._wake.set()

    def close(self) -> None:
        self.closed = True
        self._wake.set()

    async def take(self) -> bytes:
        """Everything queued, as one buffer; b"" once closed and empty."""
        while not self._q:
            if self.closed:
                return b""
            self._wake = trio.Event()
            await self._wake.wait()
        q, self._q = self._q, []
        return q[0] if len(q) == 1 else b"".join(q)


@dataclass(eq=False)
class ClientConn:
    """One control connection (a lease holder)."""

    id: int
    pid: int
    uid: int
    gid: int
    groups: set[int]
    out: Outbox
    connected: float = field(default_factory=time.monotonic)
    regs: dict[int, Registration] = field(default_factory=dict)
    inflight: dict[int, Any] = field(default_factory=dict)  # DMA id -> _Slot
    pinned: int = 0  # pages: registrations + in-flight DMA
    drained: trio.Event = field(default_factory=trio.Event)
    fds: deque[int] = field(default_factory=deque)

    @property
    def name(self) -> str:
        return f"client{self.id}(pid {self.pid}, uid {self.uid})"

    def notify(self, event: dict[str, Any]) -> None:
        self.out.put(encode(event))


@dataclass(eq=False)
class _Slot:
    """One submitted DMA descriptor, until its completion is dispatched."""

    rid: int
    client: ClientConn
    ino: int
    lease: Any
    npages: int
    direction: Direction
    reg: Registration | None
    keep: Any = None  # fd to close, buffers
    event: trio.Event = field(default_factory=trio.Event)
    comp: Completion | None = None


def _fuse_info() -> dict[str, Any]:
    """The FUSE extension's counters (reader threads, fast/slow requests, the slow
    ones by opcode), if loaded."""
    from . import fuse_ext

    if not fuse_ext.installed():
        return {}
    info = fuse_ext.info()
    keys = ("reader_threads", "fast_reads", "fast_writes", "fast_getattrs", "deferred",
            "slow_requests", "requests",
            "interrupts", "init_patched", "sent_max_pages")
    return {**{k: info[k] for k in keys}, "slow_by_opcode": fuse_ext.slow_by_opcode()}


# Requests handled in the connection's reader, in order, without a task of their
# own: they do not wait for DMA or for other clients (the shared layout lock they
# may take is only held exclusively between a break's waits).
_INLINE_OPS = frozenset({"hello", "status", "register", "deregister", "lease_acquire",
                         "lease_release"})


class ControlServer:
    def __init__(self, fs: Any, core: Core, layouts: LayoutManager, path: str, *,
                 dax_always: bool = True, limits: Limits | None = None) -> None:
        self.fs = fs
        self.core = core
        self.layouts = layouts
        self.path = path
        self.dax_always = dax_always
        self.limits = limits or Limits()
        self.clients: dict[int, ClientConn] = {}
        self._slots: dict[int, _Slot] = {}
        self._next_client = 1
        self._listener: socket.socket | None = None
        self._nursery: trio.Nursery | None = None
        self.counters = {"connections": 0, "requests": 0, "errors": 0, "protocol_errors": 0,
                         "dma_submitted": 0, "dma_completed": 0, "dma_failed": 0,
                         "invalidations": 0}
        # op name -> handler, looked up once per request
        self._handlers: dict[str, Callable[..., Awaitable[dict[str, Any] | None]]] = {
            name[3:]: getattr(self, name) for name in dir(self) if name.startswith("op_")}

    def __repr__(self) -> str:
        return f"<ControlServer {self.path} clients={len(self.clients)}>"

    # ---- lifecycle

    def bind(self) -> None:
        """Create the listening socket now (before the mount is reported live)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(self.path)
        os.chmod(self.path, 0o666)  # access is decided per request (SO_PEERCRED)
        s.listen(64)
        s.setblocking(False)
        self._listener = s

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        if self._listener is None:
            self.bind()
        assert self._listener is not None
        lsock = trio.socket.from_stdlib_socket(self._listener)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._dispatch_completions)
                task_status.started()
                while True:
                    conn, _ = await lsock.accept()
                    nursery.start_soon(self._connection, conn)
        finally:
            lsock.close()
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    # ---- completions

    async def _dispatch_completions(self) -> None:
        while True:
            comp = await self.core.dma.next_completion()
            slot = self._slots.pop(comp.id, None)
            if slot is None:
                continue
            self._finish(slot, comp)

    def _finish(self, slot: _Slot, comp: Completion) -> None:
        c = slot.client
        self.counters["dma_completed"] += 1
        if not comp.ok:
            self.counters["dma_failed"] += 1
        c.inflight.pop(slot.rid, None)
        c.pinned -= slot.npages
        if slot.reg is not None:
            slot.reg.inflight -= 1
        self.layouts.remove_lease(slot.lease)
        if slot.direction == Direction.TO_PMEM and comp.nbytes:
            if slot.ino in self.fs.cache:
                self.fs.data_dirty.add(slot.ino)
            if not self.dax_always and self._nursery is not None:
                self._nursery.start_soon(self._invalidate, slot.ino)
        self.layouts.unhold(slot.ino)
        if isinstance(slot.keep, int):
            with contextlib.suppress(OSError):
                os.close(slot.keep)
        slot.keep = None
        slot.comp = comp
        slot.event.set()
        if not c.inflight:
            c.drained.set()

    async def _invalidate(self, ino: int) -> None:
        """dax=never: drop the kernel's cached pages of what DMA changed."""
        import pyfuse3

        self.counters["invalidations"] += 1
        try:
            await trio.to_thread.run_sync(pyfuse3.invalidate_inode, ino, False)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOSYS):
                log.warning("invalidate_inode(%d): %s", ino, e)

    # ---- connections

    async def _connection(self, sock: trio.socket.SocketType) -> None:
        try:
            pid, uid, gid = _peercred(sock)  # type: ignore[arg-type]
        except OSError:
            sock.close()
            return
        out = Outbox()
        c = ClientConn(self._next_client, pid, uid, gid, _groups(pid, gid), out)
        self._next_client += 1
        self.clients[c.id] = c
        self.counters["connections"] += 1
        log.info("control: %s connected", c.name)
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(self._writer, sock, out)
                async with trio.open_nursery() as reqs:
                    await self._reader(sock, c, reqs)
                    reqs.cancel_scope.cancel()
                # The writer sends what is queued (e.g. a fatal error reply), then
                # ends; a client that does not read gets 5 s.
                out.close()
                outer.cancel_scope.deadline = trio.current_time() + 5
        except (OSError, trio.BrokenResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await self._cleanup(c)
            sock.close()
            if out.dropped:
                log.warning("control: %s did not read: %d replies/events dropped", c.name,
                            out.dropped)
            log.info("control: %s disconnected", c.name)

    async def _writer(self, sock: trio.socket.SocketType, out: Outbox) -> None:
        try:
            while data := await out.take():  # a burst of replies: one send(2)
                view = memoryview(data)
                while view:
                    n = await sock.send(view)
                    view = view[n:]
        except OSError:
            pass

    async def _reader(self, sock: trio.socket.SocketType, c: ClientConn,
                      nursery: trio.Nursery) -> None:
        buf = bytearray()
        cmsg_space = socket.CMSG_SPACE(MAX_FDS_PER_MESSAGE * 4 * 4)
        while True:
            try:
                data, anc, _flags, _ = await sock.recvmsg(1 << 16, cmsg_space)
            except OSError:
                return
            for level, typ, cdata in anc:
                if level == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds = array.array("i")
                    fds.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                    c.fds.extend(fds)
            if not data:
                return
            buf += data
            pos, end = 0, len(buf)
            view = memoryview(buf)
            try:
                # A burst of pipelined requests arrives in one recv: walk it by
                # offset and cut the buffer once, not per message.
                while end - pos >= 4:
                    (n,) = _LEN.unpack_from(buf, pos)
                    if n > MAX_MESSAGE:
                        self._fatal(c, None, f"message of {n} bytes exceeds {MAX_MESSAGE}")
                        return
                    if end - pos < 4 + n:
                        break
                    try:
                        msg = wire.loads(view[pos + 4 : pos + 4 + n])
                        if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                            raise ValueError("not a JSON object with an 'op'")
                        nfds = int(msg.get("nfds", 0))
                        if nfds < 0 or nfds > len(c.fds):
                            raise ValueError(f"nfds={nfds} but {len(c.fds)} fds received")
                    except (ValueError, TypeError) as e:
                        self._fatal(c, None, f"malformed message: {e}")
                        return
                    pos += 4 + n
                    fds = [c.fds.popleft() for _ in range(nfds)] if nfds else []
                    if msg["op"] in _INLINE_OPS:
                        # Short and never waiting on a client: run in order, here.
                        # A task per request would cost more than the request.
                        await self._request(c, msg, fds)
                    else:
                        nursery.start_soon(self._request, c, msg, fds)
            finally:
                view.release()
                del buf[:pos]

    def _fatal(self, c: ClientConn, rid: Any, why: str) -> None:
        self.counters["protocol_errors"] += 1
        log.warning("control: %s: %s; closing the connection", c.name, why)
        c.notify({"id": rid, "ok": False, "errno": errno.EPROTO, "error": "EPROTO",
                  "message": why})

    async def _request(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> None:
        self.counters["requests"] += 1
        rid = msg.get("id")
        op = msg["op"]
        handler = self._handlers.get(op)
        try:
            try:
                if handler is None:
                    raise FsError(errno.EOPNOTSUPP, f"unknown op {op!r}")
                reply = await handler(c, msg, fds)
            except ProtocolError as e:
                raise FsError(errno.EINVAL, str(e)) from None
            except RangeBlockedError:
                raise FsError(errno.EAGAIN, "range is being truncated / punched (layout "
                              "break in progress): no new pins") from None
            except HoleError:
                raise FsError(errno.EFAULT, "the file range has a hole") from None
            except (KeyError, ValueError, TypeError) as e:
                raise FsError(errno.EINVAL, f"bad argument: {e}") from None
        except (FsError, OSError) as e:
            self.counters["errors"] += 1
            err = e.errno or errno.EIO
            text = e.args[1] if len(e.args) > 1 else str(e)
            c.notify({"id": rid, "ok": False, "errno": err,
                      "error": errname(err), "message": str(text)})
        except Exception as e:
            self.counters["errors"] += 1
            log.exception("control: %s failed", op)
            c.notify({"id": rid, "ok": False, "errno": errno.EIO, "error": "EIO",
                      "message": f"internal error: {e}"})
        else:
            reply = {} if reply is None else reply  # otherwise a dict of the handler's own
            reply["id"], reply["ok"] = rid, True
            c.notify(reply)
        finally:
            for fd in fds:
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    async def _cleanup(self, c: ClientConn) -> None:
        for rid in list(c.inflight):
            with contextlib.suppress(NativeError, ValueError):
                self.core.dma.cancel(rid)
        while c.inflight:
            c.drained = trio.Event()
            await c.drained.wait()
        for reg in list(c.regs.values()):
            self.layouts.drop_registration(reg)
        c.regs.clear()
        for lease in self.layouts.leases_of(c):
            self.layouts.remove_lease(lease)
        while c.fds:
            with contextlib.suppress(OSError):
                os.close(c.fds.popleft())
        self.clients.pop(c.id, None)

    # ---- helpers

    @staticmethod
    def _int(msg: dict[str, Any], key: str, default: int | None = None, *,
             minimum: int = 0) -> int:
        v = msg.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ProtocolError(f"{key}: expected an integer")
        if v < minimum:
            raise ProtocolError(f"{key}={v}: must be >= {minimum}")
        return v

    def _range(self, msg: dict[str, Any]) -> tuple[int, int]:
        off = self._int(msg, "offset")
        length = self._int(msg, "length", minimum=1)
        if off + length > fmt.MAX_FILE_SIZE:
            raise ProtocolError("offset + length beyond the maximum file size")
        return off, length

    @staticmethod
    def _delay_ns(msg: dict[str, Any]) -> int:
        d = msg.get("delay", 0) or 0
        if not isinstance(d, (int, float)) or d < 0 or d > 3600:
            raise ProtocolError("delay: seconds in [0, 3600]")
        return int(d * 1e9)

    def _may(self, c: ClientConn, inode: Any, mask: int) -> bool:
        if mask & 2 and self.fs.readonly:
            return False
        if c.uid == 0:
            return not mask & 1 or bool(inode.d.mode & 0o111) or inode.is_dir()
        m = inode.d.mode
        if c.uid == inode.d.uid:
            bits = (m >> 6) & 7
        elif inode.d.gid in c.groups:
            bits = (m >> 3) & 7
        else:
            bits = m & 7
        return bits & mask == mask

    def _check(self, c: ClientConn, inode: Any, access: str, path: str) -> None:
        mask = (4 if "r" in access else 0) | (2 if "w" in access else 0)
        if not self._may(c, inode, mask):
            raise FsError(errno.EACCES, f"{path}: uid {c.uid} may not "
                          f"{'write' if mask & 2 else 'read'} this file")

    def _resolve(self, c: ClientConn, msg: dict[str, Any]) -> tuple[Any, str]:
        path = msg.get("path")
        if not isinstance(path, str) or not path or "\0" in path:
            raise ProtocolError("path: expected a path relative to the mount root")
        node = self.fs.get(fmt.ROOT_INO)
        for comp in path.split("/"):
            if comp in ("", "."):
                continue
            if not node.is_dir():
                raise FsError(errno.ENOTDIR, path)
            if not self._may(c, node, 1):
                raise FsError(errno.EACCES, f"{path}: no search permission")
            node = self.fs.lookup(node.ino, comp.encode())
        if not stat.S_ISREG(node.d.mode):
            raise FsError(errno.EINVAL, f"{path}: not a regular file")
        return node, path

    def _has_holes(self, inode: Any, index: int, count: int) -> bool:
        return not self.fs._extents(inode).mapped(index, count)

    def _prepare(self, inode: Any, off: int, length: int, *, extend: bool) -> None:
        """Fault in: allocate (zeroed) blocks for holes; ``extend`` also grows the
        size to off+length, like a direct-I/O write past EOF."""
        idx = off // PAGE_SIZE
        cnt = -(-(off + length) // PAGE_SIZE) - idx
        grow = extend and off + length > inode.d.size
        if grow or (self._has_holes(inode, idx, cnt) and not self.fs.readonly):
            self.fs.fallocate(inode.ino, 0 if grow else FALLOC_FL_KEEP_SIZE, off, length)

    def _submit(self, c: ClientConn, ino: int, direction: Direction,
                target: FileTarget | PfnTarget, io: Any, delay_ns: int, what: str,
                path: str, reg: Registration | None = None, keep: Any = None) -> _Slot:
        if isinstance(target, FileTarget):
            idx = target.offset // PAGE_SIZE
            cnt = -(-(target.offset + target.length) // PAGE_SIZE) - idx
        else:
            idx = (reg.index if reg else 0)
            cnt = -(-(target.offset + target.length) // PAGE_SIZE)
        if len(c.inflight) >= self.limits.inflight:
            raise FsError(errno.EDQUOT, f"limit: at most {self.limits.inflight} DMA in flight "
                          "per client")
        if c.pinned + cnt > self.limits.pinned_pages:
            raise FsError(errno.EDQUOT, f"limit: at most {self.limits.pinned_pages} pinned "
                          f"pages per client ({c.pinned} pinned, {cnt} more asked)")
        rid = self.core.dma.submit(direction, target, io, delay_ns=delay_ns)
        self.counters["dma_submitted"] += 1
        lease = self.layouts.add_lease(ino, idx, cnt, ALLOCATED, c, what, path)
        self.layouts.hold(ino)
        slot = _Slot(rid, c, ino, lease, cnt, direction, reg, keep)
        self._slots[rid] = slot
        c.inflight[rid] = slot
        c.pinned += cnt
        c.drained = trio.Event()
        if reg is not None:
            reg.inflight += 1
        return slot

    async def _wait(self, slots: list[_Slot]) -> list[Completion]:
        out = []
        for s in slots:
            await s.event.wait()
            assert s.comp is not None
            out.append(s.comp)
        return out

    @staticmethod
    def _result(comps: list[Completion], t0: float) -> dict[str, Any]:
        status = next((x.status for x in comps if x.status), 0)
        res: dict[str, Any] = {"status": status, "nbytes": sum(x.nbytes for x in comps),
                               "elapsed": round(time.monotonic() - t0, 6)}
        if status:
            err = -status
            raise FsError(err, f"DMA failed: {os.strerror(err)} (after {res['nbytes']} bytes)")
        return res

    # ---- operations

    async def op_hello(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        return {"version": PROTOCOL_VERSION, "client": c.id, "pid": c.pid, "uid": c.uid,
                "daemon_pid": os.getpid(), "page_size": PAGE_SIZE}

    async def op_status(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        st = self.layouts.status()
        core = self.core.stats()
        recs, _ = self.core.collisions_since(0)
        st.update({
            "collisions": core.get("collisions", len(recs)),
            "collision_records": [
                {"seq": r.seq, "kind": r.kind.name.lower(), "pfn": r.pfn, "ino": r.ino,
                 "index": r.index, "new_ino": r.new_ino, "pins": r.pins} for r in recs[-16:]],
            "core": core,
            "control": dict(self.counters),
            "clients": [{"id": x.id, "pid": x.pid, "uid": x.uid, "registrations": len(x.regs),
                         "inflight": len(x.inflight), "pinned_pages": x.pinned,
                         "age": round(time.monotonic() - x.connected, 3)}
                        for x in self.clients.values()],
            "statfs": vars(self.fs.statfs()),
            "fuse": _fuse_info(),
        })
        return st

    async def op_lease_acquire(self, c: ClientConn, msg: dict[str, Any],
                               fds: list[int]) -> dict:
        inode, path = self._resolve(c, msg)
        off, length = self._range(msg)
        self._check(c, inode, "r", path)
        kind = EXCLUSIVE if msg.get("exclusive") else LAYOUT
        idx = off // PAGE_SIZE
        cnt = -(-(off + length) // PAGE_SIZE) - idx
        async with self.layouts.shared(inode.ino):
            lease = self.layouts.add_lease(inode.ino, idx, cnt, kind, c, f"{kind} lease", path)
        return {"lease": lease.id, "ino": inode.ino, "pages": [idx, cnt], "kind": kind}

    async def op_lease_release(self, c: ClientConn, msg: dict[str, Any],
                               fds: list[int]) -> dict:
        lid = self._int(msg, "lease")
        lease = self.layouts.leases.get(lid)
        if lease is None or lease.holder is not c:
            raise FsError(errno.ENOENT, f"no lease {lid} held by this client")
        self.layouts.remove_lease(lease)
        return {}

    async def op_register(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        inode, path = self._resolve(c, msg)
        off, length = self._range(msg)
        access = msg.get("access", "rw")
        if access not in ("r", "w", "rw"):
            raise ProtocolError("access: r, w or rw")
        odp = bool(msg.get("odp", False))
        self._check(c, inode, access, path)
        idx = off // PAGE_SIZE
        cnt = -(-(off + length) // PAGE_SIZE) - idx
        if len(c.regs) >= self.limits.registrations:
            raise FsError(errno.EDQUOT, f"limit: at most {self.limits.registrations} "
                          "registrations per client")
        lease = None
        if not odp:
            lease = self.layouts.covering_lease(c, inode.ino, idx, cnt)
            if lease is None:
                raise FsError(errno.EOPNOTSUPP, "long-term registration of a DAX file range "
                              "needs a layout lease on the range (lease_acquire), or odp")
            if c.pinned + cnt > self.limits.pinned_pages:
                raise FsError(errno.EDQUOT, f"limit: at most {self.limits.pinned_pages} "
                              f"pinned pages per client ({c.pinned} pinned)")
        reg = Registration(self.layouts.next_id(), c, inode.ino, path, off, length, access, odp)
        async with self.layouts.shared(inode.ino):
            self._prepare(inode, off, length, extend=False)
            if not odp:
                reg.runs = self.core.pin_file_runs(inode.ino, idx, cnt)
                reg.layout_lease = lease
                reg.pin_lease = self.layouts.add_lease(inode.ino, idx, cnt, ALLOCATED, c,
                                                       f"mr {reg.id} pins", path)
                self.layouts.hold(inode.ino)
                c.pinned += cnt
        self.layouts.add_registration(reg)
        c.regs[reg.id] = reg
        return {"mr": reg.id, "ino": inode.ino, "pages": cnt, "odp": odp,
                "lease": lease.id if lease else None}

    async def op_deregister(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        mr = self._int(msg, "mr")
        reg = c.regs.pop(mr, None)
        if reg is None:
            raise FsError(errno.ENOENT, f"no registration {mr} of this client")
        c.pinned -= reg.npages
        self.layouts.drop_registration(reg)
        return {}

    def _io(self, msg: dict[str, Any], fds: list[int], direction: Direction, length: int,
            keep: list[Any]) -> Any:
        if "pattern" in msg:
            return PatternIO(self._int(msg, "pattern"), self._int(msg, "pattern_offset", 0))
        if msg.get("shm"):
            if not fds:
                raise ProtocolError("shm: pass the buffer fd (nfds=1)")
            return ShmIO(fds[0], self._int(msg, "shm_offset", 0))
        if direction == Direction.TO_PMEM:
            data = base64.b64decode(msg.get("data", ""), validate=True)
            if len(data) != length:
                raise ProtocolError(f"data: {len(data)} bytes for a length of {length}")
            keep.append(data)
            return BufferIO(data)
        buf = bytearray(length)
        keep.append(buf)
        return BufferIO(buf)

    async def op_post(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        """RDMA WRITE (into pmem) / READ (from pmem) on a registration."""
        mr = self._int(msg, "mr")
        reg = self.layouts.registrations.get(mr)
        if reg is None:
            raise FsError(errno.ENOENT, f"no registration {mr}")
        kind = msg.get("kind", "write")
        if kind not in ("write", "read"):
            raise ProtocolError("kind: write or read")
        direction = Direction.TO_PMEM if kind == "write" else Direction.FROM_PMEM
        need = "w" if kind == "write" else "r"
        if need not in reg.access:
            raise FsError(errno.EACCES, f"registration {mr} is not registered for {kind}")
        if reg.revoked:
            raise FsError(errno.EKEYREVOKED, f"registration {mr} {reg.revoked}")
        o, length = self._range(msg)
        if o + length > reg.length:
            raise ProtocolError(f"offset+length beyond registration {mr} "
                                f"({reg.length} bytes)")
        delay_ns = self._delay_ns(msg)
        keep: list[Any] = []
        io = self._io(msg, fds, direction, length, keep)
        a = reg.offset + o
        t0 = time.monotonic()
        slots: list[_Slot] = []
        if reg.odp:
            idx = a // PAGE_SIZE
            cnt = -(-(a + length) // PAGE_SIZE) - idx
            if reg.invalid_overlap(idx, cnt):
                raise FsError(errno.EFAULT, f"ODP registration {mr}: pages invalidated by a "
                              "truncate / punch; DMA refused")
            async with self.layouts.shared(reg.ino):
                inode = self.fs.get(reg.ino)
                if direction == Direction.TO_PMEM:
                    self._prepare(inode, a, length, extend=False)
                slots.append(self._submit(c, reg.ino, direction,
                                          FileTarget(reg.ino, a, length), io, delay_ns,
                                          f"dma mr {mr}", reg.path, reg, keep))
        else:
            # Pieces over the registration's pinned runs (PIN_REF: no lease check).
            done = 0
            page0 = reg.index
            for pfn, n in list(reg.runs):
                r_start, r_end = page0 * PAGE_SIZE, (page0 + n) * PAGE_SIZE
                page0 += n
                lo, hi = max(a + done, r_start), min(a + length, r_end)
                if lo >= hi:
                    continue
                piece_io: Any = io
                if isinstance(io, BufferIO):
                    piece_io = BufferIO(memoryview(io.buffer)[done : done + hi - lo])
                elif isinstance(io, ShmIO):
                    piece_io = ShmIO(io.fd, io.offset + done)
                elif isinstance(io, PatternIO):
                    piece_io = PatternIO(io.seed, io.offset + done)
                tgt = PfnTarget(pfn + (lo - r_start) // PAGE_SIZE, lo % PAGE_SIZE, hi - lo)
                slots.append(self._submit(c, reg.ino, direction, tgt, piece_io, delay_ns,
                                          f"dma mr {mr}", reg.path, reg, keep))
                done += hi - lo
            if done != length:
                raise FsError(errno.EKEYREVOKED, f"registration {mr} lost its pages")
        res = self._result(await self._wait(slots), t0)
        if direction == Direction.FROM_PMEM and isinstance(io, BufferIO):
            res["data"] = base64.b64encode(bytes(io.buffer)).decode()
        return res

    async def op_dma(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        """One transient DMA between the file range and inline data / shm / pattern."""
        inode, path = self._resolve(c, msg)
        off, length = self._range(msg)
        kind = msg.get("kind", "write")
        if kind not in ("write", "read"):
            raise ProtocolError("kind: write or read")
        direction = Direction.TO_PMEM if kind == "write" else Direction.FROM_PMEM
        self._check(c, inode, "w" if kind == "write" else "r", path)
        keep: list[Any] = []
        io = self._io(msg, fds, direction, length, keep)
        delay_ns = self._delay_ns(msg)
        t0 = time.monotonic()
        async with self.layouts.shared(inode.ino):
            self._prepare(inode, off, length, extend=direction == Direction.TO_PMEM)
            slot = self._submit(c, inode.ino, direction, FileTarget(inode.ino, off, length),
                                io, delay_ns, "dma", path, None, keep)
        res = self._result(await self._wait([slot]), t0)
        if direction == Direction.FROM_PMEM and isinstance(io, BufferIO):
            res["data"] = base64.b64encode(bytes(io.buffer)).decode()
        return res

    async def op_dio(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        """Direct I/O between a client fd (SCM_RIGHTS) and a file range."""
        if not fds:
            raise ProtocolError("dio: pass the other side's fd (nfds=1)")
        inode, path = self._resolve(c, msg)
        off, length = self._range(msg)
        to_file = msg.get("direction", "to_file")
        if to_file not in ("to_file", "from_file"):
            raise ProtocolError("direction: to_file or from_file")
        direction = Direction.TO_PMEM if to_file == "to_file" else Direction.FROM_PMEM
        self._check(c, inode, "w" if direction == Direction.TO_PMEM else "r", path)
        fd_offset = self._int(msg, "fd_offset", 0)
        delay_ns = self._delay_ns(msg)
        t0 = time.monotonic()
        async with self.layouts.shared(inode.ino):
            if direction == Direction.FROM_PMEM:
                length = min(length, inode.d.size - off)
                if length <= 0:
                    return {"status": 0, "nbytes": 0, "elapsed": 0.0}
                self._prepare(inode, off, length, extend=False)
            else:
                self._prepare(inode, off, length, extend=True)
            fd = fds.pop(0)
            try:
                slot = self._submit(c, inode.ino, direction, FileTarget(inode.ino, off, length),
                                    FdIO(fd, fd_offset), delay_ns, "dio", path, None, fd)
            except BaseException:
                os.close(fd)
                raise
        return self._result(await self._wait([slot]), t0)

    async def op_truncate(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        """truncate(2) through the control socket (the caller is the breaker)."""
        inode, path = self._resolve(c, msg)
        size = self._int(msg, "size")
        self._check(c, inode, "w", path)
        t0 = time.monotonic()
        if size >= inode.d.size:
            self.fs.setattr(inode.ino, size=size)
        else:
            await self.layouts.break_layout(
                inode.ino, size // PAGE_SIZE, fmt.MAX_FILE_SIZE // PAGE_SIZE,
                lambda: self.fs.setattr(inode.ino, size=size), what=f"truncate {path}",
                breaker=c)
        return {"waited": round(time.monotonic() - t0, 6)}

    async def op_punch(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        inode, path = self._resolve(c, msg)
        off, length = self._range(msg)
        self._check(c, inode, "w", path)
        mode = 0x10 if msg.get("zero") else 0x03  # ZERO_RANGE or PUNCH_HOLE|KEEP_SIZE
        idx = off // PAGE_SIZE
        cnt = -(-(off + length) // PAGE_SIZE) - idx
        t0 = time.monotonic()
        await self.layouts.break_layout(
            inode.ino, idx, cnt, lambda: self.fs.fallocate(inode.ino, mode, off, length),
            what=f"{'zero' if mode == 0x10 else 'punch'} {path}", breaker=c)
        return {"waited": round(time.monotonic() - t0, 6)}

    async def op_set_delay(self, c: ClientConn, msg: dict[str, Any], fds: list[int]) -> dict:
        if c.uid != 0:
            raise FsError(errno.EPERM, "only root may set the global DMA delay")
        self.core.dma.set_global_delay(self._delay_ns(msg))
        return {}
