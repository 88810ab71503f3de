"""Keeps the C core's page table ("struct page") and per-inode pfn maps in step with
the filesystem's extent maps: the kernel's "store pfns in the radix".

Every run the filesystem maps gets its pages' owner set (inode, file page index)
and enters the inode's pfn map; every run it unmaps leaves the pfn map and has its
owner cleared - which is where the core's collision detector sees a page freed
while still pinned (a DMA vs truncate collision) and records it.
"""

from __future__ import annotations

import logging

from .format import DiskInode
from .native import Core

log = logging.getLogger(__name__)


class CoreHooks:
    """`fs.LayoutHooks` over a native `Core`."""

    fast = True

    def __init__(self, core: Core) -> None:
        self.core = core

    def mapped(self, ino: int, lblk: int, pblk: int, count: int) -> None:
        if self.core.set_owner(pblk, count, ino, lblk):
            self.core.log_new_collisions(log)
        self.core.map_extent(ino, lblk, pblk, count)

    def unmapped(self, ino: int, lblk: int, pblk: int, count: int) -> None:
        self.core.unmap_range(ino, lblk, count)
        if self.core.clear_owner(pblk, count):
            self.core.log_new_collisions(log)

    def dropped(self, ino: int) -> None:
        self.core.drop_inode(ino)

    def publish(self, ino: int, size: int, atime_next: int) -> None:
        self.core.fast_publish(ino, size, atime_next)

    def nocaps(self, ino: int, on: bool) -> None:
        self.core.fast_set_nocaps(ino, on)

    def resized(self, ino: int, size: int) -> None:
        self.core.fast_set_size(ino, size)

    def atime_next(self, ino: int, when: int) -> None:
        self.core.fast_set_atime_next(ino, when)

    def writable(self, on: bool) -> None:
        self.core.fast_set_writable(on)

    def stamps(self) -> list[tuple[int, int, int]]:
        return self.core.fast_drain()

    def attrs(self, ino: int, d: DiskInode) -> bool:
        return self.core.fast_set_attr(ino, d.size, d.nblocks * 8, d.atime, d.mtime, d.ctime,
                                       d.mode, d.nlink, d.uid, d.gid, d.rdev)

    def attrs_stale(self, ino: int) -> None:
        self.core.fast_clear_attr(ino)
