"""Real tools on the mount: tar, git, cp -a, fio with verification, xfs_io,
setfattr/getfattr, sqlite, concurrent writers, executing a script."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import Mount
from .trees import build_tree
from .util import diff_snapshots, pattern, read_file, sha256_file, snapshot, write_file

MIB = 1 << 20


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def run(argv: list[str], *, cwd: Path | None = None, timeout: float = 600,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                         timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    assert res.returncode == 0, f"{argv} exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return res


def _sh(cmd: str, cwd: Path | None = None, timeout: float = 600) -> None:
    run(["bash", "-o", "pipefail", "-c", cmd], cwd=cwd, timeout=timeout)


def _real_tree(dst: Path) -> None:
    """A copy of some real source trees (headers, and this repo's sources)."""
    dst.mkdir()
    for src in ("/usr/include/linux", "/usr/include/python3.11", "/usr/include/x86_64-linux-gnu"):
        if os.path.isdir(src):
            shutil.copytree(src, dst / Path(src).name, symlinks=True)
    repo = Path(__file__).resolve().parents[2]
    shutil.copytree(repo, dst / "repo", symlinks=True,
                    ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.so",
                                                  "build", "*.egg-info", ".pytest_cache"))


def diff_r(a: Path, b: Path) -> None:
    """diff -r, leaving out the special files that diff reports as differing
    even when identical (the snapshot comparison covers them)."""
    need("diff")
    run(["diff", "-r", "--no-dereference", "-x", "fifo", "-x", "chr", "-x", "blk", "-x", "sock",
         str(a), str(b)])


# --------------------------------------------------------------------------- #
# tar


def test_tar_round_trip(workdir: Path, tmp_path: Path) -> None:
    need("tar")
    src = tmp_path / "src"
    _real_tree(src)
    (src / "made").mkdir()
    build_tree(src / "made", seed=3, n_small=300, sockets=False, sparse_unit=16 * MIB)
    inside = workdir / "extracted"
    inside.mkdir()
    tar_opts = "--format=posix --xattrs --xattrs-include='user.*' --sparse --numeric-owner"
    _sh(f"tar -C {src} {tar_opts} -cf - . | tar -C {inside} {tar_opts} -xpf -")
    diff_r(src, inside)
    want = snapshot(src, xattr_prefix="user.")
    got = snapshot(inside, xattr_prefix="user.")
    assert not (d := diff_snapshots(want, got)), "tar into the mount:\n" + "\n".join(d)
    # sparse files stay sparse on the mount
    assert os.stat(inside / "made" / "sparse").st_blocks * 512 < 16 * MIB

    back = tmp_path / "back"
    back.mkdir()
    _sh(f"tar -C {inside} {tar_opts} -cf - . | tar -C {back} {tar_opts} -xpf -")
    diff_r(src, back)
    assert not (d := diff_snapshots(want, snapshot(back, xattr_prefix="user."))), "\n".join(d)


# --------------------------------------------------------------------------- #
# cp -a


def test_cp_a_round_trip(workdir: Path, tmp_path: Path) -> None:
    need("cp")
    src = tmp_path / "src"
    src.mkdir()
    build_tree(src, seed=4, n_small=400, sparse_unit=16 * MIB)
    (src / "real").mkdir()
    shutil.copytree("/usr/include/linux", src / "real" / "linux", symlinks=True)
    want = snapshot(src, extra=("linkgroup",), xattr_prefix="user.")

    dst = workdir / "copy"
    run(["cp", "-a", str(src), str(dst)])
    diff_r(src, dst)
    got = snapshot(dst, extra=("linkgroup",), xattr_prefix="user.")
    assert not (d := diff_snapshots(want, got)), "cp -a into the mount:\n" + "\n".join(d)
    assert os.stat(dst / "sparse").st_blocks * 512 < 16 * MIB, "cp -a lost sparseness"

    back = tmp_path / "back"
    run(["cp", "-a", str(dst), str(back)])
    got = snapshot(back, extra=("linkgroup",), xattr_prefix="user.")
    assert not (d := diff_snapshots(want, got)), "cp -a out of the mount:\n" + "\n".join(d)

    # and a copy within the mount
    run(["cp", "-a", str(dst), str(workdir / "copy2")])
    got = snapshot(workdir / "copy2", extra=("linkgroup",), xattr_prefix="user.")
    assert not (d := diff_snapshots(want, got)), "cp -a within the mount:\n" + "\n".join(d)


