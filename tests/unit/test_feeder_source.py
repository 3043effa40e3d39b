"""KubeArmor's Source (the acting command line) and ownerOnly process rules judged by the program's owner."""
from __future__ import annotations

from typing import Any

from services.feeder.enrich import build_alert, build_log
from services.feeder.kinds import MAX_ARGS_CHARS, access_for, source_text
from shared.matcher import Decision, decide
from shared.rehearsal import record_access
from shared.schemas.events import RawEvent
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule

WL = Workload(id="c1", name="web", namespace="demo", kind="container", node="n", mntns=5, pidns=6)
DECISION = Decision(action="Audit", policy="p", policy_kind="KubeArmorPolicy", severity=5, message="")


def ev(kind: str, path: str, syscall: str = "", proc_args: Any = "", exe: str = "/usr/bin/cat",
       uid: int = 1000, **extra: Any) -> RawEvent:
    return RawEvent(kind=kind, ts_ns=1, node="n", pid=10, tid=10, ppid=1, ns_pid=2, ns_ppid=1, uid=uid,
                    gid=uid, mntns=5, pidns=6, cgroup_id=7, comm="cat", exe=exe, path=path, ret=0,
                    syscall=syscall, extra=extra, proc_args=proc_args)


def rule(operation: str, **kw: Any) -> Rule:
    return Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="ns", operation=operation,
                action=kw.pop("action", "Block"), severity=5, **kw)


def test_file_and_network_records_name_the_command_line() -> None:
    opened = ev("file", "/etc/host.conf", "openat", proc_args="/etc/host.conf")
    log = build_log(opened, WL, cluster="c")
    assert (log["Source"], log["ProcessName"], log["Resource"]) == (
        "/usr/bin/cat /etc/host.conf", "/usr/bin/cat", "/etc/host.conf")
    sock = ev("network", "", "socket", proc_args="-sS http://127.0.0.1/x.html", exe="/usr/bin/curl",
              protocol="TCP", family="AF_INET", type="SOCK_STREAM", fd=3)
    alert = build_alert(sock, WL, DECISION, cluster="c", enforcer_name="", operation="Network")
    assert alert["Source"] == "/usr/bin/curl -sS http://127.0.0.1/x.html"
    assert alert["ProcessName"] == "/usr/bin/curl"


def test_process_records_name_the_caller_without_arguments() -> None:
    ex = ev("exec", "/usr/bin/ls", "execve", proc_args="-c ls", exe="/usr/bin/bash")
    assert build_log(ex, WL, cluster="c")["Source"] == "/usr/bin/bash"
    loader = ev("file", "/usr/bin/sleep", "openat", proc_args="/usr/bin/sleep 1", exe="/usr/lib64/ld-linux-x86-64.so.2")
    alert = build_alert(loader, WL, DECISION, cluster="c", enforcer_name="", operation="Process")
    assert (alert["Operation"], alert["Source"]) == ("Process", "/usr/lib64/ld-linux-x86-64.so.2")


def test_no_arguments_a_bound_and_nonsense() -> None:
    assert source_text(ev("file", "/a", "openat"), "File") == "/usr/bin/cat"
    long = ev("file", "/a", "openat", proc_args="x" * (MAX_ARGS_CHARS + 50))
    assert source_text(long, "File") == "/usr/bin/cat " + "x" * MAX_ARGS_CHARS
    assert source_text(ev("file", "/a", "openat", proc_args=["not", "text"]), "File") == "/usr/bin/cat"
    assert source_text(ev("file", "/a", "openat", proc_args="/a", exe=""), "File") == "/a"


def test_from_source_still_matches_the_executable_only() -> None:
    opened = ev("file", "/etc/host.conf", "openat", proc_args="/etc/host.conf")
    access = access_for(opened)
    assert access is not None and access.source == "/usr/bin/cat"
    assert decide([rule("File", path="/etc/host.conf", from_source=({"path": "/usr/bin/cat"},))], access) is not None
    stored = build_log(opened, WL, cluster="c")
    replayed = record_access(stored)
    assert replayed is not None and replayed.source == "/usr/bin/cat"   # history replays the same way
    old = {**stored, "ProcessName": ""}                                  # a record with no ProcessName
    assert record_access({**old, "Source": "/usr/bin/cat"}).source == "/usr/bin/cat"  # type: ignore[union-attr]
    exec_log = build_log(ev("exec", "/usr/bin/ls", "execve", exe="/usr/bin/bash"), WL, cluster="c")
    assert record_access(exec_log).source == "/usr/bin/bash"  # type: ignore[union-attr]


def test_owner_only_process_rules_judge_the_owner_of_the_program() -> None:
    block = [rule("Process", path="/home/user1/hello", owner_only=True)]
    by_owner = access_for(ev("exec", "/home/user1/hello", "execve", owner_uid=1000))
    by_root = access_for(ev("exec", "/home/user1/hello", "execve", uid=0, owner_uid=1000))
    unknown = access_for(ev("exec", "/home/user1/hello", "execve"))
    nonsense = access_for(ev("exec", "/home/user1/hello", "execve", owner_uid=True))
    assert by_owner is not None and by_owner.resource_owner_uid == 1000
    assert decide(block, by_owner) is None                             # the owner's own exec: no violation
    assert decide(block, by_root).action == "Block"  # type: ignore[union-attr]
    assert decide(block, unknown).action == "Block"  # type: ignore[union-attr]
    assert nonsense is not None and nonsense.resource_owner_uid == -1
    allow = [rule("Process", path="/home/user1/hello", owner_only=True, action="Allow")]
    assert decide(allow, by_owner).action == "Allow"  # type: ignore[union-attr]
    assert decide(allow, by_root).policy == "DefaultPosture"  # type: ignore[union-attr]
