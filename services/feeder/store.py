"""The alert store: one ``alerts`` table, idempotent on ``event_id``, queried newest first.

Works on SQLite (WAL mode, the default) and PostgreSQL; the engine comes from :func:`make_engine`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import BigInteger, Engine, Index, Integer, String, Text, create_engine, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from services.feeder.enrich import alert_time_ns

__all__ = ["Base", "AlertRow", "AlertStore", "AlertQuery", "make_engine", "parse_since"]


class Base(DeclarativeBase):
    """Declarative base of the feeder's tables."""


class AlertRow(Base):
    """One stored alert: the filterable fields as columns, the whole alert as JSON."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    ts_ns: Mapped[int] = mapped_column(BigInteger, index=True)
    namespace: Mapped[str] = mapped_column(String(253), index=True, default="")
    pod: Mapped[str] = mapped_column(String(253), index=True, default="")
    container: Mapped[str] = mapped_column(String(253), index=True, default="")
    policy: Mapped[str] = mapped_column(String(253), index=True, default="")
    operation: Mapped[str] = mapped_column(String(32), index=True, default="")
    action: Mapped[str] = mapped_column(String(32), index=True, default="")
    severity: Mapped[str] = mapped_column(String(8), index=True, default="")
    type: Mapped[str] = mapped_column(String(32), index=True, default="")
    result: Mapped[str] = mapped_column(String(64), index=True, default="")
    body: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_alerts_ts_id", "ts_ns", "id"),)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the tables created; SQLite gets WAL mode and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 10})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    Base.metadata.create_all(engine)
    return engine


def parse_since(value: str) -> int:
    """``since`` as nanoseconds: epoch seconds (``1764184891.5``) or RFC3339; ValueError otherwise."""
    text = value.strip()
    try:
        return int(float(text) * 1_000_000_000)
    except ValueError:
        pass
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp()) * 1_000_000_000 + dt.microsecond * 1000


@dataclass(frozen=True, slots=True)
class AlertQuery:
    """Filters for :meth:`AlertStore.query`; empty strings and None mean "any"."""

    namespace: str = ""
    pod: str = ""
    container: str = ""
    policy: str = ""
    operation: str = ""
    action: str = ""
    severity: str = ""
    type: str = ""
    result: str = ""
    since_ns: int | None = None
    limit: int = 100


_COLUMN_FIELDS = {"namespace": "NamespaceName", "pod": "PodName", "container": "ContainerName",
                  "policy": "PolicyName", "operation": "Operation", "action": "Action",
                  "severity": "Severity", "type": "Type", "result": "Result"}


class AlertStore:
    """Insert-or-ignore and query alerts; synchronous (call from a thread in async code)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def _insert_stmt(self, rows: list[dict[str, Any]]) -> Any:
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return sqlite.insert(AlertRow).values(rows).on_conflict_do_nothing(index_elements=["event_id"])
        if dialect == "postgresql":
            return postgresql.insert(AlertRow).values(rows).on_conflict_do_nothing(index_elements=["event_id"])
        raise NotImplementedError(f"insert-or-ignore not implemented for {dialect}")

    def insert(self, alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Store ``alerts`` (keyed by ``EventID``) in one transaction; return those that were new."""
        unique: dict[str, dict[str, Any]] = {}
        for alert in alerts:
            unique.setdefault(str(alert["EventID"]), alert)
        if not unique:
            return []
        with Session(self.engine) as session, session.begin():
            existing = set(session.scalars(select(AlertRow.event_id).where(AlertRow.event_id.in_(list(unique)))))
            new = [a for eid, a in unique.items() if eid not in existing]
            if new:
                rows = [{"event_id": str(a["EventID"]), "ts_ns": alert_time_ns(a), "body": json.dumps(a),
                         **{col: str(a.get(field, "")) for col, field in _COLUMN_FIELDS.items()}} for a in new]
                session.execute(self._insert_stmt(rows))
        return new

    def query(self, q: AlertQuery) -> list[dict[str, Any]]:
        """Alerts matching ``q``, newest first, at most ``q.limit``."""
        stmt = select(AlertRow.body)
        for col in _COLUMN_FIELDS:
            value = getattr(q, col)
            if value:
                stmt = stmt.where(getattr(AlertRow, col) == value)
        if q.since_ns is not None:
            stmt = stmt.where(AlertRow.ts_ns >= q.since_ns)
        stmt = stmt.order_by(AlertRow.ts_ns.desc(), AlertRow.id.desc()).limit(max(1, q.limit))
        with Session(self.engine) as session:
            return [json.loads(body) for body in session.scalars(stmt)]

    def count(self) -> int:
        """How many alerts are stored."""
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(AlertRow)) or 0)
