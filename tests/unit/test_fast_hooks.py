"""The filesystem's side of the fast data path, without the C core: what it
publishes, that every size change reaches the core, and how it folds the
stamps the fast path leaves (mtime/ctime, relatime atime) into its inodes."""

from __future__ import annotations

import stat
from collections.abc import Callable

import pytest

from daxfs import format as fmt
from daxfs.fs import FALLOC_FL_KEEP_SIZE, Filesystem, NullHooks

ROOT = fmt.ROOT_INO
BS = fmt.BLOCK_SIZE
DAY = 86400 * 10**9


class RecordingHooks(NullHooks):
    """A stand-in for the core: remembers what the filesystem told it."""

    fast = True

    def __init__(self) -> None:
        self.maps: dict[int, set[int]] = {}
        self.published: dict[int, int] = {}  # ino -> size
        self.atime_nexts: dict[int, int] = {}
        self.pending: list[tuple[int, int, int]] = []
        self.writable_calls: list[bool] = []
        self.attr_copies: dict[int, tuple[int, ...]] = {}  # ino -> (size, nlink, mtime)
        self.refuse_attrs = False  # as the core does while stamps wait
        self.dropped_inos: list[int] = []

    def mapped(self, ino: int, lblk: int, pblk: int, count: int) -> None:
        self.maps.setdefault(ino, set()).update(range(lblk, lblk + count))

    def unmapped(self, ino: int, lblk: int, pblk: int, count: int) -> None:
        self.maps.get(ino, set()).difference_update(range(lblk, lblk + count))

    def publish(self, ino: int, size: int, atime_next: int) -> None:
        self.published[ino] = size
        self.atime_nexts[ino] = atime_next

    def resized(self, ino: int, size: int) -> None:
        assert ino in self.published, "size change of an unpublished inode reported"
        self.published[ino] = size

    def atime_next(self, ino: int, when: int) -> None:
        self.atime_nexts[ino] = when

    def writable(self, on: bool) -> None:
        self.writable_calls.append(on)

    def stamps(self) -> list[tuple[int, int, int]]:
        out, self.pending = self.pending, []
        return out

    def attrs(self, ino: int, d: fmt.DiskInode) -> bool:
        if self.refuse_attrs:
            return False
        self.attr_copies[ino] = (d.size, d.nlink, d.mtime)
        return True

    def attrs_stale(self, ino: int) -> None:
        del self.attr_copies[ino]  # KeyError: cleared a copy it never published

    def dropped(self, ino: int) -> None:
        self.dropped_inos.append(ino)
        self.attr_copies.pop(ino, None)


@pytest.fixture
def fsh(mount: Callable[..., Filesystem]) -> tuple[Filesystem, RecordingHooks]:
    fs = mount()
    hooks = RecordingHooks()
    fs.attach_hooks(hooks)
    return fs, hooks


def new_file(fs: Filesystem, name: bytes, data: bytes = b"") -> int:
    ino = fs.mknod(ROOT, name, stat.S_IFREG | 0o644, 0, 0, 0).ino
    if data:
        fs.write(ino, 0, data)
    return ino


def test_attach_says_writable(fsh):
    _, hooks = fsh
    assert hooks.writable_calls == [True]


def test_open_publishes_with_complete_map(fsh, mount):
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x" * (3 * BS))
    assert ino not in hooks.published
    fs.open(ino)
    assert hooks.published[ino] == 3 * BS
    assert hooks.maps[ino] == {0, 1, 2}
    fs.open(ino)  # published once
    d = fs.mkdir(ROOT, b"d", 0o755, 0, 0)
    assert d.ino not in hooks.published  # only regular files


def test_every_size_change_reaches_the_core(fsh):
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x" * 100)
    fs.open(ino)
    fs.write(ino, 100, b"y" * 50)  # extending write
    assert hooks.published[ino] == 150
    fs.setattr(ino, size=10)  # shrink
    assert hooks.published[ino] == 10
    fs.setattr(ino, size=5 * BS)  # grow
    assert hooks.published[ino] == 5 * BS
    fs.fallocate(ino, 0, 0, 8 * BS)  # grows the size
    assert hooks.published[ino] == 8 * BS
    fs.fallocate(ino, FALLOC_FL_KEEP_SIZE, 0, 16 * BS)  # does not
    assert hooks.published[ino] == 8 * BS
    fs.open(ino, truncate=True)
    assert hooks.published[ino] == 0
    assert fs.get(ino).d.size == 0


def test_write_stamp_sets_mtime_ctime_and_data_dirty(fsh):
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x" * BS)
    fs.open(ino)
    fs.commit()
    t = fs.get(ino).d.mtime + 12345
    hooks.pending = [(ino, t, 0)]
    fs.sync_fast()
    d = fs.get(ino).d
    assert d.mtime == t and d.ctime == t
    assert ino in fs.dirty and ino in fs.data_dirty
    # A commit drains too: the journal carries the folded time.
    hooks.pending = [(ino, t + 1, 0)]
    fs.commit()
    assert fs.get(ino).d.mtime == t + 1


