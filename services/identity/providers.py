"""Runs the providers (Docker, Kubernetes, the CRI cgroup scan) and applies their facts in order.

Provider threads hand facts to the event loop through one queue; :func:`apply_loop` feeds them to the
composer and publishes the identity events it decides, one at a time, so the registry it compares
with is always current. Policy facts go to the :class:`PolicySink` instead.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from services.identity.backoff import Backoff
from services.identity.composer import Composer
from services.identity.kube.policies import POLICY_RESOURCES, PolicySink
from services.identity.request_handler import IdentityApi
from services.identity.runtime.cri import cri_facts, scan_processes
from services.identity.runtime.facts import KubeEvent, KubeReset
from services.identity.settings import IdentitySettings
from shared.lifecycle import Counters

__all__ = ["Providers"]

log = logging.getLogger("bulwark.identity.providers")


class Providers:
    """Owns the provider threads and the tasks that apply what they report."""

    def __init__(self, settings: IdentitySettings, api: IdentityApi, composer: Composer,
                 sink: PolicySink | None, counters: Counters) -> None:
        self.settings, self.api, self.composer, self.sink, self.counters = settings, api, composer, sink, counters
        self.queue: asyncio.Queue[object] = asyncio.Queue()
        self.threads: list[Any] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def backoff(self) -> Backoff:
        """A fresh backoff with the configured bounds."""
        return Backoff(self.settings.backoff_initial_seconds, self.settings.backoff_max_seconds)

    def emit(self, item: object) -> None:
        """Thread-safe: hand one fact to the event loop."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def start(self) -> None:
        """Start every configured provider thread (none of them blocks on its source)."""
        self._loop = asyncio.get_running_loop()
        s = self.settings
        if s.docker_enabled:
            from services.identity.runtime.docker import DockerProvider

            self.threads.append(DockerProvider(s.docker_host, self.emit, self.counters, self.backoff()))
        from services.identity.kube.provider import kube_api_client, kube_configured, kube_watchers

        if kube_configured(s.kubeconfig):
            try:
                client = kube_api_client(s.kubeconfig)
                self.threads += kube_watchers(client, s.node_name, self.emit, self.counters, self.backoff,
                                              s.kube_watch_seconds)
            except Exception as exc:  # bad kubeconfig: report it, run without Kubernetes
                self.counters.inc("k8s_config_errors")
                log.error("kubernetes configuration unusable", extra={"error": repr(exc)})
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Stop every provider thread."""
        for t in self.threads:
            t.stop()

    async def apply_loop(self, stop: asyncio.Event) -> None:
        """Apply facts until ``stop``: composer decides, the API publishes."""
        while not stop.is_set():
            try:
                item = await asyncio.wait_for(self.queue.get(), timeout=0.5)
            except TimeoutError:
                continue
            await self.apply(item)

    async def apply(self, item: object) -> None:
        """One fact -> its identity events (errors counted, never fatal)."""
        try:
            if isinstance(item, (KubeReset, KubeEvent)) and item.resource in POLICY_RESOURCES:
                if self.sink is not None:
                    self.sink.handle(item)
                return
            for event_type, wl in self.composer.handle(item):
                await self.api.publish(event_type, wl)
                log.info(f"workload {event_type}", extra={"workload": wl.id[:12], "workload_name": wl.name,
                                                          "workload_namespace": wl.namespace, "source": wl.source})
        except Exception as exc:
            self.counters.inc("provider_fact_errors")
            log.exception("provider fact failed", extra={"fact": type(item).__name__, "error": repr(exc)})

    async def cri_loop(self, stop: asyncio.Event) -> None:
        """Every few seconds, locate pod containers of non-Docker runtimes by their cgroups."""
        while not stop.is_set():
            try:
                wanted = self.composer.wanted_cri_ids()
                found = await asyncio.to_thread(scan_processes, wanted) if wanted else {}
                for fact in cri_facts(self.composer, found):
                    await self.apply(fact)
            except Exception as exc:
                self.counters.inc("cri_scan_errors")
                log.warning("cri scan failed", extra={"error": repr(exc)})
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.settings.cri_scan_seconds)
            except TimeoutError:
                pass

    def details(self) -> dict[str, Any]:
        """Heartbeat details: provider connection state and queue depth."""
        docker = [t for t in self.threads if type(t).__name__ == "DockerProvider"]
        return {"docker_connected": int(bool(docker and docker[0].connected)), "fact_queue": self.queue.qsize()}
