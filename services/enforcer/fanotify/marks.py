"""Turning a fanotify plan into inodes (resolved as each workload sees its paths) and marks on them."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

from services.enforcer.fanotify.plan import NsPlan
from shared.lifecycle import Counters
from shared.matcher import Access, Decision, Posture
from shared.procroot import open_in_root, pids_by_mntns
from shared.schemas.rules import Rule

__all__ = ["Tables", "Resolved", "resolve_plans", "MAX_TREE_DIRS", "MOUNT_KEY"]

log = logging.getLogger("bulwark.enforcer.fanotify")

MAX_TREE_DIRS = 4096  # subdirectories marked per recursive rule; beyond that counted as tree_truncated
DevIno = tuple[int, int]  # an inode, or (MOUNT_KEY, mount id) for a mount mark
MOUNT_KEY = -1
_PSEUDO_FS = frozenset({"proc", "sysfs", "cgroup", "cgroup2", "devpts", "mqueue", "tracefs", "debugfs",
                        "securityfs", "bpf", "pstore", "configfs", "fusectl", "binfmt_misc", "nsfs"})


@dataclass(slots=True)
class Tables:
    """What the reader thread decides with; replaced as a whole, never mutated once published
    (but for ``decisions``, the reader thread's own memo of what the matcher said with them)."""

    rules: dict[int, list[Rule]] = field(default_factory=dict)       # mntns -> rules for the matcher
    files: dict[tuple[int, int, int], tuple[str, ...]] = field(default_factory=dict)  # dev,ino,mntns
    dirs: dict[tuple[int, int, int], str] = field(default_factory=dict)  # dir dev,ino,mntns -> its path
    dir_ns: frozenset[int] = frozenset()                             # namespaces with directory marks
    mount_ns: frozenset[int] = frozenset()                           # namespaces with mount marks
    posture: dict[int, Posture] = field(default_factory=dict)        # mntns -> default postures
    owner_ns: frozenset[int] = frozenset()                           # namespaces with ownerOnly rules
    decisions: dict[tuple[int, Access], Decision | None] = field(default_factory=dict)  # memo


@dataclass(slots=True)
class Resolved:
    """The tables plus the inodes to mark: (dev, ino) -> (O_PATH fd, mask)."""

    tables: Tables
    wanted: dict[DevIno, tuple[int, int]]


def _open(path: str, pid: int | None, counters: Counters) -> int | None:
    """An O_PATH fd for ``path`` in the workload's root (ours if its process is gone), or None."""
    for root in ((pid, None) if pid else (None,)):
        try:
            return open_in_root(path, root)
        except OSError as exc:
            err = exc
    counters.inc("missing_paths")
    log.warning("rule names a missing path", extra={"path": path, "error": str(err)})
    return None


def _want(fd: int, mask: int, wanted: dict[DevIno, tuple[int, int]]) -> DevIno:
    st = os.fstat(fd)
    key = (st.st_dev, st.st_ino)
    if key in wanted:
        os.close(fd)
        old_fd, old_mask = wanted[key]
        wanted[key] = (old_fd, old_mask | mask)
    else:
        wanted[key] = (fd, mask)
    return key


def _subdirs(path: str, pid: int | None, counters: Counters) -> list[str]:
    """Every directory under ``path`` (included) as the workload names it, without following links."""
    root = f"/proc/{pid}/root" if pid else ""
    out: list[str] = []
    for dirpath, _dirs, _files in os.walk(root + path, followlinks=False):
        if len(out) >= MAX_TREE_DIRS:
            counters.inc("tree_truncated")
            log.warning("recursive rule covers too many directories", extra={"path": path})
            break
        out.append(dirpath[len(root):] or "/")
    return out or [path]


def _mounts(pid: int, mask: int, wanted: dict[DevIno, tuple[int, int]], counters: Counters) -> bool:
    """Mount marks on every real filesystem mount of ``pid``'s namespace; False if none could be had."""
    try:
        with open(f"/proc/{pid}/mountinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    marked = False
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, fstype = left.split(), right.split(" ", 1)[0]
        if len(fields) < 5 or fstype in _PSEUDO_FS:
            continue
        mount_point = fields[4].replace("\\040", " ")
        try:
            fd = open_in_root(mount_point, pid)
        except OSError:
            counters.inc("missing_paths")
            continue
        wanted[(MOUNT_KEY, int(fields[0]))] = (fd, mask)
        marked = True
    return marked


def resolve_plans(plans: dict[int, NsPlan], counters: Counters) -> Resolved:
    """Open every target inside its workload's root; the tables the reader decides with."""
    pids = pids_by_mntns(set(plans)) if plans else {}
    wanted: dict[DevIno, tuple[int, int]] = {}
    files: dict[tuple[int, int, int], list[str]] = {}
    dirs: dict[tuple[int, int, int], str] = {}
    mount_ns: set[int] = set()
    for mntns, nsplan in plans.items():
        pid = pids.get(mntns)
        if nsplan.mount_mask and pid and _mounts(pid, nsplan.mount_mask, wanted, counters):
            mount_ns.add(mntns)
        for target, mask in sorted(nsplan.targets.items(), key=lambda kv: kv[0].path):
            paths = _subdirs(target.path, pid, counters) if target.kind == "tree" else [target.path]
            for path in paths:
                fd = _open(path, pid, counters)
                if fd is None:
                    continue
                key = _want(fd, mask, wanted)
                if target.kind == "file":
                    files.setdefault((*key, mntns), []).append(path)
                else:
                    dirs[(*key, mntns)] = path
    tables = Tables(rules={ns: p.rules for ns, p in plans.items()},
                    files={k: tuple(v) for k, v in files.items()}, dirs=dirs,
                    dir_ns=frozenset(k[2] for k in dirs), mount_ns=frozenset(mount_ns),
                    posture={ns: p.posture for ns, p in plans.items()},
                    owner_ns=frozenset(ns for ns, p in plans.items() if any(r.owner_only for r in p.rules)))
    return Resolved(tables, wanted)
