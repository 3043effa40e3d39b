"""bench/peers.py's pure parts: the peers' rules generated from the one policy set, their safety checks,
the audit log reader, the ratios and the detection verdicts."""
from __future__ import annotations

import os
import shutil
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from peer_daemons import HostFiles, parse_audit_log  # noqa: E402
from peer_rules import (  # noqa: E402
    ALLOW_ALL,
    Targets,
    Untranslatable,
    Violation,
    audit_unwatches,
    audit_watches,
    check_audit_watches,
    check_fapolicyd_rules,
    fapolicyd_rules,
    policy_set,
    targets_of,
    violations,
)
from peer_stats import Probe, judge, summarise, table  # noqa: E402
from peers import parse_timing, probe_script  # noqa: E402

from bulwark.simulate import load_policies  # noqa: E402
from shared.schemas.rules import Rule  # noqa: E402
from tests.kernel.nsutil import file_rule  # noqa: E402

ROOT = "/tmp/bw-rbench-x1"


@pytest.fixture
def targets(tmp_path: Path) -> Targets:
    path = tmp_path / "set.yaml"
    path.write_text(policy_set(ROOT))
    return targets_of(r for p in load_policies([str(path)]) for r in p.rules)


def test_policy_set_compiles_to_the_targets(targets: Targets) -> None:
    assert targets.files == (f"{ROOT}/ruled/secret0", f"{ROOT}/ruled/secret1")
    assert targets.dirs == (f"{ROOT}/ruled/vault/",)
    assert targets.programs == (f"{ROOT}/ruled/tool0", f"{ROOT}/ruled/tool1")
    assert [v.label() for v in violations(targets)] == [
        f"open {ROOT}/ruled/secret0", f"open {ROOT}/ruled/secret1", f"open {ROOT}/ruled/vault/probe",
        f"exec {ROOT}/ruled/tool0", f"exec {ROOT}/ruled/tool1"]


def test_audit_watches_and_their_deletion(targets: Targets) -> None:
    watches = audit_watches(targets)
    assert watches == [
        ["-w", f"{ROOT}/ruled/secret0", "-p", "rwa", "-k", "bwpeers"],
        ["-w", f"{ROOT}/ruled/secret1", "-p", "rwa", "-k", "bwpeers"],
        ["-w", f"{ROOT}/ruled/vault", "-p", "rwa", "-k", "bwpeers"],
        ["-w", f"{ROOT}/ruled/tool0", "-p", "x", "-k", "bwpeers"],
        ["-w", f"{ROOT}/ruled/tool1", "-p", "x", "-k", "bwpeers"]]
    assert audit_unwatches(watches)[0] == ["-W", f"{ROOT}/ruled/secret0", "-p", "rwa", "-k", "bwpeers"]
    check_audit_watches(watches, ROOT)
    with pytest.raises(ValueError):
        check_audit_watches([["-w", "/etc/passwd", "-p", "rwa", "-k", "bwpeers"]], ROOT)
    with pytest.raises(ValueError):
        check_audit_watches([["-a", "always,exit", "-F", "arch=b64", "-S", "open"]], ROOT)


def test_fapolicyd_rules_deny_only_the_targets_then_allow_all(targets: Targets) -> None:
    text = fapolicyd_rules(targets)
    rules = [line for line in text.splitlines() if not line.startswith("#")]
    assert rules == [f"deny perm=any all : path={ROOT}/ruled/secret0", f"deny perm=any all : path={ROOT}/ruled/secret1",
                     f"deny perm=any all : dir={ROOT}/ruled/vault/", f"deny perm=execute all : path={ROOT}/ruled/tool0",
                     f"deny perm=execute all : path={ROOT}/ruled/tool1", ALLOW_ALL]
    check_fapolicyd_rules(text, ROOT)


