"""Wire codec: msgpack for everything on the bus; a bad message is a typed :class:`DecodeError`.

A large message may be sent deflated (:func:`pack_compressed`: a node's RuleSet with thousands of
workloads repeats the same rules and would outgrow NATS's 1 MiB payload): it starts with a byte msgpack
never uses (0xc1) and a tag, and :func:`unpack` inflates it (bounded) before decoding.
"""
from __future__ import annotations

import zlib
from typing import Any

import msgpack

from shared.errors import DecodeError

__all__ = ["pack", "pack_compressed", "unpack", "unpack_map", "DEFLATED", "MAX_INFLATED"]

DEFLATED = b"\xc1BZ1"  # 0xc1 is never used in msgpack: no plain message starts so
MAX_INFLATED = 64 << 20  # a deflated message inflating to more is refused
COMPRESS_FROM = 64 << 10  # pack_compressed deflates messages from this size on


def pack(obj: Any) -> bytes:
    """Encode a message for the bus."""
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def pack_compressed(obj: Any, threshold: int = COMPRESS_FROM) -> bytes:
    """:func:`pack`, deflated when the message is ``threshold`` bytes or more (:func:`unpack` reads both)."""
    plain = pack(obj)
    if len(plain) < threshold:
        return plain
    return DEFLATED + zlib.compress(plain, 6)


def _inflate(data: bytes) -> bytes:
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(data[len(DEFLATED):], MAX_INFLATED)
    except zlib.error as exc:
        raise DecodeError(f"not a deflated message: {exc}") from exc
    if inflater.unconsumed_tail:
        raise DecodeError(f"deflated message inflates beyond {MAX_INFLATED} bytes")
    if not inflater.eof:
        raise DecodeError("deflated message is truncated")
    return plain


def unpack(data: bytes) -> Any:
    """Decode a message from the bus (inflating a deflated one), raising DecodeError on garbage."""
    if data[:len(DEFLATED)] == DEFLATED:
        data = _inflate(data)
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
