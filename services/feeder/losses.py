"""Loss made loud: growing loss counters become ``SystemEvent`` alerts (stored and pushed like any).

Two sources feed it. Every raw batch carries its monitor's cumulative ``lost_kernel`` (ring buffer
full) and ``lost_queue`` (the monitor's queue full), so a loss is announced in the same transaction
as the batch's own alerts and survives any crash. Heartbeats carry the same counts and the rest
(``lost_publish``: a batch the monitor could not publish cannot say so itself; any service's
``lost_*``), and announce what grew since the last announcement when no batch did.

Both feed one state per source instance, and a source is announced at most once a second (a long
loss is a few alerts, each with the cumulative counts, not one per batch). An announcement's
EventID is made of the instance and the cumulative counts, so a redelivered batch stores it once.
"""
from __future__ import annotations

import time
from typing import Any

__all__ = ["LossTracker", "BATCH_COUNTERS", "heartbeat_losses"]

BATCH_COUNTERS = ("lost_kernel", "lost_queue")
_WHAT = {"lost_kernel": "kernel ring buffer full", "lost_queue": "monitor queue full",
         "lost_publish": "batches not published to NATS"}


def heartbeat_losses(service: str, details: dict[str, Any]) -> dict[str, int]:
    """The loss counters of a heartbeat, the monitor's summed the way its raw batches carry them."""
    out: dict[str, int] = {}
    for key, value in details.items():
        if not key.startswith("lost_") or not isinstance(value, int) or isinstance(value, bool):
            continue
        if service == "monitor" and key.startswith("lost_kernel"):
            continue  # lost_kernel_<op> is a breakdown; lost_kernel_proc is summed below
        out[key] = value
    if service == "monitor" and "lost_kernel" in details:
        out["lost_kernel"] = int(details.get("lost_kernel", 0)) + int(details.get("lost_kernel_proc", 0))
    return out


class LossTracker:
    """The newest cumulative counts per (source, node, instance); increases become alerts."""

    def __init__(self, cluster: str, min_interval: float = 1.0) -> None:
        self.cluster, self.min_interval = cluster, min_interval
        self._seen: dict[tuple[str, str, str], dict[str, int]] = {}
        self._last_at: dict[tuple[str, str, str], float] = {}

    def remember(self, source: str, node: str, instance: str, counts: dict[str, int]) -> None:
        """``counts`` were announced (stored): the next announcement counts from them."""
        key = (source, node, instance)
        self._seen[key] = {**self._seen.get(key, {}), **counts}

    def observe(self, source: str, node: str, instance: str, counts: dict[str, int],
                now_ns: int | None = None, now: float | None = None) -> dict[str, Any] | None:
        """A SystemEvent alert when any of ``counts`` grew since remembered for this instance, else None
        (nothing is remembered until ``remember``: a batch that fails to store announces again)."""
        key = (source, node, instance)
        prev = self._seen.get(key, {})
        grown = {k: v for k, v in counts.items() if v > prev.get(k, 0)}
        now = time.monotonic() if now is None else now
        if not grown or now - self._last_at.get(key, -1e9) < self.min_interval:
            return None  # nothing new, or announced a moment ago: the next batch or heartbeat says it
        self._last_at[key] = now
        now_ns = time.time_ns() if now_ns is None else now_ns
        lost = sum(v - prev.get(k, 0) for k, v in grown.items())
        parts = ", ".join(f"{counts[k]} {_WHAT.get(k, k)}" for k in sorted(counts) if counts[k])
        from services.feeder.enrich import rfc3339

        return {
            "Timestamp": now_ns // 1_000_000_000, "UpdatedTime": rfc3339(now_ns), "ClusterName": self.cluster,
            "HostName": node, "Type": "SystemEvent", "Operation": "EventsLost", "Source": source,
            "Message": f"{source} on {node} lost {lost} events (since it started: {parts}); "
                       "alerts of the lost events are missing",
            "Lost": lost, "LostCounts": dict(counts), "Severity": "5",
            "EventID": f"loss-{source}-{node}-{instance}-" + "-".join(f"{k}={counts[k]}" for k in sorted(counts)),
        }
