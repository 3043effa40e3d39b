"""The feeder's REST and websocket API; :func:`create_app` builds it from already-made dependencies.

(No ``from __future__ import annotations`` here: FastAPI resolves the local ``Deps`` alias at run time.)

    GET    /healthz                          aggregated heartbeats (200 all healthy, else 503); open
    GET    /openapi.json, /docs              the OpenAPI document; open
    GET    /api/v1/alerts, /api/v1/logs      filtered pages, newest first (see records.py)
    GET    /api/v1/alerts/summary, /api/v1/logs/summary   grouped counts
    POST   /api/v1/policies                  body: YAML or JSON text -> policy service (200/422/503); write scope
    GET    /api/v1/policies                  -> {"ok": true, "policies": [...]}
    DELETE /api/v1/policies/{kind}/{name}?namespace=NS  (200, 404 when not found, 503); write scope
    WS     /api/v1/stream                    new records as JSON text messages (see ws.py)

With tokens configured (auth.py) every /api route needs ``Authorization: Bearer``.
"""

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse
from nats.aio.client import Client

from services.feeder.auth import READ, WRITE, ApiAuth, bearer_token
from services.feeder.hub import AlertHub
from services.feeder.records import add_record_routes
from services.feeder.state import FeederState
from services.feeder.store import RecordStore
from services.feeder.ws import serve_stream
from shared.bus import request
from shared.errors import ServiceUnavailable
from shared.lifecycle import Counters
from shared.subjects import POLICY_API

__all__ = ["FeederDeps", "create_app", "health_report", "SERVICES", "policy_request"]

SERVICES: tuple[str, ...] = ("monitor", "enforcer", "identity", "policy", "feeder")
WS_QUEUE = 256


@dataclass
class FeederDeps:
    """Everything the API needs, built by the service's wiring (or a test)."""

    state: FeederState
    store: RecordStore
    hub: AlertHub
    nc: Client | None
    counters: Counters = field(default_factory=Counters)
    heartbeat_seconds: float = 1.0
    policy_timeout: float = 5.0
    auth: ApiAuth = field(default_factory=ApiAuth)
    ws_queue: int = WS_QUEUE
    cluster: str = "default"
    node: str = ""


def health_report(state: FeederState, window: float, now: float | None = None) -> dict[str, Any]:
    """Each service's newest heartbeat (any node) and whether it arrived within ``window`` seconds."""
    now = time.time() if now is None else now
    services: dict[str, Any] = {}
    for name in SERVICES:
        entries = [e for (svc, _node), e in state.health.items() if svc == name]
        newest = max(entries, key=lambda e: e.last_seen, default=None)
        services[name] = {
            "ok": newest is not None and now - newest.last_seen <= window,
            "last_seen": newest.last_seen if newest else None,
            "age_seconds": round(now - newest.last_seen, 3) if newest else None,
            "status": newest.status if newest else "missing",
            "nodes": sorted(e.node for e in entries),
        }
    return {"healthy": all(s["ok"] for s in services.values()), "services": services}


async def policy_request(d: FeederDeps, payload: dict[str, Any]) -> dict[str, Any]:
    """Ask the policy service (POLICY_API); HTTPException 503/502 when it cannot answer."""
    if d.nc is None:
        raise HTTPException(503, "policy service unavailable: no NATS connection")
    try:
        reply = await request(d.nc, POLICY_API, payload, timeout=d.policy_timeout)
    except ServiceUnavailable as exc:
        raise HTTPException(503, f"policy service unavailable: {exc}") from exc
    if not isinstance(reply, dict):
        raise HTTPException(502, "policy service sent a malformed reply")
    return reply


def create_app(deps: FeederDeps) -> FastAPI:
    """The FastAPI app serving ``deps``; no engine or connection is made here."""
    app = FastAPI(title="Bulwark feeder", version="0.1.0",
                  description="KubeArmor-compatible alerts and logs, policies, live stream.")

    def get_deps() -> FeederDeps:
        return deps

    Deps = Annotated[FeederDeps, Depends(get_deps)]

    def require_read(req: Request) -> None:
        deps.auth.check(bearer_token(req.headers.get("authorization")), READ)

    def require_write(req: Request) -> None:
        deps.auth.check(bearer_token(req.headers.get("authorization")), WRITE)

    @app.get("/healthz", tags=["health"])
    def healthz(d: Deps) -> JSONResponse:
        report = health_report(d.state, 3 * d.heartbeat_seconds)
        return JSONResponse(report, status_code=200 if report["healthy"] else 503)

    add_record_routes(app, get_deps, require_read)

    @app.post("/api/v1/policies", dependencies=[Depends(require_write)], tags=["policies"])
    async def apply_policies(d: Deps, req: Request) -> JSONResponse:
        text = (await req.body()).decode("utf-8", errors="replace")
        reply = await policy_request(d, {"op": "apply", "text": text})
        if reply.get("ok"):
            return JSONResponse({"ok": True, "results": reply.get("results", [])})
        return JSONResponse({"ok": False, "errors": reply.get("errors", [])}, status_code=422)

    @app.get("/api/v1/policies", dependencies=[Depends(require_read)], tags=["policies"])
    async def list_policies(d: Deps) -> JSONResponse:
        reply = await policy_request(d, {"op": "list"})
        return JSONResponse({"ok": bool(reply.get("ok")), "policies": reply.get("policies", [])},
                            status_code=200 if reply.get("ok") else 502)

    @app.delete("/api/v1/policies/{kind}/{name}", dependencies=[Depends(require_write)], tags=["policies"])
    async def delete_policy(d: Deps, kind: str, name: str, namespace: str = "") -> JSONResponse:
        reply = await policy_request(d, {"op": "delete", "kind": kind, "namespace": namespace, "name": name})
        if not reply.get("found", False):
            return JSONResponse({"ok": False, "found": False}, status_code=404)
        return JSONResponse({"ok": bool(reply.get("ok", True)), "found": True})

    @app.websocket("/api/v1/stream")
    async def stream(ws: WebSocket) -> None:
        await serve_stream(ws, deps.hub, deps.auth, queue=deps.ws_queue, cluster=deps.cluster, node=deps.node)

    return app
