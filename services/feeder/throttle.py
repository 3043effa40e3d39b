"""KubeArmor-style alert throttling, per container (per node for host alerts).

More than ``max_per_sec`` alerts within one second from one container start a quiet period of
``interval_sec`` seconds. Bulwark still *stores* every alert of the quiet period (flagged
``Throttled: true``); only the live push (websocket, gRPC) and the SIEM stream skip them. The quiet
period is announced by a ``SystemEvent`` / ``AlertThreshold`` alert carrying ``MaxAlertsPerSec`` and
``DroppingAlertsInterval`` (as KubeArmor does), and its end by a second one saying how many were held
back. Time is the alerts' own event time, so a replay throttles the same alerts and the notices get
the same event ids (stored once). Pure: no I/O, no clock.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Throttler", "throttle_key", "NOTICE_FIELDS"]

_SEC = 1_000_000_000
NOTICE_FIELDS = ("ClusterName", "HostName", "NamespaceName", "PodName", "Labels", "ContainerID",
                 "ContainerName", "ContainerImage", "NodeID")


def throttle_key(alert: dict[str, Any]) -> str:
    """What is throttled as one: the container, or the node for host alerts."""
    return str(alert.get("ContainerID") or f"host:{alert.get('HostName', '')}")


@dataclass(slots=True)
class _Window:
    start_ns: int
    count: int = 0
    quiet_until_ns: int = 0
    quiet_start_ns: int = 0
    held: int = 0
    template: dict[str, Any] | None = None


class Throttler:
    """Decides per alert whether it is throttled; makes the notices."""

    def __init__(self, max_per_sec: int = 10, interval_sec: int = 30, *, enabled: bool = True) -> None:
        self.max_per_sec, self.interval_sec, self.enabled = max_per_sec, interval_sec, enabled
        self._windows: dict[str, _Window] = {}

    def check(self, alert: dict[str, Any], ts_ns: int) -> tuple[bool, list[dict[str, Any]]]:
        """(throttled?, notices to emit now) for ``alert`` happening at ``ts_ns``."""
        if not self.enabled or self.max_per_sec <= 0:
            return False, []
        key = throttle_key(alert)
        w = self._windows.get(key)
        notices: list[dict[str, Any]] = []
        if w is None:
            w = self._windows[key] = _Window(start_ns=ts_ns)
        if w.quiet_until_ns:
            if ts_ns < w.quiet_until_ns:
                w.held += 1
                return True, []
            notices.append(self._end_notice(key, w))
            w.quiet_until_ns, w.held, w.count, w.start_ns = 0, 0, 0, ts_ns
        if ts_ns - w.start_ns >= _SEC or ts_ns < w.start_ns:
            w.start_ns, w.count = ts_ns, 0
        w.count += 1
        if w.count <= self.max_per_sec:
            return False, notices
        w.quiet_start_ns, w.quiet_until_ns, w.held = ts_ns, ts_ns + self.interval_sec * _SEC, 1
        w.template = {k: alert.get(k, "") for k in NOTICE_FIELDS}
        notices.append(self._notice(key, w, ts_ns, "start",
                                    f"Alert threshold reached: more than {self.max_per_sec} alerts per second; "
                                    f"alerts are not pushed for {self.interval_sec} s (still stored)"))
        return True, notices

    def expire(self, now_ns: int) -> list[dict[str, Any]]:
        """End notices of every quiet period over by ``now_ns`` (call periodically)."""
        out = []
        for key, w in list(self._windows.items()):
            if w.quiet_until_ns and now_ns >= w.quiet_until_ns:
                out.append(self._end_notice(key, w))
                w.quiet_until_ns, w.held, w.count, w.start_ns = 0, 0, 0, now_ns
            elif not w.quiet_until_ns and now_ns - w.start_ns > 60 * _SEC:
                del self._windows[key]  # idle: forget
        return out

    def throttling(self) -> int:
        """How many containers are in a quiet period now."""
        return sum(1 for w in self._windows.values() if w.quiet_until_ns)

    def _end_notice(self, key: str, w: _Window) -> dict[str, Any]:
        return self._notice(key, w, w.quiet_until_ns, "end",
                            f"Alert threshold period over: {w.held} alerts were not pushed (stored, flagged Throttled)",
                            held=w.held)

    def _notice(self, key: str, w: _Window, ts_ns: int, phase: str, message: str, held: int = 0) -> dict[str, Any]:
        from services.feeder.enrich import rfc3339

        notice: dict[str, Any] = {
            **(w.template or {}), "Timestamp": ts_ns // _SEC, "UpdatedTime": rfc3339(ts_ns),
            "Type": "SystemEvent", "Operation": "AlertThreshold", "Message": message,
            "MaxAlertsPerSec": self.max_per_sec, "DroppingAlertsInterval": self.interval_sec,
            "EventID": f"throttle-{phase}-{key}-{w.quiet_start_ns}",
        }
        if phase == "end":
            notice["ThrottledAlerts"] = held
        return notice
