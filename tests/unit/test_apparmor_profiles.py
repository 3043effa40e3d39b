"""AppArmor: profiles generated KubeArmor-like from compiled rules and compiled (not loaded) by
apparmor_parser; audit records parsed and turned into reports the feeder judges like kernel events."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from services.enforcer.apparmor import compile_profile, generate_profile, profile_name
from services.enforcer.apparmor.auditlog import parse_record
from services.enforcer.apparmor.profiles import regex_to_glob, workload_of
from services.enforcer.apparmor.report import from_record
from services.feeder.enrich import build_alert
from services.feeder.kinds import access_for
from services.policy.globs import glob_to_regex
from shared.loaders import decide_access
from shared.schemas.events import RawEvent
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, WorkloadRules

needs_parser = pytest.mark.skipif(shutil.which("apparmor_parser") is None, reason="apparmor_parser not installed")


def r(op: str, action: str = "Block", **kw: object) -> Rule:
    return Rule(policy=f"p-{op.lower()}", policy_kind="KubeArmorPolicy", policy_namespace="d", operation=op,
                action=action, **kw)  # type: ignore[arg-type]


RULES = [
    r("Process", path="/usr/bin/sleep"),
    r("Process", "Audit", dir="/usr/sbin/", recursive=True),
    r("File", path="/etc/shadow"),
    r("File", path="/etc/hosts", read_only=True),
    r("File", path="/home/u/.ssh/id_rsa", owner_only=True),
    r("File", "Audit", dir="/var/log/"),
    r("File", pattern=glob_to_regex("/tmp/*.sh")),
    r("File", pattern="/tmp/(a+)"),  # not of the form the glob compiler writes
    r("File", path="/etc/passwd", from_source=[{"path": "/bin/cat"}]),
    *(r("Network", protocol=p) for p in ("tcp", "udp", "icmp", "icmpv6", "raw", "sctp", "stream")),
    r("Capabilities", capability="net_raw"),
    r("Capabilities", "Audit", capability="CAP_SYS_ADMIN"),
]


def test_profile_lines() -> None:
    prof = generate_profile("wl/1 x", RULES)
    assert prof.name == profile_name("wl/1 x") == "bulwark-wl_1_x"
    assert f"profile {prof.name} flags=(attach_disconnected,mediate_deleted) {{" in prof.text
    for line in ("file,", "network,", "capability,", "signal,", 'audit deny "/usr/bin/sleep" mx,',
                 'audit "/usr/sbin/**" ix,', 'audit deny "/etc/shadow" rwkl,', 'audit deny "/etc/hosts" w,',
                 'audit deny other "/home/u/.ssh/id_rsa" rw,', 'audit "/var/log/*" rwkl,',
                 'audit deny "/tmp/*.sh" rwkl,', "audit deny network inet stream,", "audit deny network inet dgram,",
                 "audit deny network raw,", "audit deny network inet icmp,", "audit deny capability net_raw,",
                 "audit capability sys_admin,"):
        assert f"  {line}\n" in prof.text, line
    assert prof.skipped == 2 and "rules not expressible: 2" in prof.text  # the odd regex and fromSource


def test_allow_lists_with_block_posture_drop_their_catch_all() -> None:
    proc = generate_profile("w", [r("Process", "Allow", path="/usr/bin/cat")], file_posture="block").text
    assert "  file,\n" not in proc and '  "/usr/bin/cat" ix,\n' in proc and '  "/{,**}" rwlkm,\n' in proc
    files = generate_profile("w", [r("File", "Allow", dir="/data/", recursive=True)], file_posture="block").text
    assert "  file,\n" not in files and '  "/{,**}" ix,\n' in files and '  "/data/**" rwkl,\n' in files
    net = generate_profile("w", [r("Network", "Allow", protocol="udp")], network_posture="block").text
    assert "  network,\n" not in net and "  network inet dgram,\n" in net and "  file,\n" in net
    assert "  file,\n" in generate_profile("w", [r("Process", "Allow", path="/usr/bin/cat")]).text  # audit posture


def test_audited_workload_rules_only_log() -> None:
    text = generate_profile("w", [r("Process", "Audit (Block)", path="/usr/bin/sleep")]).text
    assert '  audit "/usr/bin/sleep" ix,\n' in text and "deny" not in text


def test_policy_paths_cannot_inject_rules() -> None:
    evil = [r("File", path='/tmp/x" rw,\n  /** ix,\n  "/y'), r("File", path="/tmp/a*b{c,d}"),
            r("File", path='/tmp/q"uote')]
    prof = generate_profile("w", evil)
    assert prof.skipped == 1 and "/** ix" not in prof.text
    assert '  audit deny "/tmp/a\\*b\\{c\\,d\\}" rwkl,\n' in prof.text
    assert '  audit deny "/tmp/q\\"uote" rwkl,\n' in prof.text


@pytest.mark.parametrize("glob", ["/tmp/*.sh", "/**/*.conf", "/etc/*hado?", "/a/{b,c}/d", "/x/[!ab]*", "/a,b"])
def test_patterns_go_back_to_globs(glob: str) -> None:
    back = regex_to_glob(glob_to_regex(glob))
    assert back is not None and glob_to_regex(back.replace("\\,", ",")) == glob_to_regex(glob)


def test_regexes_of_other_forms_are_not_guessed() -> None:
    assert regex_to_glob("/tmp/.+") is None and regex_to_glob("relative/[^/]*") is None


@needs_parser
def test_profiles_compile(tmp_path: Path) -> None:
    evil = [r("File", path='/tmp/x" rw,\n  /** ix,\n  "/y'), r("File", path="/tmp/a*b{c,d}"), r("File", path='/t/q"u')]
    cases = ((RULES + evil, "audit"), ([r("Process", "Allow", path="/usr/bin/cat")], "block"),
             ([r("File", "Allow", dir="/data/"), r("Network", "Allow", protocol="tcp")], "block"))
    for i, (rules, posture) in enumerate(cases):
        out = compile_profile(generate_profile(f"w{i}", rules, posture, posture, posture).text, tmp_path / f"{i}.bin")
        assert out.stat().st_size > 0


NETLINK_TEXT = ('audit(1796561118.212:31): apparmor="DENIED" operation="open" profile="bulwark-w1" '
                'name="/etc/hosts" pid=119 comm="python" requested_mask="w" denied_mask="w" fsuid=0 ouid=0')
KMSG_TEXT = ('audit: type=1400 audit(1796561119.500:32): apparmor="DENIED" operation="exec" '
             'profile="bulwark-w1" name=2F746D702F6120622F736C656570 pid=120 comm=2F612062 '
             'requested_mask="x" denied_mask="x" fsuid=0 ouid=0 target="bulwark-w1//null-/tmp/a b/sleep"')
NET_TEXT = ('audit(1796561120.001:33): apparmor="DENIED" operation="create" profile="bulwark-w1" pid=121 '
            'comm="python" family="inet" sock_type="raw" protocol=255 requested_mask="create" denied_mask="create"')
CAP_TEXT = ('audit(1796561120.002:34): apparmor="DENIED" operation="capable" profile="bulwark-w1" pid=122 '
            'comm="ping" capability=13  capname="net_raw"')


def test_audit_records_parse() -> None:
    rec = parse_record(NETLINK_TEXT)
    assert rec is not None and rec["apparmor"] == "DENIED" and rec["name"] == "/etc/hosts"
    assert rec["_ts_ns"] == str(1796561118212 * 10**6) and rec["_serial"] == "31" and rec["pid"] == "119"
    rec = parse_record(KMSG_TEXT)
    assert rec is not None and rec["name"] == "/tmp/a b/sleep" and rec["comm"] == "/a b" and rec["pid"] == "120"
    assert workload_of(rec["target"]) == "bulwark-w1"
    assert parse_record('audit(1.000:1): avc: denied { read } for pid=1') is None
    assert parse_record("not a record " * 2000) is None


WR = WorkloadRules("w1", mntns=4026532000, pidns=4026532001, rules=[
    r("File", path="/etc/hosts", read_only=True), r("Process", dir="/tmp/a b/"),
    r("Network", protocol="raw"), r("Capabilities", capability="net_raw")])


@pytest.mark.parametrize(("text", "operation", "resource", "policy"), [
    (NETLINK_TEXT, "File", "/etc/hosts", "p-file"),
    (KMSG_TEXT, "Process", "/tmp/a b/sleep", "p-process"),
    (NET_TEXT, "Network", "RAW", "p-network"),
    (CAP_TEXT, "Capabilities", "CAP_NET_RAW", "p-capabilities"),
])
def test_reports_name_the_rule_and_the_feeder_judges_them_alike(text: str, operation: str, resource: str,
                                                               policy: str) -> None:
    rec = parse_record(text)
    assert rec is not None
    report = from_record(rec, WR, "w1", "bulwark-w1", with_proc=False)
    assert report is not None and report.operation == operation and report.resource == resource
    assert report.policy == policy and report.ret < 0 and report.result in ("Permission denied",
                                                                           "Operation not permitted")
    event = report.to_raw_event("node-1", 0, "boot")
    assert event.mntns == WR.mntns and event.ret == report.ret and event.extra["enforcer"] == "AppArmor"
    access = access_for(event)
    assert access is not None and access.operation == operation
    decision = decide_access(WR, access)
    assert decision is not None and decision.action == "Block" and decision.policy == policy
    workload = Workload(id="w1", name="w1", namespace="d", kind="container", node="node-1", mntns=WR.mntns,
                        pidns=WR.pidns)
    alert = build_alert(RawEvent.from_wire(event.to_wire()), workload, decision, cluster="c",
                        enforcer_name="AppArmor", operation=operation)
    assert (alert["Enforcer"], alert["Action"], alert["PolicyName"]) == ("AppArmor", "Block", policy)
    assert alert["Result"] == report.result and alert["Operation"] == operation


def test_audit_verdict_is_a_passed_access() -> None:
    rec = parse_record(NETLINK_TEXT.replace('"DENIED"', '"AUDIT"'))
    assert rec is not None
    report = from_record(rec, WR, "w1", "bulwark-w1", with_proc=False)
    assert report is not None and report.ret == 0 and report.result == "Passed"


def test_the_launcher_asks_for_the_profile_only_where_apparmor_enforces() -> None:
    from bulwark.launcher import apparmor_profile

    apparmor = {"ok": True, "enforcer": "AppArmor", "enforcers": {"Process": "AppArmor", "File": "AppArmor"}}
    assert apparmor_profile(apparmor, "abc") == profile_name("abc") == "bulwark-abc"
    mixed = {"ok": True, "enforcer": "BPFLSM", "enforcers": {"Process": "BPFLSM", "Network": "AppArmor"}}
    assert apparmor_profile(mixed, "abc") == "bulwark-abc"
    fan = {"ok": True, "enforcer": "Fanotify", "enforcers": {"Process": "Fanotify", "Network": "eBPF Signal"}}
    assert apparmor_profile(fan, "abc") == ""
    assert apparmor_profile({**fan, "apparmor_profile": "bulwark-named"}, "abc") == "bulwark-named"
