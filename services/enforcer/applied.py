"""The applied RuleSet, when each version came into force, and waiting (many waiters at once) until
the applied set covers a workload.

When a version came into force (wall-clock ns, the first time it was applied: a re-apply after a
restart changes nothing in the kernel, the holder kept it) goes out in the heartbeat, so the feeder
judges an access by the rules the node enforced when it happened, not by rules that came later.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from shared.schemas.rules import RuleSet

__all__ = ["AppliedRules", "MAX_AWAIT_SECONDS", "IN_FORCE_KEPT"]

MAX_AWAIT_SECONDS = 300.0
IN_FORCE_KEPT = 16  # versions whose in-force time is remembered (and reported)


class AppliedRules:
    """What the enforcer enforces right now; ``wait_covering`` wakes when a newer set lands."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self.ruleset: RuleSet | None = None
        self.in_force: OrderedDict[int, int] = OrderedDict()  # version -> wall ns it was first applied

    @property
    def version(self) -> int:
        """Version of the applied set (0 before the first one)."""
        return self.ruleset.version if self.ruleset else 0

    def covers(self, workload_id: str) -> bool:
        """Whether the applied set knows ``workload_id``."""
        wr = self.ruleset.workloads.get(workload_id) if self.ruleset is not None else None
        return wr is not None and not wr.stopped_ns

    async def set(self, ruleset: RuleSet, at_ns: int | None = None) -> None:
        """Record a newly applied set (in force since ``at_ns``, now by default) and wake every waiter."""
        async with self._cond:
            self.ruleset = ruleset
            if ruleset.version not in self.in_force:
                self.in_force[ruleset.version] = time.time_ns() if at_ns is None else at_ns
                while len(self.in_force) > IN_FORCE_KEPT:
                    self.in_force.popitem(last=False)
            self._cond.notify_all()

    def in_force_report(self) -> list[list[int]]:
        """``[[version, since_ns], ...]``, oldest first: what the heartbeat carries."""
        return [[version, since] for version, since in self.in_force.items()]

    async def wait_covering(self, workload_id: str, timeout: float) -> RuleSet | None:
        """The applied set once it covers ``workload_id``, or None after ``timeout`` seconds."""
        timeout = min(max(timeout, 0.0), MAX_AWAIT_SECONDS)
        async with self._cond:
            if self.covers(workload_id):
                return self.ruleset
            try:
                await asyncio.wait_for(self._cond.wait_for(lambda: self.covers(workload_id)), timeout)
            except TimeoutError:
                return None
            return self.ruleset
