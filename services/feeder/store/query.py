"""Filters over stored and live records: one :class:`RecordQuery` for REST, websocket and gRPC.

Equality filters on the indexed fields (``operation``, ``action``, ``severity`` and ``type`` also take
a comma list: ``action=Block,Audit``), a time range (``since``/``until``: epoch seconds or RFC3339),
free text ``q`` (substring of Resource or Source) and an opaque cursor for the next page.

Every value is bounded before it reaches a database: times must fall between 1970-01-01T00:00:00Z and
2262-04-11T23:47:16Z (what a signed 64-bit count of nanoseconds holds), cursors hold two 64-bit
integers, text values are at most MAX_VALUE_CHARS characters without NUL, comma lists at most
MAX_LIST_VALUES values, and ``throttled`` is true or false; anything else is a QueryError naming
the parameter (REST turns it into 422).
"""
from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from services.feeder.store.models import COLUMN_FIELDS, AlertRow, LogRow

__all__ = ["RecordQuery", "parse_since", "encode_cursor", "decode_cursor", "select_page", "select_summary",
           "GROUPABLE", "MULTI_VALUED", "QueryError", "MAX_VALUE_CHARS", "MAX_LIST_VALUES", "parse_bool",
           "check_text"]

MULTI_VALUED = frozenset({"operation", "action", "severity", "type"})
GROUPABLE = tuple(COLUMN_FIELDS)
MAX_VALUE_CHARS = 1024
MAX_LIST_VALUES = 64
MAX_CURSOR_CHARS = 128
_INT64_MAX = 2 ** 63 - 1
_TIME_RANGE = "times from 1970-01-01T00:00:00Z to 2262-04-11T23:47:16Z are accepted"
_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")
_Table = type[AlertRow] | type[LogRow]  # named here: inside RecordQuery, ``type`` is a field


class QueryError(ValueError):
    """A filter value that cannot be understood; the message names the parameter."""


def parse_since(value: str, name: str = "time") -> int:
    """A time as nanoseconds since the epoch: epoch seconds (``1764184891.5``) or RFC3339.

    QueryError (a ValueError) naming ``name`` when it is neither, or out of the 64-bit range.
    """
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    if seconds is not None:
        if not math.isfinite(seconds) or not 0 <= seconds * 1e9 <= _INT64_MAX:
            raise QueryError(f"{name}: {value[:40]!r} is out of range: {_TIME_RANGE}")
        return min(int(seconds * 1_000_000_000), _INT64_MAX)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ns = int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, OverflowError) or "out of range" in str(exc):
            raise QueryError(f"{name}: {value[:40]!r} is out of range: {_TIME_RANGE}") from exc
        raise QueryError(f"{name}: not RFC3339 or epoch seconds: {value[:40]!r}") from exc
    if not 0 <= ns <= _INT64_MAX:
        raise QueryError(f"{name}: {value[:40]!r} is out of range: {_TIME_RANGE}")
    return ns