# --------------------------------------------------------------------------- #
# git


def test_git_workflow(workdir: Path, tmp_path: Path) -> None:
    git = need("git")
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", HOME=str(tmp_path), LC_ALL="C")
    ident = ["-c", "user.name=daxfs test", "-c", "user.email=test@daxfs.invalid",
             "-c", "init.defaultBranch=main", "-c", "safe.directory=*"]
    repo = workdir / "repo"
    _real_tree(repo)

    def g(*args: str, cwd: Path = repo) -> str:
        return run([git, *ident, *args], cwd=cwd, env=env).stdout

    g("init", "-q")
    g("add", "-A")
    g("commit", "-q", "-m", "x")
    g("fsck", "--full", "--strict")
    assert g("log", "--format=%s") == "x\n"
    assert g("status", "--porcelain") == "", "stat data changed behind git's back"
    # edit, delete, rename, commit again
    victim = next(p for p in sorted(repo.rglob("*.h")) if p.is_file())
    victim.write_text(victim.read_text() + "\n/* edited on daxfs */\n")
    g("rm", "-q", str(next(p for p in sorted(repo.rglob("*.h")) if p != victim)))
    if (repo / "linux").is_dir():
        g("mv", "linux", "linux-moved")
    g("commit", "-q", "-a", "-m", "second")
    g("gc", "-q")
    g("fsck", "--full", "--strict")
    assert g("log", "--format=%s") == "second\nx\n"
    assert g("status", "--porcelain") == ""
    # a local clone (hard links objects) and a checkout of the first commit in it
    g("clone", "-q", str(repo), str(workdir / "clone"), cwd=workdir)
    g("fsck", "--full", "--strict", cwd=workdir / "clone")
    g("checkout", "-q", "HEAD~1", cwd=workdir / "clone")
    assert "/* edited on daxfs */" not in (workdir / "clone" / victim.relative_to(repo)).read_text()
    assert g("status", "--porcelain", cwd=workdir / "clone") == ""


# --------------------------------------------------------------------------- #
# fio


def _fio(workdir: Path, tmp_path: Path, *args: str) -> dict:
    fio = need("fio")
    res = subprocess.run(
        [fio, "--name=verify", f"--filename={workdir / 'fio.dat'}", "--output-format=json",
         "--verify=crc32c", "--do_verify=1", "--verify_fatal=1", "--verify_state_save=0",
         "--bs=4k", "--randrepeat=1", *args],
        cwd=tmp_path, capture_output=True, text=True, timeout=1500, stdin=subprocess.DEVNULL,
    )
    assert res.returncode == 0, f"fio exited {res.returncode}:\n{res.stderr}\n{res.stdout[-3000:]}"
    assert "verify" not in res.stderr.lower(), res.stderr
    report = json.loads(res.stdout[res.stdout.index("{"):])
    job = report["jobs"][0]
    assert job["error"] == 0
    return job


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_fio_randwrite_verify(workdir: Path, tmp_path: Path, mnt: Mount) -> None:
    job = _fio(workdir, tmp_path, "--rw=randwrite", "--ioengine=psync", "--size=256m")
    assert job["write"]["io_bytes"] == 256 * MIB
    assert job["read"]["io_bytes"] == 256 * MIB  # the verify pass read everything back
    if mnt.dax == "always":
        os.unlink(workdir / "fio.dat")
        job = _fio(workdir, tmp_path, "--rw=randwrite", "--ioengine=psync", "--size=256m",
                   "--direct=1")
        assert job["write"]["io_bytes"] == 256 * MIB
        assert job["read"]["io_bytes"] == 256 * MIB


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fio_mmap_verify(workdir: Path, tmp_path: Path) -> None:
    job = _fio(workdir, tmp_path, "--rw=randwrite", "--ioengine=mmap", "--size=64m")
    assert job["write"]["io_bytes"] == 64 * MIB
    assert job["read"]["io_bytes"] == 64 * MIB