@pytest.mark.parametrize("text", [
    "deny perm=any all : path=/tmp/bw-rbench-x1/a\n",                                      # no allow-all at the end
    "deny perm=any all : path=/usr/bin/ls\nallow perm=any all : all\n",                     # outside the root
    "deny perm=any all : dir=/tmp/\nallow perm=any all : all\n",                            # a parent of the root
    "deny perm=any all : path=/tmp/bw-rbench-x1\nallow perm=any all : all\n",               # the root itself
    "deny perm=execute all : trust=0\nallow perm=any all : all\n",                          # trust-based
    "allow perm=open all : path=/tmp/bw-rbench-x1/a\nallow perm=any all : all\n",           # an allow before
    "deny perm=any all : ftype=text/plain\nallow perm=any all : all\n",                     # not a path
    "deny perm=any exe=/bin/cat : path=/tmp/bw-rbench-x1/a\nallow perm=any all : all\n",    # a narrower subject
    "deny perm=any all : path=/tmp/bw-rbench-x1/a dir=/etc/\nallow perm=any all : all\n",   # two objects
])
def test_unsafe_fapolicyd_rules_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        check_fapolicyd_rules(text, ROOT)


@pytest.mark.parametrize("root", ["/", "/tmp", "tmp/x", "/tmp/../etc"])
def test_a_root_that_is_not_private_is_refused(root: str) -> None:
    with pytest.raises(ValueError):
        check_fapolicyd_rules(ALLOW_ALL + "\n", root)


@pytest.mark.parametrize("rule", [
    file_rule(path=f"{ROOT}/a", read_only=True),
    file_rule(dir=f"{ROOT}/d/"),                       # not recursive
    file_rule(pattern=f"{ROOT}/.*"),
    file_rule(action="Audit", path=f"{ROOT}/a"),
    Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="n", operation="Network", action="Block",
         protocol="udp"),
    Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="n", operation="Process", action="Block",
         exec_name="sleep"),
])
def test_rules_without_an_exact_peer_form_are_refused(rule: object) -> None:
    with pytest.raises(Untranslatable):
        targets_of([rule])


def test_audit_log_events_by_serial() -> None:
    log = "\n".join([
        'type=SYSCALL msg=audit(1700000000.100:41): arch=c000003e syscall=257 success=yes exit=3 key="bwpeers"'
        '\x1dARCH=x86_64 SYSCALL=openat',
        'type=CWD msg=audit(1700000000.100:41): cwd="/"',
        'type=PATH msg=audit(1700000000.100:41): item=0 name="/tmp/bw-rbench-x1/ruled/secret0" inode=5',
        'type=SYSCALL msg=audit(1700000001.5:42): arch=c000003e syscall=59 success=yes exit=0 key=(null)',
        'type=PATH msg=audit(1700000001.5:42): item=0 name=2F746D702F6120620A inode=6',
        "type=DAEMON_START msg=audit(1700000000.000:1): op=start",
        "type=USER msg=audit(1700000001.6:43): pid=9 uid=0 msg='bwpeers-probe-17 exe=\"/usr/sbin/auditctl\"'"
        "\x1dUID=\"root\"",
    ])
    events = parse_audit_log(log)
    assert [(e.ts, e.serial, e.key, e.names) for e in events[:2]] == [
        (1700000000.1, 41, "bwpeers", ["/tmp/bw-rbench-x1/ruled/secret0"]), (1700000001.5, 42, "", ["/tmp/a b\n"])]
    assert "bwpeers-probe-17" in events[3].text and events[3].serial == 43


V_OPEN, V_EXEC = Violation("open", f"{ROOT}/s"), Violation("exec", f"{ROOT}/t")


def _probe(config: str, open_: tuple[int, int], exec_: tuple[int, int], during: int = 0) -> Probe:
    return Probe(config, {V_OPEN: open_[0], V_EXEC: exec_[0]}, {V_OPEN: open_[1], V_EXEC: exec_[1]}, during)


def test_judge_counts_seen_and_stopped_per_configuration() -> None:
    probes = [_probe("none", (0, 0), (0, 0)), _probe("auditd", (0, 1), (0, 1)),
              _probe("fapolicyd", (1, 1), (126, 1)), _probe("none", (0, 0), (0, 0)),
              _probe("auditd", (0, 1), (0, 1)), _probe("fapolicyd", (1, 1), (126, 1))]
    verdict = judge(probes, [V_OPEN, V_EXEC])
    assert verdict.problems == []
    assert verdict.cells[(V_OPEN, "none")] == (0, 0, 2)
    assert verdict.cells[(V_OPEN, "auditd")] == (2, 0, 2)
    assert verdict.cells[(V_EXEC, "fapolicyd")] == (2, 2, 2)
    rows = table(verdict, [V_OPEN, V_EXEC], ["none", "auditd", "fapolicyd"], ROOT)
    assert "ran 2/2" in rows[1] and "seen 2/2, stopped 0/2" in rows[1] and rows[2].lstrip().startswith("exec t")


