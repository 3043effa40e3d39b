"""``python -m services.feeder``: wiring only (store, views, ingest, REST+websocket, gRPC, retention, heartbeat),
inside the service runner (shared.service). The database (and its migrations) comes before NATS; on the way
out: the servers stop, the tasks end, the state follower stops, NATS drains, then the database closes."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn
from sqlalchemy import Engine

from services.feeder.auth import ApiAuth
from services.feeder.grpc_api.policy import PolicyService
from services.feeder.grpc_api.probe import ProbeService
from services.feeder.grpc_api.server import build_grpc_server
from services.feeder.http.app import FeederDeps, create_app
from services.feeder.hub import AlertHub
from services.feeder.ingest import Ingestor
from services.feeder.settings import FeederSettings, load_feeder_settings, split_tokens
from services.feeder.siem import SiemSink
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.store.retention import RetentionPolicy, retention_loop
from services.feeder.throttle import Throttler
from services.feeder.views import FeederState, StateFollower
from shared.lifecycle import run_service
from shared.service import Service, running_service

log = logging.getLogger("bulwark.feeder")

_REPORTED = ("alerts", "logs", "throttled", "dead_letters", "dropped_ws", "dropped_grpc", "siem_errors")


class _RestServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service's stop event rules shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main() -> None:
    """Run the feeder until SIGINT/SIGTERM; exit 1 if one of its tasks ended first."""
    settings = load_feeder_settings()
    async with running_service("feeder", settings, client=f"feeder@{settings.node_name}", connect=False,
                               grace=None, drain_timeout=5) as svc:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = await asyncio.to_thread(make_engine, settings.database_url)  # runs the migrations

        async def close_store() -> None:  # the last hook: after the tasks and the NATS drain
            await svc.drain()
            engine.dispose()

        svc.on_stop(close_store)
        await svc.connect()
        failed = await serve(svc, settings, engine)
    log.info("feeder stopped")
    if failed:
        raise SystemExit(1)


async def serve(svc: Service, settings: FeederSettings, engine: Engine) -> list[asyncio.Task[Any]]:
    """Follow the state, ingest, serve REST/websocket and gRPC, apply retention until stopped or until
    a task ends early; returns the tasks that did. On the way out: the servers stop, the tasks end,
    then the state follower stops."""
    js, nc, stop = svc.js, svc.nc, svc.stop
    counters = svc.counters
    counters.update({k: 0 for k in _REPORTED})
    follower = StateFollower(nc, js, FeederState())
    await follower.start()

    async def stop_following() -> None:
        await svc.finish_tasks()
        await follower.stop()

    svc.on_stop(stop_following)
    hub = AlertHub(counters)
    store = RecordStore(engine)
    throttler = Throttler(settings.max_alerts_per_sec, settings.throttle_sec, enabled=settings.alert_throttling)
    ingestor = Ingestor(js, nc, follower, store, hub, counters, cluster=settings.cluster_name, throttler=throttler,
                        siem=SiemSink(js, counters, fmt=settings.siem_format, logs=settings.siem_logs),
                        visibility=settings, ack_wait=settings.ingest_ack_wait_seconds)
    auth = ApiAuth(split_tokens(settings.api_read_tokens), split_tokens(settings.api_write_tokens))
    app = create_app(FeederDeps(follower.state, store, hub, nc, counters, settings.heartbeat_seconds, auth=auth,
                                ws_queue=settings.ws_queue, cluster=settings.cluster_name, node=settings.node_name,
                                max_body_bytes=settings.api_max_body_bytes))
    rest = _RestServer(uvicorn.Config(app, host=settings.rest_host, port=settings.rest_port, log_config=None,
                                      access_log=False, lifespan="off", **settings.rest_tls_options()))
    grpc_server, log_service = await build_grpc_server(
        hub, settings.grpc_host, settings.grpc_port, queue_size=settings.grpc_queue, cluster=settings.cluster_name,
        node=settings.node_name, tls_cert=settings.grpc_tls_cert, tls_key=settings.grpc_tls_key,
        policy_service=PolicyService(nc, counters), probe_service=ProbeService(follower.state))

    async def stop_serving() -> None:
        rest.should_exit = True
        log_service.closing.set()
        await grpc_server.stop(grace=2)

    svc.on_stop(stop_serving)
    retention = RetentionPolicy(settings.alerts_max_age_seconds, settings.alerts_max_rows,
                                settings.logs_max_age_seconds, settings.logs_max_rows)

    def details() -> dict[str, Any]:
        return {**counters, "watchers": len(hub), "throttling": throttler.throttling(),
                "state_decode_errors": follower.decode_errors}

    svc.spawn(ingestor.run(stop), name="ingest")
    svc.spawn(rest.serve(), name="rest")
    svc.spawn(retention_loop(store, retention, settings.retention_interval_seconds, counters, stop), name="retention")
    svc.heartbeat(details)
    log.info("feeder started", extra={"rest": settings.rest_url, "grpc_port": settings.grpc_port,
                                      "db": settings.database_url.split("://", 1)[0],
                                      "grpc_tls": settings.grpc_tls_cert is not None, "auth": auth.enabled})
    failed = await _until_stopped_or_ended(svc)
    for task in failed:
        log.error("task ended early", extra={"task": task.get_name(), "error": repr(task.exception())})
    return failed


async def _until_stopped_or_ended(svc: Service) -> list[asyncio.Task[Any]]:
    """Wait for the stop event or for a spawned task to end; returns the tasks that ended."""
    stopper = asyncio.create_task(svc.stop.wait())
    done, _ = await asyncio.wait([*svc.tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
    stopper.cancel()
    return [t for t in done if t is not stopper]


if __name__ == "__main__":
    run_service(main)
