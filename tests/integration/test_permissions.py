"""Permissions and ownership, checked by the kernel (the mount uses
default_permissions) in children that dropped root: EACCES/EPERM, access(2),
fsuid/fsgid ownership of new files, setgid directories, the sticky bit."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from .util import NOBODY, NOGROUP, as_nobody, expect_errno, read_file, run_as, write_file

USER = 1000
GROUP = 4242


def _create(name: str, mode: int = 0o644) -> tuple[int, int, int]:
    fd = os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    return st.st_uid, st.st_gid, st.st_mode


def _owner(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_uid, st.st_gid


def _read(name: str) -> bytes:
    with open(name, "rb") as f:
        return f.read()


def _write(name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def test_read_and_write_permission(workdir: Path) -> None:
    write_file(workdir / "secret", b"s")
    os.chmod(workdir / "secret", 0o600)
    write_file(workdir / "public", b"p")
    os.chmod(workdir / "public", 0o644)
    write_file(workdir / "shared", b"w")
    os.chmod(workdir / "shared", 0o666)
    with expect_errno(errno.EACCES):
        as_nobody(_read, "secret", cwd=workdir)
    assert as_nobody(_read, "public", cwd=workdir) == b"p"
    with expect_errno(errno.EACCES):
        as_nobody(_write, "public", b"x", cwd=workdir)
    with expect_errno(errno.EACCES):
        as_nobody(os.truncate, "public", 0, cwd=workdir)
    as_nobody(_write, "shared", b"W", cwd=workdir)
    assert read_file(workdir / "public") == b"p"
    assert read_file(workdir / "shared") == b"W"


def test_owner_bits_take_precedence(workdir: Path) -> None:
    write_file(workdir / "f", b"x")
    os.chown(workdir / "f", NOBODY, NOGROUP)
    os.chmod(workdir / "f", 0o077)
    with expect_errno(errno.EACCES):
        as_nobody(_read, "f", cwd=workdir)
    assert run_as(USER, USER, _read, "f", cwd=workdir) == b"x"


def test_group_permission_via_supplementary_group(workdir: Path) -> None:
    write_file(workdir / "f", b"group data")
    os.chown(workdir / "f", 0, GROUP)
    os.chmod(workdir / "f", 0o640)
    assert run_as(USER, USER, _read, "f", cwd=workdir, groups=(GROUP,)) == b"group data"
    with expect_errno(errno.EACCES):
        run_as(USER, USER, _read, "f", cwd=workdir)


def test_directory_write_and_search_permission(workdir: Path) -> None:
    os.mkdir(workdir / "closed", 0o755)
    write_file(workdir / "closed" / "f", b"x")
    with expect_errno(errno.EACCES):
        as_nobody(_create, "closed/new", cwd=workdir)
    with expect_errno(errno.EACCES):
        as_nobody(os.mkdir, "closed/newdir", cwd=workdir)
    with expect_errno(errno.EACCES):
        as_nobody(os.unlink, "closed/f", cwd=workdir)
    with expect_errno(errno.EACCES):
        as_nobody(os.rename, "closed/f", "closed/g", cwd=workdir)
    os.mkdir(workdir / "private", 0o700)
    write_file(workdir / "private" / "f", b"x")
    with expect_errno(errno.EACCES):
        as_nobody(os.stat, "private/f", cwd=workdir)
    with expect_errno(errno.EACCES):
        as_nobody(os.listdir, "private", cwd=workdir)
    os.chmod(workdir / "private", 0o711)  # search but not read
    assert as_nobody(lambda: os.stat("private/f").st_size, cwd=workdir) == 1
    with expect_errno(errno.EACCES):
        as_nobody(os.listdir, "private", cwd=workdir)
    assert os.listdir(workdir / "closed") == ["f"]


def test_access_unprivileged(workdir: Path) -> None:
    modes = {"r600": 0o600, "r604": 0o604, "w646": 0o646, "x755": 0o755, "x644": 0o644}
    for name, mode in modes.items():
        write_file(workdir / name, b"")
        os.chmod(workdir / name, mode)

    def probe() -> dict[str, tuple[bool, bool, bool, bool]]:
        return {
            n: (
                os.access(n, os.R_OK),
                os.access(n, os.W_OK),
                os.access(n, os.X_OK),
                os.access(n, os.R_OK, effective_ids=True),
            )
            for n in modes
        }

    got = as_nobody(probe, cwd=workdir)
    assert got == {
        "r600": (False, False, False, False),
        "r604": (True, False, False, True),
        "w646": (True, True, False, True),
        "x755": (True, False, True, True),
        "x644": (True, False, False, True),
    }
    assert as_nobody(os.access, "missing", os.F_OK, cwd=workdir) is False


def test_chmod_chown_by_non_owner(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.chmod(workdir / "f", 0o666)
    with expect_errno(errno.EPERM):
        as_nobody(os.chmod, "f", 0o777, cwd=workdir)
    with expect_errno(errno.EPERM):
        as_nobody(os.chown, "f", NOBODY, NOGROUP, cwd=workdir)
    os.chown(workdir / "f", NOBODY, NOGROUP)
    with expect_errno(errno.EPERM):
        as_nobody(os.chown, "f", USER, -1, cwd=workdir)
    with expect_errno(errno.EPERM):
        as_nobody(os.chown, "f", -1, GROUP, cwd=workdir)  # not a member of GROUP
    run_as(NOBODY, NOGROUP, os.chown, "f", -1, GROUP, cwd=workdir, groups=(GROUP,))
    assert _owner(workdir / "f") == (NOBODY, GROUP)
    as_nobody(os.chmod, "f", 0o640, cwd=workdir)
    assert stat.S_IMODE(os.stat(workdir / "f").st_mode) == 0o640


def test_chmod_setgid_by_non_member_is_dropped(workdir: Path) -> None:
    write_file(workdir / "f", b"")
    os.chown(workdir / "f", NOBODY, 0)  # group root: nobody is not a member
    as_nobody(os.chmod, "f", 0o2755, cwd=workdir)
    assert stat.S_IMODE(os.stat(workdir / "f").st_mode) == 0o755


def test_utime_permissions(workdir: Path) -> None:
    write_file(workdir / "w", b"")
    os.chmod(workdir / "w", 0o666)
    os.utime(workdir / "w", ns=(10**18, 10**18))
    as_nobody(os.utime, "w", None, cwd=workdir)  # "now" needs only write permission
    assert os.stat(workdir / "w").st_mtime_ns != 10**18
    with expect_errno(errno.EPERM):
        as_nobody(os.utime, "w", (1, 2), cwd=workdir)  # explicit times need ownership
    write_file(workdir / "ro", b"")
    os.chmod(workdir / "ro", 0o644)
    with expect_errno(errno.EACCES):
        as_nobody(os.utime, "ro", None, cwd=workdir)


@pytest.mark.parametrize("uid,gid", [(NOBODY, NOGROUP), (USER, 1001)])
def test_new_files_belong_to_fsuid_fsgid(workdir: Path, uid: int, gid: int) -> None:
    os.mkdir(workdir / "open")
    os.chmod(workdir / "open", 0o777)

    def make_all() -> None:
        _create("open/file")
        os.mkdir("open/dir")
        os.symlink("file", "open/link")
        os.mkfifo("open/fifo")
        os.mknod("open/node", stat.S_IFREG | 0o600)

    run_as(uid, gid, make_all, cwd=workdir)
    for name in ("file", "dir", "link", "fifo", "node"):
        assert _owner(workdir / "open" / name) == (uid, gid), name
    assert not os.stat(workdir / "open" / "dir").st_mode & stat.S_ISGID


def test_setgid_directory_passes_group_on(workdir: Path) -> None:
    os.mkdir(workdir / "sg")
    os.chown(workdir / "sg", 0, GROUP)
    os.chmod(workdir / "sg", 0o2777)
    # root creating
    write_file(workdir / "sg" / "rootfile", b"")
    os.mkdir(workdir / "sg" / "rootdir")
    os.symlink("x", workdir / "sg" / "rootlink")
    os.mkfifo(workdir / "sg" / "rootfifo")
    for name in ("rootfile", "rootdir", "rootlink", "rootfifo"):
        assert _owner(workdir / "sg" / name) == (0, GROUP), name
    # subdirectories inherit the setgid bit, files do not get it
    assert os.stat(workdir / "sg" / "rootdir").st_mode & stat.S_ISGID
    assert not os.stat(workdir / "sg" / "rootfile").st_mode & stat.S_ISGID
    # an unprivileged non-member creating
    as_nobody(_create, "sg/nobodyfile", cwd=workdir)
    as_nobody(os.mkdir, "sg/nobodydir", cwd=workdir)
    assert _owner(workdir / "sg" / "nobodyfile") == (NOBODY, GROUP)
    assert _owner(workdir / "sg" / "nobodydir") == (NOBODY, GROUP)
    assert os.stat(workdir / "sg" / "nobodydir").st_mode & stat.S_ISGID
    # and it goes on down the tree
    write_file(workdir / "sg" / "rootdir" / "deeper", b"")
    assert _owner(workdir / "sg" / "rootdir" / "deeper") == (0, GROUP)


def test_setgid_directory_strips_sgid_for_non_member(workdir: Path) -> None:
    os.mkdir(workdir / "sg")
    os.chown(workdir / "sg", 0, GROUP)
    os.chmod(workdir / "sg", 0o2777)
    _, gid, mode = as_nobody(_create, "sg/f", 0o2755, cwd=workdir)
    assert gid == GROUP
    assert not mode & stat.S_ISGID
    assert not os.stat(workdir / "sg" / "f").st_mode & stat.S_ISGID


def test_sticky_bit_restricts_deletion(workdir: Path) -> None:
    os.mkdir(workdir / "tmp")
    os.chmod(workdir / "tmp", 0o1777)
    write_file(workdir / "tmp" / "rootfile", b"root's")
    os.chmod(workdir / "tmp" / "rootfile", 0o666)
    run_as(USER, USER, _create, "tmp/userfile", cwd=workdir)
    os.mkdir(workdir / "tmp" / "rootdir")
    os.chmod(workdir / "tmp" / "rootdir", 0o777)
    with expect_errno(errno.EPERM):
        as_nobody(os.unlink, "tmp/rootfile", cwd=workdir)
    with expect_errno(errno.EPERM):
        as_nobody(os.unlink, "tmp/userfile", cwd=workdir)
    with expect_errno(errno.EPERM):
        as_nobody(os.rename, "tmp/rootfile", "tmp/stolen", cwd=workdir)
    with expect_errno(errno.EPERM):
        as_nobody(os.rmdir, "tmp/rootdir", cwd=workdir)
    as_nobody(_create, "tmp/mine", cwd=workdir)
    with expect_errno(errno.EPERM):  # nor replace someone else's file by rename
        as_nobody(os.rename, "tmp/mine", "tmp/userfile", cwd=workdir)
    as_nobody(os.unlink, "tmp/mine", cwd=workdir)  # own files may go
    assert sorted(os.listdir(workdir / "tmp")) == ["rootdir", "rootfile", "userfile"]
    # the directory's owner may delete anything in it
    os.chown(workdir / "tmp", USER, USER)
    run_as(USER, USER, os.unlink, "tmp/rootfile", cwd=workdir)
    # without the sticky bit anyone with write permission may delete
    os.chmod(workdir / "tmp", 0o777)
    as_nobody(os.unlink, "tmp/userfile", cwd=workdir)
    assert os.listdir(workdir / "tmp") == ["rootdir"]


def test_unprivileged_cannot_mknod_device(workdir: Path) -> None:
    os.mkdir(workdir / "open")
    os.chmod(workdir / "open", 0o777)
    with expect_errno(errno.EPERM):
        as_nobody(os.mknod, "open/dev", stat.S_IFCHR | 0o600, os.makedev(1, 3), cwd=workdir)
    assert os.listdir(workdir / "open") == []
