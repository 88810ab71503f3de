"""Filesystem logic without FUSE, on small images in tmp_path."""

from __future__ import annotations

import errno
import os
import stat

import pytest

from daxfs import format as fmt
from daxfs.errors import FsError, ImageError
from daxfs.fs import (
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_ZERO_RANGE,
    META_RESERVE,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    SEEK_DATA,
    SEEK_HOLE,
    XATTR_CREATE,
    XATTR_REPLACE,
    Filesystem,
)
from daxfs.pmem import PmemOps

BS = fmt.BLOCK_SIZE
ROOT = fmt.ROOT_INO
UID, GID = 1000, 1000


# -- helpers ------------------------------------------------------------------------------


def mk(fs: Filesystem, parent: int, name: bytes, data: bytes = b"", mode: int = 0o644) -> int:
    ino = fs.mknod(parent, name, stat.S_IFREG | mode, 0, UID, GID).ino
    if data:
        assert fs.write(ino, 0, data) == len(data)
    return ino


def mkd(fs: Filesystem, parent: int, name: bytes) -> int:
    return fs.mkdir(parent, name, 0o755, UID, GID).ino


def err(code: int, fn, *args, **kw) -> None:
    with pytest.raises(FsError) as ei:
        fn(*args, **kw)
    got = ei.value.errno
    assert got == code, f"got {errno.errorcode.get(got, got)}, want {errno.errorcode[code]}"


def ls(fs: Filesystem, ino: int) -> dict[bytes, int]:
    return {n: i for n, i, _c in fs.readdir(ino, 0) if n not in (b".", b"..")}


def rd(fs: Filesystem, ino: int, off: int = 0, size: int | None = None) -> bytes:
    if size is None:
        size = fs.get(ino).d.size - off
    return bytes(fs.read(ino, off, size))


def attr(fs: Filesystem, ino: int) -> fmt.DiskInode:
    return fs.get(ino).d


def bfree(fs: Filesystem) -> int:
    return fs.statfs().bfree


def ffree(fs: Filesystem) -> int:
    return fs.statfs().ffree


def pattern(n: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) & 0xFF for i in range(n))


def remount(fs: Filesystem, mount) -> Filesystem:
    path = fs.dev.path
    fs.close()
    return mount(path)


def crash(fs: Filesystem) -> None:
    """Lose the process: what was committed is in the image, nothing else."""
    fs.commit()
    fs.dev.close()


def gone(fs: Filesystem, ino: int) -> bool:
    try:
        fs.get(ino)
    except FsError as e:
        return e.errno == errno.ESTALE
    return False


# -- mkfs and mount -----------------------------------------------------------------------


def test_fresh_image(fs):
    root = fs.get(ROOT)
    assert root.is_dir() and root.d.nlink == 2
    assert list(fs.readdir(ROOT, 0)) == [(b".", ROOT, 1), (b"..", ROOT, 2)]
    assert fs.lookup(ROOT, b"..").ino == ROOT
    assert fs.lookup(ROOT, b".").ino == ROOT
    st = fs.statfs()
    assert st.blocks == fs.sb.block_count - fs.sb.data_start
    assert st.bfree == st.blocks  # the empty root has no directory block yet
    assert st.files == fs.sb.inode_count
    assert st.ffree == fs.sb.inode_count - 1
    assert st.bsize == BS and st.namemax == 255


def test_mkfs_refuses_to_overwrite(tmp_path, image):
    from daxfs.fs import mkfs

    with pytest.raises(ImageError, match="already holds a daxfs image"):
        mkfs(image, 4 << 20)
    other = tmp_path / "data.bin"
    other.write_bytes(b"precious")
    with pytest.raises(ImageError, match="not a daxfs image"):
        mkfs(str(other), 4 << 20)
    with pytest.raises(ImageError, match="too small"):
        mkfs(str(tmp_path / "tiny.img"), 64 * BS)


def test_second_mount_refused(fs, image):
    with pytest.raises(ImageError, match="in use"):
        Filesystem.from_image(image)


def test_needs_fsck_state_refuses_mount(fs, mount, image):
    fs.mark_corrupt("test")
    fs.close()
    with pytest.raises(ImageError, match="fsck"):
        mount(image)


def test_clean_state_after_close(fs, image):
    assert fs._state() == 0  # mounted: not clean
    fs.close()
    with open(image, "rb") as f:
        f.seek(fmt.SB_STATE_OFF)
        assert int.from_bytes(f.read(8), "little") == fmt.STATE_CLEAN
        f.seek(0)
        fmt.Superblock.unpack(f.read(BS), os.path.getsize(image))


def test_readonly_mount(fs, mount):
    ino = mk(fs, ROOT, b"f", b"data")
    fs.close()
    ro = mount(readonly=True)
    assert rd(ro, ino) == b"data"
    err(errno.EROFS, ro.write, ino, 0, b"x")
    err(errno.EROFS, mk, ro, ROOT, b"g")
    err(errno.EROFS, ro.unlink, ROOT, b"f")
    err(errno.EROFS, ro.setxattr, ino, b"user.a", b"1")


# -- create, mkdir, names -----------------------------------------------------------------


def test_create_and_lookup(fs):
    ino = mk(fs, ROOT, b"file", mode=0o640)
    d = attr(fs, ino)
    assert stat.S_ISREG(d.mode) and stat.S_IMODE(d.mode) == 0o640
    assert (d.uid, d.gid, d.nlink, d.size) == (UID, GID, 1, 0)
    assert fs.lookup(ROOT, b"file").ino == ino
    assert ls(fs, ROOT) == {b"file": ino}
    err(errno.EEXIST, mk, fs, ROOT, b"file")
    err(errno.ENOENT, fs.lookup, ROOT, b"nope")


def test_mknod_types(fs):
    fifo = fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 0, 0)
    assert stat.S_ISFIFO(fifo.d.mode)
    dev = fs.mknod(ROOT, b"dev", stat.S_IFCHR | 0o600, 0x0103, 0, 0)
    assert dev.d.rdev == 0x0103
    plain = fs.mknod(ROOT, b"plain", 0o600, 0, 0, 0)
    assert stat.S_ISREG(plain.d.mode)
    err(errno.EINVAL, fs.mknod, ROOT, b"d", stat.S_IFDIR | 0o755, 0, 0, 0)
    err(errno.EINVAL, fs.mknod, ROOT, b"l", stat.S_IFLNK | 0o777, 0, 0, 0)


def test_name_checks(fs):
    mk(fs, ROOT, b"n" * 255)
    err(errno.ENAMETOOLONG, mk, fs, ROOT, b"n" * 256)
    err(errno.ENAMETOOLONG, mkd, fs, ROOT, b"d" * 256)
    err(errno.ENAMETOOLONG, fs.lookup, ROOT, b"n" * 256)
    err(errno.ENAMETOOLONG, fs.symlink, ROOT, b"s" * 256, b"t", 0, 0)
    err(errno.EINVAL, mk, fs, ROOT, b"")
    err(errno.EINVAL, mk, fs, ROOT, b"a/b")
    err(errno.EINVAL, mk, fs, ROOT, b"a\0b")
    assert ls(fs, ROOT) == {b"n" * 255: fs.lookup(ROOT, b"n" * 255).ino}


def test_create_under_non_directory(fs):
    f = mk(fs, ROOT, b"f")
    err(errno.ENOTDIR, mk, fs, f, b"x")
    err(errno.ENOTDIR, fs.lookup, f, b"x")
    err(errno.ENOTDIR, list, fs.readdir(f, 0))


def test_mkdir_nlink_and_dotdot(fs):
    a = mkd(fs, ROOT, b"a")
    assert attr(fs, a).nlink == 2
    assert attr(fs, ROOT).nlink == 3
    b = mkd(fs, a, b"b")
    assert attr(fs, a).nlink == 3
    assert fs.lookup(b, b"..").ino == a
    assert fs.lookup(a, b"..").ino == ROOT
    assert list(fs.readdir(b, 0))[:2] == [(b".", b, 1), (b"..", a, 2)]
    mk(fs, a, b"file")
    assert attr(fs, a).nlink == 3  # files do not count


def test_setgid_directory_inheritance(fs):
    fs.setattr(ROOT, mode=0o2775, gid=50)
    d = fs.mkdir(ROOT, b"d", 0o755, UID, GID)
    assert d.d.gid == 50 and d.d.mode & stat.S_ISGID
    f = fs.get(mk(fs, ROOT, b"f"))
    assert f.d.gid == 50 and not f.d.mode & stat.S_ISGID


