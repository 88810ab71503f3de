"""Layout leases, the per-inode invalidate lock and break_layout: "DMA vs truncate".

Layering: fuse_ops / control -> leases -> fs + native.Core.  Everything here runs in
the daemon's one trio run; the C core only signals through waiter eventfds.

Kernel counterparts (docs/SEMANTICS.md has the full table):

* `InvalidateLock` is ext4/xfs's ``i_mmap_sem`` / ``MMAPLOCK``: pinning and
  registering take it shared, truncate / punch / zero-range take it exclusive.
* `Lease` kinds: ``allocated`` is FL_ALLOCATED (taken implicitly by every pin:
  one direct-I/O transfer, one DMA, one registration's long-term pins; it lives as
  long as the pins); ``layout`` is F_LAYOUT (a client asks for it, a break is
  notified to it); ``exclusive`` is an exclusive layout lease (a conflicting
  truncate fails at once with ETXTBSY).
* `LayoutManager.break_layout` is ``xfs_break_layouts`` + ``dax_layout_busy_page``
  + ``___wait_var_event``: block new pins on the range, notify lease holders,
  wait (event driven, without the exclusive lock) until no page of the range is
  pinned, then run the filesystem operation that frees blocks.

Pinned blocks of an unlinked file: every pin holder takes an inode reference
(``inode.opens``, like the kernel's page references pin the inode), so the
filesystem frees the storage only when the last holder lets go (`unhold`).
"""

from __future__ import annotations

import errno
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from .errors import FsError
from .native import MAX_FILE_PAGES, PAGE_SIZE, Core, NativeError

log = logging.getLogger(__name__)

T = TypeVar("T")

ALLOCATED = "allocated"
LAYOUT = "layout"
EXCLUSIVE = "exclusive"


class Holder(Protocol):
    """A lease holder (a control-socket client)."""

    pid: int
    name: str

    def notify(self, event: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------- invalidate lock


class InvalidateLock:
    """Readers/writer lock for one inode, trio-level, writer preferring.

    # Invariants: ``writer`` implies ``readers == 0``; a reader is admitted only
    # while no writer holds the lock or waits for it.
    """

    def __init__(self) -> None:
        self.readers = 0
        self.writer = False
        self.waiting_writers = 0
        self._lot = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return (f"<InvalidateLock readers={self.readers} writer={self.writer} "
                f"waiting_writers={self.waiting_writers}>")

    def statistics(self) -> dict[str, int]:
        return {"readers": self.readers, "writer": int(self.writer),
                "waiting_writers": self.waiting_writers}

    @property
    def idle(self) -> bool:
        return not (self.readers or self.writer or self.waiting_writers)

    def acquire_shared_nowait(self) -> None:
        if self.writer or self.waiting_writers:
            raise trio.WouldBlock
        self.readers += 1

    async def acquire_shared(self) -> None:
        while True:
            try:
                self.acquire_shared_nowait()
                return
            except trio.WouldBlock:
                await self._lot.park()

    def release_shared(self) -> None:
        assert self.readers > 0
        self.readers -= 1
        if self._lot:
            self._lot.unpark_all()

    def acquire_exclusive_nowait(self) -> None:
        if self.writer or self.readers:
            raise trio.WouldBlock
        self.writer = True

    async def acquire_exclusive(self) -> None:
        while True:
            try:
                self.acquire_exclusive_nowait()
                return
            except trio.WouldBlock:
                pass
            self.waiting_writers += 1
            try:
                await self._lot.park()
            finally:
                self.waiting_writers -= 1
                self._lot.unpark_all()  # readers held back by us may go now

    def release_exclusive(self) -> None:
        assert self.writer
        self.writer = False
        self._lot.unpark_all()

    @asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        await self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        await self.acquire_exclusive()
        try:
            yield
        finally:
            self.release_exclusive()


class _SharedHold:
    """LayoutManager.shared(ino): a class, not @asynccontextmanager, because it is
    on every control request's path and the generator machinery cost more than
    the uncontended lock itself."""

    __slots__ = ("_m", "_ino", "_lk")

    def __init__(self, m: LayoutManager, ino: int) -> None:
        self._m = m
        self._ino = ino

    async def __aenter__(self) -> None:
        lk = self._lk = self._m.lock(self._ino)
        try:
            await lk.acquire_shared()
        except BaseException:
            self._m._drop_idle_lock(self._ino)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._lk.release_shared()
        self._m._drop_idle_lock(self._ino)


# ---------------------------------------------------------------- records


@dataclass(eq=False)
class Lease:
    """A lease on file pages [index, index+count) of inode ``ino``."""

    id: int
    ino: int
    index: int
    count: int
    kind: str  # ALLOCATED | LAYOUT | EXCLUSIVE
    holder: Holder | None
    what: str
    path: str = ""
    created: float = field(default_factory=time.monotonic)
    breaking_since: float | None = None

    def overlaps(self, ino: int, index: int, count: int) -> bool:
        return (self.ino == ino and self.index < index + count
                and index < self.index + self.count)

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "id": self.id, "ino": self.ino, "kind": self.kind, "what": self.what,
            "pages": [self.index, self.count], "path": self.path,
            "holder": self.holder.name if self.holder is not None else None,
            "age": round(now - self.created, 3),
            "breaking_for": (None if self.breaking_since is None
                             else round(now - self.breaking_since, 3)),
        }


