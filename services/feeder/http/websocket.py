"""The websocket stream: new records as JSON text messages, filtered like the REST routes.

``/api/v1/stream?stream=alerts|logs|all`` plus any REST filter (``namespace=``, ``action=Block,Audit``,
``q=``...); ``?token=`` or ``Authorization: Bearer`` when tokens are configured (policy violation
close, 1008, otherwise). An unknown or repeated parameter is refused the same way (1008, naming it), as
REST answers 422. A client too slow for its bounded queue misses records; when it catches up
it receives ``{"Type": "SystemEvent", "Operation": "Dropped", "Message": "dropped N alerts", "Dropped": N, ...}``.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from fastapi import HTTPException, WebSocket

from services.feeder.auth import READ, ApiAuth, bearer_token
from services.feeder.enrich import rfc3339
from services.feeder.hub import AlertHub
from services.feeder.store.query import QueryError, RecordQuery

__all__ = ["serve_stream", "STREAMS", "STREAM_PARAMS", "check_stream_params", "dropped_notice"]

STREAMS = {"alerts": frozenset({"alert"}), "logs": frozenset({"log"}), "all": frozenset({"alert", "log"})}
# the REST filters, plus the stream's own: no paging here (limit, cursor)
STREAM_PARAMS = frozenset({"namespace", "pod", "container", "host", "policy", "operation", "action", "severity",
                           "type", "result", "source", "resource", "q", "since", "until", "throttled", "stream",
                           "token"})


def check_stream_params(names: list[str]) -> None:
    """QueryError naming any parameter the stream does not take, or one given twice."""
    unknown = sorted({n for n in names if n not in STREAM_PARAMS})
    if unknown:
        raise QueryError(f"unknown query parameter(s) {', '.join(repr(n[:40]) for n in unknown[:5])}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise QueryError(f"query parameter(s) given more than once: {', '.join(repeated[:5])}")


def dropped_notice(count: int, what: str, *, cluster: str, node: str) -> dict[str, Any]:
    """The SystemEvent telling a client it missed ``count`` records."""
    now = time.time_ns()
    return {"Timestamp": now // 1_000_000_000, "UpdatedTime": rfc3339(now), "ClusterName": cluster,
            "HostName": node, "Type": "SystemEvent", "Operation": "Dropped",
            "Message": f"dropped {count} {what}: this client read too slowly", "Dropped": count}


async def serve_stream(ws: WebSocket, hub: AlertHub, auth: ApiAuth, *, queue: int, cluster: str, node: str) -> None:
    """Authenticate, parse the filters, then stream until the client goes away."""
    params = dict(ws.query_params)
    try:
        auth.check(bearer_token(ws.headers.get("authorization")) or params.get("token"), READ)
    except HTTPException as exc:
        await ws.close(code=1008, reason=str(exc.detail))
        return
    stream = params.get("stream", "alerts")
    try:
        check_stream_params([k for k, _v in ws.query_params.multi_items()])
        if stream not in STREAMS:
            raise QueryError(f"stream: expected alerts, logs or all; got {stream!r}")
        query = RecordQuery.from_params(params)
    except QueryError as exc:
        await ws.close(code=1008, reason=str(exc)[:120])
        return
    what = {"alerts": "alerts", "logs": "logs"}.get(stream, "records")
    with hub.subscribe("ws", queue, kinds=STREAMS[stream], accept=query.matches) as sub:
        await ws.accept()  # subscribed before accept: nothing slips in between
        # The sender awaits the queue itself (a record is sent one loop pass after it is published);
        # the client's disconnect cancels it.
        sender = asyncio.current_task()
        closed = asyncio.create_task(_wait_closed(ws))
        closed.add_done_callback(lambda _: sender.cancel() if sender is not None else None)
        try:
            while True:
                kind, record = await sub.get()
                if kind == "dropped":
                    record = dropped_notice(record["count"], what, cluster=cluster, node=node)
                await ws.send_text(json.dumps(record))
        except asyncio.CancelledError:
            if not closed.done():  # cancelled from outside (shutdown), not by the client's leaving
                raise
            if sender is not None:
                sender.uncancel()
        except Exception:  # client went away mid-send
            pass
        finally:
            closed.cancel()


async def _wait_closed(ws: WebSocket) -> None:
    """Return when the client disconnects (anything it sends is ignored)."""
    while True:
        msg = await ws.receive()
        if msg["type"] == "websocket.disconnect":
            return
