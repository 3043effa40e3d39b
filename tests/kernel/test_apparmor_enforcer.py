"""The AppArmor enforcer on a kernel running AppArmor (the kernel-lab guests): a `bulwark run` workload
(the sandbox, as the launcher drives it) starts under its own profile; what its rules block fails
inline, its neighbours and the host are untouched, denials come back as reports naming the rule.

Every profile is removed at the end, even when a test fails (the enforcer fixture closes, then any
profile a test made that is still loaded is removed by name). Profiles attach only by name, to the
sandboxes these tests start.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulwark.sandbox import APPARMOR_REFUSED, Sandbox, start_sandbox
from services.enforcer.apparmor import AppArmorEnforcer
from services.enforcer.apparmor.kernel import loaded_profiles, remove_profile
from services.enforcer.apparmor.profiles import PREFIX, profile_name
from services.enforcer.apparmor.report import AppArmorReport
from shared.schemas.rules import Rule, RuleSet, WorkloadRules
from tests.conftest import require_root
from tests.kernel.nsutil import private_copy

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(600)]
PY = sys.executable
RAW = f"{PY} -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, 255)'"
TCP = f"{PY} -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_STREAM)'"


def rule(op: str, policy: str, action: str = "Block", **kw: object) -> Rule:
    return Rule(policy=policy, policy_kind="KubeArmorPolicy", policy_namespace="apparmor-test", operation=op,
                action=action, severity=5, **kw)  # type: ignore[arg-type]


class Workload:
    """A sandbox (what `bulwark run` starts) held at its gate, with the identity the enforcer needs."""

    def __init__(self, argv: list[str], wid: str) -> None:
        self.id = wid
        self.sandbox: Sandbox = start_sandbox(argv, hostname=wid[:20])
        self.mntns = os.stat(f"/proc/{self.sandbox.init_pid}/ns/mnt").st_ino
        self.pidns = os.stat(f"/proc/{self.sandbox.init_pid}/ns/pid").st_ino
        self.status: int | None = None
        self.gated = True

    def rules(self, rules: list[Rule], **postures: str) -> WorkloadRules:
        return WorkloadRules(self.id, self.mntns, self.pidns, rules, **postures)

    def start(self, profile: str) -> None:
        self.gated = False
        self.sandbox.open_gate(apparmor=profile)

    def wait(self) -> int:
        self.status = self.sandbox.wait()
        return self.status

    def kill(self) -> None:
        if self.status is None:
            self.sandbox.signal(9)
            self.wait()


def ruleset(version: int, *workloads: WorkloadRules) -> RuleSet:
    return RuleSet(node="apparmor-test", version=version, policy_seq=version, identity_seq=version,
                   workloads={wr.workload_id: wr for wr in workloads})


@pytest.fixture
def made() -> Iterator[list[str]]:
    """Profile names a test may cause to exist; removed at the end whatever happened."""
    names: list[str] = []
    yield names
    for name in names:
        try:
            remove_profile(name)
        except Exception:
            pass


@pytest.fixture
def enforcer(made: list[str]) -> Iterator[AppArmorEnforcer]:
    require_root()
    enf = AppArmorEnforcer()
    ok, why = enf.probe()
    assert ok, why
    try:
        yield enf
    finally:
        enf.close()


@pytest.fixture
def workloads(made: list[str]) -> Iterator[list[Workload]]:
    """The sandboxes a test starts: refused at their gate or killed at the end."""
    started: list[Workload] = []
    yield started
    for wl in started:
        if wl.gated:
            wl.gated = False
            wl.sandbox.refuse()
        wl.kill()


def new_workload(started: list[Workload], made: list[str], argv: list[str], tag: str) -> Workload:
    wl = Workload(argv, f"aa-{tag}-{os.getpid()}-{time.monotonic_ns()}")
    started.append(wl)
    made.append(profile_name(wl.id))
    return wl


def checks_script(out: Path, blocked: str, allowed: str, ro_file: Path) -> str:
    """sh lines that try each operation and append ``name=rc`` to ``out``."""
    ld = "/lib64/ld-linux-x86-64.so.2"
    return "; ".join([
        f"{allowed} 2>/dev/null; echo allowed_exec=$? >> {out}",
        f"{blocked} 2>/dev/null; echo blocked_exec=$? >> {out}",
        f"{ld} {blocked} 2>/dev/null; echo loader_exec=$? >> {out}",
        f"cat {ro_file} > /dev/null 2>&1; echo ro_read=$? >> {out}",
        f"(echo x >> {ro_file}) 2>/dev/null; echo ro_write=$? >> {out}",
        f"{RAW} 2>/dev/null; echo raw_socket=$? >> {out}",
        f"{TCP} 2>/dev/null; echo tcp_socket=$? >> {out}",
    ])


def host_checks(tmp_path: Path, blocked: str, ro_file: Path) -> set[int]:
    """The checks run on the host (unconfined): the set of their exit statuses."""
    out = tmp_path / "host-checks.out"
    subprocess.run(["/bin/sh", "-c", checks_script(out, blocked, "/usr/bin/true", ro_file)], check=True, timeout=120)
    return set(results(out).values())


def results(out: Path) -> dict[str, int]:
    return {k: int(v) for k, _, v in (line.partition("=") for line in out.read_text().split())}


def wait_reports(enf: AppArmorEnforcer, want: set[tuple[str, str]], timeout: float = 60) -> list[AppArmorReport]:
    """Reports until every (operation, policy) in ``want`` was seen (or ``timeout`` s passed)."""
    got: list[AppArmorReport] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got.extend(enf.take_reports())
        if want <= {(r.operation, r.policy) for r in got if r.ret < 0}:
            break
        time.sleep(0.2)
    return got


@pytest.mark.apparmor
def test_workload_blocked_neighbours_and_host_untouched_denials_reported(
        enforcer: AppArmorEnforcer, workloads: list[Workload], made: list[str], tmp_path: Path) -> None:
    blocked, allowed = private_copy("/usr/bin/true", tmp_path, "blocked"), private_copy("/usr/bin/true", tmp_path, "ok")
    ro_file = tmp_path / "readonly.txt"
    ro_file.write_text("data\n")
    outs = {name: tmp_path / f"{name}.out" for name in ("confined", "neighbour", "host")}
    confined = new_workload(workloads, made,
                            ["/bin/sh", "-c", checks_script(outs["confined"], blocked, allowed, ro_file)], "confined")
    neighbour = new_workload(workloads, made,
                             ["/bin/sh", "-c", checks_script(outs["neighbour"], blocked, allowed, ro_file)], "other")
    rules = [rule("Process", "block-exec", path=blocked), rule("File", "ro-file", path=str(ro_file), read_only=True),
             rule("Network", "no-raw", protocol="raw")]
    enforcer.apply(ruleset(1, confined.rules(rules), neighbour.rules([])))
    loaded = loaded_profiles(PREFIX)
    assert loaded.get(profile_name(confined.id)) == "enforce" and profile_name(neighbour.id) in loaded

    confined.start(enforcer.profile_for(confined.id))
    neighbour.start(enforcer.profile_for(neighbour.id))
    assert confined.wait() == 0 and neighbour.wait() == 0
    subprocess.run(["/bin/sh", "-c", checks_script(outs["host"], blocked, allowed, ro_file)], check=True, timeout=120)

    got = results(outs["confined"])
    assert got["allowed_exec"] == 0 and got["ro_read"] == 0 and got["tcp_socket"] == 0
    assert got["blocked_exec"] == 126 and got["loader_exec"] != 0
    assert got["ro_write"] != 0 and got["raw_socket"] != 0
    for other in ("neighbour", "host"):  # another workload and the host do all of it
        assert set(results(outs[other]).values()) == {0}, (other, results(outs[other]))
    assert ro_file.read_text() == "data\n" + "x\n" * 2

    reports = wait_reports(enforcer, {("Process", "block-exec"), ("File", "ro-file"), ("Network", "no-raw")})
    denied = {(r.operation, r.policy, r.resource): r for r in reports if r.ret < 0}
    assert ("Process", "block-exec", blocked) in denied
    assert ("File", "ro-file", str(ro_file)) in denied
    raw = next(r for (op, _, _), r in denied.items() if op == "Network")
    assert raw.policy == "no-raw" and raw.result == "Permission denied" and raw.workload_id == confined.id
    event = raw.to_raw_event("apparmor-test", 0, "boot")
    assert event.mntns == confined.mntns and event.extra["enforcer"] == "AppArmor" and event.ret < 0
    assert all(r.workload_id == confined.id for r in reports)  # nothing of the neighbour, nothing of the host

    enforcer.apply(ruleset(2))  # both workloads gone: their profiles are removed
    assert not {profile_name(confined.id), profile_name(neighbour.id)} & set(loaded_profiles(PREFIX))


@pytest.mark.apparmor
def test_rules_change_while_the_workload_runs(enforcer: AppArmorEnforcer, workloads: list[Workload],
                                              made: list[str], tmp_path: Path) -> None:
    target, out, fifo = tmp_path / "target.txt", tmp_path / "out", tmp_path / "fifo"
    target.write_text("")
    os.mkfifo(fifo)
    script = (f"(echo 1 >> {target}) 2>/dev/null; echo first=$? >> {out}; read x < {fifo}; "
              f"(echo 2 >> {target}) 2>/dev/null; echo second=$? >> {out}")
    wl = new_workload(workloads, made, ["/bin/sh", "-c", script], "change")
    enforcer.apply(ruleset(1, wl.rules([rule("File", "ro", path=str(target), read_only=True)])))
    wl.start(enforcer.profile_for(wl.id))
    deadline = time.monotonic() + 120
    while "first=" not in (out.read_text() if out.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.1)
    enforcer.apply(ruleset(2, wl.rules([])))  # the profile is replaced: the running shell may write now
    writer = threading.Thread(target=lambda: fifo.write_text("go\n"), daemon=True)
    writer.start()
    assert wl.wait() == 0
    got = results(out)
    assert got["first"] != 0 and got["second"] == 0 and target.read_text() == "2\n"


def test_missing_profile_means_the_command_never_runs(workloads: list[Workload], made: list[str],
                                                      tmp_path: Path) -> None:
    """Fail closed, on any kernel: a profile that is not loaded (or no AppArmor at all) stops the command."""
    require_root()
    ran = tmp_path / "ran"
    wl = new_workload(workloads, made, ["/bin/sh", "-c", f"touch {ran}"], "missing")
    wl.start(profile_name(wl.id))  # no enforcer ever loaded it
    assert wl.wait() == APPARMOR_REFUSED and not ran.exists()


@pytest.mark.apparmor
def test_close_removes_every_profile(workloads: list[Workload], made: list[str], tmp_path: Path) -> None:
    require_root()
    enf = AppArmorEnforcer()
    try:
        wls = [new_workload(workloads, made, ["/bin/true"], f"close{i}") for i in range(2)]
        enf.apply(ruleset(1, *(w.rules([rule("Capabilities", "no-raw-cap", capability="net_raw")]) for w in wls)))
        assert {profile_name(w.id) for w in wls} <= set(loaded_profiles(PREFIX))
    finally:
        enf.close()
    assert not {profile_name(w.id) for w in wls} & set(loaded_profiles(PREFIX))
    enf.close()  # twice is fine


POLICY = """apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {{name: {name}, namespace: aa}}
spec:
  severity: 5
  selector: {{matchLabels: {{app: aa}}}}
  {body}
  action: Block
