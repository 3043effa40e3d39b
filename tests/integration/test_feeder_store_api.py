"""The record store and the REST API on real SQLite and a real PostgreSQL 15 (session cluster):
migrations, filters, cursor pages stable under inserts, summaries, logs, retention, tokens."""
from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import inspect, text

from services.feeder.auth import ApiAuth
from services.feeder.http.app import FeederDeps, create_app
from services.feeder.hub import AlertHub
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.store.migrate import head_revision, upgrade
from services.feeder.store.models import AlertRow, LogRow
from services.feeder.store.retention import RetentionPolicy, trim_once
from services.feeder.views import FeederState


def _alert(i: int, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "EventID": f"e{i:04d}", "Timestamp": 1_700_000_000 + i, "UpdatedTime": "2023-11-14T22:13:20.000000Z",
        "NamespaceName": "demo" if i % 2 else "prod", "PodName": f"web-{i % 3}", "ContainerName": "web",
        "HostName": "node-a", "PolicyName": "p1" if i % 4 else "p2", "Operation": "Process",
        "Action": "Block" if i % 5 else "Audit", "Severity": str(1 + i % 5), "Type": "MatchedPolicy",
        "Result": "Permission denied", "Source": "/usr/bin/bash", "Resource": f"/usr/bin/tool{i}"}
    base.update(kw)
    return base


@pytest.fixture
def store(db_url: str) -> RecordStore:
    engine = make_engine(db_url)
    yield RecordStore(engine)
    engine.dispose()


