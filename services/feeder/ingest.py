"""Raw events -> alerts: a durable pull consumer on the RAW stream.

Per message (one RawBatch): decode (garbage goes to DEAD_LETTER, is counted and acked), name each
event's workload, ask :func:`shared.matcher.decide`, build alerts, store them in one transaction,
then publish the new ones (ALERTS stream, live subscribers) and only then ack. A DB failure naks
the batch for redelivery; redelivery is harmless because the store ignores known event ids.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from services.feeder.enrich import build_alert
from services.feeder.kinds import access_for
from services.feeder.hub import AlertHub
from services.feeder.state import FeederState, StateFollower
from services.feeder.store import AlertStore
from shared.codec import pack, unpack_map
from shared.errors import DecodeError
from shared.lifecycle import Counters
from shared.matcher import decide
from shared.schemas.events import RawBatch, RawEvent
from shared.schemas.identity import Workload
from shared.subjects import ALERTS, DEAD_LETTER, RAW, alert_subject

__all__ = ["Ingestor", "DURABLE", "CATCH_UP_SECONDS"]

log = logging.getLogger("bulwark.feeder.ingest")

DURABLE = "bulwark-feeder"
CATCH_UP_SECONDS = 0.5  # how long an event of an unknown workload waits for identity/rules to catch up
_NEGATIVE_TTL = 5.0  # an mntns still unknown after a catch-up is not waited for again this long


class Ingestor:
    """Consumes RAW, writes and fans out alerts."""

    def __init__(self, js: JetStreamContext, nc: Client, follower: StateFollower, store: AlertStore,
                 hub: AlertHub, counters: Counters, *, cluster: str, fetch_batch: int = 32) -> None:
        self.js, self.nc, self.follower, self.store, self.hub = js, nc, follower, store, hub
        self.counters, self.cluster, self.fetch_batch = counters, cluster, fetch_batch
        self._unknown_until: dict[tuple[str, int], float] = {}

    @property
    def state(self) -> FeederState:
        """The views the events are enriched from."""
        return self.follower.state

    async def run(self, stop: asyncio.Event) -> None:
        """Pull and handle batches until ``stop`` is set."""
        psub = await self.js.pull_subscribe(
            RAW.subjects[0], durable=DURABLE, stream=RAW.name,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                  ack_wait=30, max_ack_pending=256))
        try:
            while not stop.is_set():
                try:
                    msgs = await psub.fetch(self.fetch_batch, timeout=1.0)
                except (nats.errors.TimeoutError, asyncio.TimeoutError):
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
            try:
                await psub.unsubscribe()
            except Exception:  # connection already closing
                pass

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
        self.counters.inc("events", len(events))
        try:
            alerts = await self.enrich(events)
            new = await asyncio.to_thread(self.store.insert, alerts) if alerts else []
        except Exception:
            log.exception("batch failed; will be redelivered")
            self.counters.inc("batch_errors")
            await msg.nak(delay=1.0)
            return
        self.counters.inc("alerts", len(new))
        self.counters.inc("duplicates", len(alerts) - len(new))
        await asyncio.gather(*(self._publish(alert) for alert in new))
        for alert in new:
            self.hub.publish(alert)
        await msg.ack()

    async def enrich(self, events: list[RawEvent]) -> list[dict[str, Any]]:
        """The alerts ``events`` raise (only exec events are matched in this version)."""
        alerts: list[dict[str, Any]] = []
        caught_up = False
        for ev in events:
            access = access_for(ev)
            if access is None:
                self.counters.inc("skipped_kind")
                continue
            workload, rules = self._lookup(ev)
            if rules is None and not caught_up and self._worth_waiting(ev):
                caught_up = True
                await self.follower.wait_caught_up(CATCH_UP_SECONDS)
                workload, rules = self._lookup(ev)
                if rules is None:
                    self._unknown_until[(ev.node, ev.mntns)] = time.monotonic() + _NEGATIVE_TTL
            if self.state.workload(ev.node, ev.mntns) is None:
                self.counters.inc("host_fallback")
            decision = decide(rules or [], access)
            if decision is None or decision.action == "Allow":
                continue  # no alert: allowed accesses are logs (a later issue)
            alerts.append(build_alert(ev, workload, decision, cluster=self.cluster,
                                      enforcer_name=self.state.enforcer_name(ev.node), now_ns=time.time_ns()))
        return alerts

    def _lookup(self, ev: RawEvent) -> tuple[Workload, list[Any] | None]:
        workload = self.state.workload(ev.node, ev.mntns, ev.ts_ns)
        if workload is None:
            workload = self.state.host_workload(ev.node)
        return workload, self.state.rules_for(ev.node, workload.id)

    def _worth_waiting(self, ev: RawEvent) -> bool:
        key = (ev.node, ev.mntns)
        until = self._unknown_until.get(key)
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        del self._unknown_until[key]
        return True

    async def _publish(self, alert: dict[str, Any]) -> None:
        subject = alert_subject(alert["NamespaceName"], alert["Severity"], alert["PolicyName"])
        try:
            await self.js.publish(subject, json.dumps(alert).encode(), stream=ALERTS.name,
                                  headers={"Nats-Msg-Id": str(alert["EventID"])})
        except Exception as exc:  # stored already; SIEM copy lost: counted, not retried
            self.counters.inc("publish_errors")
            log.warning("alert publish failed", extra={"error": repr(exc)})

    async def _dead_letter(self, subject: str, data: bytes, reason: str) -> None:
        self.counters.inc("dead_letters")
        log.warning("dead letter", extra={"subject": subject, "reason": reason})
        try:
            await self.nc.publish(DEAD_LETTER, data, headers={"Bulwark-Reason": reason[:200],
                                                              "Bulwark-Subject": subject})
        except Exception as exc:
            log.warning("dead-letter publish failed", extra={"error": repr(exc)})
