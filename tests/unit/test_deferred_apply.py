"""Operations.catch_up / apply_deferred: what the C readers recorded (FORGET,
RELEASE, RELEASEDIR) has the effect the pyfuse3 handlers would have had, and a
bad record costs only itself."""

from __future__ import annotations

import stat
from collections.abc import Callable

import pytest

from daxfs import format as fmt
from daxfs.fs import Filesystem
from daxfs.fuse_ops import _FORGET, _RELEASE, _RELEASEDIR, Operations

ROOT = fmt.ROOT_INO


@pytest.fixture
def ops(mount: Callable[..., Filesystem]) -> Operations:
    return Operations(mount())


def test_forget_and_release_free_an_unlinked_file(ops: Operations) -> None:
    fs = ops.fs
    node = fs.mknod(ROOT, b"f", stat.S_IFREG | 0o644, 0, 0, 0)
    fs.write(node.ino, 0, b"x" * 10000)
    node.lookups += 1  # the kernel's reference from the create
    fs.open(node.ino)
    fh = ops._new_fh(node.ino)
    fs.unlink(ROOT, b"f")
    ops.apply_deferred([(_RELEASE, node.ino, fh)])
    assert node.ino in fs.cache and fh not in ops._fh  # the kernel still knows it
    assert fs.ialloc.bitmap.test(node.ino)
    ops.apply_deferred([(_FORGET, node.ino, 1)])
    assert node.ino not in fs.cache and not fs.ialloc.bitmap.test(node.ino)


def test_bad_record_is_logged_and_the_rest_applied(ops: Operations,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    fs = ops.fs
    node = fs.mknod(ROOT, b"g", stat.S_IFREG | 0o644, 0, 0, 0)
    fs.open(node.ino)
    fh = ops._new_fh(node.ino)
    ops._dirh[77] = [ROOT, 0]
    ops.apply_deferred([(_RELEASE, node.ino, 999_999), (_RELEASE, node.ino, fh),
                        (_RELEASEDIR, ROOT, 77)])
    assert "deferred request 18" in caplog.text  # the unknown handle
    assert node.opens == 0 and fh not in ops._fh and 77 not in ops._dirh


def test_catch_up_takes_only_when_pending(ops: Operations) -> None:
    calls: list[str] = []
    pending = [1]

    def take() -> list[tuple[int, int, int]]:
        calls.append("take")
        pending[0] = 0
        return []

    ops.deferred = (lambda: pending[0], take)
    ops.catch_up()
    ops.catch_up()
    assert calls == ["take"]  # one C call per request when nothing waits