def test_read_stamp_follows_relatime(fsh):
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x" * BS)
    fs.open(ino)
    d = fs.get(ino).d
    # atime newer than mtime/ctime and less than a day old: left alone.
    future = d.ctime + 10**9
    fs.setattr(ino, atime=future)  # (sets ctime to now, which is < future)
    hooks.pending = [(ino, 0, future + 10**9)]
    fs.sync_fast()
    assert fs.get(ino).d.atime == future
    assert hooks.atime_nexts[ino] == future + DAY  # next due in a day
    # older than mtime: taken.
    fs.setattr(ino, atime=d.mtime - 10**9)
    now = fs.get(ino).d.ctime + 5
    hooks.pending = [(ino, 0, now)]
    fs.sync_fast()
    assert fs.get(ino).d.atime == now


def test_metadata_change_makes_next_read_due(fsh):
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x" * BS)
    fs.open(ino)
    hooks.atime_nexts[ino] = 123
    fs.setattr(ino, mode=0o600)  # ctime moves: relatime wants the next read
    assert hooks.atime_nexts[ino] == 0


def test_stamps_of_unknown_or_unpublished_inodes_are_ignored(fsh):
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x" * BS)  # never opened: not published
    before = fs.get(ino).d.mtime
    hooks.pending = [(ino, before + 10**9, 0), (99999, 1, 1)]
    fs.sync_fast()
    assert fs.get(ino).d.mtime == before


def test_corruption_stops_fast_writes(fsh):
    fs, hooks = fsh
    fs.mark_corrupt("test")
    assert hooks.writable_calls[-1] is False


def test_readonly_mount_never_due_an_atime(mount, image):
    fs = mount()
    ino = new_file(fs, b"f", b"x" * BS)
    fs.close()
    fs = mount(readonly=True)
    hooks = RecordingHooks()
    fs.attach_hooks(hooks)
    assert hooks.writable_calls == [False]
    fs.open(ino)
    assert hooks.published[ino] == BS
    assert hooks.atime_nexts[ino] == 2**63 - 1


# -- attribute copies (GETATTR in C) ---------------------------------------------------


def test_attrs_published_at_request_end_and_cleared_on_change(fsh) -> None:
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x" * 100)
    assert hooks.attr_copies == {}  # nothing goes out in the middle of a request
    fs.publish_attrs()
    assert set(hooks.attr_copies) == {ROOT, ino}  # the file, and its changed parent
    assert hooks.attr_copies[ino][:2] == (100, 1)
    fs.write(ino, 100, b"y")  # a change: the copy goes at once
    assert ino not in hooks.attr_copies and ROOT in hooks.attr_copies
    fs.publish_attrs()
    assert hooks.attr_copies[ino][0] == 101
    fs.publish_attrs()  # nothing touched since: nothing republished
    assert fs.attrs_touched == set()


def test_attrs_answered_are_published_once(fsh) -> None:
    fs, hooks = fsh
    ino = new_file(fs, b"f")
    fs.publish_attrs()
    hooks.attr_copies.clear()
    fs.get(ino).attrs_out = False  # as after a remount: the core has no copy
    fs.attrs_answered(fs.get(ino))
    fs.publish_attrs()
    assert ino in hooks.attr_copies
    fs.attrs_answered(fs.get(ino))  # the core already has it: nothing to do
    assert fs.attrs_touched == set()


def test_attrs_refused_while_stamps_wait_are_retried(fsh) -> None:
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x")
    hooks.refuse_attrs = True
    fs.publish_attrs()
    assert not fs.get(ino).attrs_out and hooks.attr_copies == {}
    hooks.refuse_attrs = False
    fs.attrs_answered(fs.get(ino))  # the next request that tells the kernel
    fs.publish_attrs()
    assert ino in hooks.attr_copies


def test_destroyed_inode_is_not_published(fsh) -> None:
    fs, hooks = fsh
    ino = new_file(fs, b"f", b"x")
    fs.publish_attrs()
    fs.unlink(ROOT, b"f")  # no kernel references, no opens: freed now
    assert ino in hooks.dropped_inos and ino not in hooks.attr_copies
    fs.publish_attrs()
    assert ino not in hooks.attr_copies
    assert hooks.attr_copies[ROOT][1] == 2


def test_null_hooks_track_nothing(mount: Callable[..., Filesystem]) -> None:
    fs = mount()
    new_file(fs, b"f", b"x")
    assert fs.attrs_touched == set()  # no fast path: no bookkeeping either