def test_create_in_removed_directory(fs):
    d = mkd(fs, ROOT, b"d")
    fs.get(d).lookups = 1  # the kernel still holds it (a process's cwd)
    fs.rmdir(ROOT, b"d")
    assert attr(fs, d).nlink == 0
    err(errno.ENOENT, mk, fs, d, b"x")
    err(errno.ENOENT, mkd, fs, d, b"y")
    fs.forget(d, 1)
    assert gone(fs, d)


# -- symlinks -------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, fmt.INLINE_AREA, fmt.INLINE_AREA + 1,
                                    fmt.MAX_SYMLINK])
def test_symlink_round_trip(fs, mount, length):
    target = pattern(length, 3).replace(b"\0", b"z")
    free0 = bfree(fs)
    mk(fs, ROOT, b"first")  # the root's directory block
    free0 -= 1
    s = fs.symlink(ROOT, b"s", target, UID, GID)
    assert stat.S_ISLNK(s.d.mode) and s.d.size == length
    assert fs.readlink(s.ino) == target
    long = length > fmt.INLINE_AREA
    assert bfree(fs) == free0 - (1 if long else 0)
    assert bool(s.d.aux_block) == long
    fs = remount(fs, mount)
    assert fs.readlink(fs.lookup(ROOT, b"s").ino) == target
    fs.unlink(ROOT, b"s")
    assert bfree(fs) == free0


def test_symlink_errors(fs):
    assert fmt.MAX_SYMLINK == 4095  # PATH_MAX - 1
    err(errno.ENAMETOOLONG, fs.symlink, ROOT, b"s", b"x" * (fmt.MAX_SYMLINK + 1), 0, 0)
    err(errno.ENOENT, fs.symlink, ROOT, b"s", b"", 0, 0)
    f = mk(fs, ROOT, b"f")
    err(errno.EINVAL, fs.readlink, f)
    err(errno.EINVAL, fs.readlink, ROOT)


def test_long_symlink_on_existing_name_does_not_leak(fs, mount):
    mk(fs, ROOT, b"s")
    free0 = bfree(fs)
    err(errno.EEXIST, fs.symlink, ROOT, b"s", b"t" * 500, 0, 0)
    assert bfree(fs) == free0
    fs = remount(fs, mount)
    assert bfree(fs) == free0


def test_long_symlink_unlinked_before_commit(fs, mount):
    mk(fs, ROOT, b"first")
    free0 = bfree(fs)
    fs.symlink(ROOT, b"s", b"t" * 500, 0, 0)
    fs.unlink(ROOT, b"s")
    assert bfree(fs) == free0
    fs.commit()
    fs = remount(fs, mount)
    assert bfree(fs) == free0
    assert ls(fs, ROOT) == {b"first": fs.lookup(ROOT, b"first").ino}


# -- link, unlink, rmdir ----------------------------------------------------------------------


def test_link_and_unlink_nlink(fs):
    d = mkd(fs, ROOT, b"d")
    f = mk(fs, ROOT, b"f", b"hello")
    assert fs.link(f, d, b"g").ino == f
    assert attr(fs, f).nlink == 2
    assert fs.lookup(d, b"g").ino == f
    err(errno.EEXIST, fs.link, f, d, b"g")
    err(errno.EPERM, fs.link, d, ROOT, b"dirlink")
    err(errno.ENAMETOOLONG, fs.link, f, ROOT, b"x" * 256)
    fs.unlink(ROOT, b"f")
    assert attr(fs, f).nlink == 1
    assert rd(fs, f) == b"hello"
    err(errno.ENOENT, fs.lookup, ROOT, b"f")
    fs.unlink(d, b"g")
    assert gone(fs, f)


def test_unlink_errors(fs):
    mkd(fs, ROOT, b"d")
    err(errno.ENOENT, fs.unlink, ROOT, b"nope")
    err(errno.EISDIR, fs.unlink, ROOT, b"d")


def test_unlink_frees_inode_and_blocks(fs):
    mk(fs, ROOT, b"keep")
    b0, i0 = bfree(fs), ffree(fs)
    f = mk(fs, ROOT, b"f", pattern(3 * BS))
    assert bfree(fs) == b0 - 3 and ffree(fs) == i0 - 1
    fs.unlink(ROOT, b"f")
    assert bfree(fs) == b0 and ffree(fs) == i0
    assert gone(fs, f)


def test_rmdir(fs):
    a = mkd(fs, ROOT, b"a")
    mkd(fs, a, b"b")
    mk(fs, ROOT, b"f")
    i0 = ffree(fs)
    err(errno.ENOTEMPTY, fs.rmdir, ROOT, b"a")
    err(errno.ENOTDIR, fs.rmdir, ROOT, b"f")
    err(errno.ENOENT, fs.rmdir, ROOT, b"nope")
    err(errno.EINVAL, fs.rmdir, a, b".")
    err(errno.ENOTEMPTY, fs.rmdir, a, b"..")
    assert attr(fs, a).nlink == 3
    fs.rmdir(a, b"b")
    assert attr(fs, a).nlink == 2
    assert ffree(fs) == i0 + 1
    assert attr(fs, ROOT).nlink == 3
    fs.rmdir(ROOT, b"a")
    assert attr(fs, ROOT).nlink == 2
    assert gone(fs, a)


def test_rmdir_frees_directory_blocks(fs):
    mk(fs, ROOT, b"first")
    b0 = bfree(fs)
    d = mkd(fs, ROOT, b"d")
    for i in range(100):
        mk(fs, d, b"%0100d" % i)
    used = b0 - bfree(fs)
    assert used >= 3
    for i in range(100):
        fs.unlink(d, b"%0100d" % i)
    fs.rmdir(ROOT, b"d")
    assert bfree(fs) == b0


# -- rename -------------------------------------------------------------------------------------


def test_rename_same_directory(fs):
    f = mk(fs, ROOT, b"a", b"data")
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert ls(fs, ROOT) == {b"b": f}
    assert rd(fs, f) == b"data"
    err(errno.ENOENT, fs.rename, ROOT, b"a", ROOT, b"c")


def test_rename_across_directories(fs):
    d1, d2 = mkd(fs, ROOT, b"d1"), mkd(fs, ROOT, b"d2")
    f = mk(fs, d1, b"f")
    fs.rename(d1, b"f", d2, b"g")
    assert ls(fs, d1) == {} and ls(fs, d2) == {b"g": f}
    assert attr(fs, d1).nlink == 2 and attr(fs, d2).nlink == 2


def test_rename_directory_across_parents(fs):
    d1, d2 = mkd(fs, ROOT, b"d1"), mkd(fs, ROOT, b"d2")
    sub = mkd(fs, d1, b"sub")
    assert attr(fs, d1).nlink == 3
    fs.rename(d1, b"sub", d2, b"moved")
    assert attr(fs, d1).nlink == 2
    assert attr(fs, d2).nlink == 3
    assert attr(fs, sub).nlink == 2
    assert fs.lookup(sub, b"..").ino == d2
    assert list(fs.readdir(sub, 0))[1] == (b"..", d2, 2)


def test_rename_over_file_frees_target(fs):
    mk(fs, ROOT, b"first")
    b0, i0 = bfree(fs), ffree(fs)
    a = mk(fs, ROOT, b"a", b"AAAA")
    b = mk(fs, ROOT, b"b", pattern(2 * BS))
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert fs.lookup(ROOT, b"b").ino == a
    err(errno.ENOENT, fs.lookup, ROOT, b"a")
    assert gone(fs, b)
    assert bfree(fs) == b0 - 1 and ffree(fs) == i0 - 1


def test_rename_over_open_file_keeps_its_data(fs):
    a = mk(fs, ROOT, b"a", b"new")
    b = mk(fs, ROOT, b"b", b"old contents")
    fs.open(b)
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert attr(fs, b).nlink == 0
    assert rd(fs, b) == b"old contents"
    assert rd(fs, fs.lookup(ROOT, b"b").ino) == b"new"
    fs.release(b)
    assert gone(fs, b) and not gone(fs, a)


