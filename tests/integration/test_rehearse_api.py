"""``POST /api/v1/policies/rehearse``: the feeder's REST API, the real policy service over a real
nats-server compiling the candidate (plus what is applied), and stored history in real SQLite."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from services.feeder.http.app import FeederDeps, create_app
from services.feeder.hub import AlertHub
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.views import FeederState
from shared.errors import ServiceUnavailable
from shared.nats.bus import connect, ensure_streams, request
from shared.nats.subjects import POLICY_API
from tests.servicetools import eventually, service_log, start_service, stop_service
from tests.unit.test_discover import history

URL = "/api/v1/policies/rehearse"


def _policy(name: str, spec: dict[str, Any]) -> str:
    return yaml.safe_dump({"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
                           "metadata": {"name": name, "namespace": "shop"},
                           "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec}})


TIGHT = _policy("tight", {"action": "Allow", "process": {"matchPaths": [{"path": "/bin/sh"}]}})
BLOCK_CAT = _policy("no-cat", {"action": "Block", "process": {"matchPaths": [{"path": "/usr/bin/cat"}]}})


@pytest.fixture
async def api(nats_server: Any, tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    nc = await connect(nats_server.url, "test")
    await ensure_streams(nc.jetstream())
    proc = start_service("policy", nats_server.url, tmp_path, node="rehearse-host")
    engine = make_engine(f"sqlite:///{tmp_path / 'feeder.db'}")
    try:
        async def ready() -> bool:
            try:
                await request(nc, POLICY_API, {"op": "list"}, timeout=0.5)
                return True
            except ServiceUnavailable:
                return False

        assert await eventually(ready, timeout=20), service_log(tmp_path, "policy")
        store = RecordStore(engine)
        store.insert_records([], history())
        app = create_app(FeederDeps(FeederState(), store, AlertHub(), nc))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            yield client, nc
    finally:
        engine.dispose()
        await nc.drain()
        stop_service(proc)


async def test_rehearsal_reports_what_a_candidate_would_block(api: tuple[httpx.AsyncClient, Any]) -> None:
    http, _nc = api
    resp = await http.post(URL, params={"namespace": "shop", "label": "app=web", "default_posture": "file=block"},
                           content=TIGHT)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["would_block"] and body["records"] == len(history())
    [wl] = body["workloads"].values()
    blocked = {g["resource"] for g in wl["groups"] if g["change"] == "blocked" and g["operation"] == "Process"}
    assert blocked == {"/usr/bin/cat"}  # /bin/sh is allowed; cat ran twice and would now be refused
    assert wl["changes"]["blocked"] == body["totals"]["blocked"] >= 2
    other = await http.post(URL, params={"namespace": "elsewhere"}, content=TIGHT)
    assert other.status_code == 200 and other.json()["records"] == 0 and not other.json()["would_block"]


async def test_the_applied_policies_take_part_unless_left_out(api: tuple[httpx.AsyncClient, Any]) -> None:
    http, nc = api
    applied = await request(nc, POLICY_API, {"op": "apply", "text": BLOCK_CAT}, timeout=5)
    assert applied["ok"], applied
    harmless = _policy("audit-sh", {"action": "Audit", "process": {"matchPaths": [{"path": "/bin/sh"}]}})
    with_applied = (await http.post(URL, params={"namespace": "shop"}, content=harmless)).json()
    alone = (await http.post(URL, params={"namespace": "shop", "applied": "false"}, content=harmless)).json()
    assert with_applied["totals"]["blocked"] == 2 and with_applied["would_block"]  # the applied no-cat
    assert alone["totals"]["blocked"] == 0 and alone["totals"]["audited"] == 1 and not alone["would_block"]


async def test_bad_input_gets_a_422_naming_it(api: tuple[httpx.AsyncClient, Any]) -> None:
    http, _nc = api
    broken = "kind: KubeArmorPolicy\nmetadata: {name: x, namespace: shop}\nspec: {severity: 99, process: {}}\n"
    resp = await http.post(URL, content=broken)
    assert resp.status_code == 422 and "spec.severity" in {e["path"] for e in resp.json()["errors"]}
    cases = {("default_posture", "file=maybe"): "default_posture", ("label", "app"): "label",
             ("since", "yesterday"): "since", ("max_groups", "0"): "max_groups", ("applied", "yes"): "applied",
             ("colour", "red"): "colour"}
    for (name, value), named in cases.items():
        resp = await http.post(URL, params={name: value}, content=TIGHT)
        assert resp.status_code == 422, (name, resp.text)
        assert named in resp.text, (name, resp.text)
    empty = await http.post(URL, content="")
    assert empty.status_code == 422 and "no policy" in empty.text
