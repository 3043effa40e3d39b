"""The one matcher: given a workload's compiled rules and what a process did, decide.

Used by the feeder (alerts), the simulator and any enforcer that decides at run time, so that what
is enforced and what is reported always agree. Pure: no I/O.

What a rule matches (KubeArmor's semantics, read from its documentation, its daemon's feeder and its
BPF-LSM rule handling):

* Process/File: ``path`` the exact resource; ``exec_name`` the resource's last component; ``dir``
  the files directly in it (or below it when ``recursive``) and the directory itself; ``pattern``
  a glob the policy compiler already turned into a regular expression, matched against the whole
  resource (see :mod:`services.policy.globs` for why globs).
* ``from_source``: the rule applies only when the accessing executable is one of its sources
  (``path`` equal, or inside ``dir``: directly, or at any depth when ``recursive``).
* ``owner_only`` (``uid == resource_owner_uid``; an unknown uid is not the owner) and ``read_only``
  (the access is not a write) are constraints. A Block or Audit rule fires only on an access that
  breaks them (a non-owner, a write); an Allow rule allows only accesses that keep them, and is
  as if absent for the others.
* Network: the protocol, or ``all``; Capabilities: the capability (case and ``cap_`` ignored);
  Syscall: the syscall name (case and ``sys_`` ignored) and, for ``matchPaths`` rules, the path.
  Syscall rules only ever audit, whatever the policy's action says.
* Preset (``spec.presets``, shared.presets): the access's ``preset`` is the rule's (a fileless exec,
  another process's environ...: the kernel records say which); no resource, no posture.

Conflicts, resolved as KubeArmor's enforcers do (one rule decides):

1. Block or Allow decides first, and a rule whose ``from_source`` names the accessing executable
   beats rules without ``from_source`` (BPF-LSM looks up (resource, source) before (resource)).
   So "Block /run/secrets/ for everyone, Allow it from /bin/cat" lets cat read and blocks others.
2. At the same level Block beats Allow (AppArmor's deny precedence; our enforcers agree).
3. Audit never grants nor takes away: with no Block, a matching Audit rule is reported (Audit
   beats Allow, as KubeArmor keeps the audit alert of an allowed access).
4. Nothing matched: if the workload has an Allow rule for this operation (an allow-list; Process
   and File are separate lists) the access falls to the default posture of the operation (Process
   uses the *file* posture): ``block`` -> Block, ``audit`` -> Audit, policy ``DefaultPosture``.
   Without an allow-list nothing is decided (None). Syscall rules have no posture.
5. An audited workload (``kubearmor-policy: audited``) has its Block rules compiled as
   ``Audit (Block)``, and a ``block`` posture yields ``Audit (Block)``: reported, never enforced.

Ties inside one level go to the first rule in compile order (policy order), so results are stable.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from shared.schemas.rules import Rule, WorkloadRules

__all__ = ["Access", "Decision", "Posture", "decide", "rule_matches_resource", "DEFAULT_POSTURE",
           "POSTURE_POLICY", "POSTURE_VALUES", "BLOCKING", "ALLOWING"]

POSTURE_POLICY = "DefaultPosture"
POSTURE_VALUES = ("audit", "block")
BLOCKING = frozenset({"Block", "Audit (Block)"})
ALLOWING = frozenset({"Allow", "Audit (Allow)"})
_POSTURE_OF = {"Process": "file", "File": "file", "Network": "network", "Capabilities": "capabilities"}


@dataclass(frozen=True, slots=True)
class Access:
    """What a process tried: an operation on a resource, from a source executable.

    Network accesses name the protocol (``protocol`` or ``resource``), Capabilities the capability
    (``capability`` or ``resource``), Syscall the syscall (``syscall``) and the path it touched,
    Preset the preset whose attack it is (``preset``; ``resource`` is only reported).
    """

    operation: str
    resource: str = ""
    source: str = ""
    access: str = ""  # exec, read, write
    uid: int = -1
    resource_owner_uid: int = -1
    protocol: str = ""
    capability: str = ""
    syscall: str = ""
    preset: str = ""


@dataclass(frozen=True, slots=True)
class Posture:
    """A workload's default postures (``audit`` or ``block``) and whether it is audited only."""

    file: str = "audit"
    network: str = "audit"
    capabilities: str = "audit"
    audited: bool = False

    @classmethod
    def of(cls, wr: WorkloadRules) -> Posture:
        """The posture compiled into ``wr``."""
        return cls(wr.file_posture, wr.network_posture, wr.capabilities_posture, wr.audited)

    def action(self, operation: str) -> str | None:
        """The action an access outside an allow-list gets; None for operations without a posture."""
        kind = _POSTURE_OF.get(operation)
        if kind is None:
            return None
        if getattr(self, kind) == "block":
            return "Audit (Block)" if self.audited else "Block"
        return "Audit"


