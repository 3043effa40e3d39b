"""What the fanotify enforcer marks, per mount namespace: pure planning from a RuleSet (no I/O).

Only the files and directories Block rules name are marked:

- Process rule, ``path``      -> FAN_OPEN_EXEC_PERM on that file, and FAN_OPEN_PERM so that the dynamic
  loader run as a program (``ld.so PATH``, which opens PATH instead of exec'ing it) is judged too
  (``shared.loaders``); an exec of a marked file then costs two verdicts
- File rule, ``path``         -> FAN_OPEN_PERM on that file (reads and writes; the decision tells them apart)
- ``dir`` (matchDirectories)  -> the same mask plus FAN_EVENT_ON_CHILD on the directory (its direct
  children); with ``recursive`` every subdirectory found at apply time is marked the same way
  ("tree"). Subdirectories created later are covered from the next apply (the enforcer re-applies
  periodically). A mount or filesystem mark would cover them at once but would make every open on
  that filesystem, host processes included, wait for a verdict: not used.
- paths under /proc and /sys are never marked (the decision reads /proc itself);
- ``pattern`` (matchPatterns) and ``exec_name`` rules name no inode: the workload's own mounts get a
  mount mark (``mount_mask``, as for allow-lists below: FAN_OPEN_EXEC_PERM for Process, FAN_OPEN_PERM
  for File) and every such access in its namespace is judged by its path. In the host's namespace
  they cannot be enforced (counted as ``unmarkable``; the monitor still reports them).

Audit and Allow rules need no mark: the matcher lets Block win, and only a Block can deny.

Allow-lists: when a workload has an Allow rule for Process (or File) and its file posture is
``block``, everything else is denied, so every mount of the workload's mount namespace gets a mount
mark (``mount_mask``). ``unshare(CLONE_NEWNS)`` copies the mount tree: those mount objects are the
workload's own, so host processes never generate these events. The host's own namespace (host
policies) never gets mount marks (every process on the node, Bulwark included, would wait on us):
its allow-lists are reported by the monitor, not enforced here (``posture_unenforced``).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from services.enforcer.fanotify import syscalls as fs
from shared.matcher import DEFAULT_POSTURE, Posture
from shared.schemas.rules import Rule, RuleSet

__all__ = ["Target", "NsPlan", "plan", "OPERATIONS"]

OPERATIONS = frozenset({"Process", "File"})
_NEVER_MARKED = ("/proc/", "/sys/")
_MASK = {"Process": fs.FAN_OPEN_EXEC_PERM, "File": fs.FAN_OPEN_PERM}
_BLOCK_MASK = {"Process": fs.FAN_OPEN_EXEC_PERM | fs.FAN_OPEN_PERM, "File": fs.FAN_OPEN_PERM}
_BY_PATH_MASK = _MASK  # a pattern or exec-name rule: every exec (Process) or open (File) of the workload


@dataclass(frozen=True, slots=True)
class Target:
    """One path to mark, as the workload names it: ``kind`` is file, dir or tree."""

    path: str
    kind: str


@dataclass(slots=True)
class NsPlan:
    """One mount namespace: the rules the matcher judges with and the masks per target."""

    rules: list[Rule] = field(default_factory=list)
    targets: dict[Target, int] = field(default_factory=dict)
    unmarkable: int = 0
    posture: Posture = DEFAULT_POSTURE
    mount_mask: int = 0
    posture_unenforced: int = 0


def _target(rule: Rule) -> Target | None:
    named = rule.path or rule.dir
    if named.startswith(_NEVER_MARKED):
        return None  # the reader thread reads /proc itself: a mark there could make it wait on itself
    if rule.path:
        return Target(rule.path, "file")
    if rule.dir:
        d = rule.dir.rstrip("/") or "/"
        return Target(d, "tree" if rule.recursive else "dir")
    return None


def _allow_list_mask(rules: list[Rule], posture: Posture) -> int:
    if posture.file != "block" or posture.audited:
        return 0
    mask = 0
    for rule in rules:
        if rule.action == "Allow":
            mask |= _MASK[rule.operation]
    return mask


def plan(ruleset: RuleSet, host_mntns: int = 0) -> dict[int, NsPlan]:
    """Mount namespace -> what to mark there; namespaces without anything to deny are left out."""
    rules_by_ns: dict[int, list[Rule]] = defaultdict(list)
    posture_by_ns: dict[int, Posture] = {}
    for wl in ruleset.running():
        if wl.mntns:  # workloads sharing a namespace share the matcher's input
            rules_by_ns[wl.mntns].extend(r for r in wl.rules if r.operation in OPERATIONS)
            posture_by_ns.setdefault(wl.mntns, Posture.of(wl))
    out: dict[int, NsPlan] = {}
    for mntns, rules in rules_by_ns.items():
        ns = NsPlan(rules=rules, posture=posture_by_ns[mntns])
        mount_mask = _allow_list_mask(rules, ns.posture)
        if mount_mask and mntns == host_mntns:
            ns.posture_unenforced += 1
        else:
            ns.mount_mask = mount_mask
        for rule in rules:
            if rule.action != "Block":
                continue
            target = _target(rule)
            if target is None:
                if (rule.pattern or rule.exec_name) and mntns != host_mntns:
                    ns.mount_mask |= _BY_PATH_MASK[rule.operation]
                else:
                    ns.unmarkable += 1
                continue
            mask = _BLOCK_MASK[rule.operation] | (fs.FAN_EVENT_ON_CHILD if target.kind != "file" else 0)
            ns.targets[target] = ns.targets.get(target, 0) | mask
        if ns.targets or ns.unmarkable or ns.mount_mask or ns.posture_unenforced:
            out[mntns] = ns
    return out
