"""Follows a Docker engine: list at (re)connect, then container events; in its own thread.

An absent or dying engine never blocks the service: the thread retries with backoff and reports
``docker_connected`` / ``docker_errors`` counters. Every (re)connect sends a full :class:`Snapshot`,
so containers that started or died while disconnected (or while Bulwark was down) are reconciled.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from services.identity.backoff import Backoff
from services.identity.runtime.docker_inspect import container_from_inspect
from services.identity.runtime.facts import Remove, RuntimeContainer, Snapshot, Upsert
from shared.lifecycle import Counters

__all__ = ["DockerProvider", "SOURCE"]

log = logging.getLogger("bulwark.identity.docker")
SOURCE = "docker"
_STARTS = ("start", "restart", "rename", "unpause")
_STOPS = ("die", "destroy", "kill_failed")


class DockerProvider:
    """``emit`` receives Snapshot / Upsert / Remove facts (called from this provider's thread)."""

    def __init__(self, base_url: str, emit: Callable[[object], None], counters: Counters,
                 backoff: Backoff | None = None, timeout: float = 10.0) -> None:
        self.base_url = base_url
        self.emit = emit
        self.counters = counters
        self.backoff = backoff or Backoff()
        self.timeout = timeout
        self.stop_event = threading.Event()
        self.connected = False
        self._stream: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="identity-docker", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop following (closes the event stream the thread waits on)."""
        self.stop_event.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # already closed
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run(self) -> None:
        """Connect, snapshot, follow events; on any failure wait (backoff) and do it again."""
        import docker  # imported here: no I/O or heavy imports at module import

        while not self.stop_event.is_set():
            try:
                api = docker.APIClient(base_url=self.base_url, timeout=self.timeout)
                try:
                    self._follow(api)
                finally:
                    api.close()
                delay = self.backoff.next()  # the stream ended: the engine went away
            except Exception as exc:  # engine absent, refused, died mid-stream, bad answers
                self.counters.inc("docker_errors")
                delay = self.backoff.next()
                log.warning("docker engine unavailable, retrying",
                            extra={"docker_host": self.base_url, "error": repr(exc), "retry_s": round(delay, 2)})
            self.connected = False
            self.stop_event.wait(delay)

    def _follow(self, api: Any) -> None:
        api.ping()
        since = time.time()
        self._stream = api.events(since=f"{since:.9f}", filters={"type": "container"}, decode=True)
        snapshot = tuple(c for c in (self._inspect(api, s["Id"]) for s in api.containers()) if c is not None)
        self.emit(Snapshot(SOURCE, snapshot))
        self.connected = True
        self.backoff.reset()
        self.counters.inc("docker_connects")
        log.info("following docker", extra={"docker_host": self.base_url, "containers": len(snapshot)})
        for event in self._stream:
            if self.stop_event.is_set():
                return
            self._on_event(api, event)

    def _on_event(self, api: Any, event: Any) -> None:
        if not isinstance(event, dict):
            self.counters.inc("docker_bad_events")
            return
        action = str(event.get("Action") or event.get("status") or "")
        cid = str(event.get("id") or (event.get("Actor") or {}).get("ID") or "")
        if action in _STARTS:
            found = self._inspect(api, cid)
            if found is not None:
                self.emit(Upsert(SOURCE, found))
        elif action in _STOPS:
            self.emit(Remove(SOURCE, cid, int(event.get("timeNano") or 0)))

    def _inspect(self, api: Any, cid: str) -> RuntimeContainer | None:
        """The container if it is running; None if gone or not running (each skip counted)."""
        import docker.errors

        try:
            return container_from_inspect(api.inspect_container(cid))
        except docker.errors.NotFound:
            self.counters.inc("docker_gone_before_inspect")
        except (OSError, ValueError) as exc:  # its process exited between inspect and /proc, or junk
            self.counters.inc("docker_skipped")
            log.info("docker container skipped", extra={"container": cid[:12], "error": str(exc)})
        return None
