"""The record store: alerts and logs, idempotent on ``event_id``, paged newest first.

SQLite (WAL) by default, PostgreSQL when ``BULWARK_DB_URL`` says so; the schema comes from the Alembic
migrations (:func:`make_engine` runs ``upgrade head``). Synchronous: call from a thread in async code.

Ingest on PostgreSQL streams each batch with ``COPY`` (psycopg) straight into the tables, the rows in
the order they came, so ids follow arrival as with an INSERT. COPY cannot skip a known event id: when
the batch holds one (a redelivered raw batch) the unique index refuses it, the transaction is rolled
back whole and the batch goes through the insert-or-ignore path instead (``copy_fallbacks``), which
returns only the new records. SQLite always takes the insert-or-ignore path.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.feeder.enrich import alert_time_ns
from services.feeder.store.migrate import upgrade
from services.feeder.store.models import COLUMN_FIELDS, AlertRow, LogRow
from services.feeder.store.query import RecordQuery, encode_cursor, parse_since, select_page, select_summary

__all__ = ["AlertStore", "RecordStore", "AlertQuery", "RecordQuery", "Page", "make_engine", "parse_since",
           "to_row", "row_values", "ROW_COLUMNS"]

AlertQuery = RecordQuery  # the name the first version used
Table = type[AlertRow] | type[LogRow]
Records = tuple[list[dict[str, Any]], list[dict[str, Any]]]  # (alerts, logs)


def make_engine(url: str, *, migrate: bool = True) -> Engine:
    """An engine for ``url`` with the schema at head; SQLite gets WAL mode and a busy timeout."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    if migrate:
        upgrade(engine)
    return engine


_LENGTHS: dict[str, int] = {c.name: int(length) for c in AlertRow.__table__.columns
                             if (length := getattr(c.type, "length", None))}


def row_event_id(event_id: Any) -> str:
    """The stored key of an event id: itself, or a digest when longer than the column (128)."""
    text = str(event_id)
    return text if len(text) <= 128 else "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# the stored columns (all but the id), in the order :func:`row_values` gives them
ROW_COLUMNS: tuple[str, ...] = (*COLUMN_FIELDS, "event_id", "ts_ns", "throttled", "body")
_FIELDS = tuple((fld, _LENGTHS.get(col)) for col, fld in COLUMN_FIELDS.items())


def row_values(record: dict[str, Any], event_id: str | None = None) -> tuple[Any, ...]:
    """The values of :data:`ROW_COLUMNS` for one record (cut to the column sizes; the body keeps
    everything). ``event_id``: its stored key when already known."""
    values: list[Any] = [str(record.get(fld, "") or "")[:length] for fld, length in _FIELDS]
    values += (row_event_id(record["EventID"]) if event_id is None else event_id, alert_time_ns(record),
               bool(record.get("Throttled", False)), json.dumps(record))
    return tuple(values)


def to_row(record: dict[str, Any]) -> dict[str, Any]:
    """The column values of one record, by column name (see :func:`row_values`)."""
    return dict(zip(ROW_COLUMNS, row_values(record), strict=True))


