"""The current workload map, rebuilt from identity events (pure, no I/O)."""
from __future__ import annotations

from shared.schemas.identity import IdentityEvent, Workload

__all__ = ["Registry"]


class Registry:
    """Workloads by id, as the identity event log says they are now."""

    def __init__(self) -> None:
        self.by_id: dict[str, Workload] = {}
        self.last_seq = 0

    def apply(self, event: IdentityEvent, seq: int = 0) -> None:
        """Fold one identity event into the map."""
        wl = event.workload
        if event.type == "stopped":
            known = self.by_id.get(wl.id)
            if known is not None:
                known.stopped_ns = wl.stopped_ns or event.ts_ns
        else:
            self.by_id[wl.id] = wl
        self.last_seq = max(self.last_seq, seq)

    def running(self, node: str | None = None) -> list[Workload]:
        """Workloads not stopped, optionally only those of ``node``."""
        return [w for w in self.by_id.values() if not w.stopped_ns and (node is None or w.node == node)]

    def get(self, workload_id: str) -> Workload | None:
        """A workload by id, stopped or not."""
        return self.by_id.get(workload_id)
