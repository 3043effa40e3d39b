"""KubeArmor's policy presets end to end on this host: a policy's ``spec.presets`` is enforced and alerted.

Everything is real: nats-server, the five services, bcc programs on this kernel (no BPF-LSM here: the
eBPF signal enforcer kills a fileless program at exec and an executable anonymous mapping at mmap;
protectEnv's Block cannot be enforced and is reported as ``Audit (Block)``, as the policy's status and
``bulwark probe`` say). Workloads are started with ``bulwark run``; the exec preset's entry comes from
``nsenter`` into one of them.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bulwark.procs import terminate
from tests.e2e.stack import BIN, Stack, apply_policy, healthy_stack, live_bpf_programs, wait_for_alerts

pytestmark = pytest.mark.e2e

AUDIT = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: audit-presets, namespace: presets}
spec:
  selector: {matchLabels: {app: audited}}
  presets:
  - {name: filelessExec, action: Audit}
  - {name: protectEnv, action: Audit}
  - {name: anonMapExec, action: Audit}
  - {name: exec, action: Audit}
  severity: 8
  message: preset attack
  tags: [MITRE_T1620]
"""
BLOCK = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: block-presets, namespace: presets}
spec:
  selector: {matchLabels: {app: blocked}}
  presets:
  - {name: filelessExec, action: Block}
  - {name: protectEnv, action: Block}
  - {name: anonMapExec, action: Block}
  severity: 9
