"""Fixtures for the unit tests: small images in tmp_path, no FUSE mount."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from daxfs.fs import Filesystem, MountOptions, mkfs

SMALL = 4 << 20  # 1024 blocks, 746 of them data blocks


@pytest.fixture
def image(tmp_path: Path) -> str:
    """A freshly made 4 MiB image (first-fit)."""
    path = str(tmp_path / "small.img")
    mkfs(path, SMALL)
    return path


@pytest.fixture
def make_image(tmp_path: Path) -> Callable[..., str]:
    """make_image(size=..., **mkfs_kwargs) -> path of a fresh image."""
    counter = iter(range(1000))

    def make(size: int = SMALL, **kw) -> str:
        path = str(tmp_path / f"img{next(counter)}.img")
        mkfs(path, size, **kw)
        return path

    return make


def _is_open(f: Filesystem) -> bool:
    return f.dev.ops.view is not None


@pytest.fixture
def mount(image: str) -> Iterator[Callable[..., Filesystem]]:
    """mount(path=image, **MountOptions fields) -> Filesystem; every one still open at
    the end of the test is closed (or, if closing fails, its device released)."""
    opened: list[Filesystem] = []

    def do_mount(path: str = image, **opts) -> Filesystem:
        f = Filesystem.from_image(path, MountOptions(**opts))
        opened.append(f)
        return f

    yield do_mount
    for f in opened:
        if _is_open(f):
            try:
                f.close()
            except Exception:
                if _is_open(f):
                    f.dev.close()


@pytest.fixture
def fs(mount) -> Filesystem:
    """A Filesystem on a fresh 4 MiB image."""
    return mount()
