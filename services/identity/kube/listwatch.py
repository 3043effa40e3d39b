"""List-then-watch one Kubernetes resource forever, in its own thread, with the official client.

- start: LIST, hand every item over as one :class:`KubeReset`, remember ``metadata.resourceVersion``;
- WATCH from that version; each event is a :class:`KubeEvent`, each event's (or BOOKMARK's)
  resourceVersion is remembered, so a dropped or timed-out watch resumes where it stopped;
- ``410 Gone`` (an ERROR event or an HTTP status: the version is too old): LIST again;
- any other failure (refused, reset, 5xx): wait with backoff, then resume from the last version.
"""
from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from services.identity.backoff import Backoff
from services.identity.runtime.facts import KubeEvent, KubeReset
from shared.lifecycle import Counters

__all__ = ["ListWatch", "GONE"]

log = logging.getLogger("bulwark.identity.kube")
GONE = 410


class ListWatch:
    """Follows one resource; ``list_fn`` is a kubernetes client list method (kwargs bound)."""

    def __init__(self, resource: str, list_fn: Callable[..., Any], emit: Callable[[object], None],
                 counters: Counters, backoff: Backoff | None = None, watch_seconds: int = 300) -> None:
        self.resource = resource
        self.list_fn = list_fn
        self.emit = emit
        self.counters = counters
        self.backoff = backoff or Backoff()
        self.watch_seconds = watch_seconds
        self.resource_version: str | None = None
        self.stop_event = threading.Event()
        self._watch: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name=f"kube-{self.resource}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop (closes the open watch connection)."""
        self.stop_event.set()
        if self._watch is not None:
            self._watch.stop()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def run(self) -> None:
        """LIST/WATCH until stopped."""
        from kubernetes.client.exceptions import ApiException

        while not self.stop_event.is_set():
            try:
                if self.resource_version is None:
                    self._list()
                self._watch_once()
                self.backoff.reset()
            except ApiException as exc:
                if exc.status == GONE:
                    self.counters.inc(f"k8s_{self.resource}_gone")
                    log.info("watch version expired, listing again", extra={"resource": self.resource})
                    self.resource_version = None
                    continue
                self._failed(exc)
            except Exception as exc:  # connection refused/reset, truncated stream, bad JSON
                self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        self.counters.inc(f"k8s_{self.resource}_errors")
        delay = self.backoff.next()
        log.warning("kubernetes watch failed, retrying",
                    extra={"resource": self.resource, "error": repr(exc)[:300], "retry_s": round(delay, 2)})
        self.stop_event.wait(delay)

    def _list(self) -> None:
        from kubernetes.client.exceptions import ApiException

        resp = self.list_fn(_preload_content=False, _request_timeout=(10, 60))
        try:
            if not 200 <= int(resp.status) <= 299:
                raise ApiException(status=int(resp.status), reason=f"LIST {self.resource}: HTTP {resp.status}")
            body = json.loads(resp.data)
        finally:
            resp.release_conn()
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise ValueError(f"LIST {self.resource}: no items in the answer")
        self.emit(KubeReset(self.resource, tuple(i for i in items if isinstance(i, dict))))
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "") or None
        self.counters.inc(f"k8s_{self.resource}_lists")
        if self.resource_version is None:
            raise ValueError(f"LIST {self.resource}: no metadata.resourceVersion")

    def _watch_once(self) -> None:
        from kubernetes import watch

        self._watch = w = watch.Watch(return_type="object")  # raw dicts, no model parsing
        try:
            for event in w.stream(self.list_fn, resource_version=self.resource_version,
                                  timeout_seconds=self.watch_seconds, allow_watch_bookmarks=True,
                                  _request_timeout=(10, self.watch_seconds + 30)):
                if self.stop_event.is_set():
                    return
                raw = event.get("raw_object") if isinstance(event, dict) else None
                kind = event.get("type") if isinstance(event, dict) else None
                if not isinstance(raw, dict) or kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK"):
                    self.counters.inc(f"k8s_{self.resource}_bad_events")
                    continue
                if kind != "BOOKMARK":
                    self.emit(KubeEvent(self.resource, kind, raw))
                    self.counters.inc(f"k8s_{self.resource}_events")
                version = (raw.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
        finally:
            self._watch = None
