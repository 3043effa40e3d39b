"""Locate containerd / CRI-O containers of this node's pods by their processes' cgroups.

There is no runtime API client for these runtimes here: the pod says ``containerd://<id>``, and the
container's processes live in a cgroup whose path ends in that id (``cri-containerd-<id>.scope``,
``crio-<id>.scope``, ``.../pod<uid>/<id>``). The same :mod:`services.identity.runtime.ids` code reads both.
"""
from __future__ import annotations

import os
import time

from services.identity.composer import Composer
from services.identity.host import namespace_inode
from services.identity.runtime.facts import Remove, RuntimeContainer, Upsert
from services.identity.runtime.ids import container_id_from_cgroup, read_cgroup

__all__ = ["scan_processes", "cri_facts", "SOURCE"]

SOURCE = "cri"
Found = dict[str, tuple[int, int, int, str]]  # id -> (pid, mntns, pidns, cgroup)


def scan_processes(wanted: set[str], proc: str = "/proc") -> Found:
    """One process per wanted container id (its lowest pid), from one /proc scan."""
    found: Found = {}
    if not wanted:
        return found
    pids = sorted(int(e.name) for e in os.scandir(proc) if e.name.isdigit())
    for pid in pids:
        try:
            cgroup = read_cgroup(pid)
            cid = container_id_from_cgroup(cgroup)
            if cid in wanted and cid not in found:
                found[cid] = (pid, namespace_inode(pid, "mnt"), namespace_inode(pid, "pid"), cgroup)
        except OSError:
            continue  # exited while we looked
        if len(found) == len(wanted):
            break
    return found


def _alive(rc: RuntimeContainer) -> bool:
    try:
        return namespace_inode(rc.pid, "mnt") == rc.mntns
    except OSError:
        return False


def cri_facts(composer: Composer, found: Found) -> list[object]:
    """Upserts for newly located pod containers, Removes for those whose process or pod is gone."""
    facts: list[object] = []
    for cid, (pid, mntns, pidns, cgroup) in found.items():
        pc = composer.pods.get(cid)
        if pc is None:
            continue
        facts.append(Upsert(SOURCE, RuntimeContainer(
            id=cid, runtime=pc.runtime or "containerd", name=pc.container, image=pc.image, labels={},
            pid=pid, mntns=mntns, pidns=pidns, cgroup=cgroup, started_ns=time.time_ns())))
    for cid, rc in list(composer.containers.get(SOURCE, {}).items()):
        pc = composer.pods.get(cid)
        if pc is None or not pc.running or not _alive(rc):
            facts.append(Remove(SOURCE, cid, time.time_ns()))
    return facts
