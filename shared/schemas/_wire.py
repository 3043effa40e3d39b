"""Helpers to turn dataclasses into bus maps and back, naming the field that is wrong."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from shared.errors import DecodeError

T = TypeVar("T")


def to_map(obj: Any) -> dict[str, Any]:
    """A dataclass as a plain map (nested dataclasses included)."""
    return dataclasses.asdict(obj)


def from_map(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a map, ignoring unknown keys; DecodeError names what is missing."""
    if not isinstance(data, dict):
        raise DecodeError(f"{where}: expected a map, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    try:
        return cls(**{k: v for k, v in data.items() if k in names})
    except TypeError as exc:
        raise DecodeError(f"{where}: {exc}") from exc
