"""One operation, one alert: the monitor's record of an operation an enforcer refused or killed, and
the enforcer's own report of it, describe the same act (BPF-LSM or AppArmor refusals: the syscall
failed and the hook reported; eBPF signal kills: the monitor's record is marked dying). Whichever of
the two reaches the feeder first is the alert; the other, from the other source, is dropped.

Two records are the same act when they come from the same thread of the same node, name the same
Operation, lie within ``WINDOW_NS`` of each other and (for File and Process) name a resource with the
same last component (the monitor reads the path the program asked for, the enforcer the file it
resolved: ``/bin/sh`` and ``/usr/bin/dash`` are one exec, so only the names' last parts must agree
when both are known). Network and Capabilities records of one thread are
compared by operation alone. Two records from the same source are never merged: two refusals by the
monitor are two acts.

The memory is this feeder's and bounded (``MAX_KEYS`` threads, oldest forgotten first): a feeder
group that splits one node's records between members, or a restart between the two records, may let
both through (a duplicate, never a lost alert)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any

__all__ = ["EnforcementDedup", "enforced", "from_enforcer", "WINDOW_NS", "MAX_KEYS"]

WINDOW_NS = 2_000_000_000
MAX_KEYS = 4096
_BY_NAME = frozenset({"File", "Process"})


def _last_part(resource: str) -> str:
    return resource.rstrip("/").rpartition("/")[2]


class EnforcementDedup:
    """Recent enforcement alerts by (node, tid, operation): ``duplicate`` says whether one more is
    the other source's account of an act already alerted, and remembers it when it is not."""

    def __init__(self, window_ns: int = WINDOW_NS, max_keys: int = MAX_KEYS) -> None:
        self.window_ns, self.max_keys = window_ns, max_keys
        self._seen: OrderedDict[tuple[str, int, str], list[tuple[int, str, str]]] = OrderedDict()

    def duplicate(self, *, node: str, tid: int, operation: str, ts_ns: int, resource: str,
                  from_enforcer: bool) -> bool:
        """True when the other source already alerted this act (the entry it matched is used up)."""
        key = (node, tid, operation)
        source = "enforcer" if from_enforcer else "monitor"
        name = _last_part(resource) if operation in _BY_NAME else ""
        entries = [e for e in self._seen.get(key, []) if abs(e[0] - ts_ns) <= self.window_ns]
        for i, (_ts, other_source, other_name) in enumerate(entries):
            if other_source != source and (not name or not other_name or name == other_name):
                del entries[i]
                self._put(key, entries)
                return True
        entries.append((ts_ns, source, name))
        self._put(key, entries[-8:])
        return False

    def _put(self, key: tuple[str, int, str], entries: list[tuple[int, str, str]]) -> None:
        if not entries:
            self._seen.pop(key, None)
            return
        self._seen[key] = entries
        self._seen.move_to_end(key)
        while len(self._seen) > self.max_keys:
            self._seen.popitem(last=False)


def enforced(alert: dict[str, Any]) -> bool:
    """Whether ``alert`` says an enforcer acted (blocked or killed), not that the act went through."""
    return alert.get("Action") == "Block" and alert.get("Result") not in ("Passed", "", None)


def from_enforcer(kind: str, extra: dict[str, Any]) -> bool:
    """Whether a raw record is an enforcer's report: the signal and BPF-LSM enforcers' are of kind
    ``enforce``; AppArmor's keep the monitor's kinds (exec, file...) and name their enforcer in
    ``extra``, which the monitor's own records never do."""
    return kind == "enforce" or bool(extra.get("enforcer"))
