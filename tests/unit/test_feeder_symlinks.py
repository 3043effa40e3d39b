"""An exec through symlinks is judged by the file it ran as well as by the path it asked for
(services.feeder.symlinks): a rule beats a posture, the stronger of two rules wins, the real path is the
alert's Resource when its decision is kept."""
from __future__ import annotations

from services.feeder.kinds import access_for
from services.feeder.symlinks import decide_through_symlinks, real_path
from shared.schemas.events import RawEvent
from shared.schemas.rules import Rule, WorkloadRules


def _rule(path: str, action: str = "Block", policy: str = "p") -> Rule:
    return Rule(policy=policy, policy_kind="KubeArmorPolicy", policy_namespace="d", operation="Process",
                action=action, path=path)


def _exec(path: str, real: str = "") -> RawEvent:
    return RawEvent(kind="exec", ts_ns=1, node="n", pid=2, tid=2, ppid=1, ns_pid=2, ns_ppid=1, uid=0, gid=0,
                    mntns=11, pidns=12, cgroup_id=1, comm="sh", exe="/bin/dash", path=path, ret=-1,
                    syscall="execve", extra={"real_path": real} if real else {})


def _judge(rules: list[Rule], ev: RawEvent, posture: str = "audit") -> tuple[str, str, str]:
    wl = WorkloadRules("w", 11, 12, rules, file_posture=posture)
    access = access_for(ev)
    assert access is not None
    decision, reported = decide_through_symlinks(wl, access, ev)
    return (decision.action if decision else "", decision.policy if decision else "", reported.path)


def test_a_rule_on_the_real_path_judges_the_symlinked_exec() -> None:
    """KubeArmor's allowedArgs spec: the policy names /usr/bin/python3.6, the shell runs python3."""
    ev = _exec("/usr/bin/python3", "/usr/bin/python3.6")
    assert _judge([_rule("/usr/bin/python3.6")], ev) == ("Block", "p", "/usr/bin/python3.6")
    assert _judge([_rule("/usr/bin/python3.6")], _exec("/usr/bin/python3")) == ("", "", "/usr/bin/python3")


def test_an_allow_list_naming_the_real_path_allows_the_symlink() -> None:
    """No DefaultPosture Block (with Result Passed) for an exec the enforcer let through by its file."""
    ev = _exec("/usr/bin/python3", "/usr/bin/python3.6")
    assert _judge([_rule("/usr/bin/python3.6", "Allow", "allow")], ev, "block") == (
        "Allow", "allow", "/usr/bin/python3.6")
    assert _judge([_rule("/bin/ls", "Allow", "allow")], ev, "block") == ("Block", "DefaultPosture", "/usr/bin/python3")


def test_the_stronger_rule_wins_and_the_written_path_keeps_ties() -> None:
    ev = _exec("/usr/bin/python3", "/usr/bin/python3.6")
    both = [_rule("/usr/bin/python3.6", "Allow", "allow-real"), _rule("/usr/bin/python3", "Block", "block-link")]
    assert _judge(both, ev) == ("Block", "block-link", "/usr/bin/python3")
    audit = [_rule("/usr/bin/python3", "Audit", "audit-link"), _rule("/usr/bin/python3.6", "Block", "block-real")]
    assert _judge(audit, ev) == ("Block", "block-real", "/usr/bin/python3.6")
    same = [_rule("/usr/bin/python3", "Block", "a"), _rule("/usr/bin/python3.6", "Block", "b")]
    assert _judge(same, ev) == ("Block", "a", "/usr/bin/python3")


def test_only_exec_records_with_a_different_absolute_real_path_count() -> None:
    assert real_path(_exec("/usr/bin/python3", "/usr/bin/python3.6")) == "/usr/bin/python3.6"
    assert real_path(_exec("/usr/bin/true", "/usr/bin/true")) == ""
    assert real_path(_exec("/usr/bin/true", "relative")) == ""
    ev = _exec("/etc/x", "/etc/y")
    ev.kind = "open"
    assert real_path(ev) == ""
