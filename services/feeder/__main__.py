"""``python -m services.feeder``: wiring only (views, ingest, REST+websocket, gRPC, heartbeat)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn

from services.feeder.api import FeederDeps, create_app
from services.feeder.grpc_server import build_grpc_server
from services.feeder.hub import AlertHub
from services.feeder.ingest import Ingestor
from services.feeder.state import FeederState, StateFollower
from services.feeder.store import AlertStore, make_engine
from shared.bus import connect, ensure_streams
from shared.config import load_settings
from shared.lifecycle import Counters, heartbeat_loop, run_service, stop_event_on_signals
from shared.logs import setup_logging

log = logging.getLogger("bulwark.feeder")

_REPORTED = ("alerts", "dead_letters", "dropped_ws", "dropped_grpc")


class _RestServer(uvicorn.Server):
    """uvicorn without its own signal handling: the service's stop event rules shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def main() -> None:
    """Run the feeder until SIGINT/SIGTERM."""
    settings = load_settings()
    setup_logging("feeder", settings.log_level)
    stop = stop_event_on_signals()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    nc = await connect(settings.nats_url, f"feeder@{settings.node_name}")
    js = nc.jetstream()
    await ensure_streams(js)
    engine = await asyncio.to_thread(make_engine, settings.database_url)
    counters = Counters({k: 0 for k in _REPORTED})
    follower = StateFollower(nc, js, FeederState())
    await follower.start()
    hub = AlertHub(counters)
    store = AlertStore(engine)
    ingestor = Ingestor(js, nc, follower, store, hub, counters, cluster=settings.cluster_name)
    app = create_app(FeederDeps(follower.state, store, hub, nc, counters, settings.heartbeat_seconds))
    rest = _RestServer(uvicorn.Config(app, host=settings.rest_host, port=settings.rest_port, log_config=None,
                                      access_log=False, lifespan="off"))
    grpc_server, log_service = await build_grpc_server(hub, settings.grpc_host, settings.grpc_port)

    def details() -> dict[str, Any]:
        return {**counters, "watchers": len(hub), "state_decode_errors": follower.decode_errors}

    tasks = {
        asyncio.create_task(ingestor.run(stop), name="ingest"),
        asyncio.create_task(rest.serve(), name="rest"),
        asyncio.create_task(heartbeat_loop(nc, "feeder", settings.node_name, settings.heartbeat_seconds,
                                           details, stop), name="heartbeat"),
    }
    log.info("feeder started", extra={"rest": settings.rest_url, "grpc_port": settings.grpc_port,
                                      "db": settings.database_url.split("://", 1)[0]})
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
