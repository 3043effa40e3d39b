"""The monitor: process, file, network, capability and syscall events from the kernel, filtered there
by visibility, batched onto ``bulwark.raw.<node>``. Wiring only, inside the service runner
(shared.service): the kernel self-check runs before NATS is connected (failing it: exit 2); on the way
out the filters are unfollowed, the programs unloaded and the batcher flushed before the NATS drain."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

from services.monitor.batcher import Batcher
from services.monitor.decode.exec_record import DecodeContext, boot_offset_ns
from services.monitor.decode.records import RecordDecoder
from services.monitor.decode.users import UserNames
from services.monitor.follow import FilterFollower
from services.monitor.kernel_filters import ALL
from services.monitor.loader import DEFAULT_BPF_DIR, Probes, read_boot_id
from services.monitor.pump import Pump, tune_gc
from services.monitor.selfcheck import SelfCheckFailed, run_selfcheck
from shared.bpf.btf import Btf
from shared.bpf.headers import ensure_btf_tree, use_btf_tree
from shared.config import Settings, load_settings
from shared.nats.subjects import raw_events
from shared.service import Service, running_service

log = logging.getLogger("bulwark.monitor")

SERVICE = "monitor"
LOSS_DEGRADED_SECONDS = 300.0  # health stays "degraded" this long after the last lost event
LOSS_COUNTERS = ("lost_kernel", "lost_kernel_proc", "lost_queue", "lost_publish")


class LossHealth:
    """``degraded`` while an event was lost (kernel, queue or publish) in the last few minutes."""

    def __init__(self, window: float = LOSS_DEGRADED_SECONDS) -> None:
        self.window = window
        self.total = 0
        self.last_loss: float | None = None

    def status(self, counters: dict[str, int], now: float | None = None) -> dict[str, Any]:
        """``status`` and how long ago the last loss was, from the cumulative counters."""
        now = time.monotonic() if now is None else now
        total = sum(int(counters.get(k, 0)) for k in LOSS_COUNTERS)
        if total > self.total:
            self.total, self.last_loss = total, now
        if self.last_loss is not None and now - self.last_loss < self.window:
            return {"status": "degraded", "lost_total": total, "last_loss_seconds_ago": round(now - self.last_loss, 1)}
        return {"status": "ok", "lost_total": total}


def _setting(settings: Settings, name: str, default: str) -> str:
    """A visibility default: from Settings if it has it, else ``BULWARK_<NAME>`` (the feeder's)."""
    return str(getattr(settings, name, None) or os.environ.get(f"BULWARK_{name.upper()}", default))


def prepare_kernel_side(settings: Settings) -> Btf:
    """Header tree for bcc, then the offset/identity self-check; SelfCheckFailed stops everything.
    Returns the kernel's parsed BTF (the programs' build options come from it too)."""
    btf = Btf.load()
    use_btf_tree(ensure_btf_tree(settings.btf_tree, btf=btf))
    run_selfcheck(DEFAULT_BPF_DIR, btf)
    return btf


async def run(settings: Settings) -> int:
    """Run until SIGINT/SIGTERM; returns the process exit code. The self-check comes before NATS."""
    async with running_service(SERVICE, settings, client=f"{SERVICE}-{settings.node_name}", connect=False) as svc:
        try:
            btf = prepare_kernel_side(settings)
        except SelfCheckFailed as exc:
            log.error("refusing to run", extra={"reason": str(exc)})
            return 2
        await svc.connect()
        await serve(svc, settings, btf)
    log.info("monitor stopped", extra=dict(svc.counters))
    return 0


async def serve(svc: Service, settings: Settings, btf: Btf) -> None:
    """Load the programs, follow the node's filters and pump events into batches until stopped.
    On the way out: unfollow, unload the programs, then flush the batcher (before the NATS drain)."""
    js, stop = svc.js, svc.stop
    boot_id = read_boot_id()
    ctx = DecodeContext(settings.node_name, boot_id, boot_offset_ns())
    counters = svc.counters
    counters.update(decode_errors=0, lost_kernel=0, lost_kernel_proc=0, exe_from_proc=0)

    async def publish(subject: str, payload: bytes, msg_id: str) -> None:
        await js.publish(subject, payload, timeout=2.0, headers={"Nats-Msg-Id": msg_id})

    batcher = Batcher(publish, raw_events(settings.node_name), settings.node_name, counters,
                      max_events=settings.batch_max_events, max_delay=settings.batch_max_delay_ms / 1000,
                      queue_size=max(16384, 32 * settings.batch_max_events),
                      msg_id_prefix=f"{settings.node_name}:{boot_id}:{time.time_ns()}")

    decoder = RecordDecoder(ctx, users=UserNames())
    loss_health = LossHealth()

    def details() -> dict[str, Any]:
        counters["exe_from_proc"] = decoder.procs.misses
        counters["proc_records"] = decoder.procs.records
        counters["exec_owner_lookups"] = decoder.files.lookups
        counters["exec_owner_unknown"] = decoder.files.unknown
        counters["exec_real_path_lookups"] = decoder.files.real_path_lookups
        counters["queued"] = batcher.queued()
        return {"missing_tracepoints": probes.missing, "instance": batcher.msg_id_prefix, **counters,
                **loss_health.status(counters)}

    probes = Probes(rb_pages=int(os.environ.get("BULWARK_MONITOR_RB_PAGES", "4096")), btf=btf)
    pump = Pump(probes, decoder, batcher, counters)

    def apply_filters(masks: dict[int, int], wanted: dict[int, int], owner: bool, real_paths: bool) -> None:
        probes.set_visibility(masks)
        probes.set_syscalls(wanted)
        probes.set_config(owner=owner)
        decoder.exec_owners = owner   # exec'd programs' owners, read in user space (decode/workload_files.py)
        decoder.exec_real_paths = real_paths

    follower = FilterFollower(settings.node_name, apply_filters,
                              counters, containers=_setting(settings, "visibility_containers",
                                                            "process,file,network,capabilities"),
                              hosts=_setting(settings, "visibility_hosts", "none"))
    drain = asyncio.Event()
    batch_task = svc.spawn(batcher.run(drain), name="batcher")

    async def unload() -> None:
        await follower.stop()
        probes.cleanup()
        drain.set()
        try:
            await asyncio.wait_for(batch_task, timeout=10)
        except TimeoutError:
            log.error("batches still unsent at exit", extra={"queued": batcher.queued()})

    svc.on_stop(unload)
    probes.open(pump.record)
    probes.set_visibility({0: ALL})   # everything until the node's rule set says otherwise
    probes.set_config(owner=True)
    await follower.start(js)
    tune_gc()
    svc.heartbeat(details)
    log.info("monitor running", extra={"node": settings.node_name})
    await pump.run(stop, hold=lambda: batcher.queued() > batcher.queue_size // 2)


def main() -> None:
    """Entry point: ``python -m services.monitor``."""
    sys.exit(asyncio.run(run(load_settings())))


if __name__ == "__main__":
    main()
