"""The physical redo journal: commit, replay, checkpoint, torn transactions."""

from __future__ import annotations

import pytest

from daxfs import format as fmt
from daxfs.errors import ImageError
from daxfs.journal import Journal, TransactionTooLarge
from daxfs.pmem import PmemDevice

BS = fmt.BLOCK_SIZE


class Env:
    """A device of `nblocks` blocks with a formatted journal of `jblocks` blocks."""

    def __init__(self, path: str, nblocks: int = 1024, jblocks: int = 64,
                 start_seq: int = 1) -> None:
        with open(path, "wb") as f:
            f.truncate(nblocks * BS)
        self.dev = PmemDevice(path)
        self.sb = fmt.compute_layout(nblocks, 64, jblocks)
        Journal.format(self.dev.ops, self.sb, start_seq)
        self.dev.ops.drain()

    def read(self, blk: int) -> bytes:
        return self.dev.view[blk * BS : (blk + 1) * BS].tobytes()

    def journal(self) -> Journal:
        """A fresh Journal object, as at mount (call replay() next)."""
        return Journal(self.dev.ops, self.read, self.sb)

    def mounted(self) -> Journal:
        j = self.journal()
        assert j.replay() == 0
        return j

    def home(self, i: int) -> int:
        return self.sb.data_start + i

    def images(self, homes, tag: int) -> dict[int, bytes]:
        return {h: fmt.seal(f"tag {tag} home {h}".encode() * 3, fmt.BT_DIR, h) for h in homes}

    def wipe(self, homes) -> None:
        """Forget the home writes (as if they never reached the media)."""
        for h in homes:
            self.dev.view[h * BS : (h + 1) * BS] = 0

    def corrupt(self, blk: int, off: int = 100) -> None:
        self.dev.view[blk * BS + off] ^= 0xFF

    def header_seq(self) -> int:
        return fmt.unpack_jheader(self.read(self.sb.journal_start), self.sb.journal_start)

    def assert_homes(self, images: dict[int, bytes]) -> None:
        for h, img in images.items():
            assert self.read(h) == img, f"home {h}"

    def assert_wiped(self, homes) -> None:
        for h in homes:
            assert not any(self.read(h)), f"home {h} was written"


@pytest.fixture
def env(tmp_path):
    e = Env(str(tmp_path / "j.img"))
    yield e
    e.dev.close()


def test_fresh_journal_replays_nothing(env):
    j = env.journal()
    assert j.replay() == 0
    assert j.start_seq == j.next_seq == 1
    assert j.head == 0
    assert env.header_seq() == 1


def test_commit_writes_homes(env):
    j = env.mounted()
    imgs = env.images([env.home(0), env.home(5)], 1)
    j.commit(imgs)
    env.assert_homes(imgs)
    assert j.next_seq == 2 and j.commits == 1
    assert j.head == 1 + 2 + 1  # descriptor, two images, commit block


def test_commit_then_replay_on_fresh_journal(env):
    j = env.mounted()
    imgs = env.images([env.home(i) for i in (3, 1, 2)], 1)
    j.commit(imgs)
    env.wipe(imgs)
    j2 = env.journal()
    assert j2.replay() == 1
    env.assert_homes(imgs)
    # Replay checkpoints: the header moved on and the log is empty.
    assert env.header_seq() == 2
    assert j2.start_seq == j2.next_seq == 2 and j2.head == 0
    env.wipe(imgs)
    assert env.journal().replay() == 0
    env.assert_wiped(imgs)


def test_replay_applies_transactions_in_order(env):
    j = env.mounted()
    h = env.home(0)
    first, second = env.images([h], 1), env.images([h], 2)
    other = env.images([env.home(1)], 3)
    j.commit(first)
    j.commit(second)
    j.commit(other)
    env.wipe([h, env.home(1)])
    assert env.journal().replay() == 3
    env.assert_homes(second)
    env.assert_homes(other)


def test_empty_commit_is_noop(env):
    j = env.mounted()
    j.commit({})
    assert j.next_seq == 1 and j.head == 0 and j.commits == 0


