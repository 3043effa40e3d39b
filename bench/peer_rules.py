"""bench/peers.py's one policy set, and the equivalent auditd and fapolicyd rules generated from it.

The set is KubeArmor YAML (Block File and Process rules on paths under a root the bench created).
Bulwark applies it as written; the peers' rules come from the rules Bulwark's own compiler makes of
it, so all three judge the same paths. A rule the peers cannot express exactly is refused, not
approximated. Pure: no process is started, nothing on the host is touched.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

NAMESPACE = "bw-peers"
LABEL = ("app", "bw-peers")
AUDIT_KEY = "bwpeers"
ALLOW_ALL = "allow perm=any all : all"

POLICY_SET = """\
apiVersion: v1
kind: List
items:
- apiVersion: security.kubearmor.com/v1
  kind: KubeArmorPolicy
  metadata: {{name: peers-block-files, namespace: {ns}}}
  spec:
    severity: 5
    selector: {{matchLabels: {{{label}: {value}}}}}
    file:
      matchPaths:
      - path: {root}/ruled/secret0
      - path: {root}/ruled/secret1
      matchDirectories:
      - dir: {root}/ruled/vault/
        recursive: true
    action: Block
- apiVersion: security.kubearmor.com/v1
  kind: KubeArmorPolicy
  metadata: {{name: peers-block-programs, namespace: {ns}}}
  spec:
    severity: 5
    selector: {{matchLabels: {{{label}: {value}}}}}
    process:
      matchPaths:
      - path: {root}/ruled/tool0
      - path: {root}/ruled/tool1
    action: Block
"""


class Untranslatable(ValueError):
    """A compiled rule that auditd or fapolicyd cannot express exactly."""


def policy_set(root: str) -> str:
    """The policy set (a YAML List of two KubeArmorPolicy) for bench paths under ``root``."""
    return POLICY_SET.format(root=root.rstrip("/"), ns=NAMESPACE, label=LABEL[0], value=LABEL[1])


@dataclass(frozen=True)
class Targets:
    """What the rules name: files and directory trees whose every access is blocked, programs whose
    exec is blocked."""

    files: tuple[str, ...] = ()
    dirs: tuple[str, ...] = ()  # each ends with "/"
    programs: tuple[str, ...] = ()

    def paths(self) -> list[str]:
        """Every path named, directories without their trailing slash."""
        return [*self.files, *(d.rstrip("/") for d in self.dirs), *self.programs]


@dataclass(frozen=True)
class Violation:
    """One access the policy set forbids: ``open`` (read) or ``exec`` of ``path``."""

    kind: str
    path: str
    rule: str = field(default="", compare=False)  # the rule's resource, for the report

    def label(self) -> str:
        """How the report names it."""
        return f"{self.kind} {self.path}"


def _refuse(rule: Any, why: str) -> Untranslatable:
    return Untranslatable(f"{rule.policy}: {rule.operation} rule {rule.path or rule.dir or rule.pattern!r}: {why}")


def targets_of(rules: Iterable[Any]) -> Targets:
    """The paths of compiled Block rules (shared.schemas.rules.Rule); Untranslatable for anything else."""
    files: set[str] = set()
    dirs: set[str] = set()
    programs: set[str] = set()
    for rule in rules:
        if rule.action != "Block":
            raise _refuse(rule, f"action {rule.action} (only Block is translated)")
        if rule.pattern or rule.exec_name or rule.from_source or rule.owner_only or rule.read_only:
            raise _refuse(rule, "patterns, execname, fromSource, ownerOnly and readOnly have no exact peer form")
        if rule.operation == "File" and rule.path:
            files.add(rule.path)
        elif rule.operation == "File" and rule.dir and rule.recursive:
            dirs.add(rule.dir.rstrip("/") + "/")
        elif rule.operation == "File" and rule.dir:
            raise _refuse(rule, "a non-recursive directory (the peers' directory rules cover the whole tree)")
        elif rule.operation == "Process" and rule.path:
            programs.add(rule.path)
        else:
            raise _refuse(rule, "only File paths, recursive File directories and Process paths are translated")
    return Targets(tuple(sorted(files)), tuple(sorted(dirs)), tuple(sorted(programs)))


def violations(targets: Targets, probe_name: str = "probe") -> list[Violation]:
    """One violation per rule: read each file, read ``probe_name`` in each directory, exec each program."""
    out = [Violation("open", f, f) for f in targets.files]
    out += [Violation("open", d + probe_name, d) for d in targets.dirs]
    out += [Violation("exec", p, p) for p in targets.programs]
    return out


def audit_watches(targets: Targets, key: str = AUDIT_KEY) -> list[list[str]]:
    """auditctl arguments adding one watch per rule: files and directories -p rwa, programs -p x."""
    out = [["-w", path, "-p", "rwa", "-k", key] for path in (*targets.files, *(d.rstrip("/") for d in targets.dirs))]
    out += [["-w", path, "-p", "x", "-k", key] for path in targets.programs]
    return out


def audit_unwatches(watches: list[list[str]]) -> list[list[str]]:
    """auditctl arguments deleting exactly the given watches (-W with the same path, perms and key)."""
    return [["-W", *args[1:]] if args[:1] == ["-w"] else list(args) for args in watches]


def fapolicyd_rules(targets: Targets) -> str:
    """fapolicyd rules: deny every access to the files and directory trees, deny exec of the programs,
    then allow everything else. No trust-based rule."""
    lines = ["# generated by bench/peers.py from its KubeArmor policy set; only bench-owned paths are denied"]
    lines += [f"deny perm=any all : path={f}" for f in targets.files]
    lines += [f"deny perm=any all : dir={d}" for d in targets.dirs]
    lines += [f"deny perm=execute all : path={p}" for p in targets.programs]
    lines.append(ALLOW_ALL)
    return "\n".join(lines) + "\n"


def _under(path: str, root: str) -> bool:
    path, root = os.path.normpath(path), os.path.normpath(root)
    return path != root and os.path.commonpath([path, root]) == root


def check_root(root: str) -> None:
    """A root the peers' rules may name: absolute, normalised and at least two levels deep."""
    if not os.path.isabs(root) or os.path.normpath(root) != root.rstrip("/") or root.count("/") < 2:
        raise ValueError(f"refusing rules for root {root!r}: not a private bench directory")


def check_fapolicyd_rules(text: str, root: str) -> None:
    """ValueError unless ``text`` denies only paths under ``root``, uses no trust, and ends allowing all."""
    check_root(root)
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not lines or lines[-1] != ALLOW_ALL:
        raise ValueError(f"fapolicyd rules must end with {ALLOW_ALL!r}")
    for line in lines[:-1]:
        decision, _, rest = line.partition(" ")
        subject, sep, obj = rest.partition(" : ")
        fields = obj.split()
        if not decision.startswith("deny") or not sep or "trust" in line or len(fields) != 1:
            raise ValueError(f"fapolicyd rule not allowed here: {line!r}")
        name, _, value = fields[0].partition("=")
        if name not in ("path", "dir") or not _under(value, root) or not subject.endswith(" all"):
            raise ValueError(f"fapolicyd rule names something outside {root}: {line!r}")


def check_audit_watches(watches: list[list[str]], root: str) -> None:
    """ValueError unless every watch is ``-w PATH -p PERMS -k KEY`` on a path under ``root``."""
    check_root(root)
    for args in watches:
        if len(args) != 6 or args[0] != "-w" or args[2] != "-p" or args[4] != "-k" or not _under(args[1], root):
            raise ValueError(f"audit rule not allowed here: {args}")