def _unique(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The records by stored event id, the first of each id, in arrival order."""
    unique: dict[str, dict[str, Any]] = {}
    for rec in records:
        unique.setdefault(row_event_id(rec["EventID"]), rec)
    return unique


_COPY_SQL = {t.__tablename__: f"COPY {t.__tablename__} ({', '.join(ROW_COLUMNS)}) FROM STDIN"
             for t in (AlertRow, LogRow)}
# SQLite's insert-or-ignore, one row per statement: its change count says whether the row was new
_SQLITE_INSERT_SQL = {t.__tablename__: f"INSERT INTO {t.__tablename__} ({', '.join(ROW_COLUMNS)}) "
                                       f"VALUES ({', '.join('?' * len(ROW_COLUMNS))}) ON CONFLICT (event_id) DO NOTHING"
                      for t in (AlertRow, LogRow)}


class Page(list[dict[str, Any]]):
    """A page of records (a list) plus the cursor of the next page (None when this is the last)."""

    next_cursor: str | None = None


class RecordStore:
    """Insert-or-ignore, page, count, summarise and trim alerts and logs."""

    def __init__(self, engine: Engine, *, copy: bool | None = None) -> None:
        """``copy``: ingest with COPY (default: on PostgreSQL through psycopg; never elsewhere)."""
        self.engine = engine
        self.dialect = engine.dialect.name
        driver = engine.dialect.driver
        can_copy = self.dialect == "postgresql" and driver == "psycopg"
        if copy and not can_copy:
            raise ValueError(f"COPY ingest needs PostgreSQL through psycopg, not {self.dialect}+{driver}")
        self.copy = can_copy if copy is None else copy
        self.copy_fallbacks = 0  # COPY batches that met a known event id and were inserted-or-ignored

    def _upsert(self, table: Table) -> Any:
        if self.dialect == "sqlite":
            return sqlite.insert(table).on_conflict_do_nothing(index_elements=["event_id"])
        if self.dialect == "postgresql":
            return postgresql.insert(table).on_conflict_do_nothing(index_elements=["event_id"])
        raise NotImplementedError(f"insert-or-ignore not implemented for {self.dialect}")

    def _insert_new(self, session: Session, table: Table, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        unique = _unique(records)
        if not unique:
            return []
        stmt = self._upsert(table).returning(table.event_id)
        rows = [dict(zip(ROW_COLUMNS, row_values(r, eid), strict=True)) for eid, r in unique.items()]
        inserted = set(session.scalars(stmt, rows))
        return [r for eid, r in unique.items() if eid in inserted]

    def _sqlite_insert_new(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> Records:
        """Both kinds in one transaction through the driver's cursor (no ORM: a lone alert is stored in
        a fifth of the time, which is most of what it waits for in the feeder); the new records."""
        new: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
        with self.engine.begin() as conn:
            driver = conn.connection.driver_connection
            if driver is None:
                raise RuntimeError("the pooled connection has no driver connection")
            cur = driver.cursor()
            try:
                for table, records, out in ((AlertRow, alerts, new[0]), (LogRow, logs, new[1])):
                    sql = _SQLITE_INSERT_SQL[table.__tablename__]
                    for eid, rec in _unique(records).items():
                        cur.execute(sql, row_values(rec, eid))
                        if cur.rowcount == 1:
                            out.append(rec)
            finally:
                cur.close()
        return new

    def _copy_new(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> Records | None:
        """Both kinds COPYed in one transaction, every (first of an) event id new; None when one was
        known already (nothing stored then)."""
        from psycopg.errors import UniqueViolation

        batches = ((AlertRow, _unique(alerts)), (LogRow, _unique(logs)))
        try:
            with self.engine.begin() as conn:
                driver = conn.connection.driver_connection  # psycopg's, inside this transaction
                if driver is None:
                    raise RuntimeError("the pooled connection has no driver connection")
                with driver.cursor() as cur:
                    for table, unique in batches:
                        if unique:
                            with cur.copy(_COPY_SQL[table.__tablename__]) as copy:
                                for eid, rec in unique.items():
                                    copy.write_row(row_values(rec, eid))
        except UniqueViolation:
            self.copy_fallbacks += 1
            return None
        return list(batches[0][1].values()), list(batches[1][1].values())

    def insert(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]] | None = None
               ) -> list[dict[str, Any]]:
        """Store alerts (and logs) in one transaction; return the alerts that were new."""
        return self.insert_records(alerts, logs or [])[0]

    def insert_records(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> Records:
        """Store both kinds in one transaction; return (new alerts, new logs), known event ids skipped."""
        if self.copy and (alerts or logs):
            copied = self._copy_new(alerts, logs)
            if copied is not None:
                return copied
        if self.dialect == "sqlite" and (alerts or logs):
            return self._sqlite_insert_new(alerts, logs)
        with Session(self.engine) as session, session.begin():
            return self._insert_new(session, AlertRow, alerts), self._insert_new(session, LogRow, logs)

    def bulk_insert(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Plain executemany of prepared rows (:func:`to_row`), for loading; duplicates are an error."""
        with self.engine.begin() as conn:
            conn.execute(insert(table), rows)

    def page(self, table: Table, q: RecordQuery) -> Page:
        """One page of records matching ``q``, newest first, with the next page's cursor."""
        with Session(self.engine) as session:
            rows = session.execute(select_page(table, q)).all()
        page = Page(json.loads(r.body) for r in rows[: q.limit])
        if len(rows) > q.limit:
            last = rows[q.limit - 1]
            page.next_cursor = encode_cursor(last.ts_ns, last.id)
        return page

    def query(self, q: RecordQuery) -> list[dict[str, Any]]:
        """Alerts matching ``q``, newest first, at most ``q.limit``."""
        return list(self.page(AlertRow, q))

    def summary(self, table: Table, q: RecordQuery, by: list[str]) -> dict[str, Any]:
        """``{"total": n, "by": [...], "groups": [{<col>: value, ..., "count": n}]}``."""
        with Session(self.engine) as session:
            rows = session.execute(select_summary(table, q, by).limit(max(1, q.limit))).all()
            total = session.scalar(select(func.count()).select_from(table).where(*q.where(table)))
        groups = [{**{b: row[i] for i, b in enumerate(by)}, "count": int(row[-1])} for row in rows]
        return {"total": int(total or 0), "by": by, "groups": groups}

    def count(self, table: Table = AlertRow) -> int:
        """How many records ``table`` holds."""
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def trim(self, table: Table, *, older_than_ns: int | None, keep_rows: int | None, chunk: int = 20_000) -> int:
        """Delete records older than ``older_than_ns``, then all but the newest ``keep_rows``; returns how many.

        Deletes in id ranges of ``chunk`` rows, one short transaction each, so ingest is never held up long.
        """
        deleted = 0
        with self.engine.connect() as conn:
            low = int(conn.scalar(select(func.min(table.id))) or 0)
            age_top = 0
            if older_than_ns is not None:
                age_top = int(conn.scalar(select(func.max(table.id)).where(table.ts_ns < older_than_ns)) or 0)
            count_top = 0
            if keep_rows is not None:
                count_top = int(conn.scalar(select(table.id).order_by(table.id.desc()).offset(keep_rows).limit(1)) or 0)
        for top, by_age in ((age_top, True), (count_top, False)):
            start = low
            while top and start <= top:
                high = min(top, start + chunk - 1)
                stmt = delete(table).where(table.id >= start, table.id <= high)
                if by_age:
                    stmt = stmt.where(table.ts_ns < older_than_ns)
                with self.engine.begin() as conn:
                    deleted += conn.execute(stmt).rowcount or 0
                start = high + 1
        return deleted


AlertStore = RecordStore  # the name the first version used
