"""``python -m services.enforcer``: apply the node's newest RuleSet with the best enforcer available.

Wiring only, inside the service runner (shared.service): settings -> logging -> choose enforcers ->
NATS -> follow the RULES stream -> answer "await" requests (with the workload's rules, for the
launcher's Landlock sandbox) -> publish kill reports -> heartbeat. On SIGTERM/SIGINT the loops end
(the report loop sends the last kill reports), then the enforcer detaches (releasing every mark and
program, except what a holder keeps for the next enforcer: see ``fanotify``), then NATS drains.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy

from services.enforcer.applied import AppliedRules
from services.enforcer.reports.publish import report_loop
from services.enforcer.select import choose
from shared.codec import pack, unpack_map
from shared.config import load_settings
from shared.errors import DecodeError
from shared.lifecycle import Counters
from shared.nats.bus import follow
from shared.nats.subjects import RULES, enforcer_await, rules_for_node
from shared.schemas.rules import RuleSet
from shared.service import Service, running_service

log = logging.getLogger("bulwark.enforcer")

REFRESH_SECONDS = 30.0  # re-apply: directories created under recursive rules get marked
HOLD_CHECK_SECONDS = 1.0  # how soon a restarted fanotify holder gets our group again


def alert_name(enforcer: Any) -> str:
    """The name alerts of refused operations carry (the primary of several enforcers)."""
    return str(getattr(enforcer, "alert_name", enforcer.name))


def by_operation(enforcer: Any) -> dict[str, str]:
    """Operation -> name of the enforcer acting on it."""
    if hasattr(enforcer, "by_operation"):
        return dict(enforcer.by_operation())
    return {op: enforcer.name for op in sorted(getattr(enforcer, "operations", ()))}


def await_reply(ruleset: RuleSet, workload_id: str, enforcer: Any) -> dict[str, Any]:
    """The positive answer to an await request: version, enforcers and the workload's own rules."""
    wr = ruleset.workloads[workload_id]
    return {"ok": True, "version": ruleset.version, "enforcer": alert_name(enforcer),
            "enforcers": by_operation(enforcer), "rules": [r.to_wire() for r in wr.rules],
            "file_posture": wr.file_posture, "audited": wr.audited}


async def _refresh_loop(enforcer: Any, stop: asyncio.Event, counters: Counters) -> None:
    refresh = getattr(enforcer, "refresh", None)
    while refresh is not None and not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), REFRESH_SECONDS)
            return
        except TimeoutError:
            pass
        try:
            await asyncio.to_thread(refresh)
        except Exception:
            counters.inc("apply_errors")
            log.exception("refresh failed")


async def _hold_loop(enforcer: Any, stop: asyncio.Event) -> None:
    """Keep the kernel state with a holder (``keep_held``), when the enforcer has one."""
    keep = getattr(enforcer, "keep_held", None)
    while keep is not None and not stop.is_set():
        try:
            await asyncio.to_thread(keep)
        except Exception:
            log.exception("handing the kernel state to its holder failed")
        try:
            await asyncio.wait_for(stop.wait(), HOLD_CHECK_SECONDS)
        except TimeoutError:
            pass


async def main() -> None:
    """Run the enforcer service until SIGTERM/SIGINT."""
    # The fanotify reader thread shares the GIL with this loop: a 1 ms switch interval bounds what a
    # busy loop adds to a marked exec (measured: 13 ms -> 4 ms per exec with a CPU-bound thread).
    sys.setswitchinterval(0.001)
    settings = load_settings()
    async with running_service("enforcer", settings, client=f"enforcer-{settings.node_name}", connect=False,
                               grace=None, drain_timeout=3) as svc:
        enforcer = choose(settings.enforcer_order)  # before NATS: the kernel side does not wait for it
        waiters: set[asyncio.Task[None]] = set()

        async def release() -> None:
            await svc.finish_tasks()  # the report loop publishes the last kill reports
            # Marks go first, nothing may wait on us while NATS shuts down; with a fanotify holder the
            # group and its marks stay with it (a restart or upgrade: the holder answers until the next
            # enforcer takes over, denying in selected namespaces). Its own stop is the full release.
            getattr(enforcer, "detach", enforcer.close)()
            for task in list(waiters):
                task.cancel()
            await svc.drain()
            log.info("enforcer stopped", extra={"enforcer": enforcer.name})

        svc.on_stop(release)
        svc.counters.update(decode_errors=0, apply_errors=0)
        await svc.connect()
        await serve(svc, enforcer, waiters)


async def serve(svc: Service, enforcer: Any, waiters: set[asyncio.Task[None]]) -> None:
    """Follow the node's rule sets, answer await requests (tasks in ``waiters``), publish kill reports,
    keep the kernel state held and send the heartbeat until stopped."""
    js, nc, counters, stop = svc.js, svc.nc, svc.counters, svc.stop
    node = svc.settings.node_name
    applied = AppliedRules()
    beat_now = asyncio.Event()  # a new version is in force: the feeder hears it at once

    async def on_rules(msg: Msg) -> None:
        try:
            ruleset = RuleSet.from_wire(unpack_map(msg.data, ("node", "version", "workloads")))
        except DecodeError as exc:
            counters.inc("decode_errors")
            log.error("bad rule set skipped", extra={"error": str(exc), "subject": msg.subject})
            return
        try:
            await asyncio.to_thread(enforcer.apply, ruleset)
        except Exception:
            counters.inc("apply_errors")
            log.exception("applying rule set failed", extra={"version": ruleset.version})
            return
        await applied.set(ruleset)
        beat_now.set()

    async def answer(msg: Msg) -> None:
        try:
            req = unpack_map(msg.data, ("workload_id",))
            workload_id, timeout = str(req["workload_id"]), float(req.get("timeout", 5.0))
        except (DecodeError, TypeError, ValueError) as exc:
            await msg.respond(pack({"ok": False, "reason": f"bad request: {exc}"}))
            return
        ruleset = await applied.wait_covering(workload_id, timeout)
        if ruleset is None:
            reply: dict[str, Any] = {"ok": False, "version": applied.version, "enforcer": alert_name(enforcer),
                                     "reason": f"no applied rule set covers {workload_id!r} after {timeout}s"}
        else:
            reply = await_reply(ruleset, workload_id, enforcer)
        await msg.respond(pack(reply))

    async def on_await(msg: Msg) -> None:
        task = asyncio.create_task(answer(msg))  # callbacks run one at a time: never wait here
        waiters.add(task)
        task.add_done_callback(waiters.discard)

    await follow(js, rules_for_node(node), on_rules, stream=RULES.name,
                 deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
    await nc.subscribe(enforcer_await(node), cb=on_await)

    def details() -> dict[str, Any]:
        return {"enforcer": alert_name(enforcer), "enforcers": by_operation(enforcer), "active": enforcer.name,
                "version": applied.version, "in_force": applied.in_force_report(), **enforcer.stats(), **counters}

    async def publish(subject: str, payload: bytes, msg_id: str) -> None:
        await js.publish(subject, payload, timeout=2.0, headers={"Nats-Msg-Id": msg_id})

    take = getattr(enforcer, "take_reports", None)
    if take is not None:
        svc.spawn(report_loop(take, publish, node, stop, counters), name="reports")
    svc.spawn(_refresh_loop(enforcer, stop, counters), name="refresh")
    svc.spawn(_hold_loop(enforcer, stop), name="hold")
    log.info("enforcer running", extra={"enforcer": enforcer.name, "node": node})
    svc.heartbeat(details, beat_now)
    await svc.wait_stopped()


if __name__ == "__main__":
    asyncio.run(main())
