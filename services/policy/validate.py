"""Policy admission: what a Kubernetes API server with KubeArmor's CRDs would accept, plus a few checks.

Layers, in order: the envelope (apiVersion, kind, metadata — what the API server checks itself),
the CRD's openAPIV3Schema (walked generically by :mod:`services.policy.schema`), then semantic
checks the schema cannot express (the network policy's CEL rules, a process matchPaths entry
needing ``path`` or ``execname``, a preset Bulwark knows with an action it can take). matchPatterns
are globs (``/etc/*hado?``, ``/**/*.conf``), not regular expressions, so they are not compiled here.
Admission (:func:`admit`, :func:`check_document`: what the policy service and ``bulwark policy
validate`` use) adds Bulwark's own rule on top of what :func:`validate` checks: a policy must declare
at least one rule, since one without does nothing (an empty or missing ``spec``). Unknown fields are
pruned, as the API server does, and reported as warnings; so is a missing ``apiVersion``, which is defaulted
to ``security.kubearmor.com/v1`` (the corpus has a document saying ``Version:`` instead, and
KubeArmor's examples expect it to be admitted). A *wrong* apiVersion is an error.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

from services.policy.limits import args_warnings, rule_warnings
from services.policy.schema import SchemaIssue, check, dotted, load_crd_schemas, prune
from shared.errors import FieldError, ValidationFailed
from shared.presets import PRESETS

__all__ = ["API_VERSION", "KINDS", "NAMESPACED", "Admitted", "validate", "check_document", "admit", "schema_issues",
           "canonical_kind", "preset_warnings", "status_warnings"]

API_VERSION = "security.kubearmor.com/v1"
KINDS = ("KubeArmorPolicy", "KubeArmorClusterPolicy", "KubeArmorHostPolicy", "KubeArmorNetworkPolicy")
NAMESPACED = frozenset({"KubeArmorPolicy"})
_SHORT = {"ksp": "KubeArmorPolicy", "csp": "KubeArmorClusterPolicy", "hsp": "KubeArmorHostPolicy",
          "nsp": "KubeArmorNetworkPolicy"}
# Matched with fullmatch: "abc\n" is not a name (``$`` alone would accept a trailing newline).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

# What a CRD pattern means, in words a user understands.
_PATTERN_HINTS = {
    r"^\/+.*[^\/]$": "must be an absolute path: start with '/' and not end with '/'",
    r"^\/$|^\/.*\/$": "must be an absolute directory: start and end with '/'",
    r"(^\/+.*[^\/]$)|(^\/$|^\/.*\/$)": "must be an absolute path, or a directory ending with '/'",
    r"^[^\/]+$": "must be a program name without '/'",
    r"^[0-9]+(KB|MB|GB|K|M|G)?$": "must be a size such as 500MB, 2GB or 1024KB",
}
_PATTERN_PREFIX_HINTS = {
    "(chown|": "must be a capability name such as net_raw or sys_admin (lowercase, without cap_)",
    "(tcp|TCP|": "must be a protocol: tcp, udp, icmp, icmpv6, raw, sctp, stream, dgram, rdm, seqpacket, "
                 "dccp, packet or all",
}
_SECTIONS = ("process", "file", "network", "capabilities", "syscalls", "device")
_OTHER_RULES = ("apparmor", "ingress", "egress")  # rules Bulwark admits but does not enforce
_KNOWN_PRESETS = ", ".join(PRESETS)
_EXEC_SCOPE = ("exec: an entry is told by its parent being outside the workload's PID namespace; in workloads "
               "that share one (hostPID, shareProcessNamespace pods) entries go unseen, and a sharing "
               "container's first process is reported as one")


@dataclass
class Admitted:
    """A valid document as it would be stored: defaults applied, unknown fields pruned."""

    doc: dict[str, Any]
    warnings: list[FieldError] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        """(kind, namespace, name)."""
        meta = self.doc["metadata"]
        return self.doc["kind"], meta.get("namespace", ""), meta["name"]


def canonical_kind(kind: str) -> str:
    """A kind or short name (ksp, csp, hsp, nsp; any case) as its proper kind, else unchanged."""
    for k in KINDS:
        if kind.lower() in (k.lower(), k.lower()[len("kubearmor"):]):
            return k
    return _SHORT.get(kind.lower(), kind)


def _message(issue: SchemaIssue) -> str:
    if issue.code == "pattern":
        hint = _PATTERN_HINTS.get(issue.rule) or next(
            (h for prefix, h in _PATTERN_PREFIX_HINTS.items() if issue.rule.startswith(prefix)), None)
        if hint:
            return f"{issue.value!r} {hint}"
    return issue.message


def _envelope(doc: dict[str, Any]) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    if "apiVersion" in doc and doc["apiVersion"] != API_VERSION:
        errors.append(("apiVersion", f"must be {API_VERSION}, got {doc['apiVersion']!r}"))
    kind = doc.get("kind")
    if kind not in KINDS:
        got = f", got {kind!r}" if kind is not None else " (missing)"
        errors.append(("kind", f"must be one of {', '.join(KINDS)}{got}"))
    meta = doc.get("metadata")
    if not isinstance(meta, dict):
        errors.append(("metadata", "is required and must be a map with at least a name"))
        return errors
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        errors.append(("metadata.name", "is required"))
    elif len(name) > 253 or not _DNS_SUBDOMAIN.fullmatch(name):
        errors.append(("metadata.name", f"{name!r} must be a DNS-1123 subdomain: lowercase letters, digits, "
                                        "'-' and '.', starting and ending with a letter or digit"))
    ns = meta.get("namespace")
    if ns is not None and isinstance(kind, str) and kind in NAMESPACED and (not isinstance(ns, str) or len(ns) > 63
                                                  or not _DNS_LABEL.fullmatch(ns)):
        errors.append(("metadata.namespace", f"{ns!r} must be a DNS-1123 label: lowercase letters, digits "
                                             "and '-', at most 63 characters"))
    for key in ("labels", "annotations"):
        value = meta.get(key)
        if value is not None and (not isinstance(value, dict)
                                  or not all(isinstance(v, str) for v in value.values())):
            errors.append((f"metadata.{key}", "must be a map of strings"))
    return errors


def _semantic(doc: dict[str, Any]) -> list[tuple[str, str]]:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return []
    errors: list[tuple[str, str]] = []
    for section in _SECTIONS:
        body = spec.get(section)
        if not isinstance(body, dict):
            continue
        for list_name, items in body.items():
            if not isinstance(items, list):
                continue
            for i, item in enumerate(items):
                if not isinstance(item, dict):
                    continue
                where = f"spec.{section}.{list_name}[{i}]"
                needs_path = section == "process" and list_name == "matchPaths"
                if needs_path and not (item.get("path") or item.get("execname")):
                    errors.append((f"{where}.path", "is required (or give execname)"))
    if doc.get("kind") == "KubeArmorNetworkPolicy":
        errors.extend(_network_policy_rules(spec))
    errors.extend(_preset_problems(spec))
    return errors


def _preset_problems(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """Each preset must be one Bulwark implements, with an action it can take (Audit or Block)."""
    presets = spec.get("presets")
    if not isinstance(presets, list):
        return []
    errors: list[tuple[str, str]] = []
    for i, item in enumerate(presets):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if not name:
            errors.append((f"spec.presets[{i}].name", f"is required: one of {_KNOWN_PRESETS}"))
        elif name not in PRESETS:
            errors.append((f"spec.presets[{i}].name", f"unknown preset {name!r}: Bulwark knows {_KNOWN_PRESETS}"))
        if str(item.get("action") or "").lower() == "allow":
            errors.append((f"spec.presets[{i}].action", "a preset is Audit (report the attack) or Block (also "
                                                        "stop it); Allow would allow nothing (KubeArmor blocks)"))
    return errors


def preset_warnings(spec: dict[str, Any], document: str = "") -> list[FieldError]:
    """What a preset cannot do, said before any node needs it: a Block no enforcer can enforce is only
    reported, and the exec preset tells entries apart only in workloads with their own PID namespace."""
    out = []
    for i, item in enumerate(spec.get("presets") or []):
        info = PRESETS.get(str(item.get("name"))) if isinstance(item, dict) else None
        if info is None:
            continue
        if info.name == "exec":
            out.append(FieldError(f"spec.presets[{i}].name", _EXEC_SCOPE, document))
        if str(item.get("action") or "block").lower() != "block":
            continue
        if info.blocked_by:
            text = (f"{info.name} Block: {info.blocked_by}; on a node with none of these the attack is only "
                    "reported, as Audit (Block) (`bulwark probe` says what a node does)")
        else:
            text = f"{info.name} Block: Bulwark never blocks this ({info.catches}); it is reported as Audit (Block)"
        out.append(FieldError(f"spec.presets[{i}].action", text, document))
    return out


def _network_policy_rules(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """The CRD's x-kubernetes-validations (CEL) rules, written out by hand."""
    sel = spec.get("selector")
    containers = isinstance(sel, dict) and ("matchLabels" in sel or "matchExpressions" in sel)
    errors: list[tuple[str, str]] = []
    if containers and "nodeSelector" in spec:
        errors.append(("spec", "A policy cannot target both containers and host nodes."))
    if containers:
        for direction in ("ingress", "egress"):
            for i, r in enumerate(spec.get(direction) or []):
                if isinstance(r, dict) and not ("limit" in r and "duration" in r):
                    errors.append((f"spec.{direction}[{i}]", "Container policies strictly support only bandwidth "
                                   f"quota rules; all {direction} rules must declare both 'limit' and 'duration'"))
    return errors


