"""Minimal pyfuse3 filesystem for tests/native/test_fuseext.py.

Run in a subprocess (so that fuse_ext.install() precedes ``import pyfuse3``)::

    python fuseext_testfs.py MOUNTPOINT [--no-allow-mmap] [--max-pages N]

In-memory files in the root directory:

    data   page-cached file, 64 KiB of b"d"; fallocate/lseek/copy target
    other  page-cached file, b"other-content"
    dio    direct_io file (FOPEN_DIRECT_IO), 1 MiB of b"i"
    log    direct_io, read-only: JSON lines, one per handler call
    info   direct_io, read-only: JSON of fuse_ext.info()
    ctl    direct_io, write-only: "release" releases slow fallocates,
           "clear" empties the log

fallocate with length 7777 fails with ENOSPC, with 6666 raises ValueError
(-> EIO); with length 8888 it blocks until released via ctl or interrupted
(then EINTR).  Size-changing setattr reaches ExtHandler.setattr_size (logged
"setattr_size"), other setattrs pyfuse3's MemFs.setattr (logged "setattr");
truncating to 8888 blocks like the slow fallocate, 7777 fails with ENOSPC.  ctl "stop-serve" cancels fuse_ext.serve(); --missing NAME
hides a handler method (-> ENOSYS).  lseek(SEEK_DATA) returns
offset + 100 (ENXIO past the end - 100), lseek(SEEK_HOLE) returns the size.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from daxfs import fuse_ext  # noqa: E402

fuse_ext.install()

import pyfuse3  # noqa: E402
import trio  # noqa: E402

ROOT = pyfuse3.ROOT_INODE
NAMES = {"data": 2, "other": 3, "dio": 4, "log": 5, "info": 6, "ctl": 7}
DIRECT = {4, 5, 6, 7}
SPECIAL = {5, 6, 7}
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10
SLOW_LENGTH = 8888
ENOSPC_LENGTH = 7777
BUG_LENGTH = 6666
MARK_SIZE = 5555
MARK_MTIME_NS = 1_234_567_890_123_456_789


class MemFs(pyfuse3.Operations):
    def __init__(self) -> None:
        super().__init__()
        self.files: dict[int, bytearray] = {
            2: bytearray(b"d" * 65536),
            3: bytearray(b"other-content"),
            4: bytearray(b"i" * (1 << 20)),
        }
        self.log: list[dict[str, Any]] = []
        self.release_event = trio.Event()
        self.next_fh = 100
        self.fh_ino: dict[int, int] = {}
        self.serve_scope = trio.CancelScope()

    def record(self, op: str, **kw: Any) -> None:
        self.log.append({"op": op, **kw})

    # --- metadata -------------------------------------------------------
    async def getattr(self, inode: int, ctx: Any = None) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = inode
        attr.entry_timeout = 0
        attr.attr_timeout = 0
        if inode == ROOT:
            attr.st_mode = stat.S_IFDIR | 0o755
            attr.st_nlink = 2
        elif inode in self.files or inode in SPECIAL:
            attr.st_mode = stat.S_IFREG | 0o666
            attr.st_nlink = 1
            attr.st_size = len(self.files[inode]) if inode in self.files else 0
        else:
            raise pyfuse3.FUSEError(errno.ENOENT)
        attr.st_blksize = 4096
        attr.st_blocks = (attr.st_size + 511) // 512
        return attr

    async def lookup(self, parent: int, name: bytes, ctx: Any = None) -> pyfuse3.EntryAttributes:
        ino = NAMES.get(name.decode()) if parent == ROOT else None
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return await self.getattr(ino)

    async def setattr(
        self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any
    ) -> pyfuse3.EntryAttributes:
        self.record(
            "setattr",
            ino=inode,
            fh=fh,
            update_size=bool(fields.update_size),
            update_mode=bool(fields.update_mode),
            mode=attr.st_mode,
            pid=ctx.pid,
        )
        if fields.update_size and inode in self.files:
            self.resize(inode, attr.st_size)
        return await self.getattr(inode)

    def resize(self, inode: int, size: int) -> None:
        data = self.files[inode]
        if size < len(data):
            del data[size:]
        else:
            data.extend(bytes(size - len(data)))

    async def opendir(self, inode: int, ctx: Any) -> int:
        if inode != ROOT:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        entries = sorted(NAMES.items(), key=lambda kv: kv[1])
        for name, ino in entries:
            if ino <= start_id:
                continue
            if not pyfuse3.readdir_reply(token, name.encode(), await self.getattr(ino), ino):
                return

    async def releasedir(self, fh: int) -> None:
        pass

    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        st = pyfuse3.StatvfsData()
        st.f_bsize = st.f_frsize = 4096
        st.f_blocks = st.f_bfree = st.f_bavail = 1 << 20
        st.f_namemax = 255
        return st

    # --- data -----------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        if inode not in self.files and inode not in SPECIAL:
            raise pyfuse3.FUSEError(errno.ENOENT)
        self.next_fh += 1
        self.fh_ino[self.next_fh] = inode
        return pyfuse3.FileInfo(fh=self.next_fh, direct_io=inode in DIRECT)

    def ino_of(self, fh: int) -> int:
        return self.fh_ino[fh]

    async def read(self, fh: int, off: int, size: int) -> bytes:
        ino = self.ino_of(fh)
        if ino == 5:
            return "".join(json.dumps(e) + "\n" for e in self.log).encode()[off : off + size]
        if ino == 6:
            return (json.dumps(fuse_ext.info()) + "\n").encode()[off : off + size]
        if ino == 7:
            return b""
        self.record("read", ino=ino, offset=off, size=size)
        return bytes(self.files[ino][off : off + size])

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        ino = self.ino_of(fh)
        if ino == 7:
            for cmd in buf.decode().split():
                if cmd == "release":
                    self.release_event.set()
                    self.release_event = trio.Event()
                elif cmd == "clear":
                    self.log.clear()
                elif cmd == "stop-serve":
                    self.serve_scope.cancel()
            return len(buf)
        if ino in SPECIAL:
            raise pyfuse3.FUSEError(errno.EACCES)
        self.record("write", ino=ino, offset=off, size=len(buf))
        data = self.files[ino]
        if off > len(data):
            data.extend(bytes(off - len(data)))
        data[off : off + len(buf)] = buf
        return len(buf)

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        self.fh_ino.pop(fh, None)

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass


class ExtHandler:
    """The fuse_ext handler: fallocate / lseek / copy_file_range."""

    def __init__(self, fs: MemFs) -> None:
        self.fs = fs

    async def fallocate(
        self,
        ino: int,
        fh: int,
        mode: int,
        offset: int,
        length: int,
        interrupted: trio.Event,
        *,
        ctx: dict[str, int],
    ) -> None:
        fs = self.fs
        fs.record(
            "fallocate",
            ino=ino,
            fh=fh,
            fh_ino=fs.fh_ino.get(fh),
            mode=mode,
            offset=offset,
            length=length,
            pid=ctx["pid"],
        )
        if length == ENOSPC_LENGTH:
            raise OSError(errno.ENOSPC, "test: no space")
        if length == BUG_LENGTH:
            raise ValueError("test: not an OSError")
        if length == SLOW_LENGTH:
            fs.record("fallocate_wait", ino=ino)
            try:
                with fuse_ext.cancel_on_interrupt(interrupted), trio.move_on_after(60):
                    await fs.release_event.wait()
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    fs.record("interrupted", ino=ino)
                raise
            fs.record("fallocate_done", ino=ino)
            return
        data = fs.files[ino]
        end = offset + length
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            stop = min(end, len(data))
            if stop > offset:
                data[offset:stop] = bytes(stop - offset)
        if not mode & FALLOC_FL_KEEP_SIZE and end > len(data):
            data.extend(bytes(end - len(data)))

    async def setattr_size(
        self,
        ino: int,
        fh: int | None,
        fields: dict[str, int],
        ctx: dict[str, int],
        interrupted: trio.Event,
    ) -> dict[str, Any]:
        fs = self.fs
        fs.record("setattr_size", ino=ino, fh=fh, fields=fields, ctx=ctx)
        size = fields["st_size"]
        if size == ENOSPC_LENGTH:
            raise OSError(errno.ENOSPC, "test: no space")
        if size == SLOW_LENGTH:
            fs.record("setattr_wait", ino=ino)
            try:
                with fuse_ext.cancel_on_interrupt(interrupted), trio.move_on_after(60):
                    await fs.release_event.wait()
            except OSError as exc:
                if exc.errno == errno.EINTR:
                    fs.record("interrupted", ino=ino)
                raise
        fs.resize(ino, size)
        attr = await fs.getattr(ino)
        out: dict[str, Any] = {
            name: getattr(attr, name)
            for name in (
                "st_ino",
                "st_mode",
                "st_nlink",
                "st_uid",
                "st_gid",
                "st_rdev",
                "st_size",
                "st_blocks",
                "st_blksize",
                "st_atime_ns",
                "st_mtime_ns",
                "st_ctime_ns",
            )
        }
        if size == MARK_SIZE:
            # Cached by the kernel for attr_timeout: shows the reply got through.
            out["st_mtime_ns"] = MARK_MTIME_NS
            out["attr_timeout"] = 60
        else:
            out["attr_timeout"] = 0
        return out

    async def lseek(
        self, ino: int, fh: int, offset: int, whence: int, interrupted: trio.Event
    ) -> int:
        size = len(self.fs.files[ino])
        self.fs.record("lseek", ino=ino, fh=fh, offset=offset, whence=whence)
        if whence == os.SEEK_DATA:
            if offset + 100 >= size:
                raise pyfuse3.FUSEError(errno.ENXIO)
            return offset + 100
        if whence == os.SEEK_HOLE:
            if offset >= size:
                raise OSError(errno.ENXIO, "past end")
            return size
        raise OSError(errno.EINVAL, "whence")

    async def copy_file_range(
        self,
        ino_in: int,
        fh_in: int,
        off_in: int,
        ino_out: int,
        fh_out: int,
        off_out: int,
        length: int,
        flags: int,
        interrupted: trio.Event,
    ) -> int:
        self.fs.record(
            "copy_file_range",
            ino_in=ino_in,
            off_in=off_in,
            ino_out=ino_out,
            off_out=off_out,
            length=length,
            flags=flags,
        )
        src = self.fs.files[ino_in][off_in : off_in + length]
        dst = self.fs.files[ino_out]
        if off_out > len(dst):
            dst.extend(bytes(off_out - len(dst)))
        dst[off_out : off_out + len(src)] = src
        return len(src)


class Restricted:
    """Exposes only some of the handler's methods (the rest get ENOSYS)."""

    def __init__(self, inner: ExtHandler, missing: set[str]) -> None:
        self._inner = inner
        self._missing = missing

    def __getattr__(self, name: str) -> Any:
        if name in self._missing:
            raise AttributeError(name)
        return getattr(self._inner, name)


async def amain(fs: MemFs, handler: object) -> None:
    async with trio.open_nursery() as nursery:

        async def run_serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            with fs.serve_scope:
                await fuse_ext.serve(handler, task_status=task_status)

        await nursery.start(run_serve)
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mountpoint")
    parser.add_argument("--no-allow-mmap", action="store_true")
    parser.add_argument("--max-pages", type=int, default=None)
    parser.add_argument("--missing", action="append", default=[])
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO)

    fuse_ext.configure(direct_io_allow_mmap=not args.no_allow_mmap, max_pages=args.max_pages)
    fs = MemFs()
    options = set(pyfuse3.default_options)
    options.add("fsname=fuseext_testfs")
    if args.debug:
        options.add("debug")
    pyfuse3.init(fs, args.mountpoint, options)
    try:
        trio.run(amain, fs, Restricted(ExtHandler(fs), set(args.missing)))
    finally:
        pyfuse3.close(unmount=True)


if __name__ == "__main__":
    main()
