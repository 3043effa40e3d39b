"""The feeder's REST and websocket API; :func:`create_app` builds it from already-made dependencies.

(No ``from __future__ import annotations`` here: FastAPI resolves the local ``Deps`` alias at run time.)

    GET    /healthz                          aggregated heartbeats (200 all healthy, else 503); open
    GET    /openapi.json, /docs              the OpenAPI document; open
    GET    /api/v1/alerts, /api/v1/logs      filtered pages, newest first (see records.py)
    GET    /api/v1/alerts/summary, /api/v1/logs/summary   grouped counts
    POST   /api/v1/policies                  body: YAML or JSON text -> policy service (200/413/422/503); write scope
    GET    /api/v1/policies                  -> {"ok": true, "policies": [...]}
    DELETE /api/v1/policies/{kind}/{name}?namespace=NS  (200, 404 when not found, 503); write scope
    POST   /api/v1/policies/rehearse         body: candidate policies; replays stored history (rehearse.py)
    WS     /api/v1/stream                    new records as JSON text messages (see ws.py)

With tokens configured (auth.py) every /api route needs ``Authorization: Bearer``. A policy body larger
than ``max_body_bytes`` (and than the NATS server's max_payload allows) gets 413 before it is read
any further; its text is then read by the policy service's bounded reader (shared/bounded.py).
"""

import time
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError

from services.feeder.auth import READ, WRITE, ApiAuth, bearer_token
from services.feeder.http.records import add_record_routes
from services.feeder.http.rehearse import rehearse_params, run_rehearsal
from services.feeder.http.websocket import serve_stream
from services.feeder.hub import AlertHub
from services.feeder.store.database import RecordStore
from services.feeder.views import FeederState
from shared.errors import ServiceUnavailable
from shared.lifecycle import Counters
from shared.nats.bus import request
from shared.nats.subjects import POLICY_API

__all__ = ["FeederDeps", "create_app", "health_report", "SERVICES", "policy_request", "read_body", "BodyError",
           "MAX_BODY_BYTES"]

SERVICES: tuple[str, ...] = ("monitor", "enforcer", "identity", "policy", "feeder")
WS_QUEUE = 256
MAX_BODY_BYTES = 1 << 20
_ENVELOPE = 1024  # room for the request's msgpack envelope and headers within NATS max_payload


class BodyError(Exception):
    """A request body that is refused before parsing: HTTP ``status`` and a message naming the body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> JSONResponse:
        """The JSON error reply, in the shape policy errors have."""
        return JSONResponse({"ok": False, "errors": [{"document": "", "path": "body", "message": self.message}]},
                            status_code=self.status)


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
    max_body_bytes: int = MAX_BODY_BYTES

    def body_limit(self) -> int:
        """The largest body accepted: the setting, and no more than the bus can carry."""
        bus = getattr(self.nc, "max_payload", 0) if self.nc is not None else 0
        return min(self.max_body_bytes, bus - _ENVELOPE) if bus and bus > 2 * _ENVELOPE else self.max_body_bytes


async def read_body(req: Request, limit: int) -> str:
    """The request's body as UTF-8 text, reading no more than ``limit`` bytes; BodyError (413, 400, 422)."""
    declared = req.headers.get("content-length")
    if declared is not None:
        digits = declared.strip()
        if not digits.isdigit():
            raise BodyError(400, f"Content-Length is not a number: {declared[:40]!r}")
        if len(digits) > 18 or int(digits) > limit:
            raise BodyError(413, f"the body is {digits[:40]} bytes: at most {limit} are accepted")
    chunks: list[bytes] = []
    size = 0
    async for chunk in req.stream():
        size += len(chunk)
        if size > limit:
            raise BodyError(413, f"the body is more than {limit} bytes, the most accepted")
        chunks.append(chunk)
    data = b"".join(chunks)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BodyError(422, f"not UTF-8: byte {exc.start} cannot be decoded") from exc


def health_report(state: FeederState, window: float, now: float | None = None) -> dict[str, Any]:
    """Each service's newest heartbeat (any node): ok when it arrived within ``window`` seconds; its
    ``status`` says ``degraded`` while a monitor is losing events (announced as EventsLost alerts);
    ``resources`` gives each node's process CPU (% of one CPU since its previous beat) and RSS."""
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
            "resources": {e.node: {k: e.details[k] for k in ("cpu_percent", "rss_bytes") if k in e.details}
                          for e in entries},
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
    except MaxPayloadError as exc:
        raise HTTPException(413, "body: too large for the message bus (NATS max_payload)") from exc
    except NatsError as exc:  # connection closed, reconnecting, draining...
        raise HTTPException(503, f"policy service unavailable: {type(exc).__name__}") from exc
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
        try:
            text = await read_body(req, d.body_limit())
        except BodyError as exc:
            return exc.response()
        reply = await policy_request(d, {"op": "apply", "text": text})
        if reply.get("ok"):
            return JSONResponse({"ok": True, "results": reply.get("results", []),
                                 "warnings": reply.get("warnings", [])})
        return JSONResponse({"ok": False, "errors": reply.get("errors", [])}, status_code=422)

    @app.post("/api/v1/policies/rehearse", dependencies=[Depends(require_read)], tags=["policies"])
    async def rehearse_policies(d: Deps, req: Request) -> JSONResponse:
        query, options = rehearse_params(req)
        try:
            text = await read_body(req, d.body_limit())
        except BodyError as exc:
            return exc.response()

        async def ask(payload: dict[str, Any]) -> dict[str, Any]:
            return await policy_request(d, payload)

        return await run_rehearsal(d.store.engine, text, query, options, ask, 2 * d.policy_timeout)

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