def test_replay_after_replay_continues_sequence(env):
    j = env.mounted()
    j.commit(env.images([env.home(0)], 1))
    j2 = env.journal()
    assert j2.replay() == 1
    imgs = env.images([env.home(1)], 2)
    j2.commit(imgs)
    env.wipe(imgs)
    j3 = env.journal()
    assert j3.replay() == 1
    env.assert_homes(imgs)
    assert j3.next_seq == 3


def test_start_seq_from_format(tmp_path):
    e = Env(str(tmp_path / "s.img"), start_seq=1000)
    try:
        j = e.mounted()
        assert j.next_seq == 1000
        imgs = e.images([e.home(0)], 1)
        j.commit(imgs)
        desc = e.read(j.area)
        assert fmt.unpack_jdesc(desc, j.area)[0] == 1000
        e.wipe(imgs)
        assert e.journal().replay() == 1
        e.assert_homes(imgs)
        assert e.header_seq() == 1001
    finally:
        e.dev.close()


# -- torn and corrupted transactions -----------------------------------------------


def three_transactions(env: Env):
    """Commit A (1 block), B (3 blocks), C (1 block); returns them and B's area offset."""
    j = env.mounted()
    a = env.images([env.home(0)], 1)
    b = env.images([env.home(i) for i in (10, 11, 12)], 2)
    c = env.images([env.home(20)], 3)
    j.commit(a)
    b_pos = j.head
    j.commit(b)
    j.commit(c)
    for imgs in (a, b, c):
        env.wipe(imgs)
    return j, a, b, c, j.area + b_pos


@pytest.mark.parametrize("what, rel", [
    ("descriptor", 0),
    ("first image", 1),
    ("last image", 3),
    ("commit block", 4),
    ("commit block trailer", 4),
])
def test_corrupted_block_stops_replay(env, what, rel):
    _j, a, b, c, b_start = three_transactions(env)
    off = fmt.PAYLOAD + 6 if what.endswith("trailer") else 100
    env.corrupt(b_start + rel, off)
    assert env.journal().replay() == 1
    env.assert_homes(a)
    env.assert_wiped(b)  # torn: none of it
    env.assert_wiped(c)  # and nothing after it


