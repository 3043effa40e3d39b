"""Raw events -> alerts and logs: a durable pull consumer on the RAW stream.

Per message (one RawBatch): decode (garbage goes to the DEAD_LETTER stream, is counted and acked),
name each event's workload, ask :func:`shared.matcher.decide`; a match that is not Allow is an alert
(throttled ones flagged), anything else is a log when visibility says so. Both are stored keyed by
event id, the alerts first (their own transaction, then pushed to live subscribers: a batch's logs do
not hold its alerts up), then the logs; then the SIEM copies are published (deduplicated by JetStream
on the event id), and only then is the message acked. A DB failure naks the batch for redelivery;
redelivery is harmless because the store ignores known ids (nor is a known record pushed again).
No fixed wait anywhere: a fetch returns as soon as a message is there, and the messages one fetch
brings (a backlog, when the feeder is behind) are stored together and share one round of publishes. The
SIEM copies and acks of stored batches go on in the background (a few groups at most) while the next
messages are fetched, judged and stored: a new alert waits for the batches before it to be stored,
not for their copies to be acknowledged.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.feeder.dedup import EnforcementDedup, enforced, from_enforcer
from services.feeder.enrich import alert_time_ns, build_alert, build_log
from services.feeder.hub import AlertHub
from services.feeder.kinds import access_for
from services.feeder.losses import BATCH_COUNTERS, LossTracker, heartbeat_losses
from services.feeder.siem import SiemSink
from services.feeder.store.database import RecordStore
from services.feeder.symlinks import decide_through_symlinks
from services.feeder.throttle import Throttler
from services.feeder.views import FeederState, StateFollower
from shared.codec import pack, unpack, unpack_map
from shared.errors import DecodeError
from shared.lifecycle import Counters
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
OWNED_FALLBACK_LOGS = 5  # records judged as the host's in an owned namespace, logged per feeder lifetime
_START_WAIT = 5.0  # per attempt, at start: the views must have caught up before the first batch is judged
SIEM_IN_FLIGHT = 2048  # SIEM copies published at once by one group, at most (plus one batch's)
SETTLING_GROUPS = 4  # stored groups whose SIEM copies and acks are still under way, at most


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
        # (node, mntns) -> (monotonic expiry, wall ns of the identity check that found it unknown)
        self._unknown_until: dict[tuple[str, int], tuple[float, int]] = {}
        self._owned_fallbacks_logged = 0
        self.dedup = EnforcementDedup()
        self.losses = LossTracker(cluster)
        self._settling: set[asyncio.Task[None]] = set()

    @property
    def state(self) -> FeederState:
        """The views the events are enriched from."""
        return self.follower.state

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and handle batches until ``stop`` is set; every stored batch is settled before it returns."""
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
                try:
                    jobs = await self._ingest(msgs)
                    if jobs:
                        await self._settle_later(jobs)
                except Exception:  # e.g. a bug: unsettled batches are redelivered after ack_wait
                    log.exception("handling raw batches failed")
        finally:
            await self.settled()
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
        await self.handle_many([msg])

    async def handle_many(self, msgs: list[Msg]) -> None:
        """Handle the RawBatch messages one fetch brought, end to end: each is decoded and judged on its
        own (garbage dead-lettered, a batch whose views are behind naked), then the records of all of
        them are stored (alerts, then logs) and pushed to live clients, their SIEM copies published, and
        each message acked (naked when its copies failed; all naked when the store failed). One message
        when the feeder keeps up; the backlog of a burst when it is behind, which then pays for one
        store and one round of publishes instead of one per message."""
        jobs = await self._ingest(msgs)
        if jobs:
            await self._settle(jobs)

    async def _ingest(self, msgs: list[Msg]) -> list[_Judged]:
        """Judge, store and push (see :meth:`handle_many`); the stored batches, to be settled (their SIEM
        copies published and acked). Every other message is settled already."""
        jobs = [job for msg in msgs if (job := await self._judge(msg)) is not None]
        if not jobs:
            return []
        alerts = [a for job in jobs for a in job.alerts]
        logs = [r for job in jobs for r in job.logs]
        try:
            if alerts and logs:  # alerts first, in a transaction of their own, out before the logs are stored
                new_alerts, _ = await self._store(alerts, [])
                self._push(new_alerts, [])  # live clients first: they do not wait for the SIEM's acks
                await asyncio.sleep(0)  # one loop pass: they send before the logs' store thread takes the GIL
                _, new_logs = await self._store([], logs)
                self._push([], new_logs)
            else:
                new_alerts, new_logs = await self._store(alerts, logs)
                self._push(new_alerts, new_logs)
        except Exception:  # redelivered: what was stored already is known then, neither stored nor pushed again
            log.exception("batch failed; will be redelivered", extra={"batches": len(jobs)})
            self.counters.inc("batch_errors", len(jobs))
            for job in jobs:
                delivered = job.msg.metadata.num_delivered if job.msg.reply else 1
                await _ack(job.msg.nak(delay=min(30.0, 0.5 * 2 ** min(delivered, 6))))
            return []
        for job in jobs:
            if job.loss is not None:
                self.losses.remember("monitor", job.node, job.instance, job.counts)
                self.counters.inc("losses_announced")
                log.warning("loss announced", extra={"source": "monitor", "node": job.node, "lost": job.loss["Lost"]})
        self.counters.inc("duplicates", len(alerts) + len(logs) - len(new_alerts) - len(new_logs))
        return jobs

    async def _settle(self, jobs: list[_Judged]) -> None:
        """SIEM copies and acks of stored batches, a few thousand copies in flight at a time."""
        chunk: list[_Judged] = []
        for i, job in enumerate(jobs):
            chunk.append(job)
            if i + 1 == len(jobs) or sum(len(j.alerts) + len(j.logs) for j in chunk) >= SIEM_IN_FLIGHT:
                await self._copy_and_settle(chunk)
                chunk = []

    async def _settle_later(self, jobs: list[_Judged]) -> None:
        """:meth:`_settle` in the background, so the next fetch, judgement and store do not wait for
        the SIEM's acks; at most SETTLING_GROUPS at once (beyond that, this waits for one to end)."""
        while len(self._settling) >= SETTLING_GROUPS:
            await asyncio.wait(self._settling, return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._settle_logged(jobs))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    async def _settle_logged(self, jobs: list[_Judged]) -> None:
        try:
            await self._settle(jobs)
        except Exception:  # a bug: the batches are redelivered after ack_wait
            log.exception("settling raw batches failed")

    async def settled(self) -> None:
        """Wait until every batch settling in the background is acked or naked."""
        while self._settling:
            await asyncio.wait(set(self._settling))

    async def _copy_and_settle(self, jobs: list[_Judged]) -> None:
        """Publish the SIEM copies of these stored batches at once, then ack each (nak when its copies
        failed: it is redelivered, and known ids are skipped, so they are published after all)."""
        failed = await asyncio.gather(*(self.siem.publish([a for a in job.alerts if not a.get("Throttled")],
                                                          job.logs) for job in jobs))
        for job, failures in zip(jobs, failed, strict=True):
            await _ack(job.msg.nak(delay=1.0) if failures else job.msg.ack())

    async def _judge(self, msg: Msg) -> _Judged | None:
        """One message decoded and judged; None when it is settled already (dead-lettered and acked,
        or naked because the views are behind)."""
        try:
            batch = RawBatch.from_wire(unpack_map(msg.data, ("node", "events")))
            if not isinstance(batch.events, list):
                raise DecodeError("raw batch: events must be a list")
        except DecodeError as exc:
            await self._dead_letter(msg.subject, msg.data, str(exc))
            await _ack(msg.ack())
            return None
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
            await _ack(msg.nak(delay=1.0))
            return None
        self.counters.inc("events", len(events))
        instance, counts = _instance(msg), {k: int(getattr(batch, k) or 0) for k in BATCH_COUNTERS}
        loss = self.losses.observe("monitor", batch.node, instance, counts)
        if loss is not None:
            alerts.append(loss)  # stored with the batch's alerts, in the same transaction
        return _Judged(msg, batch.node, instance, counts, alerts, logs, loss)

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
        """Live clients get the new records, the SIEM every unthrottled one (JetStream drops repeats).

        Returns how many SIEM publishes failed."""
        self._push(new_alerts, new_logs)
        return await self.siem.publish([a for a in alerts if not a.get("Throttled")], logs)

    def _push(self, new_alerts: list[dict[str, Any]], new_logs: list[dict[str, Any]]) -> None:
        """New records to live subscribers (never blocks; throttled alerts are not pushed)."""
        for alert in new_alerts:
            if not alert.get("Throttled"):
                self.hub.publish(alert, "alert")
            if alert.get("Type") == "SystemEvent":
                self.hub.publish({**alert, "Level": "Warn"}, "message")
        for record in new_logs:
            self.hub.publish(record, "log")

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
            checked_ns = time.time_ns()
            if not await self.follower.wait_caught_up(CATCH_UP_SECONDS):
                raise ViewsBehind(f"node {ev.node} mntns {ev.mntns}")
            workload, compiled, known = self._lookup(ev)
            if compiled is None or not known:
                self._unknown_until[(ev.node, ev.mntns)] = (time.monotonic() + _NEGATIVE_TTL, checked_ns)
        if not known:
            self.counters.inc("host_fallback")
            self._note_owned_fallback(ev)
        elif _launcher_setup(workload, ev):
            self.counters.inc("launcher_setup")
            return caught_up
        # the entry carries postures; `ld.so FILE` is judged as an exec of FILE too (shared.loaders), an
        # exec through symlinks by the file it ran too (services.feeder.symlinks)
        decision, ev = decide_through_symlinks(compiled if compiled is not None else [], access, ev)
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
        if enforced(alert) and self.dedup.duplicate(node=ev.node, tid=ev.tid, operation=str(alert["Operation"]),
                                                    ts_ns=ev.ts_ns, resource=str(alert["Resource"]),
                                                    from_enforcer=from_enforcer(ev.kind, ev.extra)):
            self.counters.inc("enforcement_duplicates")  # the enforcer's report and the monitor's record
            return caught_up
        throttled, notices = self.throttler.check(alert, alert_time_ns(alert))
        if throttled:
            alert["Throttled"] = True
        alerts.extend(notices)
        alerts.append(alert)
        return caught_up

    def _lookup(self, ev: RawEvent) -> tuple[Workload, WorkloadRules | None, bool]:
        """The event's workload (the node's host when unknown), its compiled entry, and whether it was
        known. An access that went through is judged by the rules the node enforced when it happened
        (a late record of an exec that passed before a Block rule was in force is no breach of it); a
        refusal or an enforcer's report proves the newest rules were in force."""
        known = self.state.workload(ev.node, ev.mntns, ev.ts_ns)
        workload = known or self.state.host_workload(ev.node)
        at_ns = ev.ts_ns if ev.kind != "enforce" and ev.ret >= 0 else 0
        return workload, self.state.compiled_for(ev.node, workload.id, at_ns), known is not None

    def _note_owned_fallback(self, ev: RawEvent) -> None:
        """Count (and log the first few of) the records judged as the host's although a workload owns their
        mount namespace: the time-aware lookup placed them outside that workload's lifetime."""
        owner = self.state.workloads.get((ev.node, ev.mntns)) if ev.mntns else None
        if owner is None:
            return
        self.counters.inc("host_fallback_owned_ns")
        if self._owned_fallbacks_logged < OWNED_FALLBACK_LOGS:
            self._owned_fallbacks_logged += 1
            log.warning("record judged as the host's in a workload's namespace",
                        extra={"node": ev.node, "mntns": ev.mntns, "ts_ns": ev.ts_ns, "kind": ev.kind,
                               "workload": owner.id, "started_ns": owner.started_ns,
                               "stopped_ns": owner.stopped_ns,
                               "replaced": [(w.id, w.started_ns, w.stopped_ns)
                                            for w in self.state.replaced.get((ev.node, ev.mntns), [])][:4]})

    def _worth_waiting(self, ev: RawEvent) -> bool:
        key = (ev.node, ev.mntns)
        entry = self._unknown_until.get(key)
        if entry is None:
            return True
        until, checked_ns = entry
        if time.monotonic() < until and ev.ts_ns <= checked_ns:
            return False
        # expired, or a record newer than the check that found the namespace unknown: a workload registered
        # since (``bulwark run``'s setup records come before its registration) must be waited for
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


@dataclass(slots=True)
class _Judged:
    """A raw batch message decoded and judged, waiting to be stored and settled."""

    msg: Msg
    node: str
    instance: str
    counts: dict[str, int]
    alerts: list[dict[str, Any]]
    logs: list[dict[str, Any]]
    loss: dict[str, Any] | None


async def _ack(ack: Awaitable[None]) -> None:
    """Ack or nak; a failure (a broken connection) only means the batch is redelivered later."""
    try:
        await ack
    except Exception as exc:
        log.warning("ack/nak failed; the batch is redelivered later", extra={"error": repr(exc)})


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
