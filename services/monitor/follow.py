"""Follow the node's RuleSet (RULES) and its workloads (IDENTITY) and keep the kernel's filters in
step: visibility masks per mount namespace (with the path entries of namespaces that emit only the
file events their rules can match) and the wanted syscall numbers."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy

from services.monitor.kernel_filters import (
    Visibility,
    needs_owner,
    needs_real_paths,
    visibility_masks,
    wanted_syscalls,
)
from services.monitor.namesigs import entry_names
from shared.codec import unpack, unpack_map
from shared.errors import DecodeError
from shared.lifecycle import Counters
from shared.nats.bus import follow
from shared.nats.subjects import IDENTITY, RULES, identity_events, rules_for_node
from shared.schemas.identity import IdentityEvent, Workload
from shared.schemas.rules import RuleSet

__all__ = ["FilterFollower"]

log = logging.getLogger("bulwark.monitor.follow")

# apply(masks, wanted syscalls, read file owners, resolve exec'd paths); the masks are a Visibility: its
# ``paths`` travel with them, so whoever sets the masks (Probes.set_visibility) sets the path trie in the
# same step.
Apply = Callable[[Visibility, dict[int, int], bool, bool], None]
# How often the trie entries are resolved again in their namespaces (a path that became a symlink
# since: its target's name must reach the kernel's open prefilter, services.monitor.namesigs).
RESOLVE_SECONDS = 30.0


class FilterFollower:
    """Recomputes the kernel filters whenever the rule set or a workload changes."""

    def __init__(self, node: str, apply: Apply, counters: Counters, *, containers: str, hosts: str,
                 host_mntns: int | None = None, resolve_seconds: float = RESOLVE_SECONDS) -> None:
        self.node, self.apply, self.counters = node, apply, counters
        self.resolve_seconds = resolve_seconds
        self.containers, self.hosts = containers, hosts
        self.host_mntns = host_mntns if host_mntns is not None else os.stat("/proc/self/ns/mnt").st_ino
        self.ruleset: RuleSet | None = None
        self.workloads: dict[str, Workload] = {}
        self._applied: tuple[Visibility, dict[int, int], bool, bool] | None = None
        self._subs: list[Any] = []
        self._resolver: asyncio.Task[None] | None = None

    async def start(self, js: JetStreamContext) -> None:
        """Subscribe to the node's workloads (from the start) and its newest rule set."""
        self._subs.append(await follow(js, identity_events(self.node), self._on_identity, stream=IDENTITY.name,
                                       deliver_policy=DeliverPolicy.ALL))
        self._subs.append(await follow(js, rules_for_node(self.node), self._on_rules, stream=RULES.name,
                                       deliver_policy=DeliverPolicy.LAST_PER_SUBJECT))
        self._resolver = asyncio.create_task(self._resolve_loop())

    async def _resolve_loop(self) -> None:
        """Refresh now and then: the names depend on the namespaces' files, not only on messages."""
        while True:
            await asyncio.sleep(self.resolve_seconds)
            try:
                self.refresh()
            except Exception:  # keep following: the next message or round tries again
                self.counters.inc("filter_errors")
                log.exception("resolving the path entries failed")

    async def stop(self) -> None:
        """Unsubscribe (the kernel keeps the last filters until the programs detach)."""
        if self._resolver is not None:
            self._resolver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resolver
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception:  # connection already closing
                pass

    async def _on_identity(self, msg: Msg) -> None:
        try:
            event = IdentityEvent.from_wire(unpack(msg.data))
        except DecodeError as exc:
            self.counters.inc("decode_errors")
            log.warning("bad identity event", extra={"error": str(exc)})
            return
        if event.type == "stopped":
            self.workloads.pop(event.workload.id, None)
        else:
            self.workloads[event.workload.id] = event.workload
        self.refresh()

    async def _on_rules(self, msg: Msg) -> None:
        try:
            self.ruleset = RuleSet.from_wire(unpack_map(msg.data, ("node", "version", "workloads")))
        except DecodeError as exc:
            self.counters.inc("decode_errors")
            log.error("bad rule set skipped", extra={"error": str(exc)})
            return
        self.refresh()

    def refresh(self) -> None:
        """Compute the filters and hand them to the kernel when they changed (a moved path too:
        Visibility compares its paths)."""
        if self.ruleset is None:
            return  # everything stays visible until the first rule set
        masks = visibility_masks(self.ruleset, self.workloads, self.host_mntns,
                                 containers=self.containers, hosts=self.hosts)
        masks.names = entry_names(masks.paths)
        wanted = (masks, wanted_syscalls(self.ruleset), needs_owner(self.ruleset), needs_real_paths(self.ruleset))
        if wanted == self._applied:
            return
        try:
            self.apply(*wanted)
        except Exception:
            self.counters.inc("filter_errors")
            log.exception("updating the kernel filters failed")
            return
        self._applied = wanted
        self.counters["rules_version"] = self.ruleset.version
        log.info("kernel filters updated", extra={"namespaces": len(wanted[0]), "paths": len(wanted[0].paths),
                                                  "syscalls": len(wanted[1]),
                                                  "version": self.ruleset.version})