def test_rename_over_hardlink_of_itself_is_noop(fs):
    f = mk(fs, ROOT, b"a")
    fs.link(f, ROOT, b"b")
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert ls(fs, ROOT) == {b"a": f, b"b": f}
    assert attr(fs, f).nlink == 2
    fs.rename(ROOT, b"a", ROOT, b"a")
    assert ls(fs, ROOT) == {b"a": f, b"b": f}


def test_rename_dir_over_empty_dir(fs):
    p = mkd(fs, ROOT, b"p")
    a = mkd(fs, p, b"a")
    b = mkd(fs, ROOT, b"b")
    assert attr(fs, ROOT).nlink == 4
    fs.rename(p, b"a", ROOT, b"b")
    assert fs.lookup(ROOT, b"b").ino == a
    assert gone(fs, b)
    assert attr(fs, ROOT).nlink == 4  # lost b, gained a
    assert attr(fs, p).nlink == 2
    assert fs.lookup(a, b"..").ino == ROOT


def test_rename_dir_same_parent_over_empty_dir(fs):
    a = mkd(fs, ROOT, b"a")
    mkd(fs, ROOT, b"b")
    fs.rename(ROOT, b"a", ROOT, b"b")
    assert ls(fs, ROOT) == {b"b": a}
    assert attr(fs, ROOT).nlink == 3


def test_rename_type_errors(fs):
    d = mkd(fs, ROOT, b"d")
    full = mkd(fs, ROOT, b"full")
    mk(fs, full, b"x")
    mk(fs, ROOT, b"f")
    err(errno.ENOTEMPTY, fs.rename, ROOT, b"d", ROOT, b"full")
    err(errno.ENOTDIR, fs.rename, ROOT, b"d", ROOT, b"f")
    err(errno.EISDIR, fs.rename, ROOT, b"f", ROOT, b"d")
    err(errno.ENAMETOOLONG, fs.rename, ROOT, b"f", ROOT, b"x" * 256)
    err(errno.ENOTDIR, fs.rename, ROOT, b"f", fs.lookup(ROOT, b"f").ino, b"x")
    assert set(ls(fs, ROOT)) == {b"d", b"full", b"f"}
    assert ls(fs, d) == {}


def test_rename_noreplace(fs):
    a = mk(fs, ROOT, b"a")
    b = mk(fs, ROOT, b"b")
    err(errno.EEXIST, fs.rename, ROOT, b"a", ROOT, b"b", RENAME_NOREPLACE)
    assert ls(fs, ROOT) == {b"a": a, b"b": b}
    fs.rename(ROOT, b"a", ROOT, b"c", RENAME_NOREPLACE)
    assert ls(fs, ROOT) == {b"c": a, b"b": b}


def test_rename_bad_flags(fs):
    mk(fs, ROOT, b"a")
    mk(fs, ROOT, b"b")
    err(errno.EINVAL, fs.rename, ROOT, b"a", ROOT, b"b", RENAME_NOREPLACE | RENAME_EXCHANGE)
    err(errno.EINVAL, fs.rename, ROOT, b"a", ROOT, b"b", 4)  # RENAME_WHITEOUT


def test_rename_exchange_files(fs):
    a = mk(fs, ROOT, b"a", b"A")
    d = mkd(fs, ROOT, b"d")
    b = mk(fs, d, b"b", b"B")
    cookies = {n: c for n, _i, c in fs.readdir(ROOT, 0)}
    fs.rename(ROOT, b"a", d, b"b", RENAME_EXCHANGE)
    assert fs.lookup(ROOT, b"a").ino == b
    assert fs.lookup(d, b"b").ino == a
    assert {n: c for n, _i, c in fs.readdir(ROOT, 0)} == cookies  # entries stay in place
    err(errno.ENOENT, fs.rename, ROOT, b"a", ROOT, b"zz", RENAME_EXCHANGE)
    fs.rename(ROOT, b"a", ROOT, b"a", RENAME_EXCHANGE)  # same inode: nothing happens
    assert fs.lookup(ROOT, b"a").ino == b


def test_rename_exchange_dir_and_file_across_parents(fs):
    p1, p2 = mkd(fs, ROOT, b"p1"), mkd(fs, ROOT, b"p2")
    sub = mkd(fs, p1, b"sub")
    f = mk(fs, p2, b"f")
    fs.rename(p1, b"sub", p2, b"f", RENAME_EXCHANGE)
    assert fs.lookup(p1, b"sub").ino == f
    assert fs.lookup(p2, b"f").ino == sub
    assert attr(fs, p1).nlink == 2
    assert attr(fs, p2).nlink == 3
    assert fs.lookup(sub, b"..").ino == p2
    d = next(t for n, _i, t, _c in fs.get(p2).dir.after(0) if n == b"f")
    assert d == stat.S_IFDIR >> 12


def test_rename_directory_into_itself(fs):
    a = mkd(fs, ROOT, b"a")
    b = mkd(fs, a, b"b")
    c = mkd(fs, b, b"c")
    err(errno.EINVAL, fs.rename, ROOT, b"a", a, b"x")
    err(errno.EINVAL, fs.rename, ROOT, b"a", c, b"x")
    f = mk(fs, c, b"f")
    err(errno.EINVAL, fs.rename, ROOT, b"a", c, b"f", RENAME_EXCHANGE)
    err(errno.EINVAL, fs.rename, c, b"f", ROOT, b"a", RENAME_EXCHANGE)
    assert ls(fs, ROOT) == {b"a": a} and ls(fs, c) == {b"f": f}
    fs.rename(a, b"b", ROOT, b"b")  # moving up is fine
    assert fs.lookup(b, b"..").ino == ROOT


# -- readdir ------------------------------------------------------------------------------------


def test_readdir_cookies_resume_and_persist(fs, mount):
    d = mkd(fs, ROOT, b"d")
    inos = {b"e%03d" % i: mk(fs, d, b"e%03d" % i) for i in range(300)}
    listing = list(fs.readdir(d, 0))
    assert listing[0] == (b".", d, 1) and listing[1] == (b"..", ROOT, 2)
    cookies = [c for _n, _i, c in listing]
    assert cookies == sorted(cookies) and len(set(cookies)) == len(cookies)
    assert {n: i for n, i, _c in listing[2:]} == inos
    # Resume from any offset.
    assert list(fs.readdir(d, 1)) == listing[1:]
    assert list(fs.readdir(d, listing[100][2])) == listing[101:]
    # Removing entries does not disturb the cookies of the others.
    for i in range(0, 300, 2):
        fs.unlink(d, b"e%03d" % i)
    rest = [e for e in listing[2:] if int(e[0][1:]) % 2]
    assert list(fs.readdir(d, 2)) == rest
    new = mk(fs, d, b"new")
    assert list(fs.readdir(d, 2))[-1][:2] == (b"new", new)
    assert list(fs.readdir(d, 2))[-1][2] > cookies[-1]
    fs = remount(fs, mount)
    d = fs.lookup(ROOT, b"d").ino
    again = list(fs.readdir(d, 0))
    assert again[2:-1] == rest
    newer = mk(fs, d, b"newer")
    assert list(fs.readdir(d, again[-1][2])) == [(b"newer", newer, again[-1][2] + 1)]


def test_readdir_survives_mutation_between_calls(fs):
    d = mkd(fs, ROOT, b"d")
    for i in range(50):
        mk(fs, d, b"f%02d" % i)
    seen: list[bytes] = []
    cookie = 0
    k = 0
    horizon = fs.readdir_horizon(d)
    while True:
        batch = list(fs.readdir(d, cookie, horizon))[:7]
        if not batch:
            break
        seen.extend(n for n, _i, _c in batch)
        cookie = batch[-1][2]
        # Between two readdir calls, remove an entry already listed and add one.
        listed = [n for n in seen if n.startswith(b"f") and n in ls(fs, d)]
        if listed:
            fs.unlink(d, listed[0])
        mk(fs, d, b"g%02d" % k)
        k += 1
    for i in range(50):
        assert seen.count(b"f%02d" % i) == 1
    assert len(seen) == len(set(seen))
    # Entries created after the listing began are left out: the listing ends.
    assert not any(n.startswith(b"g") for n in seen)
    assert k <= 10


def test_readdir_horizon(fs):
    d = mkd(fs, ROOT, b"d")
    a = mk(fs, d, b"a")
    horizon = fs.readdir_horizon(d)
    b = mk(fs, d, b"b")
    assert [n for n, _i, _c in fs.readdir(d, 0, horizon)] == [b".", b"..", b"a"]
    assert [(n, i) for n, i, _c in fs.readdir(d, 2)] == [(b"a", a), (b"b", b)]


