"""``python -m services.feeder``: wiring only (store, views, ingest, REST+websocket, gRPC, retention, heartbeat)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn

from services.feeder.auth import ApiAuth
from services.feeder.grpc_api.policy import PolicyService
from services.feeder.grpc_api.server import build_grpc_server
from services.feeder.http.app import FeederDeps, create_app
from services.feeder.hub import AlertHub
from services.feeder.ingest import Ingestor
from services.feeder.settings import load_feeder_settings, split_tokens
from services.feeder.siem import SiemSink
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.store.retention import RetentionPolicy, retention_loop
from services.feeder.throttle import Throttler
from services.feeder.views import FeederState, StateFollower
from shared.lifecycle import Counters, heartbeat_loop, run_service, stop_event_on_signals
from shared.logs import setup_logging
from shared.nats.bus import connect, ensure_streams
from shared.nats.creds import credentials_for

log = logging.getLogger("bulwark.feeder")

_REPORTED = ("alerts", "logs", "throttled", "dead_letters", "dropped_ws", "dropped_grpc", "siem_errors")


class _RestServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service's stop event rules shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main() -> None:
    """Run the feeder until SIGINT/SIGTERM."""
    settings = load_feeder_settings()
    setup_logging("feeder", settings.log_level)
    stop = stop_event_on_signals()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = await asyncio.to_thread(make_engine, settings.database_url)  # runs the migrations
    nc = await connect(settings.nats_url, f"feeder@{settings.node_name}",
                       credentials=credentials_for(settings, "feeder"))
    js = nc.jetstream()
    await ensure_streams(js)
    counters = Counters({k: 0 for k in _REPORTED})
    follower = StateFollower(nc, js, FeederState())
    await follower.start()
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
        policy_service=PolicyService(nc, counters))
    retention = RetentionPolicy(settings.alerts_max_age_seconds, settings.alerts_max_rows,
                                settings.logs_max_age_seconds, settings.logs_max_rows)

    def details() -> dict[str, Any]:
        return {**counters, "watchers": len(hub), "throttling": throttler.throttling(),
                "state_decode_errors": follower.decode_errors}

    tasks = {
        asyncio.create_task(ingestor.run(stop), name="ingest"),
        asyncio.create_task(rest.serve(), name="rest"),
        asyncio.create_task(retention_loop(store, retention, settings.retention_interval_seconds, counters, stop),
                            name="retention"),
        asyncio.create_task(heartbeat_loop(nc, "feeder", settings.node_name, settings.heartbeat_seconds,
                                           details, stop), name="heartbeat"),
    }
    log.info("feeder started", extra={"rest": settings.rest_url, "grpc_port": settings.grpc_port,
                                      "db": settings.database_url.split("://", 1)[0],
                                      "grpc_tls": settings.grpc_tls_cert is not None, "auth": auth.enabled})
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait(tasks | {stopper}, return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper]
    for task in failed:
        log.error("task ended early", extra={"task": task.get_name(), "error": repr(task.exception())})
    stop.set()
    rest.should_exit = True
    log_service.closing.set()
    await grpc_server.stop(grace=2)
    await asyncio.gather(*tasks, return_exceptions=True)
    await follower.stop()
    try:
        await asyncio.wait_for(nc.drain(), timeout=5)
    except Exception as exc:  # drain timed out or the connection is gone: close hard
        log.warning("nats drain failed", extra={"error": repr(exc)})
        await nc.close()
    engine.dispose()
    log.info("feeder stopped")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    run_service(main)
