"""Docker ``inspect`` output -> :class:`RuntimeContainer` (pure apart from the /proc reads it is given)."""
from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.identity.host import namespace_inode
from services.identity.runtime.facts import RuntimeContainer
from services.identity.runtime.ids import is_container_id, read_cgroup

__all__ = ["container_from_inspect", "parse_docker_time", "SANDBOX_LABEL"]

SANDBOX_LABEL = "io.kubernetes.docker.type"  # "podsandbox": a pod's pause container, not a workload

NsReader = Callable[[int, str], int]


def parse_docker_time(text: str) -> int:
    """``2026-11-26T19:40:40.123456789Z`` -> ns since the epoch (0 for Docker's zero time or junk)."""
    if not text or text.startswith("0001-"):
        return 0
    head, _, frac = text.rstrip("Z").partition(".")
    tz = ""
    for sign in ("+", "-"):
        if sign in frac:
            frac, _, rest = frac.partition(sign)
            tz = sign + rest
    try:
        secs = datetime.fromisoformat(head + (tz or "+00:00")).astimezone(UTC).timestamp()
    except ValueError:
        return 0
    nanos = int(frac[:9].ljust(9, "0")) if frac.isdigit() else 0
    return int(secs) * 1_000_000_000 + nanos


def container_from_inspect(data: Any, ns_reader: NsReader = namespace_inode,
                           cgroup_reader: Callable[[int], str] = read_cgroup) -> RuntimeContainer | None:
    """The running container ``data`` describes; None when it is not running or is a pod sandbox.

    ValueError for data that is not a container inspect; OSError when its process is already gone.
    """
    if not isinstance(data, dict) or not isinstance(data.get("State"), dict):
        raise ValueError("docker inspect: expected a map with State")
    cid = str(data.get("Id", ""))
    if not is_container_id(cid):
        raise ValueError(f"docker inspect: Id {cid!r} is not 64 hex digits")
    state, config = data["State"], data.get("Config") or {}
    pid = int(state.get("Pid") or 0)
    labels = {str(k): str(v) for k, v in (config.get("Labels") or {}).items()}
    if not state.get("Running") or pid <= 0 or labels.get(SANDBOX_LABEL) == "podsandbox":
        return None
    mntns, pidns = ns_reader(pid, "mnt"), ns_reader(pid, "pid")
    try:
        cgroup = cgroup_reader(pid)
    except OSError:
        cgroup = ""
    return RuntimeContainer(
        id=cid, runtime="docker", name=str(data.get("Name", "")).lstrip("/") or cid[:12],
        image=str(config.get("Image") or data.get("Image") or ""), labels=labels, pid=pid,
        mntns=mntns, pidns=pidns, cgroup=cgroup, started_ns=parse_docker_time(str(state.get("StartedAt", ""))),
    )