# -- data -----------------------------------------------------------------------------------------


def test_write_read(fs):
    f = mk(fs, ROOT, b"f")
    data = pattern(3 * BS + 123)
    assert fs.write(f, 0, data) == len(data)
    assert attr(fs, f).size == len(data)
    assert attr(fs, f).nblocks == 4
    assert rd(fs, f) == data
    assert rd(fs, f, BS - 10, 20) == data[BS - 10 : BS + 10]
    assert rd(fs, f, len(data) - 5, 100) == data[-5:]
    assert fs.read(f, len(data), 10) == b""
    assert fs.read(f, len(data) + 10000, 10) == b""
    assert fs.read(f, 0, 0) == b""
    assert fs.write(f, 0, b"") == 0
    err(errno.EINVAL, fs.write, f, -1, b"x")
    err(errno.EINVAL, fs.read, f, -1, 1)


def test_write_memoryview(fs):
    f = mk(fs, ROOT, b"f")
    fs.write(f, 5, memoryview(b"abcdef")[1:4])
    assert rd(fs, f) == b"\0" * 5 + b"bcd"


def test_partial_block_overwrite_keeps_neighbours(fs):
    data = pattern(2 * BS)
    f = mk(fs, ROOT, b"f", data)
    fs.write(f, BS - 3, b"XXXXXX")
    expect = data[: BS - 3] + b"XXXXXX" + data[BS + 3 :]
    assert rd(fs, f) == expect
    assert attr(fs, f).nblocks == 2


def test_sparse_write_and_holes(fs):
    f = mk(fs, ROOT, b"f")
    fs.write(f, 10 * BS + 100, b"tail")
    d = attr(fs, f)
    assert d.size == 10 * BS + 104 and d.nblocks == 1
    got = rd(fs, f)
    assert got == b"\0" * (10 * BS + 100) + b"tail"
    fs.write(f, 3, b"head")
    assert attr(fs, f).nblocks == 2
    assert rd(fs, f, 0, 10) == b"\0\0\0head\0\0\0"
    # The unwritten parts of newly allocated blocks are zero, not stale data.
    assert rd(fs, f, 10 * BS, 100) == b"\0" * 100


def test_new_block_is_zeroed_even_if_reused(fs):
    a = mk(fs, ROOT, b"a", b"\xff" * (4 * BS))
    fs.unlink(ROOT, b"a")
    fs.commit()
    b = mk(fs, ROOT, b"b")
    for i in range(4):
        fs.write(b, i * BS + 1000, b"x")
    got = rd(fs, b)
    assert got.count(b"\xff") == 0
    assert got.count(b"x") == 4
    assert gone(fs, a)


def test_read_into_large_file_across_many_extents(fs):
    f, g = mk(fs, ROOT, b"f"), mk(fs, ROOT, b"g")
    chunks = []
    for i in range(12):  # interleave to fragment f
        c = pattern(BS, i)
        fs.write(f, i * BS, c)
        fs.write(g, i * BS, b"g" * BS)
        chunks.append(c)
    assert len(fs._extents(fs.get(f))) > fmt.INLINE_EXTENTS
    assert rd(fs, f) == b"".join(chunks)
    assert rd(fs, f, BS // 2, 5 * BS) == b"".join(chunks)[BS // 2 : BS // 2 + 5 * BS]


def test_truncate_shrink_grow_reads_zeros(fs):
    f = mk(fs, ROOT, b"f")
    data = pattern(3 * BS)
    fs.write(f, 0, data)
    b0 = bfree(fs)
    fs.setattr(f, size=BS + 100)
    assert attr(fs, f).size == BS + 100
    assert attr(fs, f).nblocks == 2
    assert bfree(fs) == b0 + 1
    fs.setattr(f, size=3 * BS)
    got = rd(fs, f)
    assert got[: BS + 100] == data[: BS + 100]
    assert got[BS + 100 :] == b"\0" * (2 * BS - 100)
    # Writing past EOF after a shrink: the gap reads as zeros too.
    fs.setattr(f, size=10)
    fs.write(f, 50, b"y")
    assert rd(fs, f) == data[:10] + b"\0" * 40 + b"y"


def test_truncate_to_zero_and_block_boundary(fs):
    f = mk(fs, ROOT, b"f", pattern(2 * BS + 5))
    fs.setattr(f, size=BS)
    assert attr(fs, f).nblocks == 1
    fs.setattr(f, size=2 * BS)
    assert rd(fs, f)[BS:] == b"\0" * BS
    fs.setattr(f, size=0)
    assert attr(fs, f).nblocks == 0 and fs.read(f, 0, 100) == b""


def test_open_with_truncate(fs):
    mk(fs, ROOT, b"keep")
    b0 = bfree(fs)
    f = mk(fs, ROOT, b"f", pattern(3 * BS))
    fs.setattr(f, mtime=5)
    inode = fs.open(f, truncate=True)
    assert inode.opens == 1
    assert attr(fs, f).size == 0 and attr(fs, f).nblocks == 0
    assert attr(fs, f).mtime > 5
    assert bfree(fs) == b0
    fs.write(f, 0, b"new")
    fs.release(f)
    assert rd(fs, f) == b"new"
    d = mkd(fs, ROOT, b"d")
    fs.open(d, truncate=True)  # not a regular file: nothing to truncate
    fs.release(d)


def test_truncate_errors(fs):
    f = mk(fs, ROOT, b"f")
    d = mkd(fs, ROOT, b"d")
    s = fs.symlink(ROOT, b"s", b"t", 0, 0).ino
    err(errno.EISDIR, fs.setattr, d, size=0)
    err(errno.EINVAL, fs.setattr, s, size=0)
    err(errno.EINVAL, fs.setattr, f, size=-1)
    fs.setattr(f, size=fmt.MAX_FILE_SIZE)
    assert attr(fs, f).size == 2**44
    err(errno.EFBIG, fs.setattr, f, size=fmt.MAX_FILE_SIZE + 1)


def test_efbig(fs):
    f = mk(fs, ROOT, b"f")
    err(errno.EFBIG, fs.write, f, 2**44, b"x")
    err(errno.EFBIG, fs.write, f, 2**44 - 1, b"xy")
    assert attr(fs, f).size == 0 and attr(fs, f).nblocks == 0
    assert fs.write(f, 2**44 - 1, b"z") == 1
    assert attr(fs, f).size == 2**44
    assert rd(fs, f, 2**44 - 1, 1) == b"z"
    assert fs.seek(f, 0, SEEK_DATA) == 2**44 - BS
    err(errno.EFBIG, fs.fallocate, f, 0, 2**44 - BS, BS + 1)


def test_setattr_fields(fs):
    f = mk(fs, ROOT, b"f")
    fs.setattr(f, mode=0o4711, uid=5, gid=6, atime=11, mtime=22, ctime=33)
    d = attr(fs, f)
    assert d.mode == stat.S_IFREG | 0o4711
    assert (d.uid, d.gid, d.atime, d.mtime, d.ctime) == (5, 6, 11, 22, 33)


# -- fallocate ----------------------------------------------------------------------------------


def test_fallocate_default_mode_extends_and_zeroes(fs):
    f = mk(fs, ROOT, b"f", b"abc")
    b0 = bfree(fs)
    fs.fallocate(f, 0, 100, 3 * BS)
    d = attr(fs, f)
    assert d.size == 100 + 3 * BS
    assert d.nblocks == 4 and bfree(fs) == b0 - 3
    assert rd(fs, f) == b"abc" + b"\0" * (97 + 3 * BS)
    fs.fallocate(f, 0, 0, 10)  # already allocated, inside the size: nothing changes
    assert attr(fs, f).size == 100 + 3 * BS and bfree(fs) == b0 - 3


def test_fallocate_keep_size(fs):
    f = mk(fs, ROOT, b"f", b"abc")
    b0 = bfree(fs)
    fs.fallocate(f, FALLOC_FL_KEEP_SIZE, 0, 5 * BS)
    assert attr(fs, f).size == 3
    assert attr(fs, f).nblocks == 5 and bfree(fs) == b0 - 4
    fs.setattr(f, size=5 * BS)
    assert rd(fs, f) == b"abc" + b"\0" * (5 * BS - 3)


def test_fallocate_punch_hole(fs):
    data = pattern(6 * BS, 1)
    f = mk(fs, ROOT, b"f", data)
    b0 = bfree(fs)
    fs.fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BS + 10, 3 * BS)
    # Blocks 2 and 3 are whole inside [BS+10, 4*BS+10): freed; 1 and 4 zeroed in part.
    assert attr(fs, f).size == 6 * BS
    assert attr(fs, f).nblocks == 4 and bfree(fs) == b0 + 2
    expect = data[: BS + 10] + b"\0" * (3 * BS) + data[4 * BS + 10 :]
    assert rd(fs, f) == expect
    assert fs.seek(f, 0, SEEK_HOLE) == 2 * BS
    # Within one block.
    fs.fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 5 * BS + 1, 2)
    assert rd(fs, f, 5 * BS, 4) == data[5 * BS : 5 * BS + 1] + b"\0\0" + data[5 * BS + 3 :
                                                                               5 * BS + 4]
    # Past EOF: frees preallocated blocks, the size stays.
    fs.fallocate(f, FALLOC_FL_KEEP_SIZE, 6 * BS, 2 * BS)
    b1 = bfree(fs)
    fs.fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 6 * BS, 2 * BS)
    assert bfree(fs) == b1 + 2 and attr(fs, f).size == 6 * BS