@pytest.fixture
async def http(store: RecordStore) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(FeederDeps(FeederState(), store, AlertHub(), None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        yield client


def test_migrations_reach_head_and_carry_an_old_database_forward(db_url: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(db_url)
    upgrade(engine, "0001")  # the first feeder's schema
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO alerts (event_id, ts_ns, namespace, pod, container, policy, operation, action,"
                          " severity, type, result, body) VALUES ('old-1', 5, 'demo', '', '', 'p', 'Process', 'Block',"
                          " '5', 'MatchedPolicy', 'Passed', '{\"EventID\": \"old-1\"}')"))
        conn.execute(text("DROP TABLE alembic_version"))  # as create_all left it: no version table
    engine.dispose()
    engine = make_engine(db_url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
        tables = set(inspect(conn).get_table_names())
    assert {"alerts", "logs"} <= tables
    st = RecordStore(engine)
    assert [a["EventID"] for a in st.page(AlertRow, st_query())] == ["old-1"]
    make_engine(db_url).dispose()  # idempotent at head
    engine.dispose()


def st_query(**kw: Any) -> Any:
    from services.feeder.store.query import RecordQuery

    return RecordQuery(**kw)


def test_insert_is_idempotent_for_alerts_and_logs(store: RecordStore) -> None:
    log = {**_alert(1), "EventID": "l1", "Type": "ContainerLog"}
    new_a, new_l = store.insert_records([_alert(1), _alert(2), _alert(2)], [log])
    assert [a["EventID"] for a in new_a] == ["e0001", "e0002"] and new_l == [log]
    assert store.insert_records([_alert(1), _alert(3)], [log]) == ([_alert(3)], [])
    assert store.count(AlertRow) == 3 and store.count(LogRow) == 1
    long = _alert(9, Operation="X" * 100, EventID="z" * 300)  # longer than the columns: cut, body intact
    assert store.insert([long])[0]["Operation"] == "X" * 100


async def test_filters_cursor_and_summary(store: RecordStore, http: httpx.AsyncClient) -> None:
    store.insert([_alert(i) for i in range(1, 101)])
    page = (await http.get("/api/v1/alerts", params={"limit": 1000})).json()
    assert [a["EventID"] for a in page] == [f"e{i:04d}" for i in range(100, 0, -1)]

    async def ids(**params: Any) -> list[str]:
        resp = await http.get("/api/v1/alerts", params={"limit": 1000, **params})
        assert resp.status_code == 200, resp.text
        return [a["EventID"] for a in resp.json()]

    want = lambda pred: [f"e{i:04d}" for i in range(100, 0, -1) if pred(i)]  # noqa: E731
    assert await ids(namespace="demo") == want(lambda i: i % 2)
    assert await ids(namespace="demo", policy="p2") == want(lambda i: i % 2 and not i % 4)
    assert await ids(action="Audit") == want(lambda i: not i % 5)
    assert await ids(severity="1,2") == want(lambda i: i % 5 in (0, 1))
    assert await ids(pod="web-0", host="node-a") == want(lambda i: i % 3 == 0)
    assert await ids(q="tool7") == want(lambda i: str(i).startswith("7"))
    assert await ids(q="bash") == want(lambda i: True)
    assert await ids(q="%") == []
    assert await ids(since=str(1_700_000_000 + 90), until="2023-11-14T22:14:55Z") == want(lambda i: 90 <= i <= 95)
    assert await ids(result="Passed") == [] and await ids(container="web", type="MatchedPolicy") == want(lambda i: True)
    for bad in ({"since": "yesterday"}, {"cursor": "!!"}, {"limit": 0}):
        assert (await http.get("/api/v1/alerts", params=bad)).status_code == 422

    # cursor pages: every record exactly once, also while new ones arrive
    seen: list[str] = []
    params: dict[str, Any] = {"namespace": "demo", "limit": 7}
    while True:
        resp = await http.get("/api/v1/alerts", params=params)
        seen += [a["EventID"] for a in resp.json()]
        if len(seen) == 14:
            store.insert([_alert(i) for i in range(101, 111)])  # newer: must not show up in later pages
        cursor = resp.headers.get("x-next-cursor")
        if not cursor:
            break
        assert 'rel="next"' in resp.headers["link"]
        params["cursor"] = cursor
    assert seen == want(lambda i: i % 2)

    summary = (await http.get("/api/v1/alerts/summary", params={"by": "namespace,action"})).json()
    assert summary["total"] == 110 and summary["by"] == ["namespace", "action"]
    counts = {(g["namespace"], g["action"]): g["count"] for g in summary["groups"]}
    assert counts == {("demo", "Block"): 44, ("prod", "Block"): 44, ("demo", "Audit"): 11, ("prod", "Audit"): 11}
    assert summary["groups"][0]["count"] == 44
    one = (await http.get("/api/v1/alerts/summary", params={"by": "policy", "namespace": "prod"})).json()
    assert one["groups"] == [{"policy": "p1", "count": 28}, {"policy": "p2", "count": 27}]
    assert (await http.get("/api/v1/alerts/summary", params={"by": "body"})).status_code == 422
    spec = (await http.get("/openapi.json")).json()
    assert {"/api/v1/alerts", "/api/v1/logs", "/api/v1/alerts/summary"} <= set(spec["paths"])
    names = {p["name"] for p in spec["paths"]["/api/v1/alerts"]["get"]["parameters"]}
    assert {"namespace", "pod", "policy", "operation", "action", "result", "severity", "type", "since", "until",
            "q", "cursor", "limit"} <= names


async def test_logs_are_served_and_summarised(store: RecordStore, http: httpx.AsyncClient) -> None:
    logs = [{**_alert(i), "EventID": f"l{i}", "Type": "ContainerLog", "Operation": "File" if i % 2 else "Process",
             "PolicyName": "", "Action": ""} for i in range(1, 11)]
    store.insert_records([], logs)
    got = (await http.get("/api/v1/logs", params={"operation": "File"})).json()
    assert [r["EventID"] for r in got] == ["l9", "l7", "l5", "l3", "l1"]
    summary = (await http.get("/api/v1/logs/summary", params={"by": "operation"})).json()
    assert summary["groups"] == [{"operation": "File", "count": 5}, {"operation": "Process", "count": 5}]
    assert (await http.get("/api/v1/alerts")).json() == []


def test_retention_by_age_and_count(store: RecordStore) -> None:
    store.insert([_alert(i, Timestamp=1000 + i) for i in range(1, 51)])
    store.insert_records([], [{**_alert(i, Timestamp=1000 + i), "EventID": f"l{i}"} for i in range(1, 21)])
    deleted = trim_once(store, RetentionPolicy(alerts_max_age_seconds=20, logs_max_rows=5), now_ns=(1000 + 40) * 10**9)
    assert deleted == {"alerts": 19, "logs": 15}
    assert min(a["Timestamp"] for a in store.page(AlertRow, st_query(limit=1000))) == 1020
    trim_once(store, RetentionPolicy(alerts_max_rows=10))
    page = store.page(AlertRow, st_query(limit=1000))
    assert [a["EventID"] for a in page] == [f"e{i:04d}" for i in range(50, 40, -1)]
    assert [r["EventID"] for r in store.page(LogRow, st_query())] == [f"l{i}" for i in range(20, 15, -1)]


async def test_tokens_guard_reads_and_writes(store: RecordStore) -> None:
    auth = ApiAuth(read_tokens=frozenset({"reader"}), write_tokens=frozenset({"writer"}))
    app = create_app(FeederDeps(FeederState(), store, AlertHub(), None, auth=auth))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        assert (await http.get("/api/v1/alerts")).status_code == 401
        resp = await http.get("/api/v1/alerts", headers={"Authorization": "Bearer nope"})
        assert resp.status_code == 401 and resp.headers["www-authenticate"] == "Bearer"
        assert (await http.get("/api/v1/alerts", headers={"Authorization": "Bearer reader"})).status_code == 200
        assert (await http.get("/api/v1/alerts/summary", headers={"Authorization": "Bearer writer"})).status_code == 200
        posted = await http.post("/api/v1/policies", content="x", headers={"Authorization": "Bearer reader"})
        assert posted.status_code == 403
        assert (await http.delete("/api/v1/policies/KubeArmorPolicy/p")).status_code == 401
        # the write token passes the guard; with no NATS the policy service is unavailable
        posted = await http.post("/api/v1/policies", content="x", headers={"Authorization": "Bearer writer"})
        assert posted.status_code == 503
        assert (await http.get("/healthz")).status_code == 503  # open, and no service is healthy
        assert (await http.get("/openapi.json")).status_code == 200


def test_websocket_needs_a_token_and_filters(store: RecordStore) -> None:
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    hub = AlertHub()
    auth = ApiAuth(read_tokens=frozenset({"reader"}))
    client = TestClient(create_app(FeederDeps(FeederState(), store, hub, None, auth=auth)))
    for url, headers in (("/api/v1/stream", {}), ("/api/v1/stream?token=bad", {}),
                         ("/api/v1/stream?token=reader&stream=bogus", {}),
                         ("/api/v1/stream?token=reader&namespce=demo", {}),          # misspelt: not ignored
                         ("/api/v1/stream?token=reader&namespace=a&namespace=b", {})):
        with pytest.raises(WebSocketDisconnect) as info:
            with client.websocket_connect(url, headers=headers) as ws:
                ws.receive_text()
        assert info.value.code == 1008
        if "namesp" in url:
            assert "namesp" in info.value.reason
    with client.websocket_connect("/api/v1/stream?namespace=demo&action=Block",
                                  headers={"Authorization": "Bearer reader"}) as ws:
        hub.publish(_alert(2))  # prod: filtered out
        hub.publish(_alert(1))
        hub.publish({**_alert(3), "Type": "ContainerLog"}, "log")  # a log: not on the alerts stream
        hub.publish(_alert(7))
        import json

        assert json.loads(ws.receive_text())["EventID"] == "e0001"
        assert json.loads(ws.receive_text())["EventID"] == "e0007"
