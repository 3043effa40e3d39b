"""The shared matcher on compiled rules."""
from __future__ import annotations

from shared.matcher import Access, decide
from shared.schemas.rules import Rule


def rule(**kw) -> Rule:
    base = dict(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="demo", operation="Process",
        action="Block", severity=5)
    base.update(kw)
    return Rule(**base)


def test_path_rule_matches_only_that_path() -> None:
    rules = [rule(path="/usr/bin/sleep")]
    d = decide(rules, Access("Process", "/usr/bin/sleep"))
    assert d is not None and d.action == "Block" and d.severity == 5 and d.alert_type == "MatchedPolicy"
    assert decide(rules, Access("Process", "/usr/bin/sleepy")) is None
    assert decide(rules, Access("File", "/usr/bin/sleep")) is None


def test_block_wins_over_audit_and_directories_respect_recursive() -> None:
    rules = [rule(dir="/usr/bin/", action="Audit", policy="a"), rule(path="/usr/bin/ls", policy="b")]
    assert decide(rules, Access("Process", "/usr/bin/ls")).policy == "b"
    assert decide(rules, Access("Process", "/usr/bin/cat")).action == "Audit"
    assert decide(rules, Access("Process", "/usr/bin/x/cat")) is None
    assert decide([rule(dir="/usr/", recursive=True)], Access("Process", "/usr/bin/x/cat")) is not None


def test_from_source_limits_the_rule_to_that_caller() -> None:
    rules = [rule(path="/usr/bin/sleep", from_source=[{"path": "/bin/bash"}])]
    assert decide(rules, Access("Process", "/usr/bin/sleep", source="/bin/bash")) is not None
    assert decide(rules, Access("Process", "/usr/bin/sleep", source="/bin/sh")) is None