# --------------------------------------------------------------------------- #
# xfs_io, setfattr / getfattr


def test_xfs_io_operations(workdir: Path) -> None:
    xfs_io = need("xfs_io")
    f = workdir / "f"
    run([xfs_io, "-f", "-c", "pwrite -q -S 0xab -b 65536 0 1m", "-c", "fsync",
         "-c", "fpunch 64k 128k", "-c", "pwrite -q -S 0xcd 300k 10", "-c", "fdatasync",
         "-c", "truncate 2m", str(f)])
    data = read_file(f)
    expected = bytearray(b"\xab" * MIB)
    expected[64 * 1024 : 192 * 1024] = bytes(128 * 1024)
    expected[300 * 1024 : 300 * 1024 + 10] = b"\xcd" * 10
    expected += bytes(MIB)
    assert data == bytes(expected)
    out = run([xfs_io, "-r", "-c", "seek -h 0", "-c", "seek -d 100k", str(f)]).stdout
    assert "65536" in out, out  # first hole at 64 KiB
    assert "196608" in out, out  # next data after the punched range
    out = run([xfs_io, "-r", "-c", "pread -v 300k 16", str(f)]).stdout
    assert "cd cd cd cd cd cd cd cd cd cd ab ab ab ab ab ab" in out, out


def test_setfattr_getfattr(workdir: Path) -> None:
    setfattr = need("setfattr")
    getfattr = need("getfattr")
    write_file(workdir / "f", b"")
    os.mkdir(workdir / "d")
    run([setfattr, "-n", "user.color", "-v", "blue", str(workdir / "f")])
    run([setfattr, "-n", "user.hex", "-v", "0x00ff10", str(workdir / "f")])
    run([setfattr, "-n", "user.dir", "-v", "yes", str(workdir / "d")])
    assert os.getxattr(workdir / "f", "user.hex") == b"\x00\xff\x10"
    out = run([getfattr, "-d", "-e", "text", "-R", "--absolute-names", str(workdir)]).stdout
    assert 'user.color="blue"' in out and 'user.dir="yes"' in out
    run([setfattr, "-x", "user.color", str(workdir / "f")])
    res = subprocess.run([getfattr, "-n", "user.color", str(workdir / "f")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode != 0 and "No such attribute" in res.stderr
    # a dump restores onto another file
    dump = run([getfattr, "-d", "-e", "hex", "--absolute-names", str(workdir / "f")]).stdout
    write_file(workdir / "g", b"")
    restore = dump.replace(f"# file: {workdir / 'f'}", f"# file: {workdir / 'g'}")
    subprocess.run([setfattr, "--restore=-"], input=restore, text=True, check=True, timeout=60)
    assert os.getxattr(workdir / "g", "user.hex") == b"\x00\xff\x10"


# --------------------------------------------------------------------------- #
# sqlite (fsync, fcntl locks, WAL's shared-memory mmap)


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_workload(workdir: Path, journal: str) -> None:
    db = workdir / "test.db"
    con = sqlite3.connect(db)
    try:
        assert con.execute(f"PRAGMA journal_mode={journal}").fetchone()[0] == journal
        con.execute("PRAGMA synchronous=FULL")
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB, s TEXT)")
        for batch in range(20):
            with con:
                con.executemany(
                    "INSERT INTO t (v, s) VALUES (?, ?)",
                    [(pattern(200, seed=batch * 1000 + i), f"row {batch}-{i}")
                     for i in range(500)],
                )
        with con:
            con.execute("DELETE FROM t WHERE id % 3 = 0")
            con.execute("UPDATE t SET s = s || '!' WHERE id % 5 = 0")
        con.execute("CREATE INDEX ts ON t(s)")
        con.execute("VACUUM")
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        count = con.execute("SELECT COUNT(*) FROM t").fetchone()[0]
    finally:
        con.close()
    assert count == 10000 - 10000 // 3
    con = sqlite3.connect(db)  # a second connection sees the committed data
    try:
        assert con.execute("SELECT COUNT(*) FROM t").fetchone()[0] == count
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()


# --------------------------------------------------------------------------- #
# concurrency


WRITER = """
import hashlib, os, sys
path, seed, size, stride, phase = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    int(sys.argv[4]), int(sys.argv[5])
def block(i):
    return hashlib.sha256(b"%d:%d" % (seed, i)).digest() * 128   # 4 KiB
fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
for i in range(phase, size // 4096, stride):
    data = block(i)
    off = i * 4096
    while data:
        n = os.pwrite(fd, data, off)
        data, off = data[n:], off + n
os.fsync(fd)
os.close(fd)
"""


def _expected_block(seed: int, i: int) -> bytes:
    import hashlib

    return hashlib.sha256(b"%d:%d" % (seed, i)).digest() * 128


def _spawn(*args: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, *map(str, args)],
                            stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err.decode(errors="replace")


def test_two_writers_different_files(workdir: Path) -> None:
    size = 32 * MIB
    procs = [_spawn(workdir / "a", 1, size, 1, 0), _spawn(workdir / "b", 2, size, 1, 0)]
    _wait_all(procs)
    for name, seed in (("a", 1), ("b", 2)):
        with open(workdir / name, "rb") as f:
            for i in range(size // 4096):
                assert f.read(4096) == _expected_block(seed, i), f"{name} block {i}"
        assert os.stat(workdir / name).st_size == size


def test_two_writers_same_file_interleaved_blocks(workdir: Path) -> None:
    size = 16 * MIB
    procs = [_spawn(workdir / "f", 3, size, 2, 0), _spawn(workdir / "f", 3, size, 2, 1)]
    _wait_all(procs)
    with open(workdir / "f", "rb") as f:
        for i in range(size // 4096):
            assert f.read(4096) == _expected_block(3, i), f"block {i}"


CREATOR = """
import os, sys
d, tag = sys.argv[1], sys.argv[2]
for i in range(500):
    fd = os.open(os.path.join(d, f"{tag}-{i:03d}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, f"{tag}{i}".encode())
    os.close(fd)
    if i % 5 == 0:
        os.rename(os.path.join(d, f"{tag}-{i:03d}"), os.path.join(d, f"{tag}-{i:03d}.r"))
"""


def test_concurrent_creates_in_one_directory(workdir: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", CREATOR, str(workdir), tag],
                              stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
             for tag in ("p", "q", "r")]
    _wait_all(procs)
    names = set(os.listdir(workdir))
    assert len(names) == 1500
    for tag in ("p", "q", "r"):
        for i in range(500):
            name = f"{tag}-{i:03d}" + (".r" if i % 5 == 0 else "")
            assert name in names
            assert read_file(workdir / name) == f"{tag}{i}".encode()


# --------------------------------------------------------------------------- #
# exec


def test_execute_script_and_copied_binary(workdir: Path) -> None:
    script = workdir / "hello.sh"
    write_file(script, b"#!/bin/sh\necho \"hello from $(basename $0) $1\"\n", mode=0o755)
    assert run([str(script), "daxfs"]).stdout == "hello from hello.sh daxfs\n"
    true_bin = shutil.which("true")
    assert true_bin
    shutil.copy2(true_bin, workdir / "mytrue")
    assert sha256_file(workdir / "mytrue") == sha256_file(true_bin)
    run([str(workdir / "mytrue")])  # an ELF binary is mmapped and executed from the mount
