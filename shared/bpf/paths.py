"""Decoding a ``struct bw_path`` (bpf/include/events.h): components leaf first, each NUL-terminated."""
from __future__ import annotations

import ctypes

from shared.bpf.abi import BW_PATH_COMPLETE, BW_PATH_TRUNCATED, BwPath, layout
from shared.errors import DecodeError

__all__ = ["decode_path", "PATH_SIZE"]

PATH_SIZE = ctypes.sizeof(BwPath)
_PATH = layout(BwPath)


def decode_path(raw: bytes) -> tuple[str, bool]:
    """A struct bw_path as (path, truncated): "true\\0bin\\0usr\\0" is /usr/bin/true."""
    if len(raw) != PATH_SIZE:
        raise DecodeError(f"path record is {len(raw)} bytes, expected {PATH_SIZE}")
    length, flags, depth, _pad, buf = _PATH.unpack(raw)
    if length > len(buf):
        raise DecodeError(f"path length {length} exceeds its buffer")
    if not flags & (BW_PATH_COMPLETE | BW_PATH_TRUNCATED):
        return "", False
    parts = [p.decode("utf-8", "backslashreplace") for p in buf[:length].split(b"\0") if p]
    if len(parts) != depth:
        raise DecodeError(f"path has {len(parts)} components, header says {depth}")
    joined = "/".join(reversed(parts))
    if flags & BW_PATH_COMPLETE:
        return "/" + joined, False
    return ".../" + joined, True
