"""Filters over stored and live records: one :class:`RecordQuery` for REST, websocket and gRPC.

Equality filters on the indexed fields (``operation``, ``action``, ``severity`` and ``type`` also take
a comma list: ``action=Block,Audit``), a time range (``since``/``until``: epoch seconds or RFC3339),
free text ``q`` (substring of Resource or Source) and an opaque cursor for the next page.
"""
from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, fields, replace
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from services.feeder.models import COLUMN_FIELDS, AlertRow, LogRow

__all__ = ["RecordQuery", "parse_since", "encode_cursor", "decode_cursor", "select_page", "select_summary",
           "GROUPABLE", "MULTI_VALUED", "QueryError"]

MULTI_VALUED = frozenset({"operation", "action", "severity", "type"})
GROUPABLE = tuple(COLUMN_FIELDS)


class QueryError(ValueError):
    """A filter value that cannot be understood; the message names the parameter."""


def parse_since(value: str) -> int:
    """A time as nanoseconds: epoch seconds (``1764184891.5``) or RFC3339; ValueError otherwise."""
    text = value.strip()
    try:
        return int(float(text) * 1_000_000_000)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


def encode_cursor(ts_ns: int, row_id: int) -> str:
    """The opaque cursor naming the position after row (ts_ns, id)."""
    return base64.urlsafe_b64encode(json.dumps([ts_ns, row_id]).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[int, int]:
    """Inverse of :func:`encode_cursor`; QueryError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        ts_ns, row_id = json.loads(raw)
        return int(ts_ns), int(row_id)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise QueryError(f"cursor: not a cursor this API returned: {text[:40]!r}") from exc


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
    def from_params(cls, params: dict[str, str], *, limit: int = 100) -> "RecordQuery":
        """Build from query parameters (unknown ones ignored); QueryError names a bad one."""
        kw: dict[str, Any] = {c: params[c] for c in COLUMN_FIELDS if params.get(c)}
        kw["q"] = params.get("q", "")
        for name, key in (("since", "since_ns"), ("until", "until_ns")):
            if params.get(name):
                try:
                    kw[key] = parse_since(params[name])
                except ValueError as exc:
                    raise QueryError(f"{name}: not RFC3339 or epoch seconds: {params[name]!r}") from exc
        if params.get("throttled"):
            kw["throttled"] = params["throttled"].lower() in ("1", "true", "yes")
        if params.get("cursor"):
            kw["cursor"] = decode_cursor(params["cursor"])
        return cls(limit=limit, **kw)

    def with_limit(self, limit: int) -> "RecordQuery":
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

    def where(self, table: type[AlertRow] | type[LogRow]) -> list[Any]:
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


def select_page(table: type[AlertRow] | type[LogRow], q: RecordQuery) -> Select[Any]:
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
        raise QueryError(f"by: expected a comma list of {', '.join(GROUPABLE)}; got {','.join(bad) or 'nothing'}")
    cols = [getattr(table, b) for b in by]
    count = func.count().label("count")
    return select(*cols, count).where(*q.where(table)).group_by(*cols).order_by(count.desc(), *cols)
