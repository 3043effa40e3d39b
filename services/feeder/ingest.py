"""Raw events -> alerts and logs: a durable pull consumer on the RAW stream.

Per message (one RawBatch): decode (garbage goes to the DEAD_LETTER stream, is counted and acked),
name each event's workload, ask :func:`shared.matcher.decide`; a match that is not Allow is an alert
(throttled ones flagged), anything else is a log when visibility says so. Both are stored in one
transaction, keyed by event id; then the SIEM copies are published (deduplicated by JetStream on the
event id), new unthrottled records go to live subscribers, and only then is the message acked. A DB
failure naks the batch for redelivery; redelivery is harmless because the store ignores known ids.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.feeder.enrich import alert_time_ns, build_alert, build_log
from services.feeder.hub import AlertHub
from services.feeder.kinds import access_for
from services.feeder.losses import BATCH_COUNTERS, LossTracker, heartbeat_losses
from services.feeder.siem import SiemSink
from services.feeder.store.database import RecordStore
from services.feeder.throttle import Throttler
from services.feeder.views import FeederState, StateFollower
from shared.codec import pack, unpack, unpack_map
from shared.errors import DecodeError
from shared.lifecycle import Counters
from shared.loaders import decide_access
from shared.nats.subjects import DEAD_LETTER, HEALTH_ALL, RAW
from shared.schemas.events import RawBatch, RawEvent
from shared.schemas.identity import Workload
from shared.schemas.rules import WorkloadRules
from shared.visibility import visible

__all__ = ["Ingestor", "DURABLE", "CATCH_UP_SECONDS", "Records", "ViewsBehind"]

log = logging.getLogger("bulwark.feeder.ingest")

DURABLE = "bulwark-feeder"
CATCH_UP_SECONDS = 0.5  # how long an event of an unknown workload waits for identity/rules to catch up
_NEGATIVE_TTL = 5.0  # an mntns still unknown after a catch-up is not waited for again this long
_START_WAIT = 5.0  # per attempt, at start: the views must have caught up before the first batch is judged


class ViewsBehind(Exception):
    """The identity or rules view has not caught up with its stream: a batch judged now could miss its rules."""
Records = tuple[list[dict[str, Any]], list[dict[str, Any]]]


class Ingestor:
    """Consumes RAW, writes and fans out alerts and logs."""

    def __init__(self, js: JetStreamContext, nc: Client, follower: StateFollower, store: RecordStore,
                 hub: AlertHub, counters: Counters, *, cluster: str, fetch_batch: int = 32,
                 throttler: Throttler | None = None, siem: SiemSink | None = None,
                 visibility: Any = None, ack_wait: float = 30.0) -> None:
        self.js, self.nc, self.follower, self.store, self.hub = js, nc, follower, store, hub
        self.counters, self.cluster, self.fetch_batch = counters, cluster, fetch_batch
        self.throttler = throttler or Throttler(enabled=False)
        self.siem = siem or SiemSink(js, counters)
        self.visibility, self.ack_wait = visibility, ack_wait
        self._unknown_until: dict[tuple[str, int], float] = {}
        self.losses = LossTracker(cluster)

    @property
    def state(self) -> FeederState:
        """The views the events are enriched from."""
        return self.follower.state

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and handle batches until ``stop`` is set."""
        psub = await self.js.pull_subscribe(
            RAW.subjects[0], durable=DURABLE, stream=RAW.name,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                  ack_wait=self.ack_wait, max_ack_pending=256))
        beats = await self.nc.subscribe(HEALTH_ALL, cb=self.on_heartbeat)
        try:
            await self.wait_for_views(stop)
            while not stop.is_set():
                await self.expire_throttles()
                try:
                    msgs = await psub.fetch(self.fetch_batch, timeout=1.0)
                except (TimeoutError, nats.errors.TimeoutError):
                    continue
                except Exception as exc:  # e.g. disconnected: retry after a pause
                    log.warning("fetch failed", extra={"error": repr(exc)})
                    await asyncio.sleep(0.5)
                    continue
                for msg in msgs:
                    try:
                        await self.handle(msg)
                    except Exception:  # e.g. the ack failed on a broken connection: redelivered later
                        log.exception("handling a raw batch failed")
        finally:
            for sub in (beats, psub):
                try:
                    await sub.unsubscribe()
                except Exception:  # connection already closing
                    pass

    async def wait_for_views(self, stop: asyncio.Event) -> None:
        """Judge nothing until the identity and rules views hold what their streams held at start: a
        restarted feeder would otherwise store a backlog's alerts as logs (no rules known yet)."""
        t0, attempts = time.monotonic(), 0
        while not stop.is_set() and not await self.follower.wait_caught_up(_START_WAIT):
            attempts += 1
            log.warning("views still catching up; ingest waits", extra={"attempts": attempts,
                                                                         "applied": dict(self.follower.applied)})
            await asyncio.sleep(0.5)
        log.info("views caught up; ingest starts", extra={"ms": round((time.monotonic() - t0) * 1000, 1),
                                                          "applied": dict(self.follower.applied)})

    async def on_heartbeat(self, msg: Msg) -> None:
        """Announce the losses a heartbeat reports that no raw batch carries (e.g. ``lost_publish``)."""
        try:
            beat = unpack(msg.data)
            service, node, details = str(beat["service"]), str(beat["node"]), beat.get("details") or {}
            counts = heartbeat_losses(service, details)
        except Exception:  # a malformed heartbeat is the health registry's business
            return
        instance = str(details.get("instance", ""))
        alert = self.losses.observe(service, node, instance, counts) if counts else None
        if alert is None:
            return
        try:
            new, _ = await self._store([alert], [])
        except Exception:
            log.exception("storing a loss announcement failed; announced again with the next heartbeat")
            return
        self.losses.remember(service, node, instance, counts)
        self.counters.inc("losses_announced")
        log.warning("loss announced", extra={"source": service, "node": node, "lost": alert["Lost"]})
        await self._fan_out([alert], [], new, [])

    async def handle(self, msg: Msg) -> None:
        """Handle one RawBatch message end to end (ack, nak or dead-letter)."""
        try:
            batch = RawBatch.from_wire(unpack_map(msg.data, ("node", "events")))
            if not isinstance(batch.events, list):
                raise DecodeError("raw batch: events must be a list")
        except DecodeError as exc:
            await self._dead_letter(msg.subject, msg.data, str(exc))
            await msg.ack()
            return
        events: list[RawEvent] = []
        for raw in batch.events:
            try:
                events.append(RawEvent.from_wire(raw))
            except DecodeError as exc:
                await self._dead_letter(msg.subject, pack(raw), str(exc))
        try:
            alerts, logs = await self.enrich(events)
        except ViewsBehind:
            self.counters.inc("views_behind")
            log.warning("views behind their streams; batch redelivered later", extra={"events": len(events)})
            await msg.nak(delay=1.0)
            return
        self.counters.inc("events", len(events))
        instance, counts = _instance(msg), {k: int(getattr(batch, k) or 0) for k in BATCH_COUNTERS}
        loss = self.losses.observe("monitor", batch.node, instance, counts)
        if loss is not None:
            alerts.append(loss)  # stored with the batch's alerts, in the same transaction
        try:
            new_alerts, new_logs = await self._store(alerts, logs)
        except Exception:
            log.exception("batch failed; will be redelivered")
            self.counters.inc("batch_errors")
            delivered = msg.metadata.num_delivered if msg.reply else 1
            await msg.nak(delay=min(30.0, 0.5 * 2 ** min(delivered, 6)))
            return
        if loss is not None:
            self.losses.remember("monitor", batch.node, instance, counts)
            self.counters.inc("losses_announced")
            log.warning("loss announced", extra={"source": "monitor", "node": batch.node, "lost": loss["Lost"]})
        self.counters.inc("duplicates", len(alerts) + len(logs) - len(new_alerts) - len(new_logs))
        if await self._fan_out(alerts, logs, new_alerts, new_logs):
            await msg.nak(delay=1.0)  # stored; redelivered so the SIEM copies are published after all
            return
        await msg.ack()

    async def _store(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> Records:
        if not alerts and not logs:
            return [], []
        new_alerts, new_logs = await asyncio.to_thread(self.store.insert_records, alerts, logs)
        self.counters.inc("alerts", len(new_alerts))
        self.counters.inc("logs", len(new_logs))
        self.counters.inc("throttled", sum(1 for a in new_alerts if a.get("Throttled")))
        return new_alerts, new_logs

    async def _fan_out(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]],
                       new_alerts: list[dict[str, Any]], new_logs: list[dict[str, Any]]) -> int:
        """SIEM gets every unthrottled record (JetStream drops repeats); live clients only new ones.

        Returns how many SIEM publishes failed."""
        failed = await self.siem.publish([a for a in alerts if not a.get("Throttled")], logs)
        for alert in new_alerts:
            if not alert.get("Throttled"):
                self.hub.publish(alert, "alert")
            if alert.get("Type") == "SystemEvent":
                self.hub.publish({**alert, "Level": "Warn"}, "message")
        for record in new_logs:
            self.hub.publish(record, "log")
        return failed

    async def expire_throttles(self) -> None:
        """Store and push the notices of quiet periods that are over."""
        notices = self.throttler.expire(time.time_ns())
        if notices:
            try:
                new, _ = await self._store(notices, [])
            except Exception:
                log.exception("storing throttling notices failed")
                return
            await self._fan_out(notices, [], new, [])

    async def enrich(self, events: list[RawEvent]) -> Records:
        """The alerts and logs ``events`` raise; an event that cannot be handled is dead-lettered."""
        alerts: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        caught_up = False
        for ev in events:
            try:
                caught_up = await self._one(ev, alerts, logs, caught_up)
            except ViewsBehind:
                raise
            except Exception as exc:  # a bug or an event no code path expects: keep the rest going
                log.exception("event failed")
                await self._dead_letter(f"event:{ev.kind}", pack(ev.to_wire()), f"{type(exc).__name__}: {exc}")
        return alerts, logs

    async def _one(self, ev: RawEvent, alerts: list[dict[str, Any]], logs: list[dict[str, Any]],
                   caught_up: bool) -> bool:
        access = access_for(ev)
        if access is None:
            self.counters.inc("skipped_kind")
            return caught_up
        workload, compiled, known = self._lookup(ev)
        # An unknown namespace falls back to the host's entry, which exists: waiting only for a missing
        # entry would judge a new workload's first events as the host's (and, unseen, drop them).
        if (compiled is None or not known) and not caught_up and self._worth_waiting(ev):
            caught_up = True
            if not await self.follower.wait_caught_up(CATCH_UP_SECONDS):
                raise ViewsBehind(f"node {ev.node} mntns {ev.mntns}")
            workload, compiled, known = self._lookup(ev)
            if compiled is None or not known:
                self._unknown_until[(ev.node, ev.mntns)] = time.monotonic() + _NEGATIVE_TTL
        if not known:
            self.counters.inc("host_fallback")
        elif _launcher_setup(workload, ev):
            self.counters.inc("launcher_setup")
            return caught_up
        # the entry carries postures; `ld.so FILE` is judged as an exec of FILE too (shared.loaders)
        decision = decide_access(compiled if compiled is not None else [], access)
        now_ns = time.time_ns()
        if decision is None or decision.action == "Allow":
            if visible(workload, access.operation, self.visibility):
                logs.append(build_log(ev, workload, cluster=self.cluster, now_ns=now_ns))
            else:
                self.counters.inc("not_visible")
            return caught_up
        if _killed_by_its_block(ev, decision.action):
            self.counters.inc("killed_duplicates")
            return caught_up
        # the rule's operation: a loader's open is judged (and alerted) as the exec it stands for
        operation = decision.rule.operation if decision.rule is not None else access.operation
        alert = build_alert(ev, workload, decision, cluster=self.cluster, operation=operation,
                            enforcer_name=self.state.enforcer_name(ev.node, operation), now_ns=now_ns)
        throttled, notices = self.throttler.check(alert, alert_time_ns(alert))
        if throttled:
            alert["Throttled"] = True
        alerts.extend(notices)
        alerts.append(alert)
        return caught_up

    def _lookup(self, ev: RawEvent) -> tuple[Workload, WorkloadRules | None, bool]:
        """The event's workload (the node's host when unknown), its compiled entry, and whether it was known."""
        known = self.state.workload(ev.node, ev.mntns, ev.ts_ns)
        workload = known or self.state.host_workload(ev.node)
        return workload, self.state.compiled_for(ev.node, workload.id), known is not None

    def _worth_waiting(self, ev: RawEvent) -> bool:
        key = (ev.node, ev.mntns)
        until = self._unknown_until.get(key)
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        del self._unknown_until[key]
        return True

    async def _dead_letter(self, subject: str, data: bytes, reason: str) -> None:
        """Keep ``data`` on the dead-letter stream with why; counted."""
        self.counters.inc("dead_letters")
        log.warning("dead letter", extra={"subject": subject, "reason": reason})
        headers = {"Bulwark-Reason": reason[:200], "Bulwark-Subject": subject}
        try:
            await self.js.publish(DEAD_LETTER, data, headers=headers, timeout=5.0)
        except Exception as exc:
            self.counters.inc("dead_letter_errors")
            log.warning("dead-letter publish failed", extra={"error": repr(exc)})


def _launcher_setup(workload: Workload, ev: RawEvent) -> bool:
    """True for what ``bulwark run`` itself did in a workload's namespaces before registering it
    (unshare, mount /proc, its own Python's capability checks): not the workload's doing."""
    return workload.source == "launcher" and 0 < ev.ts_ns < workload.started_ns


def _killed_by_its_block(ev: RawEvent, action: str) -> bool:
    """True for the monitor's record of a blocked operation whose process was already being killed
    when the syscall returned: the signal enforcer killed it at the syscall's entry and its own report
    is the alert (one operation, one alert; the kernel completed the call, the process never saw it)."""
    return action == "Block" and ev.kind != "enforce" and ev.ret >= 0 and bool(ev.extra.get("dying"))


def _instance(msg: Msg) -> str:
    """The publishing monitor's instance: its message ids are ``<node>:<boot>:<start>:<seq>``."""
    msg_id = (msg.headers or {}).get("Nats-Msg-Id", "") if msg.reply else ""
    return msg_id.rpartition(":")[0]
