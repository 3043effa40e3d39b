"""Waiting for a policy change to reach the node, instead of sleeping as KubeArmor's scripts do.

The policy service publishes each node's compiled RuleSet on the RULES stream (newest per node); the
enforcer answers ``enforcer_await`` requests with the version it has applied. A change is in force
once the newest RuleSet satisfies a predicate (a policy's rules are there, or gone, or a container is
known) and the enforcer has applied that version or a newer one.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import nats
from nats.js.errors import NotFoundError

from services.identity.host import host_workload_id
from shared.codec import pack, unpack
from shared.nats.subjects import RULES, enforcer_await, rules_for_node
from shared.schemas.rules import RuleSet

__all__ = ["RuleWatch", "policies_in", "running"]


def running(rs: RuleSet) -> dict[str, Any]:
    """The workloads of ``rs`` that have not stopped."""
    return {wid: wr for wid, wr in rs.workloads.items() if not wr.stopped_ns}


def policies_in(rs: RuleSet) -> set[str]:
    """Names of every policy with a rule on a running workload."""
    return {r.policy for wr in running(rs).values() for r in wr.rules}


class RuleWatch:
    """Reads a node's RuleSet and its enforcer's applied version over NATS."""

    def __init__(self, nats_url: str, node: str) -> None:
        self.url, self.node = nats_url, node

    async def _ruleset(self, nc: Any) -> RuleSet | None:
        try:
            msg = await nc.jetstream().get_last_msg(RULES.name, rules_for_node(self.node))
        except NotFoundError:
            return None
        return RuleSet.from_wire(unpack(msg.data))

    async def _applied(self, nc: Any, workload_id: str) -> tuple[int, bool]:
        reply = await nc.request(enforcer_await(self.node), pack({"workload_id": workload_id, "timeout": 0.5}),
                                 timeout=5)
        body = unpack(reply.data)
        return int(body.get("version", 0)), bool(body.get("ok"))

    async def _wait(self, pred: Callable[[RuleSet], bool], what: str, timeout: float,
                    covered: str | None) -> RuleSet:
        nc = await nats.connect(self.url, name="kubearmor-suite", max_reconnect_attempts=2)
        try:
            deadline = time.monotonic() + timeout
            rs: RuleSet | None = None
            while True:
                rs = await self._ruleset(nc)
                if rs is not None and pred(rs):
                    break
                if time.monotonic() > deadline:
                    have = sorted(policies_in(rs)) if rs else None
                    raise TimeoutError(f"{what}: the node's rule set never got there in {timeout:.0f}s "
                                       f"(version {rs.version if rs else '-'}, policies {have})")
                await asyncio.sleep(0.2)
            target = covered or host_workload_id(self.node)
            while True:
                version, ok = await self._applied(nc, target)
                if ok and version >= rs.version:
                    return rs
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{what}: rule set {rs.version} published, but the enforcer has applied "
                                       f"{version} (covers {target[:16]}: {ok}) after {timeout:.0f}s")
                await asyncio.sleep(0.1)
        finally:
            await nc.close()

    def wait(self, pred: Callable[[RuleSet], bool], what: str, timeout: float = 180.0,
             covered: str | None = None) -> RuleSet:
        """Block until the newest RuleSet satisfies ``pred`` and the enforcer has applied it (its answer
        for workload ``covered``, default the host, says so); TimeoutError naming ``what`` otherwise."""
        return asyncio.run(self._wait(pred, what, timeout, covered))

    def current(self) -> RuleSet | None:
        """The newest RuleSet (None before the first)."""
        async def once() -> RuleSet | None:
            nc = await nats.connect(self.url, name="kubearmor-suite", max_reconnect_attempts=2)
            try:
                return await self._ruleset(nc)
            finally:
                await nc.close()
        return asyncio.run(once())