def test_fallocate_punch_then_allocate_reads_zeros(fs):
    f = mk(fs, ROOT, b"f", b"\xee" * (3 * BS))
    fs.fallocate(f, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, 3 * BS)
    assert attr(fs, f).nblocks == 0
    fs.fallocate(f, 0, 0, 3 * BS)
    assert rd(fs, f) == b"\0" * (3 * BS)


def test_fallocate_zero_range(fs):
    data = pattern(4 * BS, 2)
    f = mk(fs, ROOT, b"f", data)
    fs.fallocate(f, FALLOC_FL_ZERO_RANGE, 100, 2 * BS)
    assert attr(fs, f).size == 4 * BS
    assert attr(fs, f).nblocks == 4
    assert rd(fs, f) == data[:100] + b"\0" * (2 * BS) + data[100 + 2 * BS :]
    fs.fallocate(f, FALLOC_FL_ZERO_RANGE, 4 * BS - 1, 2 * BS)
    assert attr(fs, f).size == 6 * BS - 1
    assert rd(fs, f)[4 * BS - 1 :] == b"\0" * (2 * BS)
    fs.fallocate(f, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 0, 10 * BS)
    assert attr(fs, f).size == 6 * BS - 1
    assert attr(fs, f).nblocks == 10
    assert rd(fs, f) == b"\0" * (6 * BS - 1)


def test_fallocate_errors(fs):
    f = mk(fs, ROOT, b"f")
    d = mkd(fs, ROOT, b"d")
    err(errno.EOPNOTSUPP, fs.fallocate, f, FALLOC_FL_PUNCH_HOLE, 0, BS)
    err(errno.EOPNOTSUPP, fs.fallocate, f, 0x08, 0, BS)  # COLLAPSE_RANGE
    err(errno.EOPNOTSUPP, fs.fallocate, f, 0x20, 0, BS)  # INSERT_RANGE
    err(errno.EOPNOTSUPP, fs.fallocate, f,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE | FALLOC_FL_ZERO_RANGE, 0, BS)
    err(errno.EINVAL, fs.fallocate, f, 0, 0, 0)
    err(errno.EINVAL, fs.fallocate, f, 0, -1, 10)
    err(errno.ENODEV, fs.fallocate, d, 0, 0, BS)
    assert attr(fs, f).nblocks == 0 and attr(fs, f).size == 0


# -- seek ---------------------------------------------------------------------------------------


def test_seek_data_hole(fs):
    f = mk(fs, ROOT, b"f")
    fs.write(f, 0, b"a" * 10)
    fs.write(f, 5 * BS, b"b" * (2 * BS))
    fs.setattr(f, size=10 * BS)
    assert fs.seek(f, 0, SEEK_DATA) == 0
    assert fs.seek(f, 5, SEEK_DATA) == 5
    assert fs.seek(f, 0, SEEK_HOLE) == BS
    assert fs.seek(f, 100, SEEK_DATA) == 100  # inside the first block
    assert fs.seek(f, BS, SEEK_DATA) == 5 * BS
    assert fs.seek(f, BS + 7, SEEK_HOLE) == BS + 7
    assert fs.seek(f, 5 * BS + 3, SEEK_HOLE) == 7 * BS
    err(errno.ENXIO, fs.seek, f, 7 * BS, SEEK_DATA)  # only a hole until EOF
    assert fs.seek(f, 9 * BS, SEEK_HOLE) == 9 * BS
    err(errno.ENXIO, fs.seek, f, 10 * BS, SEEK_DATA)
    err(errno.ENXIO, fs.seek, f, 10 * BS, SEEK_HOLE)
    err(errno.EINVAL, fs.seek, f, -1, SEEK_DATA)
    err(errno.EINVAL, fs.seek, f, 0, 7)


def test_seek_hole_at_eof_of_dense_file(fs):
    f = mk(fs, ROOT, b"f", b"x" * (2 * BS + 5))
    assert fs.seek(f, 0, SEEK_HOLE) == 2 * BS + 5
    # Preallocated blocks beyond EOF are not data.
    fs.fallocate(f, FALLOC_FL_KEEP_SIZE, 0, 8 * BS)
    assert fs.seek(f, 0, SEEK_HOLE) == 2 * BS + 5
    e = mk(fs, ROOT, b"e")
    err(errno.ENXIO, fs.seek, e, 0, SEEK_DATA)


# -- xattrs ---------------------------------------------------------------------------------------


def test_xattr_basics_and_flags(fs):
    f = mk(fs, ROOT, b"f")
    assert fs.listxattr(f) == []
    fs.setxattr(f, b"user.a", b"1")
    fs.setxattr(f, b"user.b", b"")
    assert fs.getxattr(f, b"user.a") == b"1"
    assert fs.getxattr(f, b"user.b") == b""
    assert sorted(fs.listxattr(f)) == [b"user.a", b"user.b"]
    err(errno.EEXIST, fs.setxattr, f, b"user.a", b"2", XATTR_CREATE)
    err(errno.ENODATA, fs.setxattr, f, b"user.c", b"2", XATTR_REPLACE)
    assert fs.getxattr(f, b"user.a") == b"1"
    fs.setxattr(f, b"user.a", b"22", XATTR_REPLACE)
    fs.setxattr(f, b"user.c", b"3", XATTR_CREATE)
    assert fs.getxattr(f, b"user.a") == b"22"
    err(errno.ENODATA, fs.getxattr, f, b"user.zz")
    fs.removexattr(f, b"user.a")
    err(errno.ENODATA, fs.getxattr, f, b"user.a")
    err(errno.ENODATA, fs.removexattr, f, b"user.a")
    assert sorted(fs.listxattr(f)) == [b"user.b", b"user.c"]


def test_xattr_limits(fs):
    f = mk(fs, ROOT, b"f")
    err(errno.ERANGE, fs.setxattr, f, b"", b"v")
    err(errno.ERANGE, fs.setxattr, f, b"user." + b"u" * 251, b"v")
    longest = b"user." + b"u" * 250
    fs.setxattr(f, longest, b"v" * fmt.MAX_XATTR_VALUE)
    assert fs.getxattr(f, longest) == b"v" * fmt.MAX_XATTR_VALUE
    # One entry must fit one xattr block.
    biggest = fmt.XATTR_CAPACITY - fmt.XATTR_ENT.size - len(b"user.big")
    fs.setxattr(f, b"user.big", b"v" * biggest)
    err(errno.ENOSPC, fs.setxattr, f, b"user.big2", b"v" * biggest)
    err(errno.E2BIG, fs.setxattr, f, b"user.big", b"v" * 65537)
    assert fs.getxattr(f, b"user.big") == b"v" * biggest


def test_xattr_namespaces(fs):
    f = mk(fs, ROOT, b"f")
    for ok in (b"user.a", b"trusted.b", b"security.c"):
        fs.setxattr(f, ok, b"1")
    for bad in (b"system.posix_acl_access", b"system.posix_acl_default", b"plain",
                b"user", b"os2.x"):
        err(errno.EOPNOTSUPP, fs.setxattr, f, bad, b"1")
    assert sorted(fs.listxattr(f)) == [b"security.c", b"trusted.b", b"user.a"]


