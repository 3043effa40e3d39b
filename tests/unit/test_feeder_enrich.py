"""The pure alert builder: KubeArmor field names, values and the Action/Result/Enforcer rules."""
from __future__ import annotations

from services.feeder.enrich import alert_time_ns, build_alert, build_log, event_id_of, result_text, rfc3339
from shared.matcher import Decision
from shared.schemas.alert import ALERT_FIELDS
from shared.schemas.events import RawEvent
from shared.schemas.identity import Workload

TS = 1_795_000_000_123_456_789


def _event(**kw: object) -> RawEvent:
    base = dict(kind="exec", ts_ns=TS, node="node-1", pid=4242, tid=4242, ppid=4200, ns_pid=7, ns_ppid=1,
                uid=1000, gid=1000, mntns=4026532001, pidns=4026532002, cgroup_id=99, comm="bash",
                exe="/usr/bin/bash", path="/usr/bin/sleep", ret=-1, syscall="execve", cwd="/root",
                event_id="ev-1")
    base.update(kw)
    return RawEvent(**base)  # type: ignore[arg-type]


def _workload(**kw: object) -> Workload:
    base = dict(id="c0ffee", name="web", namespace="demo", kind="container", node="node-1",
                mntns=4026532001, pidns=4026532002, labels={"app": "web", "tier": "front"}, pod="web-pod",
                image="nginx:1.27")
    base.update(kw)
    return Workload(**base)  # type: ignore[arg-type]


def _decision(action: str = "Block", kind: str = "KubeArmorPolicy", severity: int = 5) -> Decision:
    return Decision(action=action, policy="block-sleep", policy_kind=kind, severity=severity,
                    message="no sleeping", tags=("MITRE", "T1059"))


def test_blocked_exec_has_kubearmor_fields() -> None:
    a = build_alert(_event(), _workload(), _decision(), cluster="default", enforcer_name="BPFLSM")
    assert set(ALERT_FIELDS) <= set(a)
    assert a["Timestamp"] == TS // 10**9
    assert a["UpdatedTime"].endswith(".123456Z") and a["UpdatedTime"].startswith("2026-")
    assert (a["ClusterName"], a["HostName"], a["NamespaceName"], a["PodName"]) == \
        ("default", "node-1", "demo", "web-pod")
    assert a["Labels"] == "app=web,tier=front"
    assert (a["ContainerID"], a["ContainerName"], a["ContainerImage"]) == ("c0ffee", "web", "nginx:1.27")
    assert (a["HostPID"], a["HostPPID"], a["PID"], a["PPID"], a["UID"]) == (4242, 4200, 7, 1, 1000)
    assert a["ProcessName"] == "/usr/bin/sleep" and a["ParentProcessName"] == "/usr/bin/bash"
    assert a["Source"] == "/usr/bin/bash" and a["Resource"] == "/usr/bin/sleep"
    assert a["Operation"] == "Process" and a["Data"] == "syscall=SYS_EXECVE"
    assert a["PolicyName"] == "block-sleep" and a["Severity"] == "5"
    assert a["Tags"] == "MITRE,T1059" and a["ATags"] == ["MITRE", "T1059"]
    assert a["Message"] == "no sleeping" and a["Type"] == "MatchedPolicy"
    assert (a["Action"], a["Result"], a["Enforcer"]) == ("Block", "Operation not permitted", "BPFLSM")
    assert a["Cwd"] == "/root" and a["EventID"] == "ev-1"


def test_block_not_enforced_is_reported_as_passed_by_the_monitor() -> None:
    a = build_alert(_event(ret=0), _workload(), _decision(), cluster="c", enforcer_name="BPFLSM")
    assert (a["Action"], a["Result"], a["Enforcer"]) == ("Block", "Passed", "eBPF Monitor")


def test_audit_and_audited_workloads() -> None:
    a = build_alert(_event(ret=0), _workload(), _decision("Audit", severity=0), cluster="c", enforcer_name="X")
    assert (a["Action"], a["Result"], a["Enforcer"], a["Severity"]) == ("Audit", "Passed", "eBPF Monitor", "")
    wl = _workload(annotations={"kubearmor-policy": "audited"})
    b = build_alert(_event(ret=0), wl, _decision(), cluster="c", enforcer_name="X")
    assert b["Action"] == "Audit (Block)"


def test_host_workload_and_host_policy() -> None:
    host = _workload(id="host-node-1", name="node-1", namespace="", kind="host", pod="", image="", labels={})
    a = build_alert(_event(syscall="execveat"), host, _decision(kind="KubeArmorHostPolicy"), cluster="c",
                    enforcer_name="BPFLSM")
    assert a["Type"] == "MatchedHostPolicy" and a["Data"] == "syscall=SYS_EXECVEAT"
    assert (a["PodName"], a["ContainerID"], a["ContainerName"], a["NamespaceName"]) == ("", "", "", "")


def test_result_text() -> None:
    assert result_text(0) == "Passed" and result_text(3) == "Passed"
    assert result_text(-1) == "Operation not permitted"
    assert result_text(-13) == "Permission denied"
    assert result_text(-4095) == "Unknown (4095)"


def test_times_and_ids() -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00.000000Z"
    a = build_alert(_event(), _workload(), _decision(), cluster="c", enforcer_name="")
    assert alert_time_ns(a) == TS // 1000 * 1000
    boot = build_alert(_event(ts_ns=12345), _workload(), _decision(), cluster="c", enforcer_name="", now_ns=TS)
    assert boot["Timestamp"] == TS // 10**9  # boot-time stamps are replaced by the wall clock
    assert event_id_of(_event(event_id="")) == event_id_of(_event(event_id=""))
    assert event_id_of(_event(event_id="")) != event_id_of(_event(event_id="", pid=1))


def test_a_kill_report_says_killed_by_the_signal_enforcer() -> None:
    ev = _event(kind="enforce", ret=0, extra={"killed": True, "enforcer": "eBPF Signal",
                                              "result": "Killed (SIGKILL)", "operation": "Network"})
    alert = build_alert(ev, _workload(), _decision(), cluster="default", enforcer_name="Fanotify")
    assert (alert["Action"], alert["Enforcer"], alert["Result"]) == ("Block", "eBPF Signal", "Killed (SIGKILL)")


def test_the_enforcer_is_named_per_operation_from_the_heartbeat() -> None:
    from services.feeder.views import FeederState

    state = FeederState()
    state.apply_heartbeat({"service": "enforcer", "node": "n1", "details": {
        "enforcer": "Fanotify", "enforcers": {"Process": "Fanotify", "Network": "eBPF Signal"}}})
    assert state.enforcer_name("n1", "Network") == "eBPF Signal"
    assert state.enforcer_name("n1", "File") == "Fanotify"
    assert state.enforcer_name("n2") == ""


def test_tty_and_user_name_are_what_the_monitor_saw() -> None:
    seen = build_alert(_event(extra={"tty": "pts0", "user": "alice"}), _workload(), _decision(), cluster="c",
                       enforcer_name="x")
    assert (seen["TTY"], seen["UserName"]) == ("pts0", "alice")
    unseen = build_log(_event(), _workload(), cluster="c")
    assert (unseen["TTY"], unseen["UserName"]) == ("", "")