def parse_bool(value: str, name: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, any case); QueryError naming ``name`` otherwise."""
    text = value.strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise QueryError(f"{name}: expected true or false, got {value[:40]!r}")


def check_text(value: str, name: str) -> str:
    """``value`` if it is a text a filter may hold (length, no NUL); QueryError naming ``name``."""
    if len(value) > MAX_VALUE_CHARS:
        raise QueryError(f"{name}: at most {MAX_VALUE_CHARS} characters, got {len(value)}")
    if "\0" in value:
        raise QueryError(f"{name}: must not contain NUL characters")
    if name in MULTI_VALUED and value.count(",") >= MAX_LIST_VALUES:
        raise QueryError(f"{name}: at most {MAX_LIST_VALUES} comma-separated values")
    return value


def encode_cursor(ts_ns: int, row_id: int) -> str:
    """The opaque cursor naming the position after row (ts_ns, id)."""
    return base64.urlsafe_b64encode(json.dumps([ts_ns, row_id]).encode()).decode().rstrip("=")


def _int64(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and -_INT64_MAX - 1 <= value <= _INT64_MAX


def decode_cursor(text: str) -> tuple[int, int]:
    """Inverse of :func:`encode_cursor`; QueryError when it is not one of ours (or out of range)."""
    bad = QueryError(f"cursor: not a cursor this API returned: {text[:40]!r}")
    if len(text) > MAX_CURSOR_CHARS:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (ValueError, TypeError, binascii.Error, RecursionError) as exc:
        raise bad from exc
    if not (isinstance(value, list) and len(value) == 2 and _int64(value[0]) and _int64(value[1])
            and value[1] >= 0):
        raise bad
    return int(value[0]), int(value[1])


@dataclass(frozen=True, slots=True)
class RecordQuery:
    """What a client asks for; empty strings and None mean "any"."""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    host: str = ""
    policy: str = ""
    operation: str = ""
    action: str = ""
    severity: str = ""
    type: str = ""
    result: str = ""
    source: str = ""
    resource: str = ""
    q: str = ""
    since_ns: int | None = None
    until_ns: int | None = None
    throttled: bool | None = None
    cursor: tuple[int, int] | None = None
    limit: int = 100

    @classmethod
    def from_params(cls, params: dict[str, str], *, limit: int = 100) -> RecordQuery:
        """Build from query parameters (unknown ones ignored here); QueryError names a bad one."""
        kw: dict[str, Any] = {c: check_text(params[c], c) for c in COLUMN_FIELDS if params.get(c)}
        kw["q"] = check_text(params.get("q", ""), "q")
        for name, key in (("since", "since_ns"), ("until", "until_ns")):
            if params.get(name):
                kw[key] = parse_since(params[name], name)
        if params.get("throttled"):
            kw["throttled"] = parse_bool(params["throttled"], "throttled")
        if params.get("cursor"):
            kw["cursor"] = decode_cursor(params["cursor"])
        return cls(limit=limit, **kw)

    def with_limit(self, limit: int) -> RecordQuery:
        """A copy with another page size."""
        return replace(self, limit=limit)

    def _values(self, col: str) -> list[str]:
        value = getattr(self, col)
        if col in MULTI_VALUED:
            return [v.strip() for v in value.split(",") if v.strip()]
        return [value]

    def matches(self, record: dict[str, Any]) -> bool:
        """Whether a live record passes these filters (the cursor is ignored)."""
        for col, fld in COLUMN_FIELDS.items():
            if getattr(self, col) and str(record.get(fld, "")) not in self._values(col):
                return False
        if self.q and self.q not in str(record.get("Resource", "")) and self.q not in str(record.get("Source", "")):
            return False
        if self.throttled is not None and bool(record.get("Throttled", False)) != self.throttled:
            return False
        if self.since_ns is not None or self.until_ns is not None:
            from services.feeder.enrich import alert_time_ns

            ts = alert_time_ns(record)
            if (self.since_ns is not None and ts < self.since_ns) or (self.until_ns is not None and ts > self.until_ns):
                return False
        return True

    def where(self, table: _Table) -> list[Any]:
        """SQL conditions for these filters (no cursor)."""
        conds: list[Any] = []
        for col in COLUMN_FIELDS:
            if getattr(self, col):
                values = self._values(col)
                column = getattr(table, col)
                conds.append(column == values[0] if len(values) == 1 else column.in_(values))
        if self.q:
            pattern = "%" + self.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
            conds.append(or_(table.resource.like(pattern, escape="\\"), table.source.like(pattern, escape="\\")))
        if self.since_ns is not None:
            conds.append(table.ts_ns >= self.since_ns)
        if self.until_ns is not None:
            conds.append(table.ts_ns <= self.until_ns)
        if self.throttled is not None:
            conds.append(table.throttled == self.throttled)
        return conds

    def params(self) -> dict[str, str]:
        """The non-empty string filters, e.g. to build a next-page link."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name in COLUMN_FIELDS or f.name == "q"}
        return {k: v for k, v in out.items() if v}


def select_page(table: type[AlertRow] | type[LogRow], q: RecordQuery) -> Select[int, int, str]:
    """Newest first, after the cursor, one row more than the page to tell whether another follows."""
    stmt = select(table.id, table.ts_ns, table.body).where(*q.where(table))
    if q.cursor is not None:
        ts_ns, row_id = q.cursor
        stmt = stmt.where(or_(table.ts_ns < ts_ns, and_(table.ts_ns == ts_ns, table.id < row_id)))
    return stmt.order_by(table.ts_ns.desc(), table.id.desc()).limit(max(1, q.limit) + 1)


def select_summary(table: type[AlertRow] | type[LogRow], q: RecordQuery, by: list[str]) -> Select[Any]:
    """Counts grouped by the columns ``by`` (each one of :data:`GROUPABLE`), biggest first."""
    bad = [b for b in by if b not in GROUPABLE]
    if bad or not by:
        raise QueryError(f"by: expected a comma list of {', '.join(GROUPABLE)}; got {','.join(bad)[:200] or 'nothing'}")
    cols = [getattr(table, b) for b in by]
    count = func.count().label("count")
    return select(*cols, count).where(*q.where(table)).group_by(*cols).order_by(count.desc(), *cols)