def test_xattrs_on_dirs_and_symlinks_persist(fs, mount):
    d = mkd(fs, ROOT, b"d")
    s = fs.symlink(ROOT, b"s", b"target", 0, 0).ino
    fs.setxattr(d, b"trusted.x", b"dir")
    fs.setxattr(s, b"trusted.y", b"link")
    fs = remount(fs, mount)
    assert fs.getxattr(fs.lookup(ROOT, b"d").ino, b"trusted.x") == b"dir"
    s = fs.lookup(ROOT, b"s").ino
    assert fs.getxattr(s, b"trusted.y") == b"link"
    assert fs.readlink(s) == b"target"


def test_many_xattrs_span_blocks_and_free_them(fs, mount):
    f = mk(fs, ROOT, b"f")
    b0 = bfree(fs)
    xs = {b"user.attr%03d" % i: pattern(300, i) for i in range(40)}
    for k, v in xs.items():
        fs.setxattr(f, k, v)
    fs.commit()
    nblocks = len(fs.get(f).xattr_blocks)
    assert nblocks >= 3
    assert bfree(fs) == b0 - nblocks
    fs = remount(fs, mount)
    f = fs.lookup(ROOT, b"f").ino
    assert {k: fs.getxattr(f, k) for k in fs.listxattr(f)} == xs
    for k in xs:
        fs.removexattr(f, k)
    fs.commit()
    assert bfree(fs) == b0
    fs = remount(fs, mount)
    assert fs.listxattr(fs.lookup(ROOT, b"f").ino) == []
    assert bfree(fs) == b0


# -- statfs and ENOSPC ------------------------------------------------------------------------


def test_statfs_exact(fs, mount):
    st0 = fs.statfs()
    f = mk(fs, ROOT, b"f")
    assert bfree(fs) == st0.bfree - 1  # the root's first directory block
    assert ffree(fs) == st0.ffree - 1
    b1 = bfree(fs)
    fs.write(f, 0, pattern(5 * BS))
    assert bfree(fs) == b1 - 5
    fs.write(f, 100 * BS, b"x")
    assert bfree(fs) == b1 - 6
    fs.commit()
    assert bfree(fs) == b1 - 6
    fs = remount(fs, mount)
    assert bfree(fs) == b1 - 6 and ffree(fs) == st0.ffree - 1
    fs.unlink(ROOT, b"f")
    # The root's directory block went back too: its last entry is gone.
    assert bfree(fs) == st0.bfree and ffree(fs) == st0.ffree
    fs = remount(fs, mount)
    assert bfree(fs) == st0.bfree and ffree(fs) == st0.ffree


def test_statfs_extent_leaf_counts(fs):
    """More than five extents need an extent leaf block, allocated by the operation
    that needs it (so ENOSPC reaches that operation, never the commit)."""
    f, g = mk(fs, ROOT, b"f"), mk(fs, ROOT, b"g")
    b0 = bfree(fs)
    for i in range(8):
        fs.write(f, i * BS, b"f")
        fs.write(g, i * BS, b"g")
    assert bfree(fs) == b0 - 18
    fs.commit()
    assert len(fs.get(f).ext_leaves) == 1 and len(fs.get(g).ext_leaves) == 1
    assert bfree(fs) == b0 - 18
    fs.unlink(ROOT, b"f")
    fs.unlink(ROOT, b"g")
    fs.commit()
    assert bfree(fs) == b0 + 1  # the root's directory block, emptied, went back too


def fill(fs: Filesystem, name: bytes = b"filler") -> int:
    """A file taking every block data may have; returns its inode."""
    ino = mk(fs, ROOT, name)
    n = fs.statfs().bavail
    assert fs.write(ino, 0, b"F" * (n * BS)) == n * BS
    fs.commit()
    assert bfree(fs) == META_RESERVE and fs.statfs().bavail == 0
    return ino


def test_bavail_keeps_the_metadata_reserve(fs):
    st = fs.statfs()
    assert st.bavail == st.bfree - META_RESERVE


def test_enospc_short_write_then_enospc(fs, mount):
    keep = mk(fs, ROOT, b"keep", b"k" * BS)
    f = mk(fs, ROOT, b"f", b"head")
    avail, i0 = fs.statfs().bavail, ffree(fs)
    # A write larger than the space is short: as many whole blocks as fit.
    want = (avail + 5) * BS
    got = fs.write(f, 0, b"x" * want)
    assert got == (avail + 1) * BS  # block 0 was already there
    assert attr(fs, f).size == got and attr(fs, f).nblocks == avail + 1
    assert rd(fs, f, got - 1, 1) == b"x"
    assert bfree(fs) == META_RESERVE and fs.statfs().bavail == 0
    # Nothing left: ENOSPC, and nothing changes.
    err(errno.ENOSPC, fs.write, f, got, b"y" * BS)
    err(errno.ENOSPC, fs.write, f, got + 10 * BS, b"y")
    assert attr(fs, f).size == got and bfree(fs) == META_RESERVE
    # Overwriting allocated blocks still works on a full filesystem.
    assert fs.write(f, 0, b"z" * BS) == BS
    fs = remount(fs, mount)
    f = fs.lookup(ROOT, b"f").ino
    assert attr(fs, f).size == got and bfree(fs) == META_RESERVE and ffree(fs) == i0
    assert rd(fs, f, 0, 2) == b"zz" and rd(fs, f, BS, 1) == b"x"
    assert rd(fs, fs.lookup(ROOT, b"keep").ino) == b"k" * BS
    assert keep


def test_enospc_fallocate_is_all_or_nothing(fs, mount):
    f = mk(fs, ROOT, b"f", b"head")
    b0, avail = bfree(fs), fs.statfs().bavail
    err(errno.ENOSPC, fs.fallocate, f, 0, 0, (avail + 2) * BS)
    err(errno.ENOSPC, fs.fallocate, f, FALLOC_FL_KEEP_SIZE, BS, (avail + 1) * BS)
    assert attr(fs, f).size == 4 and attr(fs, f).nblocks == 1
    assert bfree(fs) == b0
    fs = remount(fs, mount)
    assert bfree(fs) == b0
    f = fs.lookup(ROOT, b"f").ino
    fs.fallocate(f, 0, 0, (avail + 1) * BS)  # exactly what is available
    assert fs.statfs().bavail == 0


def test_enospc_create_leaves_no_half_made_file(fs, mount):
    fill(fs)
    made = []
    i0 = ffree(fs)
    with pytest.raises(FsError) as ei:
        for i in range(200):  # directory blocks may use half the reserve
            name = b"%0200d" % i
            i0 = ffree(fs)
            mk(fs, ROOT, name)
            made.append(name)
    assert ei.value.errno == errno.ENOSPC
    assert 0 < len(made) < 200
    assert bfree(fs) == META_RESERVE // 2
    assert ffree(fs) == i0
    err(errno.ENOENT, fs.lookup, ROOT, name)
    err(errno.ENOSPC, mkd, fs, ROOT, b"x" * 250)
    err(errno.ENOSPC, fs.symlink, ROOT, b"y" * 250, b"t", 0, 0)
    err(errno.ENOSPC, fs.link, fs.lookup(ROOT, b"filler").ino, ROOT, b"z" * 250)
    err(errno.ENOSPC, fs.rename, ROOT, b"filler", ROOT, b"w" * 250)
    d = mkd(fs, ROOT, b"d")  # an empty directory needs no block
    err(errno.ENOSPC, fs.symlink, d, b"s", b"t" * 500, 0, 0)  # no block for the target
    err(errno.ENOSPC, mk, fs, d, b"x")
    assert ffree(fs) == i0 - 1 and bfree(fs) == META_RESERVE // 2
    assert attr(fs, fs.lookup(ROOT, b"filler").ino).nlink == 1
    fs = remount(fs, mount)
    assert set(ls(fs, ROOT)) == {b"filler", b"d", *made}
    assert ffree(fs) == i0 - 1 and bfree(fs) == META_RESERVE // 2
    assert fs.ialloc.bitmap.used == len(made) + 4  # inode 0, root, filler and d


def test_xattr_on_full_fs_uses_the_reserve(fs, mount):
    f = fill(fs)
    fs.setxattr(f, b"user.a", b"v")
    fs.commit()
    assert bfree(fs) == META_RESERVE - 1
    fs = remount(fs, mount)
    assert fs.getxattr(f, b"user.a") == b"v"


