"""break_layout, the invalidate lock, leases and the control socket, without a
FUSE mount: a real Filesystem on a small image and a real native Core."""

from __future__ import annotations

import base64
import errno
import functools
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from daxfs import format as fmt
from daxfs import wire
from daxfs.client import AsyncClient, ControlError
from daxfs.control import ControlServer, Outbox
from daxfs.errors import FsError
from daxfs.fs import Filesystem, mkfs
from daxfs.leases import EXCLUSIVE, LAYOUT, InvalidateLock, LayoutManager
from daxfs.native import Core, RangeBlockedError, pattern_bytes
from daxfs.pages import CoreHooks

BS = 4096


def trio_test(fn: Any) -> Any:
    """Run an async test function in a fresh trio run (no pytest-trio here)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kw: Any) -> Any:
        return trio.run(functools.partial(fn, *args, **kw))

    return wrapper


class Env:
    def __init__(self, path: str, *, unsafe: bool = False, lbt: float = 45.0) -> None:
        self.fs = Filesystem.from_image(path)
        self.core = Core(self.fs.dev.base_address, self.fs.sb.block_count, dma_threads=2)
        self.fs.attach_hooks(CoreHooks(self.core))
        self.layouts = LayoutManager(self.fs, self.core, unsafe=unsafe, lease_break_time=lbt)
        node = self.fs.mknod(fmt.ROOT_INO, b"A", stat.S_IFREG | 0o644, 0, 0, 0)
        self.ino = node.ino
        self.fs.write(self.ino, 0, b"a" * (16 * BS))

    def close(self) -> None:
        self.core.dma.shutdown()
        self.fs.close()
        self.core.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    img = str(tmp_path / "t.img")
    mkfs(img, 8 << 20, alloc_policy="reuse-first")
    e = Env(img)
    yield e
    e.close()


class FakeHolder:
    def __init__(self, pid: int = 4242) -> None:
        self.pid = pid
        self.name = f"fake{pid}"
        self.events: list[dict[str, Any]] = []

    def notify(self, event: dict[str, Any]) -> None:
        self.events.append(event)


@trio_test
async def test_invalidate_lock_writer_excludes_readers() -> None:
    lk = InvalidateLock()
    log: list[str] = []
    await lk.acquire_shared()

    async def writer() -> None:
        async with lk.exclusive():
            log.append("w")

    async def reader() -> None:
        async with lk.shared():
            log.append("r")

    async with trio.open_nursery() as n:
        n.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        n.start_soon(reader)  # held back: a writer waits
        await trio.testing.wait_all_tasks_blocked()
        assert log == [] and lk.waiting_writers == 1
        with pytest.raises(trio.WouldBlock):
            lk.acquire_shared_nowait()
        lk.release_shared()
    assert log == ["w", "r"] and lk.idle


@trio_test
async def test_idle_locks_are_reused_clean(env: Env) -> None:
    """Locks leave `locks` when idle and come back from a spare list, as new."""
    lm = env.layouts
    async with lm.shared(env.ino):
        first = lm.locks[env.ino]
        assert first.readers == 1
    assert env.ino not in lm.locks  # idle: dropped
    async with lm.shared(12345):
        assert lm.locks[12345] is first and first.readers == 1  # reused
    async with trio.open_nursery() as n:
        async with lm.shared(env.ino):
            lk = lm.locks[env.ino]

            async def writer() -> None:  # a truncate: exclusive, then dropped idle
                await lm.break_layout(env.ino, 0, 1, lambda: None, what="t")

            n.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert lk.waiting_writers == 1  # a waiter keeps it out of the spares
        await trio.testing.wait_all_tasks_blocked()
    assert lm.locks == {} and all(x.idle for x in lm._spare_locks)


@trio_test
async def test_break_waits_for_pins_and_blocks_new_ones(env: Env) -> None:
    done: list[int] = []
    env.core.pin_file(env.ino, 2, 1)

    async def truncate() -> None:
        await env.layouts.break_layout(env.ino, 0, 16, lambda: done.append(1), what="t")

    async with trio.open_nursery() as n:
        n.start_soon(truncate)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []
        assert [b["state"] for b in env.layouts.status()["files"][0]["breaks"]] == ["waiting"]
        with pytest.raises(RangeBlockedError):
            env.core.pin_file(env.ino, 0, 1)
        # The lock is not held while waiting: others may take it shared.
        async with env.layouts.shared(env.ino):
            pass
        env.core.unpin_file(env.ino, 2, 1)
    assert done == [1]
    env.core.pin_file(env.ino, 0, 1)  # unblocked again
    env.core.unpin_file(env.ino, 0, 1)
    assert env.layouts.breaks == {}


@trio_test
async def test_exclusive_lease_etxtbsy_and_own_edeadlk(env: Env) -> None:
    h = FakeHolder()
    env.layouts.add_lease(env.ino, 0, 4, EXCLUSIVE, h, "x")
    with pytest.raises(FsError) as ei:
        await env.layouts.break_layout(env.ino, 0, 16, lambda: None, what="t")
    assert ei.value.errno == errno.ETXTBSY
    with pytest.raises(FsError) as ei:
        await env.layouts.break_layout(env.ino, 0, 16, lambda: None, what="t", breaker=h)
    assert ei.value.errno == errno.EDEADLK
    # Outside the leased range: no conflict.
    assert await env.layouts.break_layout(env.ino, 8, 8, lambda: 7, what="t") == 7


@trio_test
async def test_unsafe_frees_at_once_and_collides(tmp_path: Path) -> None:
    img = str(tmp_path / "u.img")
    mkfs(img, 8 << 20)
    e = Env(img, unsafe=True)
    try:
        e.core.pin_file(e.ino, 0, 1)
        await e.layouts.break_layout(e.ino, 0, 16, lambda: e.fs.setattr(e.ino, size=0),
                                     what="t")
        assert e.core.stats()["collisions"] >= 1
    finally:
        e.core.unpin_pfn(*_first_pfn_of(e))
        e.close()


def _first_pfn_of(e: Env) -> tuple[int, int]:
    for pfn in range(e.core.npages):
        if e.core.page_info(pfn).pins:
            return pfn, 1
    raise AssertionError("no pinned page")


@trio_test
async def test_interrupt_ends_wait_with_eintr(env: Env) -> None:
    env.core.pin_file(env.ino, 0, 1)
    interrupted = trio.Event()
    ran: list[int] = []

    async def punch() -> None:
        with pytest.raises(OSError) as ei:
            await env.layouts.break_layout(env.ino, 0, 1, lambda: ran.append(1), what="p",
                                           interrupted=interrupted)
        assert ei.value.errno == errno.EINTR

    async with trio.open_nursery() as n:
        n.start_soon(punch)
        await trio.testing.wait_all_tasks_blocked()
        from daxfs import fuse_ext

        fuse_ext._interrupt(interrupted)
    assert ran == []
    env.core.unpin_file(env.ino, 0, 1)
    env.core.pin_file(env.ino, 0, 1)  # range unblocked
    env.core.unpin_file(env.ino, 0, 1)


def test_revocation_after_lease_break_time(env: Env) -> None:
    from daxfs.leases import ALLOCATED, Registration

    h = FakeHolder()
    freed: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as n:
            await n.start(env.layouts.run)
            lease = env.layouts.add_lease(env.ino, 0, 16, LAYOUT, h, "l")
            reg = Registration(env.layouts.next_id(), h, env.ino, "A", 0, 16 * BS, "rw", False)
            reg.runs = env.core.pin_file_runs(env.ino, 0, 16)
            reg.layout_lease = lease
            reg.pin_lease = env.layouts.add_lease(env.ino, 0, 16, ALLOCATED, h, "mr")
            env.layouts.hold(env.ino)
            env.layouts.add_registration(reg)
            t0 = trio.current_time()
            await env.layouts.break_layout(env.ino, 0, 16, lambda: freed.append(1), what="t")
            assert trio.current_time() - t0 >= 45.0
            assert reg.revoked and reg.runs == []
            n.cancel_scope.cancel()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert freed == [1]
    assert [e["event"] for e in h.events] == ["lease_break", "revoked"]


# ---------------------------------------------------------------- control socket


@pytest.fixture
def sock_path(tmp_path: Path) -> str:
    return str(tmp_path / "ctl.sock")


async def _serve(env: Env, path: str, nursery: trio.Nursery) -> ControlServer:
    srv = ControlServer(env.fs, env.core, env.layouts, path)
    await nursery.start(env.layouts.run)
    await nursery.start(srv.serve)
    return srv


@trio_test
async def test_control_register_post_and_errors(env: Env, sock_path: str) -> None:
    async with trio.open_nursery() as n:
        srv = await _serve(env, sock_path, n)
        async with AsyncClient(sock_path) as c:
            assert (await c.hello())["version"] == 1
            with pytest.raises(ControlError) as ei:
                await c.register("A", 0, 4 * BS)
            assert ei.value.errno == errno.EOPNOTSUPP
            lease = (await c.lease_acquire("A", 0, 4 * BS))["lease"]
            mr = (await c.register("A", 0, 4 * BS))["mr"]
            assert env.core.stats()["pinned_pages"] == 4
            await c.post(mr, "write", 100, 5000, pattern=3)
            assert bytes(env.fs.read(env.ino, 100, 5000)) == pattern_bytes(3, 5000)
            r = await c.post(mr, "read", 0, 10, data=None)
            assert base64.b64decode(r["data"]) == b"a" * 10
            with pytest.raises(ControlError) as ei:
                await c.post(mr, "write", 0, 5 * BS, pattern=1)
            assert ei.value.errno == errno.EINVAL
            st = await c.status()
            assert st["collisions"] == 0 and st["files"][0]["pinned_pages"] == 4
            await c.deregister(mr)
            await c.lease_release(lease)
            assert env.core.stats()["pinned_pages"] == 0
        n.cancel_scope.cancel()
    assert srv.counters["requests"] >= 8


@trio_test
async def test_control_malformed_message_closes_only_that_connection(
        env: Env, sock_path: str) -> None:
    async with trio.open_nursery() as n:
        await _serve(env, sock_path, n)
        s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await s.connect(sock_path)
        await s.send((7).to_bytes(4, "big") + b"{nope!}")
        reply = b""
        while True:
            chunk = await s.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert b"EPROTO" in reply
        s.close()
        s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await s.connect(sock_path)
        await s.send((1 << 30).to_bytes(4, "big"))
        assert b"EPROTO" in await s.recv(4096)
        s.close()
        async with AsyncClient(sock_path) as c:  # still serving others
            assert (await c.hello())["version"] == 1
        n.cancel_scope.cancel()


async def _read_frames(s: Any, count: int) -> list[dict[str, Any]]:
    buf, out = b"", []
    while len(out) < count:
        chunk = await s.recv(1 << 16)
        assert chunk, f"connection closed after {len(out)} of {count} replies"
        buf += chunk
        while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
            n = int.from_bytes(buf[:4], "big")
            out.append(wire.loads(buf[4 : 4 + n]))
            buf = buf[4 + n :]
    return out


@trio_test
async def test_control_pipelined_burst_and_split_frames(env: Env, sock_path: str) -> None:
    """Many requests in one send, and frames cut at every byte boundary: every
    request is answered once, in order, and pins match the registrations."""
    async with trio.open_nursery() as n:
        await _serve(env, sock_path, n)
        s = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await s.connect(sock_path)
        lease = {"id": 1, "op": "lease_acquire", "path": "A", "offset": 0, "length": 16 * BS}
        await s.send(wire.frame(lease))
        assert (await _read_frames(s, 1))[0]["ok"]
        regs = b"".join(wire.frame({"id": 100 + i, "op": "register", "path": "A",
                                    "offset": (i % 16) * BS, "length": BS})
                        for i in range(64))
        await s.send(regs)  # one burst
        got = await _read_frames(s, 64)
        assert [m["id"] for m in got] == list(range(100, 164))
        assert all(m["ok"] and m["pages"] == 1 for m in got)
        assert env.core.stats()["pinned_pages"] == 16  # distinct pages, 4 pins each
        deregs = b"".join(wire.frame({"id": 200 + i, "op": "deregister", "mr": m["mr"]})
                          for i, m in enumerate(got))
        for cut in range(0, len(deregs), 7):  # split mid-header and mid-body
            await s.send(deregs[cut : cut + 7])
        got = await _read_frames(s, 64)
        assert [m["id"] for m in got] == list(range(200, 264))
        assert all(m["ok"] for m in got)
        assert env.core.stats()["pinned_pages"] == 0
        s.close()
        n.cancel_scope.cancel()


@trio_test
async def test_outbox_bounded_and_drained_on_close() -> None:
    box = Outbox(limit=3)
    for i in range(5):
        box.put(b"%d" % i)
    assert box.dropped == 2
    assert await box.take() == b"012"  # queued replies leave as one buffer
    box.put(b"x")
    box.close()
    box.put(b"late")  # after close: not queued
    assert await box.take() == b"x"
    assert await box.take() == b""

    box, got = Outbox(), []
    async with trio.open_nursery() as n:
        async def writer() -> None:
            got.append(await box.take())

        n.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # waits, event-driven, for the first reply
        box.put(b"r")
    assert got == [b"r"]


@trio_test
async def test_control_dio(env: Env, sock_path: str,
                                                 tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(pattern_bytes(5, 8 * BS))
    fd = os.open(src, os.O_RDONLY)
    try:
        async with trio.open_nursery() as n:
            await _serve(env, sock_path, n)
            async with AsyncClient(sock_path) as c:
                r = await c.dio("A", fd, 0, 8 * BS)
                assert r["nbytes"] == 8 * BS
            assert bytes(env.fs.read(env.ino, 0, 8 * BS)) == pattern_bytes(5, 8 * BS)
            n.cancel_scope.cancel()
    finally:
        os.close(fd)
