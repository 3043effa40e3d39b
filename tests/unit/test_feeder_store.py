"""The alert store on a real SQLite file: idempotent inserts, filters, newest first."""
from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from services.feeder.store.database import AlertQuery, AlertStore, make_engine, parse_since


def _alert(eid: str, ts: int, **kw: str) -> dict[str, object]:
    base: dict[str, object] = {"EventID": eid, "Timestamp": ts, "UpdatedTime": f"x.{eid[-1] * 6}Z",
                               "NamespaceName": "demo", "PodName": "web", "ContainerName": "web",
                               "PolicyName": "p1", "Operation": "Process", "Action": "Block", "Severity": "5",
                               "Type": "MatchedPolicy", "Result": "Permission denied"}
    base.update(kw)
    return base


@pytest.fixture
def store(tmp_path: Path) -> AlertStore:
    return AlertStore(make_engine(f"sqlite:///{tmp_path / 'a.db'}"))


def test_wal_mode_and_idempotent_insert(store: AlertStore) -> None:
    with store.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    first = store.insert([_alert("e1", 100), _alert("e2", 101), _alert("e2", 101)])
    assert [a["EventID"] for a in first] == ["e1", "e2"]
    assert store.insert([_alert("e1", 100), _alert("e3", 102)]) == [_alert("e3", 102)]
    assert store.insert([_alert("e1", 100)]) == []
    assert store.count() == 3


def test_filters_and_newest_first(store: AlertStore) -> None:
    store.insert([_alert("e1", 100), _alert("e2", 200, NamespaceName="prod", Action="Audit"),
                  _alert("e3", 300, PolicyName="p2", Operation="File"), _alert("e4", 300, PodName="db")])
    assert [a["EventID"] for a in store.query(AlertQuery())] == ["e4", "e3", "e2", "e1"]
    assert [a["EventID"] for a in store.query(AlertQuery(namespace="prod"))] == ["e2"]
    assert [a["EventID"] for a in store.query(AlertQuery(policy="p2"))] == ["e3"]
    assert [a["EventID"] for a in store.query(AlertQuery(operation="File"))] == ["e3"]
    assert [a["EventID"] for a in store.query(AlertQuery(action="Audit"))] == ["e2"]
    assert [a["EventID"] for a in store.query(AlertQuery(pod="db"))] == ["e4"]
    assert [a["EventID"] for a in store.query(AlertQuery(since_ns=200 * 10**9))] == ["e4", "e3", "e2"]
    assert len(store.query(AlertQuery(limit=2))) == 2
    assert store.query(AlertQuery(container="none")) == []


def test_parse_since() -> None:
    assert parse_since("100") == 100 * 10**9
    assert parse_since("1.5") == 1_500_000_000
    assert parse_since("1970-01-01T00:01:40Z") == 100 * 10**9
    assert parse_since("1970-01-01T00:01:40.25+00:00") == 100_250_000_000
    with pytest.raises(ValueError):
        parse_since("yesterday")