@dataclass(eq=False)
class Registration:
    """A registered memory region (an RDMA MR) over bytes [offset, offset+length).

    Non-ODP: its pages are pinned (``runs``) from registration to deregistration
    or revocation, under an ALLOCATED lease, and it relies on a LAYOUT lease of
    the same client.  ODP: nothing is pinned; each DMA pins its own pages, and a
    truncate / punch invalidates the overlapping pages (``invalidated``)."""

    id: int
    client: Holder
    ino: int
    path: str
    offset: int
    length: int
    access: str  # "r", "w" or "rw"
    odp: bool
    runs: list[tuple[int, int]] = field(default_factory=list)
    pin_lease: Lease | None = None
    layout_lease: Lease | None = None
    revoked: str | None = None
    invalidated: list[tuple[int, int]] = field(default_factory=list)  # [start, end) pages
    inflight: int = 0

    @property
    def index(self) -> int:
        return self.offset // PAGE_SIZE

    @property
    def count(self) -> int:
        return -(-(self.offset + self.length) // PAGE_SIZE) - self.index

    @property
    def npages(self) -> int:
        return sum(c for _, c in self.runs)

    def overlaps(self, ino: int, index: int, count: int) -> bool:
        return self.ino == ino and self.index < index + count and index < self.index + self.count

    def invalid_overlap(self, index: int, count: int) -> bool:
        return any(a < index + count and index < b for a, b in self.invalidated)

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "ino": self.ino, "path": self.path, "offset": self.offset,
            "length": self.length, "access": self.access, "odp": self.odp,
            "pinned_pages": self.npages, "holder": self.client.name,
            "revoked": self.revoked, "invalidated": self.invalidated,
            "inflight": self.inflight,
            "lease": self.layout_lease.id if self.layout_lease else None,
        }


@dataclass(eq=False)
class Break:
    """A truncate / punch / zero-range waiting in break_layout."""

    id: int
    ino: int
    index: int
    count: int
    what: str
    started: float = field(default_factory=time.monotonic)
    wakeups: int = 0
    state: str = "breaking"

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "ino": self.ino, "what": self.what, "state": self.state,
                "pages": [self.index, min(self.count, MAX_FILE_PAGES - self.index)],
                "waiting_for": round(time.monotonic() - self.started, 3),
                "wakeups": self.wakeups}


# ---------------------------------------------------------------- manager


