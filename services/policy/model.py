"""The internal policy: a stored (admitted) document turned into selectors and default-filled rules.

Defaults are KubeArmor's, applied by its daemon rather than the CRD: a rule's action, severity,
tags and message fall back to its section's (``spec.process.action``...), then to the spec's; an
empty action means Block; actions are case-normalised. A preset (``spec.presets[i]``) is a rule of
operation ``Preset`` (shared.presets) with the spec's severity, tags and message and its own action
only (KubeArmor blocks unless a preset says Audit). Rules carry no workload, so one compiled list is
shared by every workload a policy selects.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.policy.globs import glob_to_regex
from shared.presets import PRESET_OPERATION
from shared.schemas.rules import Rule

__all__ = ["Expression", "Policy", "to_policy", "normalise_action", "container_names", "CONTAINER_NAME_LABEL"]

CONTAINER_NAME_LABEL = "kubearmor.io/container.name"
_ACTIONS = {"allow": "Allow", "audit": "Audit", "block": "Block"}


@dataclass(frozen=True, slots=True)
class Expression:
    """One matchExpressions entry: key ``label`` (values ``k=v``) or ``namespace``; In or NotIn."""

    key: str
    operator: str
    values: tuple[str, ...]


@dataclass(slots=True)
class Policy:
    """A policy ready to compile: who it selects and its rules (defaults applied)."""

    kind: str
    namespace: str
    name: str
    doc: dict[str, Any]
    match_labels: dict[str, str] = field(default_factory=dict)
    container_names: tuple[str, ...] | None = None
    expressions: tuple[Expression, ...] = ()
    node_labels: dict[str, str] = field(default_factory=dict)
    rules: list[Rule] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name): what identifies the policy."""
        return self.kind, self.namespace, self.name


def normalise_action(value: Any) -> str:
    """``block``/``BLOCK``/empty -> ``Block``; ``audit`` -> ``Audit``; ``allow`` -> ``Allow``."""
    return _ACTIONS.get(str(value or "").strip().lower(), "Block")


def _pick(key: str, *layers: dict[str, Any]) -> Any:
    for layer in layers:
        value = layer.get(key)
        if value not in (None, "", [], 0):
            return value
    return None


def _sources(item: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for src in item.get("fromSource") or []:
        if not isinstance(src, dict):
            continue
        one: dict[str, Any] = {}
        if src.get("path"):
            one["path"] = src["path"]
        if src.get("dir"):
            one["dir"] = src["dir"]
            one["recursive"] = bool(src.get("recursive", False))
        if one:
            out.append(one)
    return out


class _Builder:
    """Turns one spec into rules, applying the rule -> section -> spec fallbacks."""

    def __init__(self, policy: Policy, spec: dict[str, Any]) -> None:
        self.policy = policy
        self.spec = spec

    def rule(self, operation: str, item: dict[str, Any], section: dict[str, Any], **resource: Any) -> Rule:
        layers = (item, section, self.spec)
        if operation == "Syscall":
            action = "Audit"
        elif operation == PRESET_OPERATION:
            action = normalise_action(item.get("action"))  # its own only: not the spec's
        else:
            action = normalise_action(_pick("action", *layers))
        return Rule(
            policy=self.policy.name, policy_kind=self.policy.kind,
            policy_namespace=self.policy.namespace, operation=operation, action=action,
            severity=int(_pick("severity", *layers) or 0), message=str(_pick("message", *layers) or ""),
            tags=[str(t) for t in (_pick("tags", *layers) or [])],
            from_source=_sources(item), owner_only=bool(item.get("ownerOnly", False)),
            read_only=bool(item.get("readOnly", False)), **resource)

    def path_rules(self, operation: str, section: dict[str, Any]) -> list[Rule]:
        out = []
        for item in section.get("matchPaths") or []:
            if item.get("path"):
                out.append(self.rule(operation, item, section, path=item["path"]))
            elif item.get("execname"):
                out.append(self.rule(operation, item, section, exec_name=item["execname"]))
        for item in section.get("matchDirectories") or []:
            out.append(self.rule(operation, item, section, dir=item["dir"],
                                 recursive=bool(item.get("recursive", False))))
        for item in section.get("matchPatterns") or []:
            out.append(self.rule(operation, item, section, pattern=glob_to_regex(item["pattern"].strip())))
        return out

    def build(self) -> list[Rule]:
        spec = self.spec
        rules: list[Rule] = []
        for name, operation in (("process", "Process"), ("file", "File")):
            if isinstance(spec.get(name), dict):
                rules += self.path_rules(operation, spec[name])
        net = _map(spec, "network")
        for item in net.get("matchProtocols") or []:
            rules.append(self.rule("Network", item, net, protocol=str(item["protocol"]).lower()))
        caps = _map(spec, "capabilities")
        for item in caps.get("matchCapabilities") or []:
            rules.append(self.rule("Capabilities", item, caps, capability=str(item["capability"]).lower()))
        sys_ = _map(spec, "syscalls")
        for item in sys_.get("matchSyscalls") or []:
            for call in item.get("syscall") or [""]:
                rules.append(self.rule("Syscall", item, sys_, syscall=call))
        for item in sys_.get("matchPaths") or []:
            where = item.get("path", "")
            res = {"dir": where, "recursive": bool(item.get("recursive", False))} if where.endswith("/") \
                else {"path": where}
            for call in item.get("syscall") or [""]:
                rules.append(self.rule("Syscall", item, sys_, syscall=call, **res))
        for item in spec.get("presets") or []:
            if isinstance(item, dict) and item.get("name"):
                rules.append(self.rule(PRESET_OPERATION, item, {}, preset=str(item["name"])))
        return rules


def _map(spec: dict[str, Any], key: str) -> dict[str, Any]:
    """``spec[key]`` when it is a map, else an empty one."""
    value = spec.get(key)
    return value if isinstance(value, dict) else {}


def container_names(value: Any) -> tuple[str, ...] | None:
    """The names of ``kubearmor.io/container.name: "[a,b]"``; None (every container) when it names none.

    As KubeArmor: empty entries are dropped (``"[a,,]"`` is ``a``), and an empty list (``"[]"``,
    ``""``, ``"[ , ]"``) narrows nothing, so the policy applies to all containers of the selected pods.
    """
    if value is None:
        return None
    names = tuple(n.strip() for n in str(value).strip().strip("[]").split(",") if n.strip())
    return names or None


def _selector(policy: Policy, spec: dict[str, Any]) -> None:
    sel = _map(spec, "selector")
    labels = dict(sel.get("matchLabels") or {})
    policy.container_names = container_names(labels.pop(CONTAINER_NAME_LABEL, None))
    policy.match_labels = labels
    policy.expressions = tuple(
        Expression(str(e.get("key", "")), str(e.get("operator", "")), tuple(str(v) for v in e.get("values") or []))
        for e in sel.get("matchExpressions") or [] if isinstance(e, dict))
    node = _map(spec, "nodeSelector")
    policy.node_labels = dict(node.get("matchLabels") or {})


def to_policy(doc: dict[str, Any]) -> Policy:
    """The internal policy of an admitted document (see :func:`services.policy.validate.admit`)."""
    meta = doc.get("metadata") or {}
    spec = doc.get("spec") or {}
    policy = Policy(kind=doc["kind"], namespace=meta.get("namespace", ""), name=meta["name"], doc=doc)
    _selector(policy, spec)
    if policy.kind != "KubeArmorNetworkPolicy":
        policy.rules = _Builder(policy, spec).build()
    return policy
