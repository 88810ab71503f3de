"""fsck: for every check, corrupt exactly that thing, see it flagged, repaired, and the
image clean and mountable with the remaining data intact."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from daxfs import format as fmt
from daxfs.crash import _read_path
from daxfs.fs import Filesystem
from daxfs.fsck import check_image

from .conftest import BS, DATA_F, DATA_G, TARGET, frag_data

FRAG = b"".join(frag_data() + (b"\0" * BS if i < 7 else b"") for i in range(8))
EXPECT = {"d/f": DATA_F, "g": DATA_G, "d/g2": DATA_G, "frag": FRAG, "filler": b"F" * 8 * BS}


def verify(path: str, skip: tuple[str, ...] = ()) -> Filesystem:
    fs = Filesystem.from_image(path)
    try:
        for p, want in EXPECT.items():
            if p not in skip:
                assert _read_path(fs, p) == want, p
        if "l" not in skip:
            assert fs.readlink(fs.lookup(1, b"l").ino) == TARGET
        if "xattr" not in skip:
            assert fs.getxattr(fs.lookup(1, b"g").ino, b"user.a") == b"A" * 100
        if "d/sub" not in skip:
            assert fs.lookup(fs.lookup(1, b"d").ino, b"sub").is_dir()
    finally:
        fs.close()


def test_base_image_is_clean(img):
    raw, _ = img
    code, c = check_image(raw.path)
    assert code == 0, [f.message for f in c.findings]
    verify(raw.path)


# Each case: (corrupt(raw, inos), substring expected in a finding, files allowed to change)
def c_state(raw, inos):
    raw.put(fmt.SB_STATE_OFF, fmt.STATE_NEEDS_FSCK.to_bytes(8, "little"))


def c_jheader(raw, inos):
    raw.flip(raw.sb.journal_start, 2)


def c_bbitmap_leak(raw, inos):
    raw.set_bit(raw.sb.bbitmap_start, raw.sb.block_count - 20, fmt.BT_BBITMAP, True)


def c_bbitmap_free(raw, inos):
    pb = raw.extents(inos["f"])[0][1]
    raw.set_bit(raw.sb.bbitmap_start, pb, fmt.BT_BBITMAP, False)


def c_bbitmap_crc(raw, inos):
    raw.flip(raw.sb.bbitmap_start, 4000)


def c_ibitmap_extra(raw, inos):
    raw.set_bit(raw.sb.ibitmap_start, 200, fmt.BT_IBITMAP, True)


def c_ibitmap_missing(raw, inos):
    raw.set_bit(raw.sb.ibitmap_start, inos["g"], fmt.BT_IBITMAP, False)


def c_itable_crc(raw, inos):
    raw.flip(raw.sb.itable_start, 3900)  # unused payload bytes: only the crc breaks


def c_bad_mode(raw, inos):
    raw.edit_inode(inos["filler"], mode=0o070644)


def c_nlink_file(raw, inos):
    raw.edit_inode(inos["g"], nlink=5)


def c_nlink_dir(raw, inos):
    raw.edit_inode(inos["d"], nlink=2)


def c_parent(raw, inos):
    raw.edit_inode(inos["sub"], parent=1)


def c_dangling(raw, inos):
    dr = raw.directory(1)
    dr.add(b"ghost", 200, 8, lambda: 1 / 0)
    raw.put_directory(1, dr)


def c_unreachable(raw, inos):
    dr = raw.directory(1)
    dr.remove(b"filler")
    raw.put_directory(1, dr)


def c_cycle(raw, inos):
    dr = raw.directory(inos["d"])
    dr.add(b"loop", inos["d"], 4, lambda: 1 / 0)  # d contains itself
    raw.put_directory(inos["d"], dr)


def c_dtype(raw, inos):
    dr = raw.directory(1)
    dr.replace(b"g", inos["g"], 4)
    raw.put_directory(1, dr)


def c_cookie(raw, inos):
    raw.edit_inode(1, next_cookie=4)


def c_dir_crc(raw, inos):
    raw.flip(raw.inode(inos["d"]).aux_block, 3000)


def c_leaf_crc(raw, inos):
    raw.flip(raw.inode(inos["frag"]).ext_head, 4000)


def c_extent_range(raw, inos):
    d = raw.inode(inos["g"])
    lb, pb, n, fl = fmt.EXTENT.unpack_from(d.inline, 0)
    d.inline = fmt.EXTENT.pack(lb, raw.sb.block_count + 5, n, fl) + d.inline[24:]
    raw.put_inode(inos["g"], d)


def c_extent_dup(raw, inos):
    d = raw.inode(inos["g"])
    lb, pb, n, fl = fmt.EXTENT.unpack_from(d.inline, 0)
    fpb = raw.extents(inos["f"])[0][1]
    d.inline = fmt.EXTENT.pack(lb, fpb, 1, fl) + d.inline[24:]
    raw.put_inode(inos["g"], d)


def c_nblocks(raw, inos):
    raw.edit_inode(inos["f"], nblocks=99)


def c_xattr_crc(raw, inos):
    raw.flip(raw.inode(inos["g"]).xattr_head, 50)


def c_symlink_crc(raw, inos):
    raw.flip(raw.inode(inos["l"]).aux_block, 10)


def c_fsinfo_crc(raw, inos):
    raw.flip(raw.sb.fsinfo_block, 100)


def c_orphan_head(raw, inos):
    raw.reseal(raw.sb.fsinfo_block, fmt.BT_FSINFO, fmt.pack_fsinfo(inos["g"], 1)[:4080])


def c_orphan_flag(raw, inos):
    raw.edit_inode(inos["filler"], flags=fmt.IF_ORPHAN)


CASES = {
    "state": (c_state, "needing fsck", ()),
    "journal_header": (c_jheader, "journal header", ()),
    "bbitmap_leak": (c_bbitmap_leak, "leak", ()),
    "bbitmap_free": (c_bbitmap_free, "referenced but marked free", ()),
    "bbitmap_crc": (c_bbitmap_crc, "block bitmap block", ()),
    "ibitmap_extra": (c_ibitmap_extra, "marked in use but free", ()),
    "ibitmap_missing": (c_ibitmap_missing, "in use but marked free", ()),
    "itable_crc": (c_itable_crc, "inode table block", ()),
    "bad_mode": (c_bad_mode, "invalid mode", ("filler",)),
    "nlink_file": (c_nlink_file, "link count 5", ()),
    "nlink_dir": (c_nlink_dir, "link count 2, should be 3", ()),
    "parent": (c_parent, "parent is 1", ()),
    "dangling": (c_dangling, "points to free", ()),
    "unreachable": (c_unreachable, "not reachable", ("filler",)),
    "cycle": (c_cycle, "second name", ()),
    "dtype": (c_dtype, "file type", ()),
    "cookie": (c_cookie, "next_cookie", ()),
    "dir_crc": (c_dir_crc, "directory", ("d/f", "d/g2", "d/sub")),
    "leaf_crc": (c_leaf_crc, "extent leaf", ("frag",)),
    "extent_range": (c_extent_range, "outside the data area", ("g", "d/g2")),
    "extent_dup": (c_extent_dup, "also used elsewhere", ("g", "d/g2")),
    "nblocks": (c_nblocks, "nblocks 99", ()),
    "xattr_crc": (c_xattr_crc, "xattr block", ("xattr",)),
    "symlink_crc": (c_symlink_crc, "symlink block", ("l",)),
    "fsinfo_crc": (c_fsinfo_crc, "fsinfo", ()),
    "orphan_head": (c_orphan_head, "orphan list", ("g", "d/g2", "xattr")),
    "orphan_flag": (c_orphan_flag, "flagged as orphans", ()),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fsck_detects_and_repairs(img, case):
    raw, inos = img
    corrupt, expect, changed = CASES[case]
    corrupt(raw, inos)
    code, c = check_image(raw.path)
    msgs = [f.message for f in c.findings]
    assert code == 4, (code, getattr(c, "error", None), msgs)
    assert any(expect in m for m in msgs), msgs
    code, c = check_image(raw.path, repair=True)
    assert code == 1, (code, getattr(c, "error", None), [f.message for f in c.findings])
    code, c = check_image(raw.path)
    assert code == 0, [f.message for f in c.findings]
    verify(raw.path, skip=changed)


def test_unreachable_file_lands_in_lost_found(img):
    raw, inos = img
    c_unreachable(raw, inos)
    assert check_image(raw.path, repair=True)[0] == 1
    fs = Filesystem.from_image(raw.path)
    try:
        assert _read_path(fs, f"lost+found/#{inos['filler']}") == b"F" * 8 * BS
    finally:
        fs.close()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "daxfs.fsck", *args], capture_output=True,
                          text=True, timeout=60)


def test_cli_exit_codes_and_json(img, tmp_path):
    raw, inos = img
    r = _cli(raw.path)
    assert r.returncode == 0, r.stderr
    c_nlink_file(raw, inos)
    r = _cli("--json", raw.path)
    assert r.returncode == 4
    rep = json.loads(r.stdout)
    assert rep["status"] == "errors" and rep["findings"][0]["check"] == "nlink"
    r = _cli("--repair", raw.path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert _cli(raw.path).returncode == 0
    junk = tmp_path / "junk"
    junk.write_bytes(os.urandom(20000))
    for bad in (str(junk), str(tmp_path / "missing"), str(tmp_path)):
        r = _cli(bad)
        assert r.returncode == 8
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_fsck_refuses_image_in_use(img):
    raw, _ = img
    fs = Filesystem.from_image(raw.path)
    try:
        code, c = check_image(raw.path)
        assert code == 8 and "in use" in c.error
    finally:
        fs.close()


def test_fsck_is_fast_on_large_sparse_image(tmp_path):
    import time

    from daxfs.fs import mkfs

    p = str(tmp_path / "big.img")
    mkfs(p, 4 << 30)
    t = time.monotonic()
    code, _ = check_image(p)
    assert code == 0
    assert time.monotonic() - t < 10