def test_full_fs_recovers_after_unlink(fs, mount):
    fill(fs)
    fs.unlink(ROOT, b"filler")
    assert bfree(fs) == fs.statfs().blocks  # the emptied root directory block too
    d = mkd(fs, ROOT, b"d")
    n = fs.statfs().bavail
    f = mk(fs, d, b"f", b"x" * ((n - 1) * BS))  # pending frees are committed for data
    assert fs.statfs().bavail == 0
    assert rd(fs, f, (n - 1) * BS - 1, 1) == b"x"
    fs = remount(fs, mount)
    assert fs.statfs().bavail == 0


def test_sixth_extent_on_full_fs_uses_the_reserve(fs, mount):
    a, b = mk(fs, ROOT, b"a"), mk(fs, ROOT, b"b")
    for i in range(5):
        fs.write(a, 2 * i * BS, b"a")
        fs.write(b, i * BS, b"b")
    fs.commit()
    assert len(fs._extents(fs.get(a))) == 5
    fs.write(b, 5 * BS, b"x" * ((fs.statfs().bavail - 1) * BS))
    assert fs.statfs().bavail == 1
    fs.write(a, 20 * BS, b"z")  # the sixth extent: its leaf comes from the reserve
    fs.commit()
    assert len(fs.get(a).ext_leaves) == 1
    fs = remount(fs, mount)
    assert rd(fs, a, 20 * BS, 1) == b"z"


def test_metadata_alloc_after_unlink_on_full_fs(fs):
    fill(fs)
    d = mkd(fs, ROOT, b"d")  # an empty directory has no block yet
    with pytest.raises(FsError):
        for i in range(200):  # use up what namespace operations may take
            mk(fs, ROOT, b"%0200d" % i)
    fs.unlink(ROOT, b"filler")
    assert fs.statfs().bavail > 700
    mk(fs, d, b"x")
    fs.symlink(ROOT, b"s", b"t" * 500, 0, 0)


def test_many_new_xattr_blocks_on_full_fs(fs, mount):
    files = [mk(fs, ROOT, b"f%02d" % i) for i in range(20)]
    fill(fs)
    for f in files:
        try:
            fs.setxattr(f, b"user.a", b"v")
        except FsError as e:  # refusing some is fine...
            assert e.errno == errno.ENOSPC
    fs.commit()  # ... but the filesystem must stay usable
    fs = remount(fs, mount)


def test_many_new_extent_leaves_on_nearly_full_fs(fs, mount):
    files = [mk(fs, ROOT, b"f%02d" % i) for i in range(12)]
    filler = mk(fs, ROOT, b"filler")
    for k in range(5):
        for f in files:
            fs.write(f, 2 * k * BS, b"a")
        fs.write(filler, k * BS, b"F")
    fs.commit()
    fs.write(filler, 5 * BS, b"F" * ((fs.statfs().bavail - len(files)) * BS))
    fs.commit()
    for f in files:
        try:
            fs.write(f, 30 * BS, b"z")  # a sixth extent each
        except FsError as e:
            assert e.errno == errno.ENOSPC
    fs.commit()
    fs = remount(fs, mount)


# -- open-unlinked files and orphans ----------------------------------------------------------


def test_unlinked_open_file_keeps_data_until_release(fs):
    mk(fs, ROOT, b"keep")
    b0, i0 = bfree(fs), ffree(fs)
    data = pattern(3 * BS + 1)
    f = mk(fs, ROOT, b"f", data)
    fs.open(f)
    fs.open(f)
    fs.unlink(ROOT, b"f")
    err(errno.ENOENT, fs.lookup, ROOT, b"f")
    assert attr(fs, f).nlink == 0
    assert fs.orphans == [f]
    assert bfree(fs) == b0 - 4 and ffree(fs) == i0 - 1
    fs.commit()
    # Its blocks are not handed to anyone else.
    g = mk(fs, ROOT, b"g", b"\xaa" * (fs.statfs().bavail * BS))
    assert bfree(fs) == META_RESERVE
    assert rd(fs, f) == data
    fs.write(f, 0, b"still writable")
    assert rd(fs, f, 0, 14) == b"still writable"
    fs.release(f)
    assert not gone(fs, f)
    fs.release(f)
    assert gone(fs, f)
    assert fs.orphans == []
    assert bfree(fs) == META_RESERVE + 4 and ffree(fs) == i0 - 1
    assert rd(fs, g, 0, 2) == b"\xaa\xaa"


def test_unlinked_file_held_only_by_kernel_lookup(fs):
    """Not open, only remembered by the kernel: the storage goes at once, the inode
    number stays reserved (but counts as free) until the kernel forgets it."""
    mk(fs, ROOT, b"keep")
    b0, i0 = bfree(fs), ffree(fs)
    f = mk(fs, ROOT, b"f", pattern(2 * BS))
    fs.get(f).lookups = 2
    fs.unlink(ROOT, b"f")
    assert bfree(fs) == b0 and ffree(fs) == i0
    assert attr(fs, f).nlink == 0 and attr(fs, f).size == 0
    assert fs.read(f, 0, 10) == b""
    fs.forget(f, 1)
    assert not gone(fs, f)
    g = mk(fs, ROOT, b"g")
    assert g != f  # the number is not reused while the kernel may still use it
    fs.forget(f, 1)
    assert gone(fs, f)
    assert bfree(fs) == b0 and ffree(fs) == i0 - 1


def test_orphans_reaped_at_next_mount_after_crash(fs, mount, image):
    mk(fs, ROOT, b"keep", b"keep")
    b0, i0 = bfree(fs), ffree(fs)
    victims = []
    for i in range(3):
        v = mk(fs, ROOT, b"v%d" % i, pattern((i + 1) * BS))
        fs.open(v)
        fs.unlink(ROOT, b"v%d" % i)
        victims.append(v)
    fs.release(victims[1])  # the middle one is closed: freed right away
    assert sorted(fs.orphans) == sorted([victims[0], victims[2]])
    assert bfree(fs) == b0 - 1 - 3
    crash(fs)
    with open(image, "rb") as f:
        f.seek(BS)
        assert fmt.unpack_fsinfo(f.read(BS), 1) in (victims[0], victims[2])
    fs = mount()
    assert fs.orphans == []
    assert bfree(fs) == b0 and ffree(fs) == i0
    for v in victims:
        assert gone(fs, v)
    assert rd(fs, fs.lookup(ROOT, b"keep").ino) == b"keep"
    crash(fs)
    with open(image, "rb") as f:
        f.seek(BS)
        assert fmt.unpack_fsinfo(f.read(BS), 1) == 0
    fs = mount()
    assert bfree(fs) == b0 and ffree(fs) == i0


def test_clean_close_frees_open_unlinked_files(fs, mount):
    mk(fs, ROOT, b"keep")
    b0, i0 = bfree(fs), ffree(fs)
    f = mk(fs, ROOT, b"f", pattern(2 * BS))
    fs.open(f)
    fs.unlink(ROOT, b"f")
    fs = remount(fs, mount)
    assert fs.orphans == []
    assert bfree(fs) == b0 and ffree(fs) == i0


def test_orphan_directory_reaped(fs, mount):
    mk(fs, ROOT, b"keep")
    b0, i0 = bfree(fs), ffree(fs)
    d = mkd(fs, ROOT, b"d")
    for i in range(40):
        mk(fs, d, b"%0100d" % i)
    for i in range(40):
        fs.unlink(d, b"%0100d" % i)
    fs.get(d).lookups = 1
    fs.rmdir(ROOT, b"d")
    assert fs.orphans == [d]
    crash(fs)
    fs = mount()
    assert bfree(fs) == b0 and ffree(fs) == i0
    assert attr(fs, ROOT).nlink == 2


# -- persistence ----------------------------------------------------------------------------------


def snapshot(fs: Filesystem) -> dict:
    """Everything visible, by path (atime excluded: reading changes it)."""
    out: dict = {}

    def walk(ino: int, path: bytes) -> None:
        inode = fs.get(ino)
        d = inode.d
        rec = {
            "ino": ino, "mode": d.mode, "uid": d.uid, "gid": d.gid, "nlink": d.nlink,
            "size": d.size, "mtime": d.mtime, "ctime": d.ctime, "rdev": d.rdev,
            "nblocks": d.nblocks,
            "xattrs": {k: fs.getxattr(ino, k) for k in fs.listxattr(ino)},
        }
        if inode.is_reg():
            rec["data"] = rd(fs, ino)
            rec["runs"] = fs._extents(inode).runs()
        elif inode.is_lnk():
            rec["target"] = fs.readlink(ino)
        elif inode.is_dir():
            rec["entries"] = list(fs.readdir(ino, 0))
        out[path] = rec
        if inode.is_dir():
            for name, child, _c in fs.readdir(ino, 2):
                walk(child, path + b"/" + name)

    walk(ROOT, b"")
    out["statfs"] = fs.statfs()
    return out


