"""The whole stack on a kernel with BPF-LSM and AppArmor: a KubeArmorPolicy blocks inline, and says who blocked.

``bulwark up`` (nats-server and the five services), a policy applied with ``bulwark apply``, workloads started
with ``bulwark run``. The policy blocks an exec, a write to a read-only directory and a raw socket in the
workloads it selects. With the default enforcer order BPF-LSM enforces it; with ``BULWARK_ENFORCER_ORDER``
naming AppArmor first (BPF-LSM disabled by setting), AppArmor does. In both, the selected workload's acts fail
with the kernel's refusal, its neighbour (another workload) and the host do the same acts unhindered, and
each refusal is one alert naming the enforcer that refused it.

These tests need a kernel where the enforcer loads; elsewhere (this development VM's 6.18 has neither) they
are deselected, and the kernel lab (``tests/vm``) runs them inside its guests.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, apply_policy, healthy_stack, live_bpf_programs, wait_for_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]  # a hang bound: an emulated guest is slow

NAMESPACE = "lsm"
POLICY = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {{name: guard, namespace: lsm}}
spec:
  selector: {{matchLabels: {{app: guarded}}}}
  process:
    matchPaths: [{{path: /usr/bin/id}}]
  file:
    matchDirectories: [{{dir: {directory}/, readOnly: true}}]
  network:
    matchProtocols: [{{protocol: raw}}]
  action: Block
  severity: 7
"""
# Each act once; prints what each did as JSON ("ok" or the error's name).
ACTS = r'''
import json, socket, subprocess, sys
target = sys.argv[1]
done = {}
try:
    subprocess.run(["/usr/bin/id"], check=True, capture_output=True)
    done["exec"] = "ok"
except (OSError, subprocess.CalledProcessError) as exc:
    done["exec"] = type(exc).__name__
try:
    done["read"] = "ok" if open(target).read().startswith("kept\n") else "changed"
except OSError as exc:
    done["read"] = type(exc).__name__
try:
    with open(target, "a") as f:
        f.write("written\n")
    done["write"] = "ok"
except OSError as exc:
    done["write"] = type(exc).__name__
try:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()   # "raw" to every enforcer
    done["raw"] = "ok"
except OSError as exc:
    done["raw"] = type(exc).__name__
print(json.dumps(done))
'''
PY = "/usr/bin/python3"
ALL_OK = {"exec": "ok", "read": "ok", "write": "ok", "raw": "ok"}
REFUSED = {"exec": "PermissionError", "read": "ok", "write": "PermissionError", "raw": "PermissionError"}


@pytest.fixture
def guarded_dir(tmp_path: Path) -> Path:
    d = tmp_path / "guarded"
    d.mkdir()
    (d / "target").write_text("kept\n")
    (tmp_path / "acts.py").write_text(ACTS)
    return d


@contextlib.contextmanager
def _stack(tmp_path: Path, order: str | None) -> Iterator[Stack]:
    env = {"BULWARK_VISIBILITY_CONTAINERS": "none"}   # alerts are what this test reads
    if order:
        env["BULWARK_ENFORCER_ORDER"] = order
    with healthy_stack(tmp_path / "data", extra_env=env, wait=600) as s:
        ours = s.bpf_programs()
        yield s
    leftover = ours & live_bpf_programs()
    assert not leftover, f"BPF programs left attached after stop: {sorted(leftover)}"


def _acts(stack: Stack | None, app: str, guarded: Path) -> dict[str, str]:
    """Run the acts in a ``bulwark run`` workload labelled ``app`` (on the host when ``stack`` is None)."""
    argv = [PY, str(guarded.parent / "acts.py"), str(guarded / "target")]
    if stack is None:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    else:
        res = stack.cli("run", "--namespace", NAMESPACE, "--label", f"app={app}", "--name", f"wl-{app}", "--",
                        *argv, timeout=300)
    assert res.returncode == 0, f"{res.stdout}\n{res.stderr}"
    return dict(json.loads(res.stdout.strip().splitlines()[-1]))


def _alerts(stack: Stack, want: int) -> list[dict]:
    """The policy's alerts, once ``want`` came (bounded wait: it stops a hang), plus any late extra ones."""
    deadline = time.monotonic() + 120
    found: list[dict] = []
    while time.monotonic() < deadline:
        found = wait_for_alerts(stack.rest_url, want, timeout=10, namespace=NAMESPACE, policy="guard")
        if len(found) >= want:
            break
    time.sleep(3)   # a duplicate (the monitor's record of a refusal already reported) would come by now
    return wait_for_alerts(stack.rest_url, want, timeout=1, namespace=NAMESPACE, policy="guard")


def _blocks_and_names(stack: Stack, guarded: Path, tmp_path: Path, enforcer: str) -> None:
    apply_policy(stack, POLICY.format(directory=guarded), tmp_path, "guard")
    assert _acts(stack, "guarded", guarded) == REFUSED
    assert _acts(stack, "neighbour", guarded) == ALL_OK
    assert _acts(None, "", guarded) == ALL_OK
    assert (guarded / "target").read_text() == "kept\nwritten\nwritten\n"   # the neighbour's and the host's
    alerts = _alerts(stack, 3)
    seen = sorted((a["Operation"], a["Resource"]) for a in alerts)
    assert [op for op, _ in seen] == ["File", "Network", "Process"], \
        [(a["Operation"], a["Resource"], a["Enforcer"], a["Result"]) for a in alerts]
    assert seen[0][1] == f"{guarded}/target" and seen[2][1] == "/usr/bin/id"
    for alert in alerts:
        assert alert["ContainerName"] == "wl-guarded" and alert["PolicyName"] == "guard"
        assert (alert["Action"], alert["Enforcer"]) == ("Block", enforcer), alert
        assert alert["Result"] in ("Permission denied", "Operation not permitted"), alert


@pytest.mark.bpflsm
def test_bpflsm_blocks_exec_write_and_raw_socket_in_the_selected_workload_only(
        guarded_dir: Path, tmp_path: Path) -> None:
    with _stack(tmp_path, None) as stack:
        _blocks_and_names(stack, guarded_dir, tmp_path, "BPFLSM")


@pytest.mark.apparmor
def test_apparmor_does_the_same_with_bpflsm_disabled_by_setting(guarded_dir: Path, tmp_path: Path) -> None:
    with _stack(tmp_path, "apparmor,audit") as stack:
        _blocks_and_names(stack, guarded_dir, tmp_path, "AppArmor")
