"""The feeder's views, rebuilt from the streams at start and kept current by following them.

- identity: (node, mntns) -> Workload from every IDENTITY event since the start; stopped workloads
  are kept (bounded) so an event from a process that just exited is still named; each node's
  ``kind == "host"`` workload is the fallback.
- rules: the newest RuleSet per node (RULES stream, last per subject), and a few before it with when
  the node's enforcer put each in force (:mod:`services.feeder.rule_history`), so an access is judged
  by the rules in force when it happened.
- enforcer names per node and the health registry, from heartbeats on HEALTH_ALL.

:class:`FeederState` is the pure, synchronous view; :class:`StateFollower` feeds it from NATS and
can wait until the identity and rules views have caught up with their streams.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy

from services.feeder.rule_history import RuleHistory
from shared.codec import unpack
from shared.errors import DecodeError
from shared.nats.bus import follow, stream_last_seq
from shared.nats.subjects import HEALTH_ALL, IDENTITY, RULES, StreamSpec
from shared.schemas.identity import IdentityEvent, Workload
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

__all__ = ["FeederState", "StateFollower", "HealthEntry", "MAX_STOPPED"]

log = logging.getLogger("bulwark.feeder.state")

MAX_STOPPED = 4096  # stopped workloads remembered for late events
STOP_SLACK_NS = 5_000_000  # clock skew allowed between the monitor's event times and identity's stop times


@dataclass(slots=True)
class HealthEntry:
    """The last heartbeat of one service on one node."""

    service: str
    node: str
    last_seen: float  # wall-clock seconds when it arrived
    status: str = "ok"
    details: dict[str, Any] = field(default_factory=dict)


class FeederState:
    """What the feeder knows about workloads, rules, enforcers and service health."""

    def __init__(self) -> None:
        self.workloads: dict[tuple[str, int], Workload] = {}
        self.hosts: dict[str, Workload] = {}
        self.rulesets: dict[str, RuleSet] = {}
        self.rule_history: dict[str, RuleHistory] = {}
        self.enforcers: dict[str, str] = {}
        self.enforcers_by_operation: dict[str, dict[str, str]] = {}
        self.health: dict[tuple[str, str], HealthEntry] = {}
        self._stopped: OrderedDict[tuple[str, int], str] = OrderedDict()
        # Rules of workloads a newer RuleSet no longer lists (they stopped): an event they caused
        # may still be on its way, and must be judged by the rules that held when it happened.
        self.retired_rules: OrderedDict[tuple[str, str], WorkloadRules] = OrderedDict()
        # Workloads whose mount namespace id the kernel has since given to a newer workload.
        self.replaced: OrderedDict[tuple[str, int], list[Workload]] = OrderedDict()

    def apply_identity(self, ev: IdentityEvent) -> None:
        """Fold one identity event into the map."""
        wl = ev.workload
        key = (wl.node, wl.mntns)
        if wl.kind == "host" and ev.type != "stopped":
            self.hosts[wl.node] = wl
        if wl.mntns == 0:
            return
        prior = self.workloads.get(key)
        if prior is not None and prior.id != wl.id and (ev.type == "stopped" or 0 < wl.started_ns < prior.started_ns):
            # News of an earlier owner of this namespace id (its stop often arrives after the next owner
            # started: the kernel reuses ids at once): it must not take the id back from the newer one.
            older = [w for w in self.replaced.get(key, []) if w.id != wl.id] + [wl]
            self._keep_replaced(key, sorted(older, key=lambda w: w.started_ns, reverse=True))
            return
        if prior is not None and prior.id != wl.id:
            self._keep_replaced(key, [prior, *self.replaced.get(key, [])])
        self.workloads[key] = wl
        if ev.type == "stopped":
            self._stopped[key] = wl.id
            self._stopped.move_to_end(key)
            while len(self._stopped) > MAX_STOPPED:
                old_key, old_id = self._stopped.popitem(last=False)
                cur = self.workloads.get(old_key)
                if cur is not None and cur.id == old_id and cur.stopped_ns:
                    del self.workloads[old_key]
        else:
            self._stopped.pop(key, None)

    def _keep_replaced(self, key: tuple[str, int], older: list[Workload]) -> None:
        """Hold ``older`` (newest first) as the earlier owners of ``key``; the least recent keys go past
        MAX_STOPPED."""
        self.replaced[key] = older
        self.replaced.move_to_end(key)
        while len(self.replaced) > MAX_STOPPED:
            self.replaced.popitem(last=False)

    def apply_rules(self, rs: RuleSet) -> None:
        """Keep ``rs`` unless a newer version for its node is already held."""
        cur = self.rulesets.get(rs.node)
        if cur is not None and rs.version < cur.version:
            return
        if cur is not None:
            for wid, wr in cur.workloads.items():
                if wid not in rs.workloads:
                    self.retired_rules[(rs.node, wid)] = wr
                    self.retired_rules.move_to_end((rs.node, wid))
            while len(self.retired_rules) > MAX_STOPPED:
                self.retired_rules.popitem(last=False)
        for wid in rs.workloads:
            self.retired_rules.pop((rs.node, wid), None)
        self.rulesets[rs.node] = rs
        self.rule_history.setdefault(rs.node, RuleHistory()).add(rs)

    def apply_heartbeat(self, beat: dict[str, Any], now: float | None = None) -> None:
        """Record a heartbeat ``{service, node, status, details}``; note the enforcer's name."""
        service, node = str(beat.get("service", "")), str(beat.get("node", ""))
        if not service:
            return
        raw_details = beat.get("details")
        details: dict[str, Any] = raw_details if isinstance(raw_details, dict) else {}
        self.health[(service, node)] = HealthEntry(service, node, time.time() if now is None else now,
                                                   str(beat.get("status", "ok")), details)
        if service == "enforcer" and isinstance(details.get("in_force"), list):
            self.rule_history.setdefault(node, RuleHistory()).note_in_force(details["in_force"])
        if service == "enforcer" and details.get("enforcer"):
            self.enforcers[node] = str(details["enforcer"])
            by_operation = details.get("enforcers")
            if isinstance(by_operation, dict):
                self.enforcers_by_operation[node] = {str(k): str(v) for k, v in by_operation.items()}

    def workload(self, node: str, mntns: int, at_ns: int = 0) -> Workload | None:
        """The workload owning ``mntns`` on ``node`` (at time ``at_ns`` when given), or None when unknown.

        The kernel reuses namespace ids: an event from before the newest owner started belongs to
        the owner that held the id then.
        """
        current = self.workloads.get((node, mntns))
        if current is None or not at_ns:
            return current
        if current.started_ns <= at_ns:
            # A workload that had stopped before the event cannot have caused it: the id now belongs
            # to a workload whose identity has not arrived yet.
            return None if current.stopped_ns and at_ns > current.stopped_ns + STOP_SLACK_NS else current
        for older in self.replaced.get((node, mntns), ()):
            if older.started_ns <= at_ns:
                return older
        return current

    def host_workload(self, node: str) -> Workload:
        """The node's host workload (a placeholder when identity has not reported one)."""
        found = self.hosts.get(node)
        if found is not None:
            return found
        return Workload(id=f"host-{node}", name=node, namespace="", kind="host", node=node, mntns=0, pidns=0,
                        source="host")

    def compiled_for(self, node: str, workload_id: str, at_ns: int = 0) -> WorkloadRules | None:
        """The workload's compiled entry (rules and postures; the last one it had, if it has stopped
        since); None when unknown. ``at_ns``: the entry of the rule set the node enforced then."""
        history = self.rule_history.get(node)
        rs = history.at(at_ns, workload_id) if history is not None and at_ns else self.rulesets.get(node)
        wr = rs.workloads.get(workload_id) if rs is not None else None
        return wr if wr is not None else self.retired_rules.get((node, workload_id))

    def rules_for(self, node: str, workload_id: str) -> list[Rule] | None:
        """The workload's compiled rules (see :meth:`compiled_for`); None when unknown."""
        wr = self.compiled_for(node, workload_id)
        return None if wr is None else wr.rules

    def enforcer_name(self, node: str, operation: str = "") -> str:
        """The enforcer the node reported for ``operation`` (else its primary one; "" when none yet)."""
        named = self.enforcers_by_operation.get(node, {}).get(operation) if operation else None
        return named or self.enforcers.get(node, "")


