"""Container ids across runtimes: ``docker://``, ``containerd://``, ``cri-o://`` and cgroup paths.

The same code maps a Pod's ``status.containerStatuses[].containerID`` and a process's cgroup to the
64-hex id every runtime uses, so Docker-in-Kubernetes and containerd/CRI-O correlate alike.
"""
from __future__ import annotations

import re

__all__ = ["RUNTIMES", "split_runtime_id", "container_id_from_cgroup", "read_cgroup", "is_container_id"]

RUNTIMES = ("docker", "containerd", "cri-o")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
# .../docker/<id>, .../docker-<id>.scope, .../cri-containerd-<id>.scope, .../crio-<id>.scope,
# .../kubepods/besteffort/pod<uid>/<id>
_CGROUP_ID = re.compile(r"(?:^|[/:-])([0-9a-f]{64})(?:\.scope)?$")


def is_container_id(value: str) -> bool:
    """True for a 64-hex container id."""
    return bool(_HEX64.match(value))


def split_runtime_id(value: str) -> tuple[str, str]:
    """``"containerd://<64 hex>"`` -> ``("containerd", id)``; a bare id -> ``("", id)``.

    ValueError names what is wrong (unknown runtime, or an id that is not 64 hex digits).
    """
    runtime, sep, cid = value.partition("://")
    if not sep:
        runtime, cid = "", value
    if runtime and runtime not in RUNTIMES:
        raise ValueError(f"container id {value!r}: unknown runtime {runtime!r} (expected {', '.join(RUNTIMES)})")
    if not is_container_id(cid):
        raise ValueError(f"container id {value!r}: expected 64 lowercase hex digits")
    return runtime, cid


def container_id_from_cgroup(path: str) -> str | None:
    """The container id a cgroup path ends in, or None (host processes, slices)."""
    match = _CGROUP_ID.search(path.rstrip("/"))
    return match.group(1) if match else None


def read_cgroup(pid: int) -> str:
    """The process's cgroup path: the first line that names a container, else the first line's path.

    OSError when the process is gone.
    """
    with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as f:
        paths = [line.rstrip("\n").split(":", 2)[2] for line in f if line.count(":") >= 2]
    for path in paths:
        if container_id_from_cgroup(path):
            return path
    return paths[0] if paths else ""
