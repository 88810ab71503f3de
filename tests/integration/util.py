"""Helpers for the mounted tests.

Syscalls that the ``os`` module lacks (renameat2, utimensat with UTIME_NOW /
UTIME_OMIT, fallocate with flags, getdents64 with a chosen buffer size) are
called through ctypes; ``run_as`` runs a function in a forked child that has
dropped root, so that the kernel's permission checks (the mount uses
``default_permissions``) can be exercised; ``snapshot`` records a tree so that
two trees, or one tree before and after a remount, can be compared.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import pickle
import platform
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

_libc = ctypes.CDLL(None, use_errno=True)

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_ZERO_RANGE = 0x10

NOBODY = 65534
NOGROUP = 65534
BLOCK = 4096
MAX_FILE_SIZE = 2**44

_SYS_GETDENTS64 = {"x86_64": 217, "aarch64": 61}.get(platform.machine())


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


_libc.renameat2.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
]
_libc.renameat2.restype = ctypes.c_int
_libc.utimensat.argtypes = [
    ctypes.c_int, ctypes.c_char_p, ctypes.POINTER(_Timespec), ctypes.c_int,
]
_libc.utimensat.restype = ctypes.c_int
_libc.fallocate64.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.fallocate64.restype = ctypes.c_int
_libc.getxattr.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
_libc.getxattr.restype = ctypes.c_ssize_t
_libc.syscall.restype = ctypes.c_long


def _check(ret: int) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return ret


def renameat2(src: str | os.PathLike[str], dst: str | os.PathLike[str], flags: int) -> None:
    """rename(2) with RENAME_NOREPLACE / RENAME_EXCHANGE flags."""
    _check(_libc.renameat2(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), flags))


NOW: tuple[int, int] = (0, UTIME_NOW)
OMIT: tuple[int, int] = (0, UTIME_OMIT)


def utimensat(
    path: str | os.PathLike[str],
    atime: tuple[int, int],
    mtime: tuple[int, int],
    *,
    follow_symlinks: bool = True,
) -> None:
    """utimensat(2); each time is (sec, nsec), or NOW / OMIT."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    flags = 0 if follow_symlinks else AT_SYMLINK_NOFOLLOW
    _check(_libc.utimensat(AT_FDCWD, os.fsencode(path), times, flags))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with mode flags (os.posix_fallocate has none)."""
    _check(_libc.fallocate64(fd, mode, offset, length))


def getxattr_raw(path: str | os.PathLike[str], name: str, size: int) -> int:
    """getxattr(2) with an explicit buffer size; returns the value length."""
    buf = ctypes.create_string_buffer(max(size, 1))
    return _check(_libc.getxattr(os.fsencode(path), name.encode(), buf, size))


def getdents64(fd: int, bufsize: int) -> list[tuple[int, int, int, str]]:
    """One getdents64(2) call: [(d_ino, d_off, d_type, name)]; [] at the end."""
    if _SYS_GETDENTS64 is None:
        pytest.skip(f"getdents64 syscall number unknown on {platform.machine()}")
    buf = ctypes.create_string_buffer(bufsize)
    n = _check(
        _libc.syscall(
            ctypes.c_long(_SYS_GETDENTS64), ctypes.c_int(fd), buf, ctypes.c_uint(bufsize)
        )
    )
    raw = buf.raw[:n]
    out = []
    pos = 0
    while pos < n:
        d_ino, d_off, d_reclen, d_type = struct.unpack_from("<QqHB", raw, pos)
        name = raw[pos + 19 : pos + d_reclen].split(b"\0", 1)[0]
        out.append((d_ino, d_off, d_type, os.fsdecode(name)))
        pos += d_reclen
    return out


@contextlib.contextmanager
def expect_errno(*expected: int) -> Iterator[None]:
    """Assert that the block raises OSError with one of the given errnos."""
    names = "/".join(errno.errorcode.get(e, str(e)) for e in expected)
    try:
        yield
    except OSError as exc:
        got = errno.errorcode.get(exc.errno or 0, str(exc.errno))
        assert exc.errno in expected, f"expected {names}, got {got}: {exc}"
    else:
        pytest.fail(f"expected OSError {names}, but the call succeeded")


def run_as(
    uid: int,
    gid: int,
    fn: Callable[..., Any],
    *args: Any,
    cwd: str | os.PathLike[str] | None = None,
    groups: tuple[int, ...] = (),
) -> Any:
    """Run fn(*args) in a forked child with the given credentials.

    The child changes to ``cwd`` first (as root), so that relative paths work
    even if the path leading to the mount is not searchable by ``uid``.
    Returns fn's (picklable) result; an OSError in the child is re-raised
    here with the same errno; any other exception becomes an AssertionError.
    """
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            os.close(rfd)
            if cwd is not None:
                os.chdir(cwd)
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            try:
                result: tuple[Any, ...] = ("ok", fn(*args))
            except OSError as exc:
                result = ("oserror", exc.errno, str(exc))
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                result = ("exc", repr(exc))
            data = pickle.dumps(result)
            while data:
                data = data[os.write(wfd, data) :]
        except BaseException:  # noqa: BLE001
            code = 70
        finally:
            os._exit(code)
    os.close(wfd)
    chunks = []
    with os.fdopen(rfd, "rb") as reader:
        while chunk := reader.read(65536):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "privilege-dropping child failed"
    result = pickle.loads(b"".join(chunks))
    if result[0] == "oserror":
        raise OSError(result[1], result[2])
    if result[0] == "exc":
        raise AssertionError(f"child raised {result[1]}")
    return result[1]


def as_nobody(fn: Callable[..., Any], *args: Any, cwd: str | os.PathLike[str]) -> Any:
    return run_as(NOBODY, NOGROUP, fn, *args, cwd=cwd)


def pattern(n: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-at-block-granularity bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, counter)).digest() * 16
        counter += 1
    return bytes(out[:n])


def write_file(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def read_file(path: str | os.PathLike[str]) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Digest of a file's logical content that skips holes cheaply.

    Hashes (offset, block) for every 4 KiB-aligned block that is not all
    zeros, found via SEEK_DATA/SEEK_HOLE, plus the size; equal contents give
    equal digests whatever the hole layout, and a 4 GiB sparse file costs
    only its data.
    """
    h = hashlib.sha256()
    zero = bytes(BLOCK)
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        off = 0
        while off < size:
            try:
                start = os.lseek(fd, off, os.SEEK_DATA) & ~(BLOCK - 1)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    break
                raise
            end = min(size, -(-os.lseek(fd, start, os.SEEK_HOLE) // BLOCK) * BLOCK)
            pos = start
            while pos < end:
                chunk = os.pread(fd, min(1 << 20, end - pos), pos)
                if not chunk:
                    break
                for i in range(0, len(chunk), BLOCK):
                    block = chunk[i : i + BLOCK]
                    if block.count(0) != len(block) or block != zero[: len(block)]:
                        h.update(b"%d:" % (pos + i))
                        h.update(block)
                pos += len(chunk)
            off = max(end, off + BLOCK)
        h.update(b"size:%d" % size)
    finally:
        os.close(fd)
    return h.hexdigest()


def xattrs_of(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """All xattrs readable on path (not following symlinks)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return {}
        raise
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}


SNAPSHOT_KEYS = ("type", "mode", "uid", "gid", "size", "nlink", "mtime_ns", "rdev", "target",
                 "sha256", "xattrs")


def snapshot(
    root: str | os.PathLike[str],
    *,
    extra: tuple[str, ...] = (),
    xattr_prefix: str = "",
) -> dict[str, dict[str, Any]]:
    """Record every entry under root (root itself is '.').

    Keys per entry: SNAPSHOT_KEYS plus any of extra ('ctime_ns', 'blocks',
    'ino', 'linkgroup').  'size' is omitted for directories (it is
    filesystem-specific); 'linkgroup' is the sorted list of paths sharing the
    inode, which survives a copy whereas the inode number does not.
    """
    root = Path(root)
    entries: dict[str, dict[str, Any]] = {}
    by_ino: dict[int, list[str]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        names = [(rel_dir, None)] if rel_dir == "." else []
        names += [(os.path.normpath(os.path.join(rel_dir, n)), n) for n in dirnames + filenames]
        for rel, _ in names:
            p = root / rel
            st = os.lstat(p)
            rec: dict[str, Any] = {
                "type": stat.S_IFMT(st.st_mode),
                "mode": stat.S_IMODE(st.st_mode),
                "uid": st.st_uid,
                "gid": st.st_gid,
                "nlink": st.st_nlink,
                "mtime_ns": st.st_mtime_ns,
            }
            if not stat.S_ISDIR(st.st_mode):
                rec["size"] = st.st_size
                by_ino.setdefault(st.st_ino, []).append(rel)
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                rec["rdev"] = st.st_rdev
            if stat.S_ISLNK(st.st_mode):
                rec["target"] = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                rec["sha256"] = sha256_file(p)
            if not stat.S_ISLNK(st.st_mode):
                rec["xattrs"] = {
                    k: v for k, v in xattrs_of(p).items() if k.startswith(xattr_prefix)
                }
            if "ctime_ns" in extra:
                rec["ctime_ns"] = st.st_ctime_ns
            if "blocks" in extra:
                rec["blocks"] = st.st_blocks
            if "ino" in extra:
                rec["ino"] = st.st_ino
            entries[rel] = rec
    if "linkgroup" in extra:
        for group in by_ino.values():
            for rel in group:
                entries[rel]["linkgroup"] = sorted(group)
    return entries


def diff_snapshots(
    a: dict[str, dict[str, Any]],
    b: dict[str, dict[str, Any]],
    *,
    ignore: tuple[str, ...] = (),
    limit: int = 30,
) -> list[str]:
    """Human-readable differences between two snapshots (at most limit)."""
    out: list[str] = []
    for rel in sorted(a.keys() - b.keys()):
        out.append(f"{rel}: missing from second tree")
    for rel in sorted(b.keys() - a.keys()):
        out.append(f"{rel}: only in second tree")
    for rel in sorted(a.keys() & b.keys()):
        for key in sorted(a[rel].keys() | b[rel].keys()):
            if key in ignore:
                continue
            va, vb = a[rel].get(key), b[rel].get(key)
            if va != vb:
                out.append(f"{rel}: {key} {va!r} != {vb!r}")
    return out[:limit]


def statvfs_counts(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(free blocks in f_frsize units scaled to 4 KiB, free inodes)."""
    sv = os.statvfs(path)
    return sv.f_bfree * sv.f_frsize // BLOCK, sv.f_ffree


def fsync_path(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