"""
ATTACKS = r'''
import ctypes, mmap, os, sys
open("/proc/1/environ", "rb").read()                       # the workload's init: another process
fd = os.memfd_create("payload", 0)
os.write(fd, open("/usr/bin/true", "rb").read())
pid = os.fork()
if pid == 0:
    os.execv(f"/proc/self/fd/{fd}", ["payload"])
assert os.waitpid(pid, 0)[1] == 0
mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_EXEC)
buf = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
assert ctypes.CDLL(None).mprotect(ctypes.c_void_p(addr), 4096, 5) == 0
'''
FILELESS = r'''
import os
fd = os.memfd_create("payload", 0)
os.write(fd, open("/usr/bin/true", "rb").read())
os.execv(f"/proc/self/fd/{fd}", ["payload"])
'''
ENV_THEN_MMAP = r'''
import mmap
open("/proc/1/environ", "rb").read()
mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_EXEC)
print("survived")
'''
PY = "/usr/bin/python3"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    ours: set[int] = set()
    with healthy_stack(tmp_path_factory.mktemp("presets") / "data") as s:
        ours = s.bpf_programs()
        yield s
    leftover = ours & live_bpf_programs()
    assert not leftover, f"BPF programs left attached after stop: {sorted(leftover)}"


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("scripts")
    for name, text in (("attacks.py", ATTACKS), ("fileless.py", FILELESS), ("env_mmap.py", ENV_THEN_MMAP)):
        (d / name).write_text(text)
    return d


def _run(stack: Stack, app: str, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return stack.cli("run", "--namespace", "presets", "--label", f"app={app}", "--name", name, "--", *argv,
                     timeout=120)


def _alerts_of(stack: Stack, container: str, want: int, **params: str) -> list[dict]:
    """The alerts of one workload, once at least ``want`` came (bounded wait: it only stops a hang)."""
    deadline = time.monotonic() + 30
    while True:
        found = [a for a in wait_for_alerts(stack.rest_url, 1, timeout=5, namespace="presets", **params)
                 if a["ContainerName"] == container]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def test_policy_status_says_what_a_block_preset_does_here(stack: Stack, tmp_path: Path) -> None:
    apply_policy(stack, AUDIT, tmp_path, "audit")
    (tmp_path / "block.yaml").write_text(BLOCK)
    applied = stack.cli("apply", "-f", str(tmp_path / "block.yaml"))
    assert applied.returncode == 0 and "warning: " in applied.stderr and "spec.presets[1].action" in applied.stderr
    listed = {p["name"]: p for p in httpx.get(f"{stack.rest_url}/api/v1/policies", timeout=10).json()["policies"]}
    assert listed["audit-presets"]["status"] == "applied"
    assert [w.split(":")[0] for w in listed["audit-presets"]["warnings"]] == ["spec.presets[3].name"]  # exec's scope
    warned = " ".join(listed["block-presets"]["warnings"])
    assert "spec.presets[1].action: protectEnv Block" in warned and "Audit (Block)" in warned
    table = stack.cli("get", "policies").stdout
    assert "warning: spec.presets[1].action" in table


def test_every_presets_attack_is_alerted(stack: Stack, scripts: Path) -> None:
    ran = _run(stack, "audited", "wl-audit", PY, str(scripts / "attacks.py"))
    assert ran.returncode == 0, ran.stderr
    alerts = _alerts_of(stack, "wl-audit", 4, policy="audit-presets")
    by = {(a["Operation"], a["Resource"] or a["Data"].split()[0]): a for a in alerts}
    assert len(alerts) == 4, [(a["Operation"], a["Resource"], a["Data"]) for a in alerts]
    fileless = by[("Process", "memfd:payload")]
    env = by[("File", "/proc/1/environ")]
    mmaps = [a for a in alerts if "preset=anonMapExec" in a["Data"]]
    assert len(mmaps) == 2 and {a["Data"].split()[0] for a in mmaps} == {"syscall=SYS_MMAP", "syscall=SYS_MPROTECT"}
    for alert in (fileless, env, *mmaps):
        assert (alert["PolicyName"], alert["Severity"], alert["Message"], alert["Tags"]) == (
            "audit-presets", "8", "preset attack", "MITRE_T1620")
        assert (alert["Action"], alert["Result"], alert["Enforcer"]) == ("Audit", "Passed", "eBPF Monitor")
        assert alert["Type"] == "MatchedPolicy" and alert["NamespaceName"] == "presets"
    assert fileless["ProcessName"] == "memfd:payload" and "filename=/proc/self/fd/" in fileless["Data"]
    assert all(a["Operation"] == "File" for a in mmaps)


def test_an_exec_into_the_workload_from_outside_is_alerted(stack: Stack) -> None:
    marker = "987.654"   # the sleeper's own argument: how its process is found
    run = subprocess.Popen([str(BIN / "bulwark"), "run", "--namespace", "presets", "--label", "app=audited",
                            "--name", "wl-entered", "--", "/usr/bin/sleep", marker],
                           env=stack.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        target = _find(["/usr/bin/sleep", marker])
        entered = subprocess.run(["nsenter", "-t", str(target), "-m", "-p", "--", "/usr/bin/true"],
                                 capture_output=True, text=True, timeout=30)
        assert entered.returncode == 0, entered.stderr
        [alert] = _alerts_of(stack, "wl-entered", 1, policy="audit-presets")
    finally:
        terminate(run, grace=30)       # bulwark run stops its workload with it
    assert (alert["Operation"], alert["Resource"], alert["Action"], alert["Result"]) == (
        "Process", "/usr/bin/true", "Audit", "Passed")
    assert "preset=exec" in alert["Data"] and "parent=nsenter" in alert["Data"] and alert["PPID"] == 0


def test_block_kills_what_this_node_can_and_says_audit_block_for_the_rest(stack: Stack, scripts: Path) -> None:
    killed = _run(stack, "blocked", "wl-fileless", PY, str(scripts / "fileless.py"))
    assert killed.returncode != 0
    mixed = _run(stack, "blocked", "wl-mixed", PY, str(scripts / "env_mmap.py"))
    assert mixed.returncode != 0 and "survived" not in mixed.stdout
    [fileless] = _alerts_of(stack, "wl-fileless", 1, policy="block-presets")
    assert (fileless["Operation"], fileless["Resource"], fileless["Action"], fileless["Result"],
            fileless["Enforcer"], fileless["Severity"]) == (
        "Process", "memfd:payload", "Block", "Killed (SIGKILL)", "eBPF Signal", "9")
    mixed_alerts = _alerts_of(stack, "wl-mixed", 2, policy="block-presets")
    env = next(a for a in mixed_alerts if a["Operation"] == "File" and a["Resource"] == "/proc/1/environ")
    assert (env["Action"], env["Result"], env["Enforcer"]) == ("Audit (Block)", "Passed", "eBPF Monitor")
    mapping = next(a for a in mixed_alerts if "preset=anonMapExec" in a["Data"])
    assert (mapping["Action"], mapping["Result"], mapping["Enforcer"]) == ("Block", "Killed (SIGKILL)", "eBPF Signal")
    # The monitor's own records of the killed attacks are dropped (one attack, one alert): a later
    # workload's record, behind them on the monitor's stream, has been judged once its alert is here.
    later = _run(stack, "blocked", "wl-later", "/usr/bin/cat", "/proc/1/environ")
    assert later.returncode == 0
    assert len(_alerts_of(stack, "wl-later", 1, policy="block-presets")) == 1
    assert len(_alerts_of(stack, "wl-fileless", 1, policy="block-presets")) == 1
    assert len(_alerts_of(stack, "wl-mixed", 2, policy="block-presets")) == 2


def _find(cmdline: list[str]) -> int:
    """The host pid of the process whose command line is ``cmdline`` (bounded wait)."""
    want = "\0".join(cmdline) + "\0"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if (entry / "cmdline").read_text() == want:
                    return int(entry.name)
            except OSError:
                continue
        time.sleep(0.2)
    raise AssertionError(f"no process {cmdline}")