@pytest.mark.parametrize(("probes", "problem"), [
    ([_probe("none", (1, 0), (0, 0))], "not exercised"),
    ([_probe("auditd", (0, 2), (0, 1))], "counts disagree"),
    ([_probe("auditd", (0, 1), (0, 1), during=3)], "during the timing runs"),
    ([_probe("bulwark", (1, 1), (1, 1)), _probe("bulwark", (1, 0), (1, 1))], "differently across rounds"),
    ([_probe("bulwark", (1, 1), (1, 1)), _probe("bulwark", (0, 1), (1, 1))], "differently across rounds"),
    ([_probe("fapolicyd", (0, 0), (0, 0))], "never fired"),
])
def test_judge_says_what_makes_the_run_invalid(probes: list[Probe], problem: str) -> None:
    assert any(problem in p for p in judge(probes, [V_OPEN, V_EXEC]).problems)


def test_summary_is_the_median_of_round_ratios_against_the_a_runs_either_side() -> None:
    phases = [([{"m": 2.0}, {"m": 2.2}], [{"m": 1.0}, {"m": 1.1}]),
              ([{"m": 1.5}], [{"m": 1.0}, {"m": 1.0}]),
              ([{"m": 3.0}], [{"m": 1.0}])]
    s = summarise(phases, "m")
    assert s.ratios == pytest.approx([2.1 / 1.05, 1.5, 3.0])
    assert s.median == pytest.approx(2.0)
    assert s.lo <= s.median <= s.hi


def test_timing_output_drops_the_warm_up_and_reads_the_runner() -> None:
    out = "\n".join(["r0 open/close 900.0", "r0 fork+exec 400000.0", "r0 churn 1000000000 500000 250000",
                     "r1 open/close 800.5", "r1 fork+exec 350000.0", "r1 churn 2000000000 600000 300000", "noise"])
    assert parse_timing(out) == [{"open/close": 800.5, "fork+exec": 350000.0, "churn wall": 2.0, "churn cpu": 0.9}]


def test_probe_script_reads_files_and_execs_programs() -> None:
    assert probe_script([V_OPEN, V_EXEC]) == (f'cat {ROOT}/s > /dev/null 2>&1; echo "v0 $?"\n'
                                              f'{ROOT}/t > /dev/null 2>&1; echo "v1 $?"\n')


def test_host_files_are_put_back_as_they_were(tmp_path: Path) -> None:
    etc, backup = tmp_path / "etc", tmp_path / "backup"
    backup.mkdir()
    (etc / "rules.d" / "sub").mkdir(parents=True)
    (etc / "rules.d").chmod(0o755)
    (etc / "conf").write_text("original\n")
    (etc / "conf").chmod(0o640)
    (etc / "rules.d" / "90-deny.rules").write_text("deny\n")
    (etc / "rules.d" / "sub" / "x").write_text("x\n")
    (etc / "link").symlink_to("conf")
    os.mkfifo(etc / "fifo")
    files = HostFiles(backup)
    for path, entries in ((etc / "conf", False), (etc / "rules.d", True), (etc / "compiled.rules", False),
                          (etc / "link", False), (etc / "fifo", False), (tmp_path / "run", True)):
        files.keep(path, with_entries=entries)
    (etc / "conf").write_text("ours\n")
    for old in (etc / "rules.d").iterdir():
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    (etc / "rules.d" / "50-ours.rules").write_text("ours\n")
    (etc / "compiled.rules").write_text("ours\n")
    (etc / "link").unlink()
    (etc / "link").write_text("not a link\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "fifo").write_text("")
    (etc / "rules.d").chmod(0o770)
    assert files.restore() == []
    assert (etc / "rules.d").stat().st_mode & 0o777 == 0o755
    assert (etc / "conf").read_text() == "original\n" and (etc / "conf").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in (etc / "rules.d").iterdir()) == ["90-deny.rules", "sub"]
    assert (etc / "rules.d" / "sub" / "x").read_text() == "x\n"
    assert not (etc / "compiled.rules").exists() and not (tmp_path / "run").exists()
    assert (etc / "link").is_symlink() and os.readlink(etc / "link") == "conf"
    assert stat.S_ISFIFO((etc / "fifo").lstat().st_mode)
