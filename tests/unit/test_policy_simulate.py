"""``bulwark policy simulate``: one verdict per input line, through the services' compiler and matcher."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bulwark.simulate import Simulator, load_policies, simulate_lines
from services.policy.posture import parse_posture_spec

POLICIES = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: allow-nginx, namespace: web}
spec:
  severity: 4
  tags: [PCI]
  message: only nginx runs here
  selector: {matchLabels: {app: nginx}}
  process:
    matchPaths: [{path: /usr/sbin/nginx}, {path: /bin/sleep, action: Block}]
  network:
    matchProtocols: [{protocol: tcp}]
  action: Allow
---
apiVersion: security.kubearmor.com/v1
kind: KubeArmorHostPolicy
metadata: {name: host-shadow}
spec:
  nodeSelector: {matchLabels: {kubernetes.io/hostname: node1}}
  file: {matchPaths: [{path: /etc/shadow, readOnly: true}]}
  action: Block
"""

NGINX = {"kind": "container", "namespace": "web", "labels": {"app": "nginx"}, "container": "nginx"}
HOST = {"kind": "host", "node_labels": {"kubernetes.io/hostname": "node1"}}
EVENTS = [
    {"workload": NGINX, "operation": "Process", "resource": "/usr/sbin/nginx", "access": "exec"},
    {"workload": NGINX, "operation": "Process", "resource": "/bin/sleep", "source": "/bin/sh"},
    {"workload": NGINX, "operation": "Process", "resource": "/bin/bash"},
    {"workload": {**NGINX, "namespace_annotations": {"kubearmor-network-posture": "block"}},
     "operation": "Network", "protocol": "udp"},
    {"workload": {**NGINX, "annotations": {"kubearmor-policy": "audited"}}, "operation": "Process",
     "resource": "/bin/sleep"},
    {"workload": HOST, "operation": "File", "resource": "/etc/shadow", "access": "write", "uid": 0},
    {"workload": HOST, "operation": "File", "resource": "/etc/shadow", "access": "read"},
    {"workload": {"namespace": "other", "labels": {}}, "operation": "Capabilities", "capability": "net_raw"},
]


def _files(tmp_path: Path, events: list) -> tuple[Path, Path]:
    policy = tmp_path / "policies.yaml"
    policy.write_text(POLICIES)
    lines = tmp_path / "events.jsonl"
    lines.write_text("".join((e if isinstance(e, str) else json.dumps(e)) + "\n" for e in events))
    return policy, lines


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bulwark.cli", "policy", "simulate", *args],
                          capture_output=True, text=True, timeout=60)


def test_one_verdict_per_line_in_order(tmp_path: Path) -> None:
    policy, events = _files(tmp_path, EVENTS)
    out = _run("-f", str(policy), "--events", str(events))
    assert out.returncode == 0, out.stderr
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(g["action"], g["policy"], g["type"]) for g in got] == [
        ("Allow", "allow-nginx", "MatchedPolicy"),
        ("Block", "allow-nginx", "MatchedPolicy"),
        ("Audit", "DefaultPosture", "MatchedPolicy"),
        ("Block", "DefaultPosture", "MatchedPolicy"),
        ("Audit (Block)", "allow-nginx", "MatchedPolicy"),
        ("Block", "host-shadow", "MatchedHostPolicy"),
        ("Allow", None, None),
        ("Allow", None, None),
    ]
    assert got[1] == {"action": "Block", "policy": "allow-nginx", "type": "MatchedPolicy", "severity": "4",
                      "message": "only nginx runs here", "tags": ["PCI"], "alert": True}
    assert got[2]["severity"] == "" and got[2]["alert"] is True and got[0]["alert"] is False
    assert got[6] == {"action": "Allow", "policy": None, "type": None, "severity": "", "message": "", "tags": [],
                      "alert": False}


def test_default_posture_option(tmp_path: Path) -> None:
    policy, events = _files(tmp_path, EVENTS[2:4])
    out = _run("-f", str(policy), "--events", str(events), "--default-posture", "file=block,network=audit")
    assert [json.loads(line)["action"] for line in out.stdout.splitlines()] == ["Block", "Block"]
    bad = _run("-f", str(policy), "--events", str(events), "--default-posture", "file=deny")
    assert bad.returncode == 2 and "file=deny" in bad.stderr and bad.stdout == ""


def test_bad_lines_get_an_error_and_the_rest_go_on(tmp_path: Path) -> None:
    policy, events = _files(tmp_path, [
        "{not json", {"operation": "Process", "resource": "/bin/sh"}, EVENTS[1],
        {"workload": NGINX, "operation": "Process"}, {"workload": NGINX, "operation": "Teleport"},
        "", {"workload": NGINX, "operation": "File", "resource": "/x", "uid": "root"}, EVENTS[0]])
    out = _run("-f", str(policy), "--events", str(events))
    assert out.returncode == 1
    got = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(got) == 8
    assert "line 1: not valid JSON" in got[0]["error"]
    assert "workload is required" in got[1]["error"]
    assert got[2]["action"] == "Block"
    assert "needs 'resource'" in got[3]["error"]
    assert "operation must be one of" in got[4]["error"]
    assert "empty line" in got[5]["error"]
    assert "uid must be an integer" in got[6]["error"]
    assert got[7]["action"] == "Allow"


def test_invalid_policies_are_named_and_nothing_is_judged(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICIES.replace("severity: 4", "severity: 11"))
    _policy, events = _files(tmp_path, EVENTS[:1])
    out = _run("-f", str(bad), "--events", str(events))
    assert out.returncode == 2 and out.stdout == ""
    assert f"INVALID {bad}#1: spec.severity: must be at most 10, got 11" in out.stderr


def test_directories_and_several_files_and_stdin(tmp_path: Path) -> None:
    policy, events = _files(tmp_path, EVENTS[:2])
    (tmp_path / "more").mkdir()
    (tmp_path / "more" / "x.yaml").write_text(POLICIES.replace("allow-nginx", "allow-nginx-2").split("---")[0])
    out = subprocess.run([sys.executable, "-m", "bulwark.cli", "policy", "simulate", "-f", str(policy),
                          str(tmp_path / "more"), "--events", "-"], input=events.read_text(),
                         capture_output=True, text=True, timeout=60)
    assert [json.loads(line)["action"] for line in out.stdout.splitlines()] == ["Allow", "Block"]


def test_in_process_api_matches_the_cli(tmp_path: Path) -> None:
    policy, events = _files(tmp_path, EVENTS)
    sim = Simulator(load_policies([str(policy)]), parse_posture_spec(""))
    lines = list(simulate_lines(sim, events.read_text().splitlines()))
    assert lines == _run("-f", str(policy), "--events", str(events)).stdout.splitlines()
