"""The monitor: exec events from the kernel, batched onto ``bulwark.raw.<node>``. Wiring only."""
from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any

from shared.bus import connect, ensure_streams
from shared.config import Settings, load_settings
from shared.errors import DecodeError
from shared.lifecycle import Counters, heartbeat_loop, stop_event_on_signals
from shared.logs import setup_logging
from shared.subjects import raw_events
from services.monitor.batcher import Batcher
from services.monitor.btf import Btf
from services.monitor.btf_tree import ensure_btf_tree, use_btf_tree
from services.monitor.decoder import DecodeContext, boot_offset_ns, decode
from services.monitor.loader import DEFAULT_BPF_DIR, ExecProbes, drain_loop, read_boot_id
from services.monitor.selfcheck import SelfCheckFailed, run_selfcheck

log = logging.getLogger("bulwark.monitor")

SERVICE = "monitor"


def prepare_kernel_side(settings: Settings) -> None:
    """Header tree for bcc, then the offset/identity self-check; SelfCheckFailed stops everything."""
    btf = Btf.load()
    use_btf_tree(ensure_btf_tree(settings.btf_tree, btf=btf))
    run_selfcheck(DEFAULT_BPF_DIR, btf)


async def run(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code."""
    stop = stop_event_on_signals()
    try:
        prepare_kernel_side(settings)
    except SelfCheckFailed as exc:
        log.error("refusing to run", extra={"reason": str(exc)})
        return 2
    nc = await connect(settings.nats_url, f"{SERVICE}-{settings.node_name}")
    js = nc.jetstream()
    await ensure_streams(js)
    boot_id = read_boot_id()
    ctx = DecodeContext(settings.node_name, boot_id, boot_offset_ns())
    counters = Counters(decode_errors=0, lost_kernel=0)

    async def publish(subject: str, payload: bytes, msg_id: str) -> None:
        await js.publish(subject, payload, timeout=2.0, headers={"Nats-Msg-Id": msg_id})

    batcher = Batcher(publish, raw_events(settings.node_name), settings.node_name, counters,
                      max_events=settings.batch_max_events, max_delay=settings.batch_max_delay_ms / 1000,
                      msg_id_prefix=f"{settings.node_name}:{boot_id}:{time.time_ns()}")

    def on_record(data: bytes) -> None:
        try:
            batcher.offer(decode(data, ctx))
        except DecodeError as exc:
            counters.inc("decode_errors")
            log.warning("undecodable record", extra={"error": str(exc)})

    def details() -> dict[str, Any]:
        return {"status": "ok", **counters}

    probes = ExecProbes()
    drain = asyncio.Event()
    batch_task = asyncio.create_task(batcher.run(drain))
    beat_task: asyncio.Task[None] | None = None
    try:
        probes.open(on_record)
        beat_task = asyncio.create_task(
            heartbeat_loop(nc, SERVICE, settings.node_name, settings.heartbeat_seconds, details, stop))
        log.info("monitor running", extra={"node": settings.node_name})
        await drain_loop(probes, stop, counters)
    finally:
        stop.set()
        probes.cleanup()
        drain.set()
        try:
            await asyncio.wait_for(batch_task, timeout=10)
        except asyncio.TimeoutError:
            log.error("batches still unsent at exit", extra={"queued": batcher.queue.qsize()})
        if beat_task is not None:
            await beat_task
        await nc.drain()
    log.info("monitor stopped", extra=dict(counters))
    return 0


def main() -> None:
    """Entry point: ``python -m services.monitor``."""
    settings = load_settings()
    setup_logging(SERVICE, settings.log_level)
    sys.exit(asyncio.run(run(settings)))


if __name__ == "__main__":
    main()
