"""`daxfs` subcommands over the control socket: pin, dma, dio, lease, status.

Each prints one line per event (flushed, so scripts can follow), and ends with
exit 0, or 1 and a one-line `daxfs: ...` error.  See docs/PROTOCOL.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from . import runtime
from .client import Client, ControlError, errname, split_path


def _events(c: Any, hold: float | None) -> Iterator[dict[str, Any]]:
    """Events from the daemon until `hold` seconds have passed (forever if None) or
    the connection ends."""
    deadline = None if hold is None else time.monotonic() + hold
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            return
        ev = c.wait_event(left)
        if ev is None:
            return
        yield ev

def _out(msg: str) -> None:
    print(msg, flush=True)


def _die(msg: str) -> int:
    print(f"daxfs: {msg}", file=sys.stderr, flush=True)
    return 1


def _err(e: OSError) -> str:
    name = errname(e.errno or 0)
    return f"{name}: {e.strerror if e.strerror else e}"


def _int(text: str) -> int:
    from .cli import parse_size

    return 0 if text.strip() in ("0", "0b") else parse_size(text)


def _connect(path: str) -> tuple[Client, str]:
    mnt, rel = split_path(path)
    return Client(mnt), rel


# ---------------------------------------------------------------- pin


def cmd_pin(args: argparse.Namespace) -> int:
    try:
        c, rel = _connect(args.file)
    except (OSError, ValueError) as e:
        return _die(str(e))
    with c:
        try:
            lease = None
            if not args.odp and not args.no_lease:
                lease = c.lease_acquire(rel, args.offset, args.length,
                                        exclusive=args.exclusive)["lease"]
            r = c.register(rel, args.offset, args.length, access=args.access, odp=args.odp)
        except ControlError as e:
            return _die(f"register {args.file}: {_err(e)}")
        mr = r["mr"]
        _out(f"registered mr={mr} lease={lease} pages={r['pages']} odp={int(args.odp)} "
             f"pid={os.getpid()}")
        for ev in _events(c, args.hold):
            kind = ev.get("event")
            if kind == "lease_break":
                _out(f"lease_break lease={ev['lease']} what={ev.get('what')!r}")
                if args.ignore_breaks:
                    continue
                time.sleep(args.release_delay)  # the holder's own reaction time (CLI option)
                c.deregister(mr)
                if lease is not None:
                    try:
                        c.lease_release(lease)
                    except ControlError:
                        pass
                _out(f"released mr={mr} lease={lease}")
                return 0
            if kind in ("revoked", "invalidated"):
                _out(f"{kind} {json.dumps({k: v for k, v in ev.items() if k != 'event'})}")
                if args.probe:
                    try:
                        c.post(mr, "write", 0, min(4096, args.length), pattern=1)
                        _out("probe: post ok")
                    except ControlError as e:
                        _out(f"probe: post failed {_err(e)}")
                if kind == "revoked":
                    return 0
        try:
            c.deregister(mr)
        except ControlError as e:
            _out(f"deregister: {_err(e)}")
        _out(f"released mr={mr}")
    return 0


# ---------------------------------------------------------------- dma / dio


def _print_result(what: str, r: dict[str, Any]) -> None:
    _out(f"{what}: ok nbytes={r['nbytes']} elapsed={r['elapsed']:.3f}s")


def cmd_dma(args: argparse.Namespace) -> int:
    try:
        if args.mr is not None:
            c, rel = Client(args.target), ""
        else:
            c, rel = _connect(args.target)
    except (OSError, ValueError) as e:
        return _die(str(e))
    kw: dict[str, Any] = {"delay": args.delay}
    if args.pattern is not None:
        kw["pattern"] = args.pattern
    elif args.kind == "write":
        if args.data is None:
            return _die("dma write: give --pattern SEED or --data TEXT")
        data = args.data.encode()
        kw["data"] = (data * (args.length // max(1, len(data)) + 1))[: args.length]
    with c:
        try:
            if args.mr is not None:
                r = c.post(args.mr, args.kind, args.offset, args.length, **kw)
            else:
                r = c.dma(rel, args.kind, args.offset, args.length, **kw)
        except ControlError as e:
            return _die(f"dma {args.kind}: {_err(e)}")
    _print_result(f"dma {args.kind}", r)
    if args.kind == "read" and args.pattern is None and "data" in r:
        import base64

        payload = base64.b64decode(r["data"])
        if args.out:
            with open(args.out, "wb") as f:
                f.write(payload)
        else:
            sys.stdout.buffer.write(payload)
    return 0


def _on_daxfs(path: str) -> bool:
    try:
        split_path(path)
        return True
    except (OSError, ValueError):
        return False


def cmd_dio(args: argparse.Namespace) -> int:
    to_file = _on_daxfs(args.to)
    if not to_file and not _on_daxfs(args.src):
        return _die("dio: neither --from nor --to is a file on a daxfs mount")
    file, other = (args.to, args.src) if to_file else (args.src, args.to)
    try:
        fd = (os.open(other, os.O_RDONLY) if to_file
              else os.open(other, os.O_WRONLY | os.O_CREAT, 0o644))
    except OSError as e:
        return _die(f"{other}: {e.strerror}")
    try:
        c, rel = _connect(file)
        with c:
            t0 = time.monotonic()
            r = c.dio(rel, fd, args.offset, args.length,
                      direction="to_file" if to_file else "from_file",
                      fd_offset=args.fd_offset, delay=args.delay)
    except ControlError as e:
        return _die(f"dio: {_err(e)}")
    except (OSError, ValueError) as e:
        return _die(str(e))
    finally:
        os.close(fd)
    _out(f"dio {'to' if to_file else 'from'} {file}: ok nbytes={r['nbytes']} "
         f"elapsed={time.monotonic() - t0:.3f}s done_at={time.time():.6f}")
    return 0


# ---------------------------------------------------------------- lease


def cmd_lease(args: argparse.Namespace) -> int:
    try:
        c, rel = _connect(args.file)
    except (OSError, ValueError) as e:
        return _die(str(e))
    with c:
        try:
            r = c.lease_acquire(rel, args.offset, args.length, exclusive=args.exclusive)
        except ControlError as e:
            return _die(f"lease: {_err(e)}")
        _out(f"lease={r['lease']} kind={r['kind']} pages={r['pages']} pid={os.getpid()}")
        if args.then_truncate is not None:
            try:
                c.truncate(rel, args.then_truncate)
                _out("own truncate: ok")
            except ControlError as e:
                _out(f"own truncate: failed {_err(e)}")
        for ev in _events(c, args.hold):
            _out(f"{ev['event']} {json.dumps({k: v for k, v in ev.items() if k != 'event'})}")
            if ev["event"] == "lease_break" and not args.ignore_breaks:
                break
            if ev["event"] == "revoked":
                return 0
        try:
            c.lease_release(r["lease"])
        except ControlError:
            pass
        _out(f"released lease={r['lease']}")
    return 0


# ---------------------------------------------------------------- status


def _status_text(info: dict[str, Any], st: dict[str, Any] | None) -> str:
    lines = [f"mount: {info.get('mountpoint')} image={info.get('image')} pid={info.get('pid')} "
             f"dax={info.get('dax')}"]
    if st is None:
        lines.append("control socket: not answering")
        return "\n".join(lines)
    lines.append(f"mode: {'UNSAFE (unsafe_free_pinned)' if st['unsafe_free_pinned'] else 'safe'}"
                 f"  lease_break_time={st['lease_break_time']}s")
    lines.append(f"collisions: {st['collisions']}")
    for r in st["collision_records"]:
        lines.append(f"  collision #{r['seq']} {r['kind']} pfn={r['pfn']} ino={r['ino']} "
                     f"page={r['index']} new_ino={r['new_ino']} pins={r['pins']}")
    core = st["core"]
    lines.append(f"pinned pages: {core.get('pinned_pages')}  dma in flight: "
                 f"{core.get('dma_queued', 0) + core.get('dma_running', 0)}  clients: "
                 f"{len(st['clients'])}")
    for f in st["files"]:
        lines.append(f"file ino={f['ino']}: pinned_pages={f['pinned_pages']} "
                     f"dma_inflight={f['dma_inflight']}")
        for x in f["leases"]:
            extra = f" BREAKING for {x['breaking_for']}s" if x["breaking_for"] is not None else ""
            lines.append(f"  lease {x['id']} {x['kind']} pages={x['pages']} {x['what']} "
                         f"holder={x['holder']}{extra}")
        for r in f["registrations"]:
            state = f" REVOKED ({r['revoked']})" if r["revoked"] else ""
            lines.append(f"  mr {r['id']} [{r['offset']}+{r['length']}) {r['access']} "
                         f"odp={r['odp']} pinned={r['pinned_pages']} "
                         f"holder={r['holder']}{state}")
        for b in f["breaks"]:
            lines.append(f"  {b['what']}: {b['state']} for {b['waiting_for']}s "
                         f"(pages {b['pages']}, wakeups {b['wakeups']})")
    for r in st["revocations"]:
        lines.append(f"revoked: lease {r['lease']} ino={r['ino']} holder={r['holder']} "
                     f"registrations={r['registrations']} ({r['break']})")
    lines.append("counters: " + " ".join(f"{k}={v}" for k, v in st["counters"].items()))
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    mnt = args.mountpoint
    info = runtime.read_info(mnt)
    if info is None or not runtime.is_mounted(mnt):
        return _die(f"{mnt}: not a daxfs mount")
    while True:
        st = None
        try:
            with Client(info.get("socket") or str(runtime.socket_path(mnt)), timeout=10) as c:
                st = c.status()
                st.pop("ok", None)
                st.pop("id", None)
        except OSError as e:
            if args.json:
                return _die(f"control socket: {e}")
        if args.json:
            print(json.dumps({"info": info, **(st or {})}, indent=1), flush=True)
        else:
            _out(_status_text(info, st))
        if not args.watch:
            return 0
        time.sleep(args.watch)  # --watch: the refresh interval the user asked for
        _out("")


# ---------------------------------------------------------------- parser


def add_subcommands(sub: Any) -> None:
    """Add pin, dma, dio, lease and status to ``daxfs``'s subparsers."""
    m = sub.add_parser("pin", help="register a file range (RDMA MR) and hold it")
    m.add_argument("file")
    m.add_argument("--offset", type=_int, default=0)
    m.add_argument("--length", type=_int, required=True)
    m.add_argument("--hold", type=float, default=None, help="seconds (default: until a break)")
    m.add_argument("--odp", action="store_true", help="on-demand paging: no long-term pins")
    m.add_argument("--ignore-breaks", action="store_true", help="do not honour lease breaks")
    m.add_argument("--access", choices=("r", "w", "rw"), default="rw")
    m.add_argument("--exclusive", action="store_true", help="take an exclusive layout lease")
    m.add_argument("--no-lease", action="store_true", help="register without a layout lease")
    m.add_argument("--probe", action="store_true",
                   help="after a revocation/invalidation, try a DMA and print the result")
    m.add_argument("--release-delay", type=float, default=0.0,
                   help="seconds to take before honouring a break")
    m.set_defaults(func=cmd_pin)

    m = sub.add_parser("dma", help="one DMA into/out of a file range or a registration")
    m.add_argument("kind", choices=("write", "read"))
    m.add_argument("target", help="a file on the mount, or the mountpoint with --mr")
    m.add_argument("--mr", type=int, default=None, help="registration id (like an rkey)")
    m.add_argument("--offset", type=_int, default=0)
    m.add_argument("--length", type=_int, required=True)
    m.add_argument("--pattern", type=int, default=None,
                   help="write the pattern of SEED / verify it on read")
    m.add_argument("--data", default=None, help="write this text (repeated)")
    m.add_argument("--out", default=None, help="read: write the bytes here")
    m.add_argument("--delay", type=float, default=0.0, help="seconds before the copy")
    m.set_defaults(func=cmd_dma)

    m = sub.add_parser("dio", help="direct I/O between a file and a file on the mount")
    m.add_argument("--from", dest="src", required=True)
    m.add_argument("--to", required=True)
    m.add_argument("--offset", type=_int, default=0, help="offset in the daxfs file")
    m.add_argument("--fd-offset", type=_int, default=0, help="offset in the other file")
    m.add_argument("--length", type=_int, required=True)
    m.add_argument("--delay", type=float, default=0.0, help="seconds before the copy")
    m.set_defaults(func=cmd_dio)

    m = sub.add_parser("lease", help="take a layout lease and hold it")
    m.add_argument("file")
    m.add_argument("--offset", type=_int, default=0)
    m.add_argument("--length", type=_int, required=True)
    m.add_argument("--exclusive", action="store_true")
    m.add_argument("--hold", type=float, default=None)
    m.add_argument("--ignore-breaks", action="store_true")
    m.add_argument("--then-truncate", type=int, default=None,
                   help="truncate the file through the socket while holding (EDEADLK)")
    m.set_defaults(func=cmd_lease)


def add_status(sub: Any) -> None:
    m = sub.add_parser("status", help="a mount's pins, leases, breaks, DMA and collisions")
    m.add_argument("--json", action="store_true")
    m.add_argument("--watch", type=float, nargs="?", const=1.0, default=None,
                   help="refresh every N seconds (default 1)")
    m.add_argument("mountpoint")
    m.set_defaults(func=cmd_status)
