"""A cgroup per launched workload on the unified (v2) hierarchy, when the host has one."""
from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["unified_root", "create_workload_cgroup", "remove_cgroup"]

log = logging.getLogger("bulwark.cgroups")


def unified_root() -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (pure v2 or hybrid), or None."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 2 and fields[2] == "cgroup2":
                return Path(fields[1])
    return None


def create_workload_cgroup(workload_id: str, pid: int) -> tuple[str, int]:
    """Make ``bulwark/<id>`` and move ``pid`` into it; returns (path, cgroup id), or ("", 0) if impossible."""
    root = unified_root()
    if root is None:
        return "", 0
    path = root / "bulwark" / workload_id[:16]
    try:
        path.mkdir(parents=True, exist_ok=True)
        (path / "cgroup.procs").write_text(str(pid))
    except OSError as exc:
        log.warning("no cgroup for workload", extra={"error": str(exc)})
        return "", 0
    return str(path), os.stat(path).st_ino


def remove_cgroup(path: str) -> None:
    """Remove a workload's cgroup once it is empty (best effort)."""
    if path:
        try:
            os.rmdir(path)
        except OSError:
            pass
