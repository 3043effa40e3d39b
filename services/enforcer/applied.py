"""The applied RuleSet, and waiting (many waiters at once) until it covers a workload."""
from __future__ import annotations

import asyncio

from shared.schemas.rules import RuleSet

__all__ = ["AppliedRules", "MAX_AWAIT_SECONDS"]

MAX_AWAIT_SECONDS = 300.0


class AppliedRules:
    """What the enforcer enforces right now; ``wait_covering`` wakes when a newer set lands."""

    def __init__(self) -> None:
        self._cond = asyncio.Condition()
        self.ruleset: RuleSet | None = None

    @property
    def version(self) -> int:
        """Version of the applied set (0 before the first one)."""
        return self.ruleset.version if self.ruleset else 0

    def covers(self, workload_id: str) -> bool:
        """Whether the applied set knows ``workload_id``."""
        wr = self.ruleset.workloads.get(workload_id) if self.ruleset is not None else None
        return wr is not None and not wr.stopped_ns

    async def set(self, ruleset: RuleSet) -> None:
        """Record a newly applied set and wake every waiter."""
        async with self._cond:
            self.ruleset = ruleset
            self._cond.notify_all()

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