"""


@pytest.fixture
def slow_nats(tmp_path: Path) -> Iterator[str]:
    """A real nats-server given the time a software-emulated guest needs to start it (minutes, not 10 s)."""
    from bulwark.natsserver.process import free_port, start_nats_server, wait_for_port
    from bulwark.procs import terminate

    port = free_port()
    proc = start_nats_server(port, tmp_path / "jetstream", wait=False)
    try:
        wait_for_port(port, timeout=300)
        yield f"nats://127.0.0.1:{port}"
    finally:
        terminate(proc, grace=5)


@pytest.mark.apparmor
@pytest.mark.timeout(2400)  # four Python services in a software-emulated guest take minutes to start
def test_bulwark_run_starts_under_the_profile_loaded_before_the_gate(slow_nats: str, tmp_path: Path) -> None:
    """The launcher's way, with the real services: identity registers, policy compiles, the enforcer
    (AppArmor only) loads the workload's profile and only then answers the launcher's await."""
    require_root()
    import asyncio

    from shared.nats.bus import connect, ensure_streams, request
    from shared.nats.subjects import POLICY_API
    from tests.servicetools import service_log, start_service, stop_service, wait_healthy

    blocked, ro_file = private_copy("/usr/bin/true", tmp_path, "blocked"), tmp_path / "readonly.txt"
    ro_file.write_text("data\n")
    node, data = "aa-node", tmp_path / "data"
    env = {"BULWARK_ENFORCER_ORDER": "apparmor,-signal"}
    before = set(loaded_profiles(PREFIX))
    procs: list[subprocess.Popen[bytes]] = []

    async def setup() -> dict:
        """Streams first, then each service once the previous one beats (a software-emulated guest is slow)."""
        nc = await connect(slow_nats, "aa-test")
        try:
            for attempt in range(10):
                try:
                    await ensure_streams(nc.jetstream())
                    break
                except Exception:
                    if attempt == 9:
                        raise
                    await asyncio.sleep(3)
            beats = {}
            for name in ("identity", "policy", "enforcer"):
                procs.append(start_service(name, slow_nats, data, node, **env))
                beats[name] = await wait_healthy(nc, name, node, timeout=600)
            for name, body in (("aa-exec", f"process: {{matchPaths: [{{path: {blocked}}}]}}"),
                               ("aa-ro", f"file: {{matchPaths: [{{path: {ro_file}, readOnly: true}}]}}"),
                               ("aa-raw", "network: {matchProtocols: [{protocol: raw}]}")):
                reply = await request(nc, POLICY_API, {"op": "apply", "text": POLICY.format(name=name, body=body)},
                                      timeout=60)
                assert reply["ok"], reply
            return beats["enforcer"]
        finally:
            await nc.close()

    def run(label: str, out: Path) -> subprocess.CompletedProcess[str]:
        script = checks_script(out, blocked, "/usr/bin/true", ro_file) + f"; cat /proc/self/attr/current >> {out}"
        cli_env = {**os.environ, "BULWARK_NATS_URL": slow_nats, "BULWARK_NODE_NAME": node,
                   "BULWARK_DATA_DIR": str(data)}
        launch = ("import sys; from bulwark.launcher import run_workload; from shared.config import load_settings; "
                  "sys.exit(run_workload(load_settings(), sys.argv[2:], 'aa', {'app': sys.argv[1]}, "
                  "enforce_timeout=600))")  # `bulwark run`, given the time an emulated guest needs
        return subprocess.run([PY, "-c", launch, label, "/bin/sh", "-c", script], env=cli_env, capture_output=True,
                              text=True, timeout=900)

    def outcome(out: Path) -> tuple[dict[str, int], str]:
        words = out.read_text().split()
        label = next((w for w in words if w.startswith(PREFIX)), "unconfined")
        return {k: int(v) for k, _, v in (w.partition("=") for w in words) if v.isdigit()}, label

    try:
        beat = asyncio.run(setup())
        assert beat["details"]["enforcer"] == "AppArmor", beat
        done = run("aa", tmp_path / "confined.out")
        assert done.returncode == 0, (done.stderr, service_log(data, "enforcer"))
        got, confined = outcome(tmp_path / "confined.out")
        assert confined.startswith(PREFIX)  # the command ran under its workload's profile
        assert got["blocked_exec"] == 126 and got["ro_write"] != 0 and got["raw_socket"] != 0
        assert got["allowed_exec"] == 0 and got["ro_read"] == 0 and got["tcp_socket"] == 0
        done = run("other", tmp_path / "other.out")
        assert done.returncode == 0, done.stderr
        got, other = outcome(tmp_path / "other.out")
        assert other.startswith(PREFIX) and other != confined  # every workload has its own profile
        assert set(got.values()) == {0}, got
        assert host_checks(tmp_path, blocked, ro_file) == {0}
        deadline = time.monotonic() + 300  # both workloads stopped: their profiles are removed
        while {confined, other} & set(loaded_profiles(PREFIX)) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not {confined, other} & set(loaded_profiles(PREFIX)), service_log(data, "enforcer")
    finally:
        for proc in reversed(procs):
            stop_service(proc)
        for name in set(loaded_profiles(PREFIX)) - before:  # whatever the services left (the host's)
            remove_profile(name)