def test_torn_commit_block_half_written(env):
    _j, a, b, c, b_start = three_transactions(env)
    cblk = b_start + 4
    env.dev.view[cblk * BS + BS // 2 : (cblk + 1) * BS] = 0
    assert env.journal().replay() == 1
    env.assert_homes(a)
    env.assert_wiped(b)
    env.assert_wiped(c)


def test_missing_commit_block(env):
    _j, a, b, c, b_start = three_transactions(env)
    env.wipe([b_start + 4])
    assert env.journal().replay() == 1
    env.assert_wiped(b)
    env.assert_wiped(c)


def test_resealed_descriptor_fails_commit_crc(env):
    """A descriptor that is itself valid but differs from the committed one (e.g. a
    stale descriptor of an older transaction with the same sequence) is rejected by
    the commit block's crc over descriptors and images."""
    _j, a, b, c, b_start = three_transactions(env)
    seq, total, index, homes = fmt.unpack_jdesc(env.read(b_start), b_start)
    homes[0] = env.home(30)
    forged = fmt.pack_jdesc(seq, total, index, homes, b_start)
    env.dev.ops.memcpy(b_start * BS, forged)
    assert env.journal().replay() == 1
    env.assert_wiped(b)
    env.assert_wiped([env.home(30)])
    env.assert_wiped(c)


def test_wrong_sequence_is_not_applied(env):
    """A perfectly valid transaction with an unexpected sequence number is ignored."""
    j = env.mounted()
    imgs = env.images([env.home(0)], 1)
    j.commit(imgs)
    env.wipe(imgs)
    hdr = env.sb.journal_start * BS + fmt.JH_START_SEQ_OFF
    env.dev.view[hdr : hdr + 8] = memoryview((5).to_bytes(8, "little"))
    assert env.journal().replay() == 0
    env.assert_wiped(imgs)


def test_corrupt_journal_header_refuses_mount(env):
    env.corrupt(env.sb.journal_start, 40)
    with pytest.raises(ImageError, match="corrupt journal header"):
        env.journal().replay()


# -- multi-descriptor transactions ----------------------------------------------------


@pytest.mark.parametrize("n", [fmt.JDESC_MAX, fmt.JDESC_MAX + 1, 2 * fmt.JDESC_MAX + 3])
def test_multi_descriptor_round_trip(tmp_path, n):
    e = Env(str(tmp_path / "big.img"), nblocks=4096, jblocks=1200)
    try:
        j = e.mounted()
        assert j.max_blocks() >= n
        imgs = e.images([e.home(i) for i in range(n)], 7)
        j.commit(imgs)
        ndesc = -(-n // fmt.JDESC_MAX)
        for d in range(ndesc):
            seq, total, index, _homes = fmt.unpack_jdesc(e.read(j.area + d), j.area + d)
            assert (seq, total, index) == (1, n, d)
        assert j.head == ndesc + n + 1
        e.wipe(imgs)
        assert e.journal().replay() == 1
        e.assert_homes(imgs)
    finally:
        e.dev.close()


def test_multi_descriptor_second_descriptor_corrupt(tmp_path):
    e = Env(str(tmp_path / "big.img"), nblocks=4096, jblocks=1200)
    try:
        j = e.mounted()
        imgs = e.images([e.home(i) for i in range(fmt.JDESC_MAX + 10)], 7)
        j.commit(imgs)
        e.wipe(imgs)
        e.corrupt(j.area + 1)
        assert e.journal().replay() == 0
        e.assert_wiped(imgs)
    finally:
        e.dev.close()


# -- checkpoints ------------------------------------------------------------------------


def test_checkpoint_advances_start_and_restarts_log(env):
    j = env.mounted()
    j.commit(env.images([env.home(0)], 1))
    j.commit(env.images([env.home(1)], 2))
    assert j.head > 0
    j.checkpoint()
    assert j.start_seq == j.next_seq == 3
    assert j.head == 0
    assert j.checkpoints == 1
    assert env.header_seq() == 3
    # The header was updated with one atomic store, not resealed: still valid.
    fmt.check(env.read(env.sb.journal_start), fmt.BT_JHEADER, env.sb.journal_start,
              (fmt.JH_START_SEQ_OFF,))
    # A second checkpoint with nothing new does nothing.
    j.checkpoint()
    assert j.checkpoints == 1
    # The next commit starts at the first area block.
    j.commit(env.images([env.home(2)], 3))
    assert fmt.unpack_jdesc(env.read(j.area), j.area)[0] == 3


def test_stale_transactions_not_replayed_after_checkpoint(env):
    j = env.mounted()
    old = env.images([env.home(i) for i in range(10)], 1)
    j.commit(old)
    j.checkpoint()
    env.wipe(old)
    assert env.journal().replay() == 0
    env.assert_wiped(old)


def test_stale_tail_after_shorter_new_transaction(env):
    """After a checkpoint, a short transaction overwrites the start of a longer stale
    one: replay applies the new one and stops at the stale remains."""
    j = env.mounted()
    old = env.images([env.home(i) for i in range(10)], 1)
    j.commit(old)
    old2 = env.images([env.home(50)], 2)
    j.commit(old2)
    j.checkpoint()
    new = env.images([env.home(40)], 3)
    j.commit(new)
    env.wipe(old)
    env.wipe(old2)
    env.wipe(new)
    assert env.journal().replay() == 1
    env.assert_homes(new)
    env.assert_wiped(old)
    env.assert_wiped(old2)


def test_full_log_checkpoints_automatically(env):
    j = env.mounted()
    per = 1 + 5 + 1
    assert j.capacity // per < 20
    history = []
    for t in range(20):
        homes = [env.home(t * 5 + i) for i in range(5)]
        imgs = env.images(homes, t)
        before = j.checkpoints
        j.commit(imgs)
        history.append((imgs, j.checkpoints > before))
    assert j.checkpoints >= 1
    last_cp = max(i for i, (_imgs, cp) in enumerate(history) if cp)
    for imgs, _cp in history:
        env.wipe(imgs)
    assert env.journal().replay() == len(history) - last_cp
    for i, (imgs, _cp) in enumerate(history):
        if i >= last_cp:
            env.assert_homes(imgs)
        else:
            env.assert_wiped(imgs)


def test_transaction_too_large(env):
    j = env.mounted()
    m = j.max_blocks()
    assert m == j.capacity - 2  # one descriptor and one commit block
    with pytest.raises(TransactionTooLarge):
        j.commit(env.images([env.home(i) for i in range(m + 1)], 1))
    assert j.head == 0 and j.next_seq == 1
    assert not any(env.read(j.area))
    imgs = env.images([env.home(i) for i in range(m)], 2)
    j.commit(imgs)
    assert j.head == j.capacity
    env.wipe(imgs)
    assert env.journal().replay() == 1
    env.assert_homes(imgs)


def test_max_blocks_fits_with_several_descriptors(tmp_path):
    e = Env(str(tmp_path / "big.img"), nblocks=4096, jblocks=1100)
    try:
        j = e.mounted()
        m = j.max_blocks()
        ndesc = -(-m // fmt.JDESC_MAX)
        assert ndesc > 1
        assert ndesc + m + 1 <= j.capacity
        with pytest.raises(TransactionTooLarge):
            j.commit(e.images([e.home(i) for i in range(m + 1)], 1))
        imgs = e.images([e.home(i) for i in range(m)], 1)
        j.commit(imgs)
        e.wipe(imgs)
        assert e.journal().replay() == 1
        e.assert_homes(imgs)
    finally:
        e.dev.close()


def test_replay_is_idempotent(env, monkeypatch):
    j = env.mounted()
    a = env.images([env.home(0), env.home(1)], 1)
    b = env.images([env.home(1), env.home(2)], 2)
    j.commit(a)
    j.commit(b)
    env.wipe([env.home(i) for i in range(3)])
    # Crash during replay, before its checkpoint: the log is replayed again.
    monkeypatch.setattr(Journal, "checkpoint", lambda self: None)
    assert env.journal().replay() == 2
    first = [env.read(env.home(i)) for i in range(3)]
    assert env.journal().replay() == 2
    monkeypatch.undo()
    assert env.journal().replay() == 2
    assert [env.read(env.home(i)) for i in range(3)] == first
    assert first == [a[env.home(0)], b[env.home(1)], b[env.home(2)]]
    assert env.journal().replay() == 0


def test_commit_orders_data_journal_and_homes(env):
    """drain (data first), journal stores, flush, drain (the commit point), then home
    stores that are flushed but not yet drained."""
    j = env.mounted()
    events: list[tuple] = []
    ops = env.dev.ops
    orig_memcpy, orig_flush, orig_drain = ops.memcpy, ops.flush, ops.drain
    ops.memcpy = lambda off, data: (events.append(("memcpy", off // BS)),
                                    orig_memcpy(off, data))[-1]
    ops.flush = lambda off, n: (events.append(("flush", off // BS, -(-n // BS))),
                                orig_flush(off, n))[-1]
    ops.drain = lambda: (events.append(("drain",)), orig_drain())[-1]
    try:
        imgs = env.images([env.home(0), env.home(1)], 1)
        j.commit(imgs)
    finally:
        del ops.memcpy, ops.flush, ops.drain
    area = j.area
    assert events[0] == ("drain",)
    drains = [i for i, e in enumerate(events) if e == ("drain",)]
    assert len(drains) == 2
    journal_part = events[1 : drains[1]]
    assert [e[1] for e in journal_part if e[0] == "memcpy"] == [area, area + 1, area + 2,
                                                                 area + 3]
    assert ("flush", area, 4) in journal_part
    homes_part = events[drains[1] + 1 :]
    assert {e[1] for e in homes_part if e[0] == "memcpy"} == set(imgs)
    assert {e[1] for e in homes_part if e[0] == "flush"} == set(imgs)
