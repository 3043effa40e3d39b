"""The one matcher: given a workload's compiled rules and what a process did, decide.

Used by the feeder (alerts), the simulator and any enforcer that decides at run time, so that what
is enforced and what is reported always agree. Pure: no I/O.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

from shared.schemas.rules import Rule

__all__ = ["Access", "Decision", "decide", "rule_matches_resource"]

# When several rules match, the strongest action wins (KubeArmor: Block over Audit over Allow).
_STRENGTH = {"Block": 3, "Audit": 2, "Allow": 1}


@dataclass(frozen=True, slots=True)
class Access:
    """What a process tried: an operation on a resource, from a source executable."""

    operation: str
    resource: str
    source: str = ""
    access: str = ""  # exec, read, write
    uid: int = -1
    resource_owner_uid: int = -1


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict for one access: which rule (policy) matched and what it says to do."""

    action: str
    policy: str
    policy_kind: str
    severity: int
    message: str
    tags: tuple[str, ...] = field(default_factory=tuple)

    @property
    def alert_type(self) -> str:
        """KubeArmor's alert Type for this decision."""
        return "MatchedHostPolicy" if self.policy_kind == "KubeArmorHostPolicy" else "MatchedPolicy"


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def rule_matches_resource(rule: Rule, resource: str) -> bool:
    """Whether the rule's path, directory, pattern or exec name names ``resource``."""
    if rule.path:
        return resource == rule.path
    if rule.exec_name:
        return resource.rsplit("/", 1)[-1] == rule.exec_name
    if rule.dir:
        if not resource.startswith(rule.dir):
            return False
        return rule.recursive or "/" not in resource[len(rule.dir):]
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
        if d and source.startswith(d) and (src.get("recursive") or "/" not in source[len(d):]):
            return True
    return False


def decide(rules: list[Rule], access: Access) -> Decision | None:
    """The strongest rule among ``rules`` that matches ``access``, or None when none matches."""
    best: Rule | None = None
    for rule in rules:
        if rule.operation != access.operation:
            continue
        if not rule_matches_resource(rule, access.resource) or not _source_matches(rule, access.source):
            continue
        if best is None or _STRENGTH.get(rule.action, 0) > _STRENGTH.get(best.action, 0):
            best = rule
    if best is None:
        return None
    return Decision(action=best.action, policy=best.policy, policy_kind=best.policy_kind,
                    severity=best.severity, message=best.message, tags=tuple(best.tags))
