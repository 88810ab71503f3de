"""Framing of control-socket messages: a 4-byte big-endian length, then JSON.

orjson when it is installed (4-15x faster here, and a control request costs little
else); the standard library's json otherwise, and for what orjson refuses (integers
beyond 64 bits)."""

from __future__ import annotations

import json
from typing import Any

try:
    import orjson as _orjson
except ImportError:  # pragma: no cover - orjson is a dependency; keep working without
    _orjson = None


def dumps(msg: dict[str, Any]) -> bytes:
    if _orjson is not None:
        try:
            return _orjson.dumps(msg)
        except TypeError:
            pass
    return json.dumps(msg, separators=(",", ":")).encode()


def loads(data: bytes | memoryview) -> Any:
    """Raises ValueError on malformed input, whichever parser ran."""
    if _orjson is not None:
        try:
            return _orjson.loads(data)
        except _orjson.JSONDecodeError:
            pass  # maybe only too large an integer for orjson: let json decide
    return json.loads(bytes(data))


def frame(msg: dict[str, Any]) -> bytes:
    data = dumps(msg)
    return len(data).to_bytes(4, "big") + data
