"""This node as a workload: host processes get the node's identity."""
from __future__ import annotations

import os
import time

from shared.schemas.identity import Workload

__all__ = ["host_workload", "host_workload_id", "host_namespaces", "namespace_inode"]


def namespace_inode(pid: int | str, kind: str) -> int:
    """Inode number of ``/proc/PID/ns/KIND`` (the id the kernel reports for that namespace)."""
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def host_workload_id(node: str) -> str:
    """The stable id of a node's host workload."""
    return f"host:{node}"


def host_namespaces() -> tuple[int, int]:
    """(mnt, pid) namespace inodes of the host: PID 1's, or this process's where PID 1's are hidden."""
    for pid in (1, "self"):
        try:
            return namespace_inode(pid, "mnt"), namespace_inode(pid, "pid")
        except OSError:
            continue
    raise OSError("cannot read the host's namespaces from /proc")


def host_workload(node: str, labels: dict[str, str] | None = None) -> Workload:
    """The host workload of ``node``."""
    node_labels = {"kubernetes.io/hostname": node, **(labels or {})}
    mntns, pidns = host_namespaces()
    return Workload(
        id=host_workload_id(node), name=node, namespace="", kind="host", node=node,
        mntns=mntns, pidns=pidns, labels=node_labels, source="host", started_ns=time.time_ns(),
    )
