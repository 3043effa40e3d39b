"""Issue 18 items 2 and 3 end to end: discover an Allow policy from a workload's stored logs, rehearse
candidates on that history, then enforce the discovered policy.

Everything is real: `bulwark up` (nats-server, the five services, bcc, fanotify, SQLite), `bulwark run`
workloads, the REST API. The stack's default file posture is ``block`` so that an allow-list blocks
what it does not list.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from tests.e2e.stack import Stack, healthy_stack, wait_for_alerts

pytestmark = pytest.mark.e2e
NS = "disc"
LABEL = "app=disc"
SCRIPT = "/usr/bin/cat /etc/hostname >/dev/null; /usr/bin/ls /etc >/dev/null"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with healthy_stack(tmp_path_factory.mktemp("discover") / "data", node="disc-node",
                       extra_env={"BULWARK_DEFAULT_FILE_POSTURE": "block"}) as s:
        yield s


def _logs(stack: Stack, **params: object) -> list[dict]:
    resp = httpx.get(f"{stack.rest_url}/api/v1/logs", params={"namespace": NS, "limit": 10000, **params}, timeout=10)
    resp.raise_for_status()
    return resp.json()


def _wait_for_history(stack: Stack, deadline_s: float = 30.0) -> list[dict]:
    """The workload's logs once its execs and the files ls read are stored and the count stops growing."""
    deadline = time.monotonic() + deadline_s
    last = -1
    while time.monotonic() < deadline:
        logs = _logs(stack)
        execs = {r["Resource"] for r in logs if r["Operation"] == "Process"}
        ls_files = [r for r in logs if r["Operation"] == "File" and r["ProcessName"].endswith("/ls")]
        if {"/usr/bin/cat", "/usr/bin/ls"} <= execs and ls_files and len(logs) == last:
            return logs
        last = len(logs)
        time.sleep(1.0)
    raise AssertionError(f"history never settled: {len(_logs(stack))} logs\n{stack.logs()}")


def _rehearse(stack: Stack, policy: Path) -> tuple[int, dict]:
    done = stack.cli("policy", "simulate", "--history", "-n", NS, "--label", LABEL, "-f", str(policy),
                     "--default-posture", "file=block", "--json")
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_discover_rehearse_then_enforce(stack: Stack, tmp_path: Path) -> None:
    first = stack.cli("run", "--namespace", NS, "--label", LABEL, "--name", "disc-1", "--", "/bin/sh", "-c", SCRIPT)
    assert first.returncode == 0, first.stderr
    history = _wait_for_history(stack)

    discovered = tmp_path / "discovered.yaml"
    made = stack.cli("discover", "-n", NS, "--label", LABEL, "--name", "disc-allow", "-o", str(discovered))
    assert made.returncode == 0, made.stderr
    text = discovered.read_text()
    assert "# 1 exec(s)" in text  # commented with counts
    assert stack.cli("policy", "validate", str(discovered)).stdout.startswith("OK KubeArmorPolicy disc/disc-allow")
    doc = yaml.safe_load(text)
    assert doc["spec"]["selector"] == {"matchLabels": {"app": "disc"}} and doc["spec"]["action"] == "Allow"
    programs = {e["path"] for e in doc["spec"]["process"]["matchPaths"]}
    assert {"/bin/sh", "/usr/bin/cat", "/usr/bin/ls"} <= programs
    files = doc["spec"]["file"]
    hostname = next(e for e in files["matchPaths"] if e["path"] == "/etc/hostname")
    assert hostname["readOnly"] is True and hostname["fromSource"] == [{"path": "/usr/bin/cat"}]
    # Discovery is deterministic: the same history gives the same text.
    again = stack.cli("discover", "-n", NS, "--label", LABEL, "--name", "disc-allow")
    assert again.stdout == text

    # Rehearsal of the discovered policy on the history: nothing would change.
    code, report = _rehearse(stack, discovered)
    assert code == 0 and report["judged"] == len(history), report
    assert report["totals"] == {"blocked": 0, "audited": 0, "unblocked": 0, "silenced": 0}, report

    # A deliberately too-tight candidate (ls left out): exactly ls's execs would have been blocked.
    tight = json.loads(json.dumps(doc))
    tight["spec"]["process"]["matchPaths"] = [e for e in tight["spec"]["process"]["matchPaths"]
                                              if e["path"] != "/usr/bin/ls"]
    tight_path = tmp_path / "tight.yaml"
    tight_path.write_text(yaml.safe_dump(tight))
    code, report = _rehearse(stack, tight_path)
    ls_execs = [r for r in history if r["Operation"] == "Process" and r["Resource"] == "/usr/bin/ls"]
    assert code == 1, report
    groups = report["workloads"][f"{NS}/disc-1/disc-1"]["groups"]
    assert [(g["change"], g["operation"], g["resource"], g["now"], g["policy"]) for g in groups] == [
        ("blocked", "Process", "/usr/bin/ls", "Block", "DefaultPosture")], groups
    assert groups[0]["count"] == len(ls_execs) and groups[0]["source"] == ls_execs[0]["Source"]
    assert report["totals"] == {"blocked": len(ls_execs), "audited": 0, "unblocked": 0, "silenced": 0}
    text_report = stack.cli("policy", "simulate", "--history", "-n", NS, "-f", str(tight_path),
                            "--default-posture", "file=block")
    assert text_report.returncode == 1 and "/usr/bin/ls" in text_report.stdout

    # Enforced: the same run passes; a program it never ran is refused.
    applied = stack.cli("apply", "-f", str(discovered))
    assert applied.returncode == 0, applied.stderr
    same = stack.cli("run", "--namespace", NS, "--label", LABEL, "--name", "disc-2", "--", "/bin/sh", "-c", SCRIPT)
    assert same.returncode == 0, f"{same.stderr}\n{stack.logs()}"
    new = stack.cli("run", "--namespace", NS, "--label", LABEL, "--name", "disc-3", "--",
                    "/bin/sh", "-c", "/usr/bin/cat /etc/hostname >/dev/null; /usr/bin/id")
    assert new.returncode != 0, new.stdout
    assert "denied" in new.stderr.lower() or "not permitted" in new.stderr.lower(), new.stderr
    alerts = wait_for_alerts(stack.rest_url, 1, timeout=20.0, namespace=NS, resource="/usr/bin/id")
    assert alerts and alerts[0]["Action"] == "Block" and alerts[0]["PolicyName"] == "DefaultPosture", alerts
    assert not [a for a in wait_for_alerts(stack.rest_url, 1, timeout=1.0, namespace=NS)
                if a["ContainerName"] == "disc-2"], "the discovered run raised alerts"