class LayoutManager:
    """Leases, registrations, invalidate locks and break_layout for one mount.

    ``fs`` is the `Filesystem`, ``core`` the native `Core`.  ``unsafe`` is
    ``-o unsafe_free_pinned`` (the pre-fix behaviour: free at once, pinned or
    not; the collision detector then fires).  Timers for lease-break timeouts run
    in the nursery given to :meth:`run` (started by the daemon)."""

    def __init__(self, fs: Any, core: Core, *, unsafe: bool = False,
                 lease_break_time: float = 45.0, dax_always: bool = True) -> None:
        self.fs = fs
        self.core = core
        self.unsafe = unsafe
        self.lease_break_time = lease_break_time
        self.dax_always = dax_always
        # Invariants: a lock is in `locks` only while in use (idle ones are dropped);
        # holds[ino] == number of holders that took an inode reference.
        self.locks: dict[int, InvalidateLock] = {}
        self._spare_locks: list[InvalidateLock] = []
        self.leases: dict[int, Lease] = {}
        # The LAYOUT/EXCLUSIVE subset: conflict checks and lease lookups scan these
        # few, not one ALLOCATED lease per registration and DMA in flight.
        self.layout_leases: dict[int, Lease] = {}
        self.registrations: dict[int, Registration] = {}
        self.breaks: dict[int, Break] = {}
        self.holds: dict[int, int] = {}
        self.revocations: list[dict[str, Any]] = []
        self.history: list[dict[str, Any]] = []  # finished breaks (last 64)
        self._ids = itertools.count(1)
        self._nursery: trio.Nursery | None = None
        self.counters = {"breaks": 0, "breaks_waited": 0, "revocations": 0,
                         "conflicts": 0, "interrupted": 0, "odp_invalidations": 0}

    def __repr__(self) -> str:
        return (f"<LayoutManager leases={len(self.leases)} regs={len(self.registrations)} "
                f"breaks={len(self.breaks)} unsafe={self.unsafe}>")

    async def run(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the nursery for lease-break timers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def next_id(self) -> int:
        return next(self._ids)

    # ---- locks and inode references

    def lock(self, ino: int) -> InvalidateLock:
        lk = self.locks.get(ino)
        if lk is None:
            lk = self.locks[ino] = self._spare_locks.pop() if self._spare_locks \
                else InvalidateLock()
        return lk

    def _drop_idle_lock(self, ino: int) -> None:
        lk = self.locks.get(ino)
        if lk is not None and lk.idle:
            del self.locks[ino]
            # Idle means no holder and nobody parked: as good as new.  Every control
            # request takes one, and a ParkingLot costs more to build than to keep.
            if len(self._spare_locks) < 64:
                self._spare_locks.append(lk)

    def shared(self, ino: int) -> _SharedHold:
        """``async with``: inode ``ino``'s invalidate lock, shared."""
        return _SharedHold(self, ino)

    def hold(self, ino: int) -> None:
        """Take an inode reference for a pin holder: an unlinked file's blocks
        stay allocated until the last holder lets go."""
        n = self.holds.get(ino, 0)
        if n == 0:
            self.fs.open(ino)
        self.holds[ino] = n + 1

    def unhold(self, ino: int) -> None:
        n = self.holds[ino] - 1
        if n:
            self.holds[ino] = n
            return
        del self.holds[ino]
        try:
            self.fs.release(ino)  # may free an unlinked file's storage now
            self.fs.maybe_commit()
        except Exception:
            log.exception("releasing inode %d after its last pin", ino)

    # ---- leases

    def add_lease(self, ino: int, index: int, count: int, kind: str, holder: Holder | None,
                  what: str, path: str = "") -> Lease:
        if kind in (LAYOUT, EXCLUSIVE):
            for other in self.layout_leases.values():
                if other.kind == EXCLUSIVE and other.overlaps(ino, index, count) \
                        and other.holder is not holder:
                    raise FsError(errno.EAGAIN, "range is under another client's "
                                  "exclusive layout lease")
                if kind == EXCLUSIVE and other.kind in (LAYOUT, EXCLUSIVE) \
                        and other.overlaps(ino, index, count) and other.holder is not holder:
                    raise FsError(errno.EAGAIN, "range is under another client's layout lease")
            for b in self.breaks.values():
                if b.ino == ino and b.index < index + count and index < b.index + b.count:
                    raise FsError(errno.EAGAIN, "range is being truncated / punched")
        lease = Lease(self.next_id(), ino, index, count, kind, holder, what, path)
        self.leases[lease.id] = lease
        if kind != ALLOCATED:
            self.layout_leases[lease.id] = lease
        return lease

    def remove_lease(self, lease: Lease | None) -> None:
        if lease is not None:
            self.leases.pop(lease.id, None)
            self.layout_leases.pop(lease.id, None)

    def leases_of(self, holder: Holder) -> list[Lease]:
        return [x for x in self.leases.values() if x.holder is holder]

    def covering_lease(self, holder: Holder, ino: int, index: int, count: int) -> Lease | None:
        for x in self.layout_leases.values():
            if (x.holder is holder and x.kind in (LAYOUT, EXCLUSIVE) and x.ino == ino
                    and x.index <= index and index + count <= x.index + x.count
                    and x.breaking_since is None):
                return x
        return None

    # ---- registrations

    def add_registration(self, reg: Registration) -> None:
        self.registrations[reg.id] = reg

    def drop_registration(self, reg: Registration, reason: str | None = None) -> None:
        """Deregister (reason None) or revoke: unpin its pages, drop its ALLOCATED
        lease and inode reference.  In-flight DMA on it keeps its own pins."""
        if reason is not None and reg.revoked is None:
            reg.revoked = reason
        runs, reg.runs = reg.runs, []
        for pfn, n in runs:
            try:
                self.core.unpin_pfn(pfn, n)
            except NativeError:
                log.exception("unpinning registration %d", reg.id)
        if reg.pin_lease is not None:
            self.remove_lease(reg.pin_lease)
            reg.pin_lease = None
            self.unhold(reg.ino)
        if reason is None:
            self.registrations.pop(reg.id, None)

    def _revoke(self, lease: Lease, brk: Break) -> None:
        """The lease-break timeout expired: revoke the holder's registrations on
        the broken range, then the lease itself."""
        holder = lease.holder
        revoked = []
        for reg in list(self.registrations.values()):
            if (reg.client is holder and not reg.odp and reg.revoked is None
                    and reg.overlaps(brk.ino, brk.index, brk.count)):
                self.drop_registration(reg, f"revoked: lease {lease.id} not released within "
                                       f"lease_break_time={self.lease_break_time:g}s "
                                       f"({brk.what})")
                revoked.append(reg.id)
        self.remove_lease(lease)
        self.counters["revocations"] += 1
        rec = {"time": time.time(), "lease": lease.id, "ino": lease.ino,
               "holder": holder.name if holder else None, "registrations": revoked,
               "break": brk.what}
        self.revocations.append(rec)
        del self.revocations[:-64]
        log.warning("lease %d of %s on inode %d revoked after %.1fs (registrations %s)",
                    lease.id, rec["holder"], lease.ino, self.lease_break_time, revoked)
        if holder is not None:
            holder.notify({"event": "revoked", "lease": lease.id, "ino": lease.ino,
                           "registrations": revoked, "reason": "lease_break_time expired"})

    async def _revoke_after(self, lease: Lease, brk: Break, scope: trio.CancelScope) -> None:
        with scope:
            await trio.sleep(self.lease_break_time)  # the lease-break timeout itself
            if lease.id in self.leases or any(
                    r.client is lease.holder and not r.odp and r.revoked is None
                    and r.overlaps(brk.ino, brk.index, brk.count)
                    for r in self.registrations.values()):
                self._revoke(lease, brk)

    # ---- break_layout

    async def break_layout(self, ino: int, index: int, count: int, op: Callable[[], T], *,
                           what: str, breaker: Holder | None = None,
                           breaker_pid: int | None = None,
                           interrupted: trio.Event | None = None) -> T:
        """Run ``op`` (a synchronous filesystem operation that frees or zeroes file
        pages [index, index+count)) once no page of the range is pinned.

        Raises FsError(ETXTBSY) if another client holds an exclusive layout lease
        on the range, FsError(EDEADLK) if the breaker holds a lease on it itself,
        OSError(EINTR) if ``interrupted`` is set while waiting (nothing changed).
        """
        count = max(1, min(count, MAX_FILE_PAGES - index))
        lk = self.lock(ino)
        await lk.acquire_exclusive()
        held = True
        try:
            for lease in self.layout_leases.values():
                if not lease.overlaps(ino, index, count):
                    continue
                h = lease.holder
                if h is not None and (h is breaker or (breaker_pid and h.pid == breaker_pid)):
                    self.counters["conflicts"] += 1
                    raise FsError(errno.EDEADLK, f"{what}: the caller holds {lease.kind} "
                                  f"lease {lease.id} on the range")
                if lease.kind == EXCLUSIVE:
                    self.counters["conflicts"] += 1
                    raise FsError(errno.ETXTBSY, f"{what}: exclusive layout lease "
                                  f"{lease.id} held by {h.name if h else '?'}")
            self.counters["breaks"] += 1
            if self.unsafe:
                result = op()
                self._after_change(ino, index, count)
                return result
            self._load(ino)
            brk = Break(self.next_id(), ino, index, count, what)
            self.breaks[brk.id] = brk
            token = self.core.block_range(ino, index, count)
            timers: list[trio.CancelScope] = []
            try:
                self._notify(brk, timers)
                while True:
                    if self.core.busy_file(ino, index, count) < 0:
                        brk.state = "freeing"
                        result = op()
                        self._after_change(ino, index, count)
                        return result
                    # Wait without the lock: reads, DMA completions, other inodes'
                    # and other ranges' requests go on meanwhile.
                    brk.state = "waiting"
                    if brk.wakeups == 0:
                        self.counters["breaks_waited"] += 1
                    lk.release_exclusive()
                    held = False
                    await self._wait_unpinned(ino, index, count, interrupted)
                    brk.wakeups += 1
                    await lk.acquire_exclusive()
                    held = True
            finally:
                for t in timers:
                    t.cancel()
                for lease in self.layout_leases.values():  # only these break
                    if lease.overlaps(ino, index, count) and not any(
                            b is not brk and lease.overlaps(b.ino, b.index, b.count)
                            for b in self.breaks.values()):
                        lease.breaking_since = None
                with suppress(NativeError, ValueError):
                    self.core.unblock(ino, token)
                del self.breaks[brk.id]
                self.history.append({**brk.describe(), "state": "done",
                                     "finished": time.time()})
                del self.history[:-64]
        finally:
            if held:
                lk.release_exclusive()
            self._drop_idle_lock(ino)

    def _load(self, ino: int) -> None:
        # The pfn map must be in the core for busy scans and waiters.
        with suppress(FsError):
            inode = self.fs.get(ino)
            if inode.is_reg():
                self.fs._extents(inode)

    async def _wait_unpinned(self, ino: int, index: int, count: int,
                             interrupted: trio.Event | None) -> None:
        w = self.core.waiter(ino, index, count)
        try:
            if interrupted is None:
                await w.wait()
                return
            from .fuse_ext import cancel_on_interrupt

            try:
                with cancel_on_interrupt(interrupted):
                    await w.wait()
            except OSError:
                self.counters["interrupted"] += 1
                raise
        finally:
            await w.aclose()

    def _notify(self, brk: Break, timers: list[trio.CancelScope]) -> None:
        now = time.monotonic()
        for lease in list(self.layout_leases.values()):
            if not lease.overlaps(brk.ino, brk.index, brk.count):
                continue
            if lease.breaking_since is None:
                lease.breaking_since = now
            if lease.holder is not None:
                lease.holder.notify({
                    "event": "lease_break", "lease": lease.id, "ino": brk.ino,
                    "pages": [brk.index, brk.count], "what": brk.what,
                    "lease_break_time": self.lease_break_time})
            if self._nursery is not None:
                scope = trio.CancelScope()
                timers.append(scope)
                self._nursery.start_soon(self._revoke_after, lease, brk, scope)

    def _after_change(self, ino: int, index: int, count: int) -> None:
        """The blocks are gone: ODP registrations lose the range."""
        for reg in self.registrations.values():
            if reg.odp and reg.overlaps(ino, index, count):
                a = max(index, reg.index)
                b = min(index + count, reg.index + reg.count)
                reg.invalidated.append((a, b))
                self.counters["odp_invalidations"] += 1
                reg.client.notify({"event": "invalidated", "mr": reg.id,
                                   "pages": [a, b - a]})

    # ---- status

    def pinned_pages(self, ino: int) -> int:
        n = 0
        with suppress(NativeError):
            for e in self.core.extents(ino):
                n += self.core.count_pinned(e.pfn, e.count)
        return n

    def status(self) -> dict[str, Any]:
        inos = ({x.ino for x in self.leases.values()} | set(self.holds)
                | {b.ino for b in self.breaks.values()}
                | {r.ino for r in self.registrations.values()})
        files = []
        for ino in sorted(inos):
            files.append({
                "ino": ino,
                "pinned_pages": self.pinned_pages(ino),
                "holds": self.holds.get(ino, 0),
                "leases": [x.describe() for x in self.leases.values() if x.ino == ino],
                "registrations": [r.describe() for r in self.registrations.values()
                                  if r.ino == ino],
                "breaks": [b.describe() for b in self.breaks.values() if b.ino == ino],
                "dma_inflight": sum(1 for x in self.leases.values()
                                    if x.ino == ino and x.kind == ALLOCATED
                                    and not x.what.startswith("mr")),
                "lock": self.locks[ino].statistics() if ino in self.locks else None,
            })
        return {"unsafe_free_pinned": self.unsafe,
                "lease_break_time": self.lease_break_time,
                "files": files, "revocations": self.revocations[-16:],
                "recent_breaks": self.history[-16:], "counters": dict(self.counters)}
