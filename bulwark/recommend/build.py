"""Library rules + a workload's files -> KubeArmorPolicy documents, one per rule that applies.

A rule applies when it is ``always`` or when the image holds at least one thing it guards (a program
in a binary directory, a guarded file or directory). Programs become ``matchPaths`` for every path
that leads to them in the image (``/bin/apt`` and ``/usr/bin/apt`` in a merged-/usr image, since the
exec path is matched as written); guarded files and directories are kept when their parent exists
(they may be created at run time); ``~/`` is expanded to the image's home directories.
"""
from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

from bulwark.recommend.files import FileTree
from bulwark.recommend.library import BIN_DIRS, HardeningRule

__all__ = ["Target", "Recommendation", "recommend", "policy_name", "ACTIONS"]

ACTIONS = ("Audit", "Block")
_NOT_DNS = re.compile(r"[^a-z0-9.-]+")


@dataclass
class Target:
    """A workload to harden: who the policies select and the image they were chosen for."""

    name: str
    namespace: str
    selector: dict[str, str]
    image: str
    source: str = "image"  # image | container | workload | directory


@dataclass
class Recommendation:
    """One library rule for one target: whether it applies, why, and the policy when it does."""

    rule: HardeningRule
    applies: bool
    evidence: list[str] = field(default_factory=list)
    policy: dict[str, Any] | None = None
    file: str = ""


def policy_name(target: Target, rule: HardeningRule) -> str:
    """A DNS-1123 subdomain naming the policy of ``rule`` for ``target``."""
    base = _NOT_DNS.sub("-", f"{target.name}-{rule.id}".lower()).strip("-.")
    return (base[:253].rstrip("-.") or rule.id)


def _expand(paths: tuple[str, ...], homes: list[str]) -> list[str]:
    out: list[str] = []
    for p in paths:
        out += [h + p[1:] for h in homes] if p.startswith("~/") else [p]
    return out


def _program_paths(names: tuple[str, ...], tree: FileTree) -> list[str]:
    return sorted({f"{d}/{name}" for name in names for d in BIN_DIRS if tree.is_file(f"{d}/{name}")})


def _kept(paths: list[str], tree: FileTree, always: bool) -> tuple[list[str], list[str]]:
    """(paths to guard, those that exist): kept when the rule is always on or their parent exists."""
    keep, present = [], []
    for p in paths:
        bare = p.rstrip("/") or "/"
        if tree.kind(bare) is not None:
            present.append(p)
            keep.append(p)
        elif always or tree.is_dir(posixpath.dirname(bare)):
            keep.append(p)
    return keep, present


def _sections(rule: HardeningRule, tree: FileTree) -> tuple[dict[str, Any], list[str]]:
    homes = tree.homes()
    spec: dict[str, Any] = {}
    evidence: list[str] = []
    programs = _program_paths(rule.programs, tree)
    evidence += programs + _program_paths(rule.needs, tree)
    process: dict[str, Any] = {}
    if programs:
        process["matchPaths"] = [{"path": p} for p in programs]
    if rule.exec_names:
        process.setdefault("matchPaths", []).extend({"execname": n} for n in rule.exec_names)
    if rule.exec_dirs:
        process["matchDirectories"] = [{"dir": d, "recursive": True} for d in rule.exec_dirs]
    file: dict[str, list[dict[str, Any]]] = {}
    for paths, read_only in ((rule.read_paths, False), (rule.write_paths, True)):
        keep, present = _kept(_expand(paths, homes), tree, rule.always)
        evidence += present
        file.setdefault("matchPaths", []).extend({"path": p, **({"readOnly": True} if read_only else {})} for p in keep)
    for dirs, read_only in ((rule.read_dirs, False), (rule.write_dirs, True)):
        keep, present = _kept(_expand(dirs, homes), tree, rule.always)
        evidence += present
        file.setdefault("matchDirectories", []).extend(
            {"dir": d, "recursive": True, **({"readOnly": True} if read_only else {})} for d in keep)
    if rule.write_patterns:
        file["matchPatterns"] = [{"pattern": p, "readOnly": True} for p in rule.write_patterns]
    file = {k: v for k, v in file.items() if v}
    if process:
        spec["process"] = process
    if file:
        spec["file"] = file
    if rule.protocols:
        spec["network"] = {"matchProtocols": [{"protocol": p} for p in rule.protocols]}
    if rule.capabilities:
        spec["capabilities"] = {"matchCapabilities": [{"capability": c} for c in rule.capabilities]}
    return spec, sorted(set(evidence))


def recommend(target: Target, tree: FileTree, rules: list[HardeningRule], action: str = "Audit"
              ) -> list[Recommendation]:
    """One :class:`Recommendation` per rule, in library order; a policy for those that apply."""
    if action not in ACTIONS:
        raise ValueError(f"action: must be Audit or Block, got {action!r}")
    out = []
    for rule in rules:
        sections, evidence = _sections(rule, tree)
        applies = bool(sections) and (rule.always or bool(evidence))
        if not applies:
            out.append(Recommendation(rule, False, evidence))
            continue
        doc = {
            "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": policy_name(target, rule), "namespace": target.namespace},
            "spec": {"severity": rule.severity, "tags": rule.tags, "message": rule.title,
                     "selector": {"matchLabels": dict(sorted(target.selector.items()))},
                     **sections, "action": action},
        }
        out.append(Recommendation(rule, True, evidence, doc))
    return out