DEFAULT_POSTURE = Posture()


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one access: which rule (policy) matched and what it says to do."""

    action: str
    policy: str
    policy_kind: str
    severity: int
    message: str
    tags: tuple[str, ...] = field(default_factory=tuple)
    rule: Rule | None = field(default=None, compare=False)

    @property
    def alert_type(self) -> str:
        """KubeArmor's alert Type for this decision."""
        return "MatchedHostPolicy" if self.policy_kind == "KubeArmorHostPolicy" else "MatchedPolicy"

    @property
    def alert(self) -> bool:
        """Whether this decision raises an alert (everything but a plain Allow)."""
        return self.action != "Allow"


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _in_dir(resource: str, directory: str, recursive: bool) -> bool:
    if resource + "/" == directory:
        return True
    if not resource.startswith(directory):
        return False
    return recursive or "/" not in resource[len(directory):]


def rule_matches_resource(rule: Rule, resource: str) -> bool:
    """Whether the rule's path, directory, pattern or exec name names ``resource``."""
    if rule.path:
        return resource == rule.path
    if rule.exec_name:
        return resource.rsplit("/", 1)[-1] == rule.exec_name
    if rule.dir:
        return _in_dir(resource, rule.dir, rule.recursive)
    if rule.pattern:
        return _regex(rule.pattern).fullmatch(resource) is not None
    return False


def _source_matches(rule: Rule, source: str) -> bool:
    if not rule.from_source:
        return True
    for src in rule.from_source:
        if src.get("path") and src["path"] == source:
            return True
        d = src.get("dir")
        if d and source and _in_dir(source, d if d.endswith("/") else d + "/", bool(src.get("recursive"))):
            return True
    return False


def _name(value: str, prefix: str) -> str:
    value = value.strip().lower()
    return value[len(prefix):] if value.startswith(prefix) else value


def _target_matches(rule: Rule, access: Access) -> bool:
    op = rule.operation
    if op in ("Process", "File"):
        return rule_matches_resource(rule, access.resource)
    if op == "Network":
        return rule.protocol == "all" or rule.protocol == (access.protocol or access.resource).lower()
    if op == "Capabilities":
        return _name(rule.capability, "cap_") == _name(access.capability or access.resource, "cap_")
    if op == "Syscall":
        if rule.syscall and _name(rule.syscall, "sys_") != _name(access.syscall, "sys_"):
            return False
        return not (rule.path or rule.dir) or rule_matches_resource(rule, access.resource)
    if op == "Preset":
        return bool(rule.preset) and rule.preset == access.preset
    return False


def _keeps_constraints(rule: Rule, access: Access) -> bool:
    """Whether ``access`` stays within the rule's ownerOnly/readOnly constraints."""
    if rule.owner_only and (access.uid < 0 or access.uid != access.resource_owner_uid):
        return False
    return not (rule.read_only and access.access == "write")


def _applies(rule: Rule, access: Access) -> bool:
    """Whether ``rule`` has something to say about ``access`` (constraints taken into account)."""
    if not _target_matches(rule, access) or not _source_matches(rule, access.source):
        return False
    if not (rule.owner_only or rule.read_only) or rule.operation not in ("Process", "File"):
        return True
    keeps = _keeps_constraints(rule, access)
    return keeps if rule.action in ALLOWING else not keeps


def _from(rule: Rule, action: str | None = None) -> Decision:
    return Decision(action=action or rule.action, policy=rule.policy, policy_kind=rule.policy_kind,
                    severity=rule.severity, message=rule.message, tags=tuple(rule.tags), rule=rule)


def _posture_decision(rules: Sequence[Rule], access: Access, posture: Posture) -> Decision | None:
    action = posture.action(access.operation)
    if action is None:
        return None
    allow = next((r for r in rules if r.operation == access.operation and r.action in ALLOWING), None)
    if allow is None:
        return None
    return Decision(action=action, policy=POSTURE_POLICY, policy_kind=allow.policy_kind, severity=0,
                    message="", tags=(), rule=None)


def decide(rules: Sequence[Rule] | WorkloadRules, access: Access, posture: Posture | None = None) -> Decision | None:
    """The decision for ``access`` under ``rules`` (see the module docstring), or None.

    ``rules`` is a workload's compiled :class:`WorkloadRules` (its postures and audited flag are
    used) or a bare list of rules (``posture``, default: audit everywhere, then applies).
    """
    if isinstance(rules, WorkloadRules):
        posture = posture or Posture.of(rules)
        rules = rules.rules
    posture = posture or DEFAULT_POSTURE
    # [sourced block, sourced allow, global block, global allow, audit]
    found: list[Rule | None] = [None, None, None, None, None]
    for rule in rules:
        if rule.operation != access.operation or not _applies(rule, access):
            continue
        if rule.action in BLOCKING:
            slot = 0 if rule.from_source else 2
        elif rule.action in ALLOWING:
            slot = 1 if rule.from_source else 3
        else:
            slot = 4
        if found[slot] is None:
            found[slot] = rule
    sourced = found[0] or found[1]
    enforced = sourced or found[2] or found[3]
    if enforced is not None and enforced.action in BLOCKING:
        return _from(enforced)
    if found[4] is not None:
        return _from(found[4], "Audit")
    if enforced is not None:
        return _from(enforced, "Allow")
    return _posture_decision(rules, access, posture)
