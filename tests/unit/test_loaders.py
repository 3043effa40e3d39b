"""`ld.so PROGRAM` is an exec of PROGRAM: judged so by the enforcer and the feeder (shared.loaders)."""
from __future__ import annotations

import pytest

from shared.loaders import decide_access, is_program_loader
from shared.matcher import Access, Posture
from shared.schemas.rules import Rule

LOADER = "/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"


def _rule(operation: str, path: str, action: str = "Block") -> Rule:
    return Rule(policy=f"{operation}-{action}", policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation=operation, action=action, severity=5, path=path)


@pytest.mark.parametrize("exe,expected", [
    (LOADER, True), ("/lib/ld-musl-x86_64.so.1", True), ("/lib/ld-linux-aarch64.so.1", True),
    ("/usr/bin/ld.so", True), ("/usr/bin/ld", False), ("/usr/bin/sleep", False), ("", False),
    ("/opt/ld-linux-helper", False),
])
def test_loader_names(exe: str, expected: bool) -> None:
    assert is_program_loader(exe) is expected


def test_a_loaders_read_of_a_blocked_program_is_an_exec() -> None:
    rules = [_rule("Process", "/usr/bin/sleep")]
    opened = Access("File", "/usr/bin/sleep", source=LOADER, access="read")
    decision = decide_access(rules, opened)
    assert decision is not None and decision.action == "Block" and decision.rule.operation == "Process"
    assert decide_access(rules, Access("File", "/usr/bin/sleep", source="/usr/bin/cat", access="read")) is None
    assert decide_access(rules, Access("File", "/usr/bin/sleep", source=LOADER, access="write")) is None


def test_file_rules_still_apply_and_the_stronger_decision_wins() -> None:
    rules = [_rule("Process", "/usr/bin/sleep", "Audit"), _rule("File", "/usr/bin/sleep")]
    decision = decide_access(rules, Access("File", "/usr/bin/sleep", source=LOADER, access="read"))
    assert decision is not None and (decision.action, decision.rule.operation) == ("Block", "File")


def test_allow_list_postures_do_not_turn_the_loaders_library_opens_into_blocks() -> None:
    rules = [_rule("Process", "/usr/bin/sleep", "Allow")]
    block_everything_else = Posture(file="block")
    libc = Access("File", "/usr/lib/x86_64-linux-gnu/libc.so.6", source=LOADER, access="read")
    decision = decide_access(rules, libc, block_everything_else)
    assert decision is None or decision.action != "Block"