def _section_rules(spec: dict[str, Any]) -> bool:
    """Whether a section (process, file...) holds at least one rule list with an entry."""
    return any(isinstance(body, dict) and any(isinstance(v, list) and v for v in body.values())
               for body in (spec.get(s) for s in _SECTIONS))


def _enforced_rules(spec: dict[str, Any]) -> bool:
    """Whether ``spec`` holds a rule Bulwark enforces: a section's entry, or a preset."""
    return _section_rules(spec) or bool(spec.get("presets"))


def _admission(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Bulwark's own admission rule: a policy declares at least one rule."""
    spec = doc.get("spec")
    if isinstance(spec, dict) and (_enforced_rules(spec) or any(spec.get(k) for k in _OTHER_RULES)):
        return []
    return [("spec", "declares no rule: a policy needs at least one of " + ", ".join(_SECTIONS)
             + " (with a matchPaths, matchDirectories... entry), presets, apparmor, ingress or egress")]


def schema_issues(doc: dict[str, Any]) -> tuple[list[SchemaIssue], list[tuple[str | int, ...]]]:
    """The CRD schema layer alone: (errors, unknown-field paths). Unknown kinds give no issues."""
    schema = load_crd_schemas().get(str(doc.get("kind")))
    if schema is None:
        return [], []
    return check(schema, doc)


def _check(doc: dict[str, Any], document: str,
           admission: bool = True) -> tuple[list[FieldError], list[tuple[str | int, ...]]]:
    if not isinstance(doc, dict):
        return [FieldError("", f"a policy must be a map, got {type(doc).__name__}", document)], []
    errors = [FieldError(p, m, document) for p, m in _envelope(doc)]
    if any(e.path == "kind" for e in errors):
        return errors, []
    issues, unknown = schema_issues(doc)
    errors += [FieldError(i.path, _message(i), document) for i in issues]
    errors += [FieldError(p, m, document) for p, m in _semantic(doc)]
    if admission:
        errors += [FieldError(p, m, document) for p, m in _admission(prune(doc, unknown))]
    return errors, unknown


def _warnings(doc: dict[str, Any], unknown: list[tuple[str | int, ...]], document: str) -> list[FieldError]:
    out = []
    if isinstance(doc, dict) and "apiVersion" not in doc:
        out.append(FieldError("apiVersion", f"missing: defaulted to {API_VERSION}", document))
    out += [FieldError(dotted(p), "unknown field, ignored", document) for p in unknown]
    return out


def check_document(doc: dict[str, Any], document: str = "") -> tuple[list[FieldError], list[FieldError]]:
    """(errors, warnings) of admitting one policy document (:func:`admit`); never raises, whatever ``doc`` holds."""
    try:
        return [], admit(doc, document).warnings
    except ValidationFailed as exc:
        return list(exc.errors), []


def validate(doc: dict[str, Any], document: str = "") -> list[FieldError]:
    """Every problem a Kubernetes API server with the CRDs would see (empty when it would admit it).

    Admission (:func:`admit`) checks these and Bulwark's own rules (a policy declares a rule).
    """
    return _check(doc, document, admission=False)[0]


def admit(doc: dict[str, Any], document: str = "") -> Admitted:
    """The stored form of a valid document; ValidationFailed naming every problem otherwise."""
    errors, unknown = _check(doc, document)
    if errors:
        raise ValidationFailed(errors)
    warnings = _warnings(doc, unknown, document)
    clean = prune(copy.deepcopy(doc), unknown)
    meta = clean["metadata"]
    out_meta: dict[str, Any] = {"name": meta["name"]}
    if clean["kind"] in NAMESPACED:
        out_meta["namespace"] = meta.get("namespace") or "default"
    for key in ("labels", "annotations"):
        if meta.get(key):
            out_meta[key] = meta[key]
    stored = {"apiVersion": API_VERSION, "kind": clean["kind"], "metadata": out_meta,
              "spec": clean.get("spec") if isinstance(clean.get("spec"), dict) else {}}
    if clean["kind"] == "KubeArmorNetworkPolicy":
        warnings.append(FieldError("kind", "KubeArmorNetworkPolicy is stored but not enforced: Bulwark does not "
                                           "compile network policies yet, so this policy blocks nothing", document))
    elif not _enforced_rules(stored["spec"]):
        named = ", ".join(k for k in _OTHER_RULES if stored["spec"].get(k))
        warnings.append(FieldError("spec", f"has only rules Bulwark does not enforce ({named}): "
                                           "the policy enforces nothing here", document))
    else:
        warnings += preset_warnings(stored["spec"], document) + args_warnings(stored["spec"], document)
    return Admitted(stored, warnings)


def status_warnings(spec: dict[str, Any], document: str = "") -> list[FieldError]:
    """What an applied policy's presets and rules cannot do (its status): the admission's warnings about
    them, and the limits of file write protection (services.policy.limits)."""
    return preset_warnings(spec, document) + rule_warnings(spec, document)
