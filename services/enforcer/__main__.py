"""``python -m services.enforcer``: apply the node's newest RuleSet with the best enforcer available.

Wiring only: settings -> logging -> NATS -> choose enforcers -> follow the RULES stream -> answer
"await" requests (with the workload's rules, for the launcher's Landlock sandbox) -> publish kill
reports -> heartbeat. SIGTERM/SIGINT detach the enforcer first (releasing every mark and program,
except what a holder keeps for the next enforcer: see ``fanotify``).
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
from shared.lifecycle import Counters, heartbeat_loop, stop_event_on_signals
from shared.logs import setup_logging
from shared.nats.bus import connect, ensure_streams, follow
from shared.nats.creds import credentials_for
from shared.nats.subjects import RULES, enforcer_await, rules_for_node
from shared.schemas.rules import RuleSet

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
    setup_logging("enforcer", settings.log_level)
    node = settings.node_name
    stop = stop_event_on_signals()
    enforcer = choose(settings.enforcer_order)
    counters = Counters(decode_errors=0, apply_errors=0)
    applied = AppliedRules()
    waiters: set[asyncio.Task[None]] = set()
    background: list[asyncio.Task[None]] = []
    nc = None
    try:
        nc = await connect(settings.nats_url, f"enforcer-{node}", credentials=credentials_for(settings, "enforcer"))
        js = nc.jetstream()
        await ensure_streams(js)

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
                    "version": applied.version, **enforcer.stats(), **counters}

        async def publish(subject: str, payload: bytes, msg_id: str) -> None:
            await js.publish(subject, payload, timeout=2.0, headers={"Nats-Msg-Id": msg_id})

        take = getattr(enforcer, "take_reports", None)
        if take is not None:
            background.append(asyncio.create_task(report_loop(take, publish, node, stop, counters)))
        background.append(asyncio.create_task(_refresh_loop(enforcer, stop, counters)))
        background.append(asyncio.create_task(_hold_loop(enforcer, stop)))
        log.info("enforcer running", extra={"enforcer": enforcer.name, "node": node})
        await heartbeat_loop(nc, "enforcer", node, settings.heartbeat_seconds, details, stop)
        await asyncio.gather(*background, return_exceptions=True)  # last kill reports go out
    finally:
        # Marks go first, nothing may wait on us while NATS shuts down; with a fanotify holder the
        # group and its marks stay with it (a restart or upgrade: the holder answers until the next
        # enforcer takes over, denying in selected namespaces). Its own stop is the full release.
        getattr(enforcer, "detach", enforcer.close)()
        for task in [*waiters, *background]:
            task.cancel()
        if nc is not None:
            try:
                await asyncio.wait_for(nc.drain(), timeout=3)
            except Exception:
                await nc.close()
        log.info("enforcer stopped", extra={"enforcer": enforcer.name})


if __name__ == "__main__":
    asyncio.run(main())
