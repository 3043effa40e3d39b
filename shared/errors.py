"""Bulwark's exception tree.

    BulwarkError
    ├── DecodeError        a message on the bus could not be decoded or lacks a field
    ├── ValidationFailed   a policy (or other user input) is invalid; carries field-path errors
    └── ServiceUnavailable a service did not answer a request in time
"""
from __future__ import annotations

__all__ = ["BulwarkError", "DecodeError", "ValidationFailed", "ServiceUnavailable", "FieldError"]

from dataclasses import dataclass


class BulwarkError(Exception):
    """Root of every error Bulwark raises on purpose."""


class DecodeError(BulwarkError):
    """A message could not be decoded into the schema it claims."""


@dataclass(frozen=True)
class FieldError:
    """One problem with one field: where it is and what is wrong."""

    path: str
    message: str
    document: str = ""

    def __str__(self) -> str:
        where = f"{self.document}: " if self.document else ""
        return f"{where}{self.path}: {self.message}"


class ValidationFailed(BulwarkError):
    """User input is invalid; ``errors`` names each field path that is wrong."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


class ServiceUnavailable(BulwarkError):
    """A service did not answer in time."""
