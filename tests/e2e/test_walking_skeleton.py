"""Issue 2 end to end: a policy blocks an exec inline in one workload, and the alert is everywhere.

Everything is real: nats-server, the five services, bcc programs on this kernel, fanotify, SQLite.
"""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.collectors import GrpcAlertCollector, WebsocketCollector
from tests.e2e.stack import Stack, healthy_stack, live_bpf_programs, wait_for_alerts

POLICIES = Path(__file__).parent / "policies"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ours: set[int] = set()
    with healthy_stack(tmp_path_factory.mktemp("e2e") / "data") as s:
        ours = s.bpf_programs()
        assert ours, "the stack holds no BPF programs: the monitor is not running"
        yield s
    leftover = ours & live_bpf_programs()
    assert not leftover, f"BPF programs left attached after stop: {sorted(leftover)}"


def _alerts(stack: Stack, **params: object) -> list[dict]:
    resp = httpx.get(f"{stack.rest_url}/api/v1/alerts", params=params, timeout=5)
    resp.raise_for_status()
    return resp.json()




def test_block_exec_inline_in_selected_workload_and_alert_everywhere(stack: Stack) -> None:
    applied = stack.cli("apply", "-f", str(POLICIES / "block-sleep.yaml"))
    assert applied.returncode == 0, applied.stderr
    ws = WebsocketCollector(f"ws://127.0.0.1:{stack.rest_port}/api/v1/stream").start()
    grpc_feed = GrpcAlertCollector(f"127.0.0.1:{stack.grpc_port}").start()
    try:
        blocked = stack.cli("run", "--namespace", "demo", "--label", "app=demo", "--name", "demo-wl",
                            "--", "/usr/bin/sleep", "0.1")
        assert blocked.returncode != 0, blocked.stderr
        assert "Operation not permitted" in blocked.stderr or "Permission denied" in blocked.stderr

        other = stack.cli("run", "--namespace", "demo", "--label", "app=other", "--", "/usr/bin/sleep", "0.1")
        assert other.returncode == 0, other.stderr
        assert subprocess.run(["/usr/bin/sleep", "0.1"]).returncode == 0

        alerts = wait_for_alerts(stack.rest_url, 1, timeout=20.0, interval=0.05, namespace="demo", policy="block-sleep")
        time.sleep(0.5)  # anything doubled would have arrived by now
        alerts = _alerts(stack, namespace="demo", policy="block-sleep")
        assert len(alerts) == 1, alerts
        alert = alerts[0]
        assert alert["Type"] == "MatchedPolicy"
        assert alert["PolicyName"] == "block-sleep"
        assert alert["Severity"] == "5"
        assert alert["Action"] == "Block"
        assert alert["Result"] in ("Operation not permitted", "Permission denied")
        assert alert["Operation"] == "Process"
        assert alert["Resource"] == "/usr/bin/sleep"
        assert alert["Source"].startswith("/") and "python" in alert["Source"]
        assert alert["NamespaceName"] == "demo"
        assert alert["Labels"] == "app=demo"
        assert alert["ContainerName"] == "demo-wl" and len(alert["ContainerID"]) == 64
        assert alert["HostName"] == stack.node
        assert alert["HostPID"] > 0 and alert["PID"] == 2 and alert["PPID"] == 1
        assert alert["UID"] == os.getuid()
        assert alert["Enforcer"] == "Fanotify"

        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (ws.messages and grpc_feed.alerts):
            time.sleep(0.05)
        assert [m["PolicyName"] for m in ws.messages] == ["block-sleep"]
        assert [a.PolicyName for a in grpc_feed.alerts] == ["block-sleep"]
        g = grpc_feed.alerts[0]
        assert (g.Action, g.Severity, g.Resource, g.NamespaceName) == ("Block", "5", "/usr/bin/sleep", "demo")
        assert g.HostPID == alert["HostPID"] and g.ContainerID == alert["ContainerID"]
    finally:
        ws.stop()
        grpc_feed.stop()


def test_running_sleep_through_the_loader_is_blocked_and_alerted_as_an_exec(stack: Stack) -> None:
    """`ld.so /usr/bin/sleep` opens sleep instead of exec'ing it: still a Process Block (shared.loaders)."""
    loader = "/lib64/ld-linux-x86-64.so.2"
    ran = stack.cli("run", "--namespace", "demo", "--label", "app=demo", "--name", "loader-wl", "--",
                    loader, "/usr/bin/sleep", "0.1")
    assert ran.returncode != 0 and "not permitted" in ran.stderr.lower(), ran.stderr
    other = stack.cli("run", "--namespace", "demo", "--label", "app=other", "--", loader, "/usr/bin/sleep", "0.1")
    assert other.returncode == 0, other.stderr
    deadline = time.monotonic() + 20
    mine: list[dict] = []
    while time.monotonic() < deadline and not mine:
        mine = [a for a in _alerts(stack, namespace="demo", policy="block-sleep") if a["ContainerName"] == "loader-wl"]
        time.sleep(0.1)
    assert len(mine) == 1, mine
    alert = mine[0]
    assert (alert["Operation"], alert["Resource"], alert["Action"]) == ("Process", "/usr/bin/sleep", "Block")
    assert "ld-linux" in alert["Source"] and alert["Enforcer"] == "Fanotify"