def build_tree(fs: Filesystem) -> None:
    a = mkd(fs, ROOT, b"a")
    b = mkd(fs, a, b"b")
    mk(fs, b, b"deep", pattern(3 * BS + 77, 5))
    f = mk(fs, ROOT, b"frag")
    g = mk(fs, ROOT, b"other")
    for i in range(9):  # fragmented: needs an extent leaf
        fs.write(f, i * 2 * BS, pattern(BS, i))
        fs.write(g, i * BS, pattern(BS // 2, i + 50))
    fs.link(f, a, b"frag-link")
    fs.symlink(ROOT, b"short", b"a/b/deep", 0, 0)
    fs.symlink(a, b"long", b"/".join([b"x" * 100] * 20), 0, 0)
    fs.mknod(ROOT, b"fifo", stat.S_IFIFO | 0o600, 0, 7, 8)
    big = mkd(fs, ROOT, b"big")
    for i in range(250):
        mk(fs, big, b"entry-%04d-" % i + b"p" * (i % 60))
    for i in range(0, 250, 7):
        fs.unlink(big, b"entry-%04d-" % i + b"p" * (i % 60))
    for i in range(30):
        fs.setxattr(g, b"user.k%02d" % i, pattern(200, i))
    fs.setxattr(a, b"trusted.dir", b"1")
    fs.rename(ROOT, b"other", a, b"renamed")
    p = mk(fs, ROOT, b"punched", pattern(5 * BS))
    fs.fallocate(p, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, BS, 2 * BS)
    fs.fallocate(p, FALLOC_FL_KEEP_SIZE, 5 * BS, 3 * BS)
    t = mk(fs, ROOT, b"trunc", pattern(4 * BS))
    fs.setattr(t, size=BS + 3, mode=0o600, uid=42, gid=43, mtime=1234)
    fs.setattr(ROOT, mode=0o1777)


def test_everything_persists_across_close(fs, mount):
    build_tree(fs)
    fs.commit()
    assert len(fs.get(fs.lookup(ROOT, b"frag").ino).ext_leaves) == 1
    before = snapshot(fs)
    fs = remount(fs, mount)
    assert snapshot(fs) == before
    fs = remount(fs, mount)
    assert snapshot(fs) == before


def test_everything_persists_after_crash_via_replay(fs, mount):
    build_tree(fs)
    before = snapshot(fs)
    crash(fs)
    fs = mount()
    assert snapshot(fs) == before


def test_replay_after_crash_with_several_transactions(fs, mount):
    """Many commits after the last checkpoint: all are replayed in order."""
    f = mk(fs, ROOT, b"f")
    for i in range(30):
        fs.setxattr(f, b"user.n", b"%d" % i)
        mk(fs, ROOT, b"file%02d" % i)
        if i % 5 == 4:
            fs.unlink(ROOT, b"file%02d" % (i - 2))
        fs.commit()
    assert fs.journal.next_seq - fs.journal.start_seq > 1
    before = snapshot(fs)
    crash(fs)
    fs = mount()
    assert snapshot(fs) == before
    assert fs.getxattr(f, b"user.n") == b"29"


def test_uncommitted_metadata_is_lost_on_crash(fs, mount):
    mk(fs, ROOT, b"committed")
    fs.commit()
    before = snapshot(fs)
    fs.dev.close()  # crash without committing what follows
    fs = mount()
    assert snapshot(fs) == before


def test_alloc_policy_persists_and_can_be_overridden(make_image, mount):
    path = make_image(alloc_policy="reuse-first")
    fs = mount(path)
    assert fs.balloc.policy == "reuse-first"
    fs.close()
    fs = mount(path, alloc_policy="first-fit")
    assert fs.balloc.policy == "first-fit"


def test_reuse_first_reuses_freed_blocks(make_image, mount):
    fs = mount(make_image(alloc_policy="reuse-first"))
    a = mk(fs, ROOT, b"a", b"a" * (2 * BS))
    blocks = [pb for _l, pb, _c in fs._extents(fs.get(a)).runs()]
    fs.unlink(ROOT, b"a")
    fs.commit()
    b = mk(fs, ROOT, b"b", b"b" * BS)
    assert fs._extents(fs.get(b)).runs()[0][1] in range(blocks[0], blocks[0] + 2)


# -- interrupted commits -----------------------------------------------------------------------


BT_JCOMMIT = fmt.BT_JCOMMIT.to_bytes(4, "little")


class PowerCut(Exception):
    pass


def cut_power_at_commit_point(monkeypatch, fs: Filesystem) -> list[int]:
    """Make the drain that would make a journal commit block durable raise; returns
    (filled in later) the commit blocks written."""
    commits: list[int] = []
    real_memcpy, real_drain = PmemOps.memcpy, PmemOps.drain
    jlo = fs.sb.journal_start + 1
    jhi = fs.sb.journal_start + fs.sb.journal_blocks

    def memcpy(self, off, data):
        real_memcpy(self, off, data)
        blk = off // BS
        is_block = len(data) == BS and off % BS == 0 and jlo <= blk < jhi
        if is_block and bytes(data[fmt.PAYLOAD : fmt.PAYLOAD + 4]) == BT_JCOMMIT:
            commits.append(blk)

    def drain(self):
        if commits:
            raise PowerCut
        real_drain(self)

    monkeypatch.setattr(PmemOps, "memcpy", memcpy)
    monkeypatch.setattr(PmemOps, "drain", drain)
    return commits


def first_state(fs: Filesystem) -> None:
    k = mk(fs, ROOT, b"keep", b"keep me")
    fs.setxattr(k, b"user.x", b"1")
    mk(fs, ROOT, b"old", pattern(3 * BS, 4))
    fs.commit()


def second_state(fs: Filesystem) -> None:
    """Metadata changes whose commit allocates nothing (so statfs before the commit is
    what it is after it)."""
    fs.unlink(ROOT, b"old")
    mk(fs, ROOT, b"new", pattern(2 * BS, 9))
    k = fs.lookup(ROOT, b"keep").ino
    fs.rename(ROOT, b"keep", ROOT, b"renamed")
    fs.setxattr(k, b"user.x", b"2")  # same size: the same xattr block
    mkd(fs, ROOT, b"dir")


@pytest.mark.parametrize("commit_block_survives", [False, True])
def test_interrupted_commit(fs, mount, monkeypatch, commit_block_survives):
    first_state(fs)
    before = snapshot(fs)
    second_state(fs)
    after = snapshot(fs)
    commits = cut_power_at_commit_point(monkeypatch, fs)
    with pytest.raises(PowerCut):
        fs.commit()
    monkeypatch.undo()
    assert len(commits) == 1
    if not commit_block_survives:
        # The power cut lost the undrained commit block (half of it made it).
        cblk = commits[0]
        fs.dev.view[cblk * BS + BS // 2 : (cblk + 1) * BS] = 0
    fs.dev.close()
    fs = mount()
    got = snapshot(fs)
    # Either all of the transaction or none of it: never a mix.
    assert got == (after if commit_block_survives else before)
    # The image is fully usable.
    mk(fs, ROOT, b"afterwards", b"ok")
    fs = remount(fs, mount)
    assert rd(fs, fs.lookup(ROOT, b"afterwards").ino) == b"ok"


def test_interrupted_commit_torn_data_image(fs, mount, monkeypatch):
    """A journal block image damaged by the power cut: the commit crc rejects it."""
    first_state(fs)
    before = snapshot(fs)
    second_state(fs)
    start = fs.sb.journal_start + 1 + fs.journal.head
    commits = cut_power_at_commit_point(monkeypatch, fs)
    with pytest.raises(PowerCut):
        fs.commit()
    monkeypatch.undo()
    assert commits and commits[0] > start + 2
    fs.dev.view[(start + 2) * BS + 17] ^= 0x55
    fs.dev.close()
    fs = mount()
    assert snapshot(fs) == before
