"""Names: lookup, create, mknod, mkdir/rmdir, unlink, rename(2)/renameat2(2),
link, symlink, readlink."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from pathlib import Path

import pytest

from .util import (
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    expect_errno,
    read_file,
    renameat2,
    write_file,
)

# --------------------------------------------------------------------------- #
# lookup / create


def test_lookup_missing_is_enoent(workdir: Path) -> None:
    with expect_errno(errno.ENOENT):
        os.stat(workdir / "nope")
    with expect_errno(errno.ENOENT):
        os.stat(workdir / "nope" / "deeper")
    with expect_errno(errno.ENOENT):
        os.open(workdir / "nope", os.O_RDONLY)


def test_lookup_through_file_is_enotdir(workdir: Path) -> None:
    write_file(workdir / "f", b"x")
    with expect_errno(errno.ENOTDIR):
        os.stat(workdir / "f" / "x")
    with expect_errno(errno.ENOTDIR):
        os.stat(str(workdir / "f") + "/")


def test_create_then_lookup(workdir: Path) -> None:
    fd = os.open(workdir / "new", os.O_CREAT | os.O_WRONLY, 0o640)
    fst = os.fstat(fd)
    os.close(fd)
    st = os.stat(workdir / "new")
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_ino == fst.st_ino
    assert st.st_size == 0
    assert st.st_nlink == 1
    assert st.st_uid == os.geteuid() and st.st_gid == os.getegid()
    assert "new" in os.listdir(workdir)


def test_create_applies_umask(workdir: Path) -> None:
    old = os.umask(0o027)
    try:
        os.close(os.open(workdir / "f", os.O_CREAT | os.O_WRONLY, 0o777))
        os.mkdir(workdir / "d", 0o777)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(workdir / "f").st_mode) == 0o750
    assert stat.S_IMODE(os.stat(workdir / "d").st_mode) == 0o750


def test_o_excl_on_existing_is_eexist(workdir: Path) -> None:
    write_file(workdir / "f", b"keep")
    with expect_errno(errno.EEXIST):
        os.open(workdir / "f", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.symlink("dangling-target", workdir / "l")
    with expect_errno(errno.EEXIST):
        os.open(workdir / "l", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    assert not os.path.lexists(workdir / "dangling-target")
    assert read_file(workdir / "f") == b"keep"


def test_o_creat_without_excl_opens_existing(workdir: Path) -> None:
    write_file(workdir / "f", b"data")
    ino = os.stat(workdir / "f").st_ino
    fd = os.open(workdir / "f", os.O_CREAT | os.O_RDWR, 0o600)
    try:
        assert os.fstat(fd).st_ino == ino
        assert os.read(fd, 10) == b"data"
    finally:
        os.close(fd)
    assert stat.S_IMODE(os.stat(workdir / "f").st_mode) == 0o644


def test_o_creat_through_dangling_symlink_creates_target(workdir: Path) -> None:
    os.symlink("target", workdir / "link")
    fd = os.open(workdir / "link", os.O_CREAT | os.O_WRONLY, 0o600)
    os.write(fd, b"via link")
    os.close(fd)
    assert read_file(workdir / "target") == b"via link"
    assert os.path.islink(workdir / "link")


def test_open_directory_flags(workdir: Path) -> None:
    write_file(workdir / "f", b"x")
    os.mkdir(workdir / "d")
    with expect_errno(errno.ENOTDIR):
        os.open(workdir / "f", os.O_RDONLY | os.O_DIRECTORY)
    with expect_errno(errno.EISDIR):
        os.open(workdir / "d", os.O_WRONLY)
    with expect_errno(errno.EISDIR):
        os.open(workdir / "d", os.O_RDWR)
    fd = os.open(workdir / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with expect_errno(errno.EISDIR):
            os.read(fd, 10)
    finally:
        os.close(fd)


def test_many_names_distinct_inodes(workdir: Path) -> None:
    inos = set()
    for i in range(200):
        write_file(workdir / f"file-{i:03d}", b"%d" % i)
        inos.add(os.stat(workdir / f"file-{i:03d}").st_ino)
    assert len(inos) == 200
    assert sorted(os.listdir(workdir)) == [f"file-{i:03d}" for i in range(200)]
    for i in (0, 57, 199):
        assert read_file(workdir / f"file-{i:03d}") == b"%d" % i


def test_names_with_odd_bytes(workdir: Path) -> None:
    names = [
        "space name",
        "tab\tname",
        "newline\nname",
        "utf8-ünïcödé-日本",
        "-dash",
        ".hidden",
        "..dots",
        "a" * 255,
    ]
    for n in names:
        write_file(workdir / n, n.encode())
    raw = b"latin1-\xff\xfe"
    fd = os.open(os.path.join(os.fsencode(workdir), raw), os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    assert set(os.listdir(workdir)) == set(names) | {os.fsdecode(raw)}
    assert raw in os.listdir(os.fsencode(workdir))
    for n in names:
        assert read_file(workdir / n) == n.encode()


# --------------------------------------------------------------------------- #
# mknod


@pytest.mark.parametrize(
    "kind",
    [stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFREG],
    ids=["fifo", "socket", "chr", "blk", "reg"],
)
def test_mknod_types(workdir: Path, kind: int) -> None:
    dev = os.makedev(1, 3) if kind == stat.S_IFCHR else os.makedev(7, 42)
    os.mknod(workdir / "node", kind | 0o640, dev)
    st = os.lstat(workdir / "node")
    assert stat.S_IFMT(st.st_mode) == kind
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_nlink == 1
    if kind in (stat.S_IFCHR, stat.S_IFBLK):
        assert st.st_rdev == dev
        assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (os.major(dev), os.minor(dev))
    if kind == stat.S_IFREG:
        assert st.st_size == 0
    with expect_errno(errno.EEXIST):
        os.mknod(workdir / "node", kind | 0o640, dev)


def test_fifo_passes_data(workdir: Path) -> None:
    os.mkfifo(workdir / "fifo", 0o600)
    rfd = os.open(workdir / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    wfd = os.open(workdir / "fifo", os.O_WRONLY)
    try:
        os.write(wfd, b"through the fifo")
        assert os.read(rfd, 100) == b"through the fifo"
    finally:
        os.close(wfd)
        os.close(rfd)
    assert os.stat(workdir / "fifo").st_size == 0


def test_unix_socket_bind_and_connect(workdir: Path) -> None:
    # relative path: sun_path is limited to 108 bytes
    with contextlib.chdir(workdir), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as srv:
        srv.bind("sock")
        srv.listen(1)
        assert stat.S_ISSOCK(os.lstat(workdir / "sock").st_mode)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as cli:
            cli.connect("sock")
            conn, _ = srv.accept()
            with conn:
                cli.sendall(b"ping")
                assert conn.recv(4) == b"ping"


# --------------------------------------------------------------------------- #
# mkdir / rmdir / unlink


def test_mkdir_rmdir(workdir: Path) -> None:
    os.mkdir(workdir / "d", 0o750)
    st = os.stat(workdir / "d")
    assert stat.S_ISDIR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o750
    assert st.st_nlink == 2
    assert os.listdir(workdir / "d") == []
    with expect_errno(errno.EEXIST):
        os.mkdir(workdir / "d")
    os.rmdir(workdir / "d")
    assert not os.path.lexists(workdir / "d")
    with expect_errno(errno.ENOENT):
        os.rmdir(workdir / "d")


def test_mkdir_over_file_or_symlink_is_eexist(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.symlink("nowhere", workdir / "l")
    with expect_errno(errno.EEXIST):
        os.mkdir(workdir / "f")
    with expect_errno(errno.EEXIST):
        os.mkdir(workdir / "l")
    assert not os.path.lexists(workdir / "nowhere")


def test_mkdir_in_missing_parent_is_enoent(workdir: Path) -> None:
    with expect_errno(errno.ENOENT):
        os.mkdir(workdir / "missing" / "d")


def test_rmdir_not_empty(workdir: Path) -> None:
    os.makedirs(workdir / "d" / "sub")
    write_file(workdir / "d" / "f", b"")
    with expect_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rmdir(workdir / "d")
    os.mkdir(workdir / "only-subdir")
    os.mkdir(workdir / "only-subdir" / "s")
    with expect_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rmdir(workdir / "only-subdir")
    os.mkdir(workdir / "only-file")
    write_file(workdir / "only-file" / "f", b"")
    with expect_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rmdir(workdir / "only-file")
    assert os.path.isdir(workdir / "d" / "sub")
    assert os.path.isfile(workdir / "only-file" / "f")


def test_rmdir_of_file_and_unlink_of_dir(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.mkdir(workdir / "d")
    with expect_errno(errno.ENOTDIR):
        os.rmdir(workdir / "f")
    with expect_errno(errno.EISDIR):
        os.unlink(workdir / "d")
    with expect_errno(errno.EINVAL):
        os.rmdir(os.path.join(workdir / "d", "."))  # pathlib would drop the "."
    assert os.path.isfile(workdir / "f") and os.path.isdir(workdir / "d")


def test_rmdir_removed_directory_is_dead(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    fd = os.open(workdir / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rmdir(workdir / "d")
        assert os.fstat(fd).st_nlink == 0
        with expect_errno(errno.ENOENT):
            os.open("x", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd)
        with expect_errno(errno.ENOENT):
            os.mkdir("y", dir_fd=fd)
        assert list(os.scandir(fd)) == []
    finally:
        os.close(fd)


def test_unlink(workdir: Path) -> None:
    write_file(workdir / "f", b"x")
    os.unlink(workdir / "f")
    assert not os.path.lexists(workdir / "f")
    assert os.listdir(workdir) == []
    with expect_errno(errno.ENOENT):
        os.unlink(workdir / "f")


def test_unlink_symlink_not_target(workdir: Path) -> None:
    write_file(workdir / "t", b"target")
    os.symlink("t", workdir / "l")
    os.unlink(workdir / "l")
    assert read_file(workdir / "t") == b"target"
    assert not os.path.lexists(workdir / "l")


def test_deep_nesting_and_long_path(workdir: Path) -> None:
    path = workdir
    component = "d" * 60
    depth = 0
    while len(os.fsencode(path / component)) < 3900:
        path = path / component
        os.mkdir(path)
        depth += 1
    write_file(path / "leaf", b"deep")
    assert read_file(path / "leaf") == b"deep"
    assert depth > 30
    with contextlib.chdir(path):
        assert read_file("leaf") == b"deep"
        rel = os.path.join(*[".."] * depth)
        assert os.stat(rel).st_ino == os.stat(workdir).st_ino


# --------------------------------------------------------------------------- #
# rename


def test_rename_file(workdir: Path) -> None:
    write_file(workdir / "a", b"content")
    ino = os.stat(workdir / "a").st_ino
    os.rename(workdir / "a", workdir / "b")
    assert not os.path.lexists(workdir / "a")
    assert os.stat(workdir / "b").st_ino == ino
    assert read_file(workdir / "b") == b"content"


def test_rename_over_existing_file(workdir: Path) -> None:
    write_file(workdir / "a", b"new")
    write_file(workdir / "b", b"old")
    ino_a = os.stat(workdir / "a").st_ino
    fd = os.open(workdir / "b", os.O_RDONLY)
    try:
        os.rename(workdir / "a", workdir / "b")
        assert os.stat(workdir / "b").st_ino == ino_a
        assert read_file(workdir / "b") == b"new"
        assert sorted(os.listdir(workdir)) == ["b"]
        # the replaced inode is unlinked but still readable through the fd
        assert os.fstat(fd).st_nlink == 0
        assert os.pread(fd, 10, 0) == b"old"
    finally:
        os.close(fd)


def test_rename_across_directories(workdir: Path) -> None:
    os.mkdir(workdir / "d1")
    os.mkdir(workdir / "d2")
    write_file(workdir / "d1" / "f", b"moved")
    os.mkdir(workdir / "d1" / "sub")
    write_file(workdir / "d1" / "sub" / "inner", b"inner")
    os.rename(workdir / "d1" / "f", workdir / "d2" / "g")
    os.rename(workdir / "d1" / "sub", workdir / "d2" / "sub2")
    assert os.listdir(workdir / "d1") == []
    assert sorted(os.listdir(workdir / "d2")) == ["g", "sub2"]
    assert read_file(workdir / "d2" / "sub2" / "inner") == b"inner"
    assert os.stat(workdir / "d1").st_nlink == 2
    assert os.stat(workdir / "d2").st_nlink == 3
    assert os.stat(workdir / "d2" / "sub2" / "..").st_ino == os.stat(workdir / "d2").st_ino


def test_rename_dir_over_empty_dir(workdir: Path) -> None:
    os.mkdir(workdir / "src")
    write_file(workdir / "src" / "f", b"f")
    os.mkdir(workdir / "dst")
    ino = os.stat(workdir / "src").st_ino
    nlink_parent = os.stat(workdir).st_nlink
    os.rename(workdir / "src", workdir / "dst")
    assert os.stat(workdir / "dst").st_ino == ino
    assert read_file(workdir / "dst" / "f") == b"f"
    assert not os.path.lexists(workdir / "src")
    assert os.stat(workdir).st_nlink == nlink_parent - 1


def test_rename_dir_over_nonempty_dir_is_enotempty(workdir: Path) -> None:
    os.mkdir(workdir / "src")
    os.mkdir(workdir / "dst")
    write_file(workdir / "dst" / "keep", b"k")
    with expect_errno(errno.ENOTEMPTY, errno.EEXIST):
        os.rename(workdir / "src", workdir / "dst")
    assert read_file(workdir / "dst" / "keep") == b"k"
    assert os.path.isdir(workdir / "src")


def test_rename_dir_over_file_is_enotdir(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    write_file(workdir / "f", b"f")
    with expect_errno(errno.ENOTDIR):
        os.rename(workdir / "d", workdir / "f")
    assert os.path.isdir(workdir / "d") and read_file(workdir / "f") == b"f"


def test_rename_file_over_dir_is_eisdir(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    write_file(workdir / "f", b"f")
    with expect_errno(errno.EISDIR):
        os.rename(workdir / "f", workdir / "d")
    assert os.path.isdir(workdir / "d") and read_file(workdir / "f") == b"f"


def test_rename_dir_into_own_subtree_is_einval(workdir: Path) -> None:
    os.makedirs(workdir / "a" / "b")
    with expect_errno(errno.EINVAL):
        os.rename(workdir / "a", workdir / "a" / "b" / "c")
    assert os.path.isdir(workdir / "a" / "b")


def test_rename_missing_source_is_enoent(workdir: Path) -> None:
    with expect_errno(errno.ENOENT):
        os.rename(workdir / "missing", workdir / "x")
    write_file(workdir / "f", b"")
    with expect_errno(errno.ENOENT):
        os.rename(workdir / "f", workdir / "nodir" / "x")


def test_rename_hardlinks_to_same_inode_is_noop(workdir: Path) -> None:
    write_file(workdir / "a", b"same")
    os.link(workdir / "a", workdir / "b")
    os.rename(workdir / "a", workdir / "b")
    # POSIX: if old and new are links to the same file, rename does nothing.
    assert sorted(os.listdir(workdir)) == ["a", "b"]
    assert os.stat(workdir / "a").st_nlink == 2


def test_rename_to_itself(workdir: Path) -> None:
    write_file(workdir / "a", b"x")
    os.rename(workdir / "a", workdir / "a")
    assert read_file(workdir / "a") == b"x"


def test_rename_noreplace(workdir: Path) -> None:
    write_file(workdir / "a", b"a")
    write_file(workdir / "b", b"b")
    with expect_errno(errno.EEXIST):
        renameat2(workdir / "a", workdir / "b", RENAME_NOREPLACE)
    assert read_file(workdir / "a") == b"a" and read_file(workdir / "b") == b"b"
    renameat2(workdir / "a", workdir / "c", RENAME_NOREPLACE)
    assert not os.path.lexists(workdir / "a")
    assert read_file(workdir / "c") == b"a"
    os.mkdir(workdir / "d")
    with expect_errno(errno.EEXIST):
        renameat2(workdir / "c", workdir / "d", RENAME_NOREPLACE)


def test_rename_exchange_files(workdir: Path) -> None:
    write_file(workdir / "a", b"AAA")
    write_file(workdir / "b", b"B")
    ino_a, ino_b = os.stat(workdir / "a").st_ino, os.stat(workdir / "b").st_ino
    renameat2(workdir / "a", workdir / "b", RENAME_EXCHANGE)
    assert read_file(workdir / "a") == b"B" and read_file(workdir / "b") == b"AAA"
    assert os.stat(workdir / "a").st_ino == ino_b
    assert os.stat(workdir / "b").st_ino == ino_a


def test_rename_exchange_file_and_directory_across_parents(workdir: Path) -> None:
    os.mkdir(workdir / "p1")
    os.mkdir(workdir / "p2")
    write_file(workdir / "p1" / "x", b"file")
    os.mkdir(workdir / "p2" / "y")
    write_file(workdir / "p2" / "y" / "inner", b"inner")
    assert os.stat(workdir / "p1").st_nlink == 2
    assert os.stat(workdir / "p2").st_nlink == 3
    renameat2(workdir / "p1" / "x", workdir / "p2" / "y", RENAME_EXCHANGE)
    assert os.path.isdir(workdir / "p1" / "x")
    assert read_file(workdir / "p1" / "x" / "inner") == b"inner"
    assert read_file(workdir / "p2" / "y") == b"file"
    assert os.stat(workdir / "p1").st_nlink == 3
    assert os.stat(workdir / "p2").st_nlink == 2
    assert os.stat(workdir / "p1" / "x" / "..").st_ino == os.stat(workdir / "p1").st_ino
    # the directory really moved: ".." of it must resolve to its new parent
    with contextlib.chdir(workdir / "p1" / "x"):
        assert os.stat("..").st_ino == os.stat(workdir / "p1").st_ino


def test_rename_exchange_missing_is_enoent(workdir: Path) -> None:
    write_file(workdir / "a", b"a")
    with expect_errno(errno.ENOENT):
        renameat2(workdir / "a", workdir / "missing", RENAME_EXCHANGE)
    assert read_file(workdir / "a") == b"a"


def test_rename_flags_conflict_is_einval(workdir: Path) -> None:
    write_file(workdir / "a", b"a")
    write_file(workdir / "b", b"b")
    with expect_errno(errno.EINVAL):
        renameat2(workdir / "a", workdir / "b", RENAME_EXCHANGE | RENAME_NOREPLACE)


def test_rename_many_in_cycle(workdir: Path) -> None:
    for i in range(50):
        write_file(workdir / f"f{i}", b"%d" % i)
    for i in range(50):
        os.rename(workdir / f"f{i}", workdir / f"g{i}")
    model = [b"%d" % i for i in range(50)]
    for i in range(50):
        j = (i + 1) % 50
        renameat2(workdir / f"g{i}", workdir / f"g{j}", RENAME_EXCHANGE)
        model[i], model[j] = model[j], model[i]
    assert sorted(os.listdir(workdir)) == sorted(f"g{i}" for i in range(50))
    assert [read_file(workdir / f"g{i}") for i in range(50)] == model
    assert model != [b"%d" % i for i in range(50)]


# --------------------------------------------------------------------------- #
# link


def test_link_counts(workdir: Path) -> None:
    write_file(workdir / "a", b"shared")
    os.link(workdir / "a", workdir / "b")
    os.mkdir(workdir / "sub")
    os.link(workdir / "b", workdir / "sub" / "c")
    for name in ("a", "b", "sub/c"):
        st = os.stat(workdir / name)
        assert st.st_nlink == 3
        assert st.st_ino == os.stat(workdir / "a").st_ino
    with open(workdir / "sub" / "c", "r+b") as f:
        f.write(b"SH")
    assert read_file(workdir / "a") == b"SHared"
    os.unlink(workdir / "a")
    assert os.stat(workdir / "b").st_nlink == 2
    os.unlink(workdir / "sub" / "c")
    assert os.stat(workdir / "b").st_nlink == 1
    assert read_file(workdir / "b") == b"SHared"


def test_link_errors(workdir: Path) -> None:
    write_file(workdir / "a", b"")
    write_file(workdir / "b", b"")
    os.mkdir(workdir / "d")
    with expect_errno(errno.EEXIST):
        os.link(workdir / "a", workdir / "b")
    with expect_errno(errno.EPERM):
        os.link(workdir / "d", workdir / "dlink")
    with expect_errno(errno.ENOENT):
        os.link(workdir / "missing", workdir / "x")
    assert os.stat(workdir / "a").st_nlink == 1


def test_link_to_symlink_links_the_symlink(workdir: Path) -> None:
    os.symlink("target", workdir / "l")
    os.link(workdir / "l", workdir / "l2", follow_symlinks=False)
    assert os.readlink(workdir / "l2") == "target"
    assert os.lstat(workdir / "l2").st_ino == os.lstat(workdir / "l").st_ino
    assert os.lstat(workdir / "l").st_nlink == 2


# --------------------------------------------------------------------------- #
# symlink / readlink


@pytest.mark.parametrize("length", [1, 60, 255, 1000, 4095])
def test_symlink_readlink(workdir: Path, length: int) -> None:
    target = ("t/" * length)[:length]
    os.symlink(target, workdir / "l")
    assert os.readlink(workdir / "l") == target
    st = os.lstat(workdir / "l")
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_size == length
    assert st.st_nlink == 1


def test_symlink_resolution(workdir: Path) -> None:
    os.mkdir(workdir / "d")
    write_file(workdir / "d" / "f", b"through links")
    os.symlink("d", workdir / "dl")
    os.symlink("dl/f", workdir / "fl")
    os.symlink(str(workdir / "d" / "f"), workdir / "abs")
    assert read_file(workdir / "fl") == b"through links"
    assert read_file(workdir / "abs") == b"through links"
    assert read_file(workdir / "dl" / "f") == b"through links"
    assert os.stat(workdir / "fl").st_ino == os.stat(workdir / "d" / "f").st_ino


def test_symlink_errors(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    with expect_errno(errno.EEXIST):
        os.symlink("x", workdir / "f")
    with expect_errno(errno.EINVAL):
        os.readlink(workdir / "f")
    os.symlink("loop2", workdir / "loop1")
    os.symlink("loop1", workdir / "loop2")
    with expect_errno(errno.ELOOP):
        os.stat(workdir / "loop1")
    os.symlink("f", workdir / "l")
    with expect_errno(errno.ELOOP):
        os.open(workdir / "l", os.O_RDONLY | os.O_NOFOLLOW)
    with expect_errno(errno.ENOENT):
        os.symlink("", workdir / "empty")


def test_dangling_symlink(workdir: Path) -> None:
    os.symlink("does/not/exist", workdir / "l")
    assert os.path.lexists(workdir / "l")
    assert not os.path.exists(workdir / "l")
    assert os.readlink(workdir / "l") == "does/not/exist"
    with expect_errno(errno.ENOENT):
        os.stat(workdir / "l")


def test_symlink_mode_is_0777(workdir: Path) -> None:
    os.symlink("anything", workdir / "l")
    assert stat.S_IMODE(os.lstat(workdir / "l").st_mode) == 0o777
