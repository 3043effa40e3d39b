"""Compiling nodes and publishing their RuleSets on ``rules_for_node(node)`` (RULES stream).

A node's RuleSet is published only when its content (workloads and rules) changed since the last
one; ``version`` keeps growing across restarts (it continues from the newest RuleSet on the stream).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from nats.errors import MaxPayloadError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.policy.compiler import compile_rules
from services.policy.store import PolicyStore, Workloads
from shared.codec import pack_compressed, unpack_map
from shared.errors import DecodeError
from shared.lifecycle import Counters
from shared.matcher import DEFAULT_POSTURE, Posture
from shared.nats.subjects import RULES, rules_for_node
from shared.schemas.rules import RuleSet

__all__ = ["RulePublisher"]

log = logging.getLogger("bulwark.policy.rules")


class RulePublisher:
    """Compiles nodes from the current state and publishes what changed."""

    def __init__(self, js: JetStreamContext, store: PolicyStore, workloads: Workloads, counters: Counters,
                 default_posture: Posture = DEFAULT_POSTURE) -> None:
        self.js = js
        self.default_posture = default_posture
        self.store = store
        self.workloads = workloads
        self.counters = counters
        self.versions: dict[str, int] = {}
        self.content: dict[str, dict[str, Any]] = {}

    async def _last_version(self, node: str) -> int:
        try:
            msg = await self.js.get_last_msg(RULES.name, rules_for_node(node))
        except NotFoundError:
            return 0
        try:
            return int(unpack_map(msg.data or b"").get("version", 0))
        except (DecodeError, TypeError, ValueError):
            return 0

    def compile(self, node: str) -> RuleSet:
        """The node's RuleSet from the current state (version not yet assigned)."""
        return compile_rules(self.store.policies(), self.workloads.compiled_on_node(node), node,
                             policy_seq=self.store.last_seq, identity_seq=self.workloads.last_seq,
                             generated_ns=time.time_ns(), default_posture=self.default_posture)

    async def publish_node(self, node: str, *, force: bool = False) -> RuleSet | None:
        """Compile ``node`` and publish its RuleSet if it changed (or ``force``); returns what was sent."""
        started = time.perf_counter()
        ruleset = self.compile(node)
        content = {k: v.to_wire() for k, v in ruleset.workloads.items()}
        if not force and self.content.get(node) == content:
            return None
        if node not in self.versions:
            self.versions[node] = await self._last_version(node)
        ruleset.version = self.versions[node] + 1
        payload = pack_compressed(ruleset.to_wire())  # thousands of workloads repeat the same rules
        try:
            await self.js.publish(rules_for_node(node), payload)
        except MaxPayloadError:  # said plainly; the node's enforcers keep the rules they hold
            self.counters.inc("rules_too_large")
            log.error("rules too large for one NATS message; the node keeps its previous rules",
                      extra={"node": node, "bytes": len(payload), "workloads": len(content)})
            return None
        self.versions[node] = ruleset.version
        self.content[node] = content
        self.counters.inc("rulesets_published")
        log.info("rules published", extra={"node": node, "version": ruleset.version,
                                           "workloads": len(content), "policy_seq": ruleset.policy_seq,
                                           "identity_seq": ruleset.identity_seq,
                                           "ms": round((time.perf_counter() - started) * 1000, 2)})
        return ruleset

    async def publish_all(self, *, force: bool = False) -> int:
        """Recompile every known node; returns how many RuleSets were published."""
        sent = 0
        for node in list(self.workloads.by_node):
            try:
                if await self.publish_node(node, force=force) is not None:
                    sent += 1
            except Exception:  # one node's failure must not stop the others
                self.counters.inc("publish_errors")
                log.exception("publishing rules failed", extra={"node": node})
        return sent