class StateFollower:
    """Follows IDENTITY, RULES and HEALTH_ALL into a :class:`FeederState`."""

    def __init__(self, nc: Client, js: JetStreamContext, state: FeederState) -> None:
        self.nc, self.js, self.state = nc, js, state
        self.applied: dict[str, int] = {IDENTITY.name: 0, RULES.name: 0}
        self.decode_errors = 0
        self._changed = asyncio.Condition()
        self._subs: list[Subscription] = []

    async def start(self) -> None:
        """Subscribe (ordered consumers replay the streams from the start) and begin following."""
        self._subs.append(await follow(self.js, IDENTITY.subjects[0], self._on_identity,
                                       config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL)))
        self._subs.append(await follow(self.js, RULES.subjects[0], self._on_rules,
                                       config=ConsumerConfig(deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)))
        self._subs.append(await self.nc.subscribe(HEALTH_ALL, cb=self._on_health))

    async def stop(self) -> None:
        """Unsubscribe everything."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # connection may already be closing
                pass
        self._subs.clear()

    async def _mark(self, spec: StreamSpec, msg: Msg) -> None:
        async with self._changed:
            self.applied[spec.name] = max(self.applied[spec.name], msg.metadata.sequence.stream)
            self._changed.notify_all()

    async def _on_identity(self, msg: Msg) -> None:
        try:
            self.state.apply_identity(IdentityEvent.from_wire(unpack(msg.data)))
        except DecodeError as exc:
            self.decode_errors += 1
            log.warning("bad identity event", extra={"error": str(exc)})
        await self._mark(IDENTITY, msg)

    async def _on_rules(self, msg: Msg) -> None:
        try:
            self.state.apply_rules(RuleSet.from_wire(unpack(msg.data)))
        except DecodeError as exc:
            self.decode_errors += 1
            log.warning("bad rule set", extra={"error": str(exc)})
        await self._mark(RULES, msg)

    async def _on_health(self, msg: Msg) -> None:
        try:
            beat = unpack(msg.data)
        except DecodeError:
            self.decode_errors += 1
            return
        if isinstance(beat, dict):
            self.state.apply_heartbeat(beat)

    async def wait_caught_up(self, timeout: float, specs: tuple[StreamSpec, ...] = (IDENTITY, RULES)) -> bool:
        """Wait until every view in ``specs`` has applied its stream's newest message; False on timeout."""
        try:
            targets = {s.name: await stream_last_seq(self.js, s) for s in specs}
        except Exception as exc:  # NATS unavailable: do not hold up ingest
            log.warning("catch-up check failed", extra={"error": repr(exc)})
            return False

        def done() -> bool:
            return all(self.applied[name] >= seq for name, seq in targets.items())

        try:
            async with self._changed:
                await asyncio.wait_for(self._changed.wait_for(done), timeout)
            return True
        except TimeoutError:
            return False
