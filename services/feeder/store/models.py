"""The feeder's tables: ``alerts`` and ``logs``, one row per KubeArmor record, keyed by ``event_id``.

The filterable fields are columns; the whole record (KubeArmor's PascalCase map) is the JSON ``body``.
Indexes are ``(column, ts_ns, id)`` so a filtered, newest-first page reads only the rows it returns.
The schema is owned by the Alembic migrations in ``migrations/``; these classes mirror head.
"""
from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Index, Integer, String, Text, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ["Base", "AlertRow", "LogRow", "COLUMN_FIELDS", "RecordRow"]


class Base(DeclarativeBase):
    """Declarative base of the feeder's tables."""


# column -> the record field it holds
COLUMN_FIELDS: dict[str, str] = {
    "namespace": "NamespaceName", "pod": "PodName", "container": "ContainerName", "host": "HostName",
    "policy": "PolicyName", "operation": "Operation", "action": "Action", "severity": "Severity",
    "type": "Type", "result": "Result", "source": "Source", "resource": "Resource",
}


class _Record:
    """Columns shared by alerts and logs."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    ts_ns: Mapped[int] = mapped_column(BigInteger)
    namespace: Mapped[str] = mapped_column(String(253), default="")
    pod: Mapped[str] = mapped_column(String(253), default="")
    container: Mapped[str] = mapped_column(String(253), default="")
    host: Mapped[str] = mapped_column(String(253), default="", server_default="")
    policy: Mapped[str] = mapped_column(String(253), default="")
    operation: Mapped[str] = mapped_column(String(32), default="")
    action: Mapped[str] = mapped_column(String(32), default="")
    severity: Mapped[str] = mapped_column(String(8), default="")
    type: Mapped[str] = mapped_column(String(32), default="")
    result: Mapped[str] = mapped_column(String(64), default="")
    source: Mapped[str] = mapped_column(Text, default="", server_default="")
    resource: Mapped[str] = mapped_column(Text, default="", server_default="")
    throttled: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    body: Mapped[str] = mapped_column(Text)


ALERT_INDEXED = ("namespace", "pod", "container", "policy", "operation", "action", "type")
LOG_INDEXED = ("namespace", "pod", "operation", "type")


class AlertRow(_Record, Base):
    """One stored alert (throttled ones too, flagged)."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_ts_id", "ts_ns", "id"),
                      *(Index(f"ix_alerts_{c}_ts", c, "ts_ns", "id") for c in ALERT_INDEXED))


class LogRow(_Record, Base):
    """One stored log (an event that matched no rule, kept when visibility says so)."""

    __tablename__ = "logs"
    __table_args__ = (Index("ix_logs_ts_id", "ts_ns", "id"),
                      *(Index(f"ix_logs_{c}_ts", c, "ts_ns", "id") for c in LOG_INDEXED))


RecordRow = type[AlertRow] | type[LogRow]
