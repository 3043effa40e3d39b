"""Ingest through COPY on PostgreSQL (and the insert-or-ignore path it falls back to, SQLite's only
path): the same rows, ids in arrival order, known event ids skipped, nothing lost. Every test runs on
real SQLite and a real PostgreSQL 15 (the session cluster)."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from services.feeder.store.database import ROW_COLUMNS, RecordStore, make_engine, to_row
from services.feeder.store.models import AlertRow, LogRow
from services.feeder.store.query import RecordQuery


def _alert(eid: str, ts: int = 1_700_000_000, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "EventID": eid, "Timestamp": ts, "UpdatedTime": "2023-11-14T22:13:20.250000Z", "NamespaceName": "demo",
        "PodName": "web-0", "ContainerName": "web", "HostName": "node-a", "PolicyName": "p1",
        "Operation": "Process", "Action": "Block", "Severity": "5", "Type": "MatchedPolicy",
        "Result": "Permission denied", "Source": "/usr/bin/bash", "Resource": "/usr/bin/sleep"}
    base.update(kw)
    return base


def _log(eid: str, **kw: Any) -> dict[str, Any]:
    return _alert(eid, Type="ContainerLog", PolicyName="", Action="", **kw)


@pytest.fixture
def store(db_url: str) -> Iterator[RecordStore]:
    engine = make_engine(db_url)
    yield RecordStore(engine)
    engine.dispose()


def _ids(store: RecordStore, table: type[AlertRow] | type[LogRow]) -> list[tuple[int, str]]:
    with store.engine.connect() as conn:
        return [(int(r.id), str(r.event_id)) for r in conn.execute(select(table.id, table.event_id).order_by(table.id))]


def test_postgresql_ingests_with_copy_and_sqlite_keeps_insert_or_ignore(store: RecordStore) -> None:
    assert store.copy == (store.dialect == "postgresql")
    if store.dialect == "sqlite":
        with pytest.raises(ValueError, match="COPY"):
            RecordStore(store.engine, copy=True)


def test_ids_follow_arrival_and_pages_are_newest_first(store: RecordStore) -> None:
    first = [_alert(e) for e in ("e3", "e1", "e2", "e1")]     # a repeat inside the batch: the first wins
    assert [a["EventID"] for a in store.insert_records(first, [])[0]] == ["e3", "e1", "e2"]
    assert [a["EventID"] for a in store.insert_records([_alert("e0"), _alert("e9")], [])[0]] == ["e0", "e9"]
    rows = _ids(store, AlertRow)
    assert [eid for _, eid in rows] == ["e3", "e1", "e2", "e0", "e9"]
    assert [i for i, _ in rows] == sorted(i for i, _ in rows)
    # same time: the later arrival (the higher id) first
    assert [a["EventID"] for a in store.page(AlertRow, RecordQuery(limit=10))] == ["e9", "e0", "e2", "e1", "e3"]


def test_a_redelivered_batch_stores_only_its_new_records_and_loses_none(store: RecordStore) -> None:
    assert store.insert_records([_alert("a1"), _alert("a2")], [_log("l1")]) == (
        [_alert("a1"), _alert("a2")], [_log("l1")])
    fallbacks = store.copy_fallbacks
    # known alert, new alert, new log, known log: the known ones are skipped, the rest stored once
    new_alerts, new_logs = store.insert_records([_alert("a2"), _alert("a3")], [_log("l2"), _log("l1")])
    assert [a["EventID"] for a in new_alerts] == ["a3"] and [r["EventID"] for r in new_logs] == ["l2"]
    # only a known log: the alerts COPYed before it are not left behind twice
    new_alerts, new_logs = store.insert_records([_alert("a4")], [_log("l2")])
    assert [a["EventID"] for a in new_alerts] == ["a4"] and new_logs == []
    assert [eid for _, eid in _ids(store, AlertRow)] == ["a1", "a2", "a3", "a4"]
    assert [eid for _, eid in _ids(store, LogRow)] == ["l1", "l2"]
    assert store.copy_fallbacks - fallbacks == (2 if store.copy else 0)
    assert store.insert_records([_alert("a1")], [_log("l1")]) == ([], [])


def test_copied_rows_hold_what_an_insert_would(store: RecordStore) -> None:
    odd = "tab\there, new\nline, back\\slash, quote\" 'x' ünïcødé \u2028 end"
    records = [_alert("v1", Resource=odd, Source=odd, Throttled=True, Operation="X" * 100),
               _alert("v2", ts=2_000_000_000, UpdatedTime="2033-05-18T03:33:20.123456Z", Severity=""),
               _alert("v3", NamespaceName=None, Labels={"a": ["b", 1]}, HostPID=2 ** 40),
               _alert("z" * 300)]                             # an id longer than the column: stored as a digest
    assert store.insert_records(records, [])[0] == records
    with store.engine.connect() as conn:
        cols = [getattr(AlertRow, c) for c in ROW_COLUMNS]
        stored = [dict(r._mapping) for r in conn.execute(select(*cols).order_by(AlertRow.id))]
    assert stored == [to_row(r) for r in records]
    page = store.page(AlertRow, RecordQuery(limit=10))
    assert sorted(page, key=lambda a: str(a["EventID"])) == sorted(records, key=lambda a: str(a["EventID"]))


def test_the_fallback_path_gives_the_same_results(db_url: str) -> None:
    """The insert-or-ignore path alone (what a COPY that met a known id turns into) on the same calls."""
    engine = make_engine(db_url)
    try:
        plain = RecordStore(engine, copy=False)
        assert plain.insert_records([_alert("a1"), _alert("a1"), _alert("a2")], [_log("l1")]) == (
            [_alert("a1"), _alert("a2")], [_log("l1")])
        assert plain.insert_records([_alert("a2"), _alert("a3")], [_log("l1")]) == ([_alert("a3")], [])
        assert plain.copy_fallbacks == 0
    finally:
        engine.dispose()