def test_audit_policy_lets_it_run_and_alerts(stack: Stack) -> None:
    assert stack.cli("apply", "-f", str(POLICIES / "audit-true.yaml")).returncode == 0
    ran = stack.cli("run", "--namespace", "demo", "--label", "app=demo", "--", "/usr/bin/true")
    assert ran.returncode == 0, ran.stderr
    alerts = wait_for_alerts(stack.rest_url, 1, timeout=20.0, interval=0.05, namespace="demo", policy="audit-true")
    assert len(alerts) == 1, alerts
    assert (alerts[0]["Action"], alerts[0]["Result"], alerts[0]["Severity"]) == ("Audit", "Passed", "2")


def test_invalid_policy_is_refused_with_field_paths_and_changes_nothing(stack: Stack) -> None:
    before = httpx.get(f"{stack.rest_url}/api/v1/policies", timeout=5).json()
    resp = httpx.post(f"{stack.rest_url}/api/v1/policies", content=(POLICIES / "invalid.yaml").read_bytes(),
                      headers={"Content-Type": "application/yaml"}, timeout=5)
    assert resp.status_code == 422
    paths = {e["path"] for e in resp.json()["errors"]}
    assert {"spec.severity", "spec.action", "spec.process.matchPaths[0].path"} <= paths
    cli = stack.cli("apply", "-f", str(POLICIES / "invalid.yaml"))
    assert cli.returncode != 0 and "spec.severity" in cli.stderr
    assert httpx.get(f"{stack.rest_url}/api/v1/policies", timeout=5).json() == before


def test_policies_are_listed_with_what_they_select_and_can_be_deleted(stack: Stack) -> None:
    listed = stack.cli("get", "policies")
    assert listed.returncode == 0 and "block-sleep" in listed.stdout
    assert stack.cli("delete", "-f", str(POLICIES / "block-sleep.yaml")).returncode == 0
    ran = stack.cli("run", "--namespace", "demo", "--label", "app=demo", "--", "/usr/bin/sleep", "0.1")
    assert ran.returncode == 0, ran.stderr


def test_a_workloads_logs_start_at_its_command(stack: Stack) -> None:
    """Nothing the launcher does before the command (unshare, mount /proc, its own Python's capability
    checks) is logged as the workload's: the workload's first record is the command's exec. (What the
    kernel does inside that execve, before the new image replaces the launcher's, comes after it.)"""
    ran = stack.cli("run", "--namespace", "quiet", "--label", "app=quiet", "--name", "quiet-wl", "--",
                    "/usr/bin/true")
    assert ran.returncode == 0, ran.stderr

    def logs() -> list[dict]:
        resp = httpx.get(f"{stack.rest_url}/api/v1/logs", params={"namespace": "quiet", "limit": 1000}, timeout=5)
        resp.raise_for_status()
        return resp.json()

    def is_exec(record: dict) -> bool:
        return record["Operation"] == "Process" and record.get("Resource", "").startswith("/usr/bin/true")

    deadline = time.monotonic() + 20
    while not any(is_exec(r) for r in logs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    records = sorted(logs(), key=lambda r: r["UpdatedTime"])  # the event's own time, microseconds
    brief = [(r["UpdatedTime"][11:], r["Operation"], r.get("PID"), r.get("ProcessName"), r.get("Resource"))
             for r in records]
    assert records and is_exec(records[0]), brief


def test_apply_and_delete_take_every_file_given(stack: Stack, tmp_path: Path) -> None:
    """``-f`` repeats as with kubectl: every file named is applied (not only the last), then deleted."""
    names = ["multi-one", "multi-two", "multi-three"]
    files = []
    for name in names:
        f = tmp_path / f"{name}.yaml"
        f.write_text(f"apiVersion: security.kubearmor.com/v1\nkind: KubeArmorPolicy\n"
                     f"metadata: {{name: {name}, namespace: multi}}\n"
                     f"spec:\n  selector: {{matchLabels: {{app: multi}}}}\n"
                     f"  process: {{matchPaths: [{{path: /usr/bin/{name}}}]}}\n  action: Audit\n")
        files.append(f)
    (tmp_path / "more").mkdir()
    files[2].rename(tmp_path / "more" / files[2].name)
    args = ["-f", str(files[0]), "-f", str(files[1]), "-f", str(tmp_path / "more")]

    def listed() -> set[str]:
        body = httpx.get(f"{stack.rest_url}/api/v1/policies", timeout=5).json()
        items = body["policies"] if isinstance(body, dict) else body
        return {p["name"] for p in items if p.get("namespace") == "multi"}

    applied = stack.cli("apply", *args)
    assert applied.returncode == 0, applied.stderr
    assert listed() == set(names), applied.stdout
    deleted = stack.cli("delete", *args)
    assert deleted.returncode == 0, deleted.stderr
    assert listed() == set()


def test_status_reports_each_services_cpu_and_memory(stack: Stack) -> None:
    done = stack.cli("status")
    assert done.returncode == 0, done.stderr
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    assert set(lines) == {"monitor", "enforcer", "identity", "policy", "feeder"}, done.stdout
    for name, line in lines.items():
        assert " cpu " in line and "% rss " in line and line.endswith(" MiB"), (name, line)
