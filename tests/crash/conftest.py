"""Helpers for the crash and fsck tests: a small image with known content, and raw
editors that change exactly one on-media structure (re-sealing blocks so only the
targeted invariant breaks)."""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from daxfs import format as fmt
from daxfs.directory import Directory
from daxfs.fs import Filesystem, mkfs

BS = fmt.BLOCK_SIZE
SIZE = 4 << 20
DATA_F = bytes(range(256)) * 40  # 10240 bytes
DATA_G = b"g" * 3 * BS
TARGET = b"/some/where/" + b"x" * 288  # 300 bytes: inline part + symlink block


def frag_data() -> bytes:
    return bytes((i * 7) & 0xFF for i in range(BS)) * 1


def build_base(path: str) -> dict[str, int]:
    """Make the reference image; returns name -> inode number."""
    mkfs(path, SIZE)
    fs = Filesystem.from_image(path)
    d = fs.mkdir(1, b"d", 0o755, 0, 0)
    sub = fs.mkdir(d.ino, b"sub", 0o755, 0, 0)
    f = fs.mknod(d.ino, b"f", stat.S_IFREG | 0o644, 0, 0, 0)
    fs.write(f.ino, 0, DATA_F)
    g = fs.mknod(1, b"g", stat.S_IFREG | 0o644, 0, 0, 0)
    fs.write(g.ino, 0, DATA_G)
    fs.setxattr(g.ino, b"user.a", b"A" * 100)
    fs.link(g.ino, d.ino, b"g2")
    frag = fs.mknod(1, b"frag", stat.S_IFREG | 0o644, 0, 0, 0)
    # Interleave with another file so the extents cannot merge: > 5 runs -> a leaf.
    filler = fs.mknod(1, b"filler", stat.S_IFREG | 0o644, 0, 0, 0)
    for i in range(8):
        fs.write(frag.ino, i * 2 * BS, frag_data())
        fs.write(filler.ino, i * BS, b"F" * BS)
    link = fs.symlink(1, b"l", TARGET, 0, 0)
    fs.close()
    return {"d": d.ino, "sub": sub.ino, "f": f.ino, "g": g.ino, "frag": frag.ino,
            "filler": filler.ino, "l": link.ino}


class RawImage:
    """Direct edits of an unmounted image."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as fh:
            self.sb = fmt.Superblock.unpack(fh.read(BS), os.path.getsize(path))

    def block(self, n: int) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(n * BS)
            return fh.read(BS)

    def put(self, off: int, data: bytes) -> None:
        with open(self.path, "r+b") as fh:
            fh.seek(off)
            fh.write(data)

    def put_block(self, n: int, data: bytes) -> None:
        assert len(data) == BS
        self.put(n * BS, data)

    def reseal(self, n: int, btype: int, payload: bytes) -> None:
        self.put_block(n, fmt.seal(payload[: fmt.PAYLOAD], btype, n))

    def flip(self, n: int, off: int) -> None:
        b = bytearray(self.block(n))
        b[off] ^= 0x5A
        self.put_block(n, bytes(b))

    def inode(self, ino: int) -> fmt.DiskInode:
        blk, off = fmt.itable_location(self.sb, ino)
        return fmt.DiskInode.unpack(self.block(blk), off)

    def put_inode(self, ino: int, d: fmt.DiskInode) -> None:
        blk, off = fmt.itable_location(self.sb, ino)
        b = bytearray(self.block(blk))
        b[off : off + fmt.INODE_SIZE] = d.pack()
        self.reseal(blk, fmt.BT_ITABLE, bytes(b))

    def edit_inode(self, ino: int, **fields) -> None:
        d = self.inode(ino)
        for k, v in fields.items():
            setattr(d, k, v)
        self.put_inode(ino, d)

    def directory(self, ino: int) -> Directory:
        d = self.inode(ino)
        return Directory.load(d.aux_block, d.next_cookie, self.block)

    def put_directory(self, ino: int, dr: Directory) -> None:
        for i, blk in enumerate(dr.blocks):
            self.put_block(blk, dr.block_image(i))
        self.edit_inode(ino, next_cookie=dr.next_cookie)

    def set_bit(self, start: int, i: int, btype: int, value: bool) -> None:
        per = fmt.BITS_PER_BITMAP_BLOCK
        blk = start + i // per
        b = bytearray(self.block(blk))
        j = i % per
        if value:
            b[j >> 3] |= 1 << (j & 7)
        else:
            b[j >> 3] &= ~(1 << (j & 7)) & 0xFF
        self.reseal(blk, btype, bytes(b))

    def extents(self, ino: int) -> list[tuple[int, int, int, int]]:
        d = self.inode(ino)
        return [fmt.EXTENT.unpack_from(d.inline, i * 24) for i in range(d.ext_count)]


@pytest.fixture(scope="session")
def base_image(tmp_path_factory) -> tuple[str, dict[str, int]]:
    path = str(tmp_path_factory.mktemp("base") / "base.img")
    inos = build_base(path)
    return path, inos


@pytest.fixture
def img(base_image, tmp_path: Path) -> tuple[RawImage, dict[str, int]]:
    src, inos = base_image
    dst = str(tmp_path / "img.img")
    shutil.copyfile(src, dst)
    return RawImage(dst), inos
