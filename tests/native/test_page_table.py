"""Page table ("struct page"), collision detector, version check, RSS."""

from __future__ import annotations

import logging
import mmap
import os
import subprocess
import sys
import textwrap

import pytest

from daxfs import native
from daxfs.native import (
    PAGE_SIZE,
    CollisionKind,
    Core,
    NativeError,
    NotPinnedError,
    OwnerMismatchError,
)

NPAGES = 4096
INO = 42


@pytest.fixture
def core():
    c = Core(mmap.mmap(-1, NPAGES * PAGE_SIZE), NPAGES, dma_threads=1)
    yield c
    c.close()


def test_version_matches():
    assert native.CORE_VERSION == native.EXPECTED_CORE_VERSION
    assert native.DMA_COPY_METHOD == "memcpy"


def test_stale_build_is_refused():
    # A fake compiled module reporting another version must make the import
    # fail with a clear message.
    code = textwrap.dedent(
        """
        import sys, types
        fake = types.ModuleType("daxfs._native")
        class Lib:
            @staticmethod
            def daxfs_core_version():
                return 0
        fake.lib = Lib()
        fake.ffi = None
        sys.modules["daxfs._native"] = fake
        try:
            import daxfs.native
        except ImportError as e:
            print("IMPORTERROR", e)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    ).stdout
    assert "IMPORTERROR" in out
    assert "stale build" in out and "reinstall" in out


def test_owner_and_pin_roundtrip(core):
    assert core.set_owner(10, 8, INO, 100) == 0
    assert core.page_info(13) == native.PageInfo(0, 0, INO, 103)
    assert core.pin_pfn(10, 8, INO, 100) == 8
    assert core.pin_pfn(12, 2, INO, 102) == 2
    assert [core.page_info(p).pins for p in range(9, 19)] == [0, 1, 1, 2, 2, 1, 1, 1, 1, 0]
    assert core.count_pinned(0, NPAGES) == 8
    assert core.first_busy_pfn(0, NPAGES) == 10
    assert core.first_busy_pfn(18, 100) is None
    core.unpin_pfn(10, 8)
    assert core.first_busy_pfn(0, NPAGES) == 12
    core.unpin_pfn(12, 2)
    assert core.count_pinned(0, NPAGES) == 0
    s = core.stats()
    assert (s["pins_taken"], s["pins_released"], s["pins_held"], s["pinned_pages"]) == (
        10,
        10,
        0,
        0,
    )


def test_pin_wrong_owner_is_all_or_nothing(core):
    core.set_owner(0, 1024, INO, 0)
    core.set_owner(700, 1, INO + 1, 700)  # one foreign page in the middle
    with pytest.raises(OwnerMismatchError) as ei:
        core.pin_pfn(0, 1024, INO, 0)
    assert ei.value.errno == 116  # ESTALE
    assert core.count_pinned(0, NPAGES) == 0
    # Wrong starting index is a mismatch too.
    with pytest.raises(OwnerMismatchError):
        core.pin_pfn(0, 10, INO, 1)
    # A free page has no owner.
    with pytest.raises(OwnerMismatchError):
        core.pin_pfn(2000, 1, INO, 2000)
    assert core.stats()["pins_held"] == 0


def test_unpin_not_pinned_changes_nothing(core):
    core.set_owner(0, 8, INO, 0)
    core.pin_pfn(0, 4, INO, 0)
    with pytest.raises(NotPinnedError):
        core.unpin_pfn(0, 8)
    assert [core.page_info(p).pins for p in range(8)] == [1, 1, 1, 1, 0, 0, 0, 0]
    core.unpin_pfn(0, 4)


def test_bad_ranges(core):
    with pytest.raises(NativeError):
        core.set_owner(NPAGES - 1, 2, INO, 0)
    with pytest.raises(NativeError):
        core.set_owner(0, 1, 0, 0)  # inode 0 is "no owner"
    with pytest.raises(NativeError):
        core.set_owner(0, 1, INO, native.MAX_FILE_PAGES)  # EFBIG
    with pytest.raises(NativeError):
        core.count_pinned(NPAGES, 1)
    assert core.pin_pfn(0, 0, INO, 0) == 0  # empty range: no-op


def test_collision_on_free_of_pinned_page(core, caplog):
    core.set_owner(100, 4, INO, 7)
    core.pin_pfn(101, 2, INO, 8)
    assert core.clear_owner(100, 4) == 2
    recs, seq = core.collisions_since(0)
    assert seq == 2
    assert [(r.kind, r.pfn, r.ino, r.index, r.pins) for r in recs] == [
        (CollisionKind.FREE, 101, INO, 8, 1),
        (CollisionKind.FREE, 102, INO, 9, 1),
    ]
    assert all(r.time_ns > 1_600_000_000 * 10**9 for r in recs)
    info = core.page_info(101)
    assert info.ino == 0 and info.pins == 1 and info.orphan
    assert core.stats()["collisions"] == 2
    # Incremental read.
    assert core.collisions_since(seq) == ([], 2)
    # Reusing the orphaned page while still pinned is the real corruption.
    assert core.set_owner(101, 1, INO + 1, 0) == 1
    recs, seq = core.collisions_since(seq)
    assert [(r.kind, r.pfn, r.new_ino) for r in recs] == [(CollisionKind.REUSE, 101, INO + 1)]
    # The late put_page clears the orphan mark.
    core.unpin_pfn(101, 2)
    assert not core.page_info(101).orphan
    assert core.stats()["late_unpins"] == 2
    # Logging helper: one WARNING per record, once.
    with caplog.at_level(logging.WARNING, logger="daxfs.native"):
        assert len(core.log_new_collisions()) == 3
        assert len(core.log_new_collisions()) == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert "pfn 101" in warnings[0].getMessage()


def test_no_collision_when_unpinned(core):
    core.set_owner(0, 512, INO, 0)
    core.pin_pfn(0, 512, INO, 0)
    core.unpin_pfn(0, 512)
    assert core.clear_owner(0, 512) == 0
    assert core.set_owner(0, 512, INO + 1, 0) == 0
    assert core.set_owner(0, 512, INO + 1, 0) == 0  # same owner again: fine
    core.pin_pfn(0, 512, INO + 1, 0)
    assert core.set_owner(0, 512, INO + 1, 0) == 0  # unchanged owner, pinned
    core.unpin_pfn(0, 512)
    assert core.collisions_since(0) == ([], 0)
    assert core.stats()["collisions"] == 0


def test_collision_ring_overflow(core):
    core.set_owner(0, 1500, INO, 0)
    core.pin_pfn(0, 1500, INO, 0)
    assert core.clear_owner(0, 1500) == 1500
    recs, seq = core.collisions_since(0)
    assert seq == 1500
    assert len(recs) == 1024 and recs[0].seq == 1500 - 1024 and recs[-1].pfn == 1499
    core.unpin_pfn(0, 1500)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_page_table_rss_256gib_device():
    npages = 64 * 1024 * 1024  # 256 GiB of 4 KiB pages
    before = _rss_bytes()
    with Core(None, npages, dma_threads=0) as c:
        after = _rss_bytes()
        # Touch both ends: only those table pages become resident.
        c.set_owner(0, 1, INO, 0)
        c.set_owner(npages - 1, 1, INO, 1)
        c.pin_pfn(npages - 1, 1, INO, 1)
        assert c.count_pinned(npages - 1024, 1024) == 1
        touched = _rss_bytes()
        c.unpin_pfn(npages - 1, 1)
    assert after - before < 4 * 1024 * 1024, after - before
    assert touched - before < 4 * 1024 * 1024, touched - before
