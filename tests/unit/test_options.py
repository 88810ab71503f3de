"""Mount option parsing (daemon.parse_options): values, defaults, clear errors."""

from __future__ import annotations

import pytest

from daxfs.daemon import OptionError, parse_options


def test_defaults():
    o = parse_options(None)
    assert (o.dax, o.readonly, o.fast_threads, o.commit_interval) == ("always", False, 2, 5.0)


def test_values():
    o = parse_options("dax=never,ro,fast_threads=0,commit=1.5,alloc=reuse-first,noatime")
    assert o.dax == "never" and o.readonly and o.fast_threads == 0
    assert o.commit_interval == 1.5 and o.alloc_policy == "reuse-first"
    assert "ro" in o.fuse and "noatime" in o.fuse
    assert parse_options("dax=inode").dax == "always"
    assert parse_options("defaults,x-systemd.automount,fast_threads=16").fast_threads == 16


@pytest.mark.parametrize("opts,msg", [
    ("fast_threads=17", "0..16"),
    ("fast_threads=-1", "0..16"),
    ("fast_threads=two", "number of threads"),
    ("dax=sometimes", "always, never or inode"),
    ("commit=0", "positive"),
    ("commit=soon", "seconds"),
    ("alloc=best-fit", "first-fit or reuse-first"),
    ("frobnicate", "unknown mount option"),
])
def test_bad_values_are_refused_clearly(opts, msg):
    with pytest.raises(OptionError, match=msg):
        parse_options(opts)
