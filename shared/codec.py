"""Wire codec: msgpack for everything on the bus; a bad message is a typed :class:`DecodeError`."""
from __future__ import annotations

from typing import Any

import msgpack

from shared.errors import DecodeError

__all__ = ["pack", "unpack", "unpack_map"]


def pack(obj: Any) -> bytes:
    """Encode a message for the bus."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def unpack(data: bytes) -> Any:
    """Decode a message from the bus, raising DecodeError on garbage."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types
        raise DecodeError(f"not a msgpack message: {exc}") from exc


def unpack_map(data: bytes, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Decode a message that must be a map holding the ``required`` keys."""
    obj = unpack(data)
    if not isinstance(obj, dict):
        raise DecodeError(f"expected a map, got {type(obj).__name__}")
    missing = [k for k in required if k not in obj]
    if missing:
        raise DecodeError(f"missing field(s): {', '.join(missing)}")
    return obj
