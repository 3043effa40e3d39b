"""KubeArmor's scenario tests (``scenarios/github_test_*``, ``host_scenarios/*``), read from their files
and judged as ``test-scenarios-github.sh`` judges them, plus each command's exit status.

A scenario directory holds one policy (``ksp-``/``nsp-``/``hsp-`` by file name) and ``cmdN`` files::

    source: ubuntu-1-deployment        # the pod (container scenarios)
    cmd: cat /etc/shadow               # run with bash -c
    result: failed                     # passed | failed | default
    ---
    operation: File                    # the alert's Operation
    condition: /etc/shadow             # a substring of its Resource
    action: Block                      # Allow | Audit | Block | default

The script's rules (container scenarios, ``DEFAULT_POSTURE=block`` as KubeArmor's CI runs them):
``default`` means the default posture decides: result failed, policy ``DefaultPosture``, action
Block. Then: Audit+passed needs an alert with Result Passed; any ``failed`` needs an alert that is not
Passed (policy, operation, condition, action); Allow/Block+passed must have no such alert. The script
never compared the exit status; this harness also does (passed: 0, failed: not 0), so the few
commands that reach out to the internet are pointed at local stand-ins (``NETWORK_TARGETS``).

Host scenarios run on this machine, but only on files and programs the test creates: every path
the policy and the commands name is moved under a fresh directory (``T/usr/bin/diff``,
``T/etc/hostname``...), copies of the host's, with ``T/usr/bin`` first in PATH, and the node selector
names this node. Host policies with an Allow action are not run: Bulwark makes any Allow rule of an
operation an allow-list for the whole workload (``shared/matcher.py`` ``decide``, rule 4), and the
host workload is every process on this shared machine.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.kubearmor_suite.cluster import ARP_PEER, REPORT_GRACE, Cluster
from tests.kubearmor_suite.steps import StepFailed

__all__ = ["Command", "Scenario", "load_scenarios", "run_container_scenario", "run_host_scenario",
           "NETWORK_TARGETS", "host_policy_for"]

# The commands that reach out of the pod, pointed at what answers inside it: the pod's own flask
# server (KubeArmor's image starts it on :8000) and the ARP peer on the pod's eth0. "curl google.com"
# stays: with no route off the machine its DNS query fails after creating the UDP socket the
# scenario is about.
NETWORK_TARGETS = {
    "curl www.kubearmor.io": "curl -sS http://127.0.0.1:8000/",
    "curl 142.250.193.46": "curl -sS http://127.0.0.1:8000/",
    "wget --tries=1 142.250.193.46": "wget --tries=1 -O /dev/null http://127.0.0.1:8000/",
    "arping -c 1 127.0.0.1": f"arping -c 1 {ARP_PEER}",
}
# Alerts a scenario file spells as KubeArmor's AppArmor-era daemon reported them, checked as its current
# (BPF-LSM) one does, which Bulwark follows: a capabilities rule's denial is an Operation Capabilities
# alert naming the capability (KubeArmor's ksp/networktests specs for the same net_raw policy watch
# Operation "Capabilities"), not the raw socket() it broke.
ALERT_SHAPES = {
    ("github_test_10", "cmd2"): ("Capabilities", "CAP_NET_RAW"),
}


@dataclass(frozen=True)
class Command:
    file: str
    source: str
    cmd: str
    result: str
    operation: str
    condition: str
    action: str


@dataclass
class Scenario:
    name: str
    kind: str  # container | host
    directory: Path
    policy: Path | None
    policy_type: str  # ksp | nsp | hsp
    policy_name: str
    commands: list[Command] = field(default_factory=list)


def _fields(path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and not line.startswith("---"):
            out.setdefault(key.strip(), value.strip())
    return out


def _commands(directory: Path) -> list[Command]:
    cmds = []
    for path in sorted(directory.glob("cmd*")):  # `ls cmd*`
        f = _fields(path)
        cmds.append(Command(path.name, f.get("source", ""), f.get("cmd", ""), f.get("result", ""),
                            f.get("operation", ""), f.get("condition", ""), f.get("action", "")))
    return cmds


def _policy_name(path: Path) -> str:
    for line in path.read_text().splitlines():  # `grep "name:" | head -n1`
        if "name:" in line:
            return line.split("name:", 1)[1].strip()
    return ""


def _host_policies(policies_dir: Path) -> dict[str, Path]:
    """``kubearmor-dev_test_NN`` -> the example host policy whose comment names it (their scenario
    directories lost the symbolic links to these)."""
    out: dict[str, Path] = {}
    for path in sorted(policies_dir.glob("hsp-k8s-kubearmor-dev-*.yaml")):
        for line in path.read_text().splitlines():
            m = re.fullmatch(r"# (kubearmor-dev_test_\d+)", line.strip())
            if m:
                out[m.group(1)] = path
    return out


def load_scenarios(k8s_env: Path, host_policies_dir: Path) -> list[Scenario]:
    """Every container scenario (``scenarios/github_*``) and host scenario, in directory order."""
    out: list[Scenario] = []
    for d in sorted((k8s_env / "scenarios").glob("github_*")):
        yamls = sorted(d.glob("*.yaml"))
        policy = yamls[0] if yamls else None
        out.append(Scenario(d.name, "container", d, policy, policy.name.split("-")[0] if policy else "",
                            _policy_name(policy) if policy else "", _commands(d)))
    linked = _host_policies(host_policies_dir)
    for d in sorted((k8s_env / "host_scenarios").iterdir()):
        if not d.is_dir():
            continue
        yamls = sorted(d.glob("*.yaml"))
        policy = yamls[0] if yamls else linked.get(d.name)
        out.append(Scenario(d.name, "host", d, policy, "hsp", _policy_name(policy) if policy else "",
                            _commands(d)))
    return out


def _policy_action(path: Path) -> str:
    doc = yaml.safe_load(path.read_text()) or {}
    return str((doc.get("spec") or {}).get("action", ""))


def not_applicable(sc: Scenario) -> str:
    """Why a scenario cannot run here ("" when it can)."""
    if sc.policy is None:
        return "no policy file (its symbolic link was lost upstream and no example policy names it)"
    if sc.policy_type == "nsp":
        return ("native AppArmor policy (spec.apparmor): the script runs it only where AppArmor is the LSM; "
                "this kernel has no AppArmor (Bulwark admits the rule but cannot enforce it without AppArmor)")
    if sc.kind == "host" and _policy_action(sc.policy) == "Allow":
        return ("host Allow policy, not run on this shared machine: Bulwark turns any Allow rule (with or "
                "without fromSource) into an allow-list for the whole host workload (shared/matcher.py "
                "decide(), rule 4) under the default posture, i.e. every process of the machine; the same "
                "fromSource-Allow semantics are exercised in containers by github_test_05/06 and the ksp specs")
    return ""


def _expected(c: Command, policy: str, host: bool) -> tuple[str, str, str]:
    """(result, policy name, action) after the script's ``default`` rules (DEFAULT_POSTURE=block)."""
    result, action = c.result, c.action
    if not host and result == "default":
        if action == "default":
            return "failed", "DefaultPosture", "Block"
        if action == "Block":
            return "failed", "DefaultPosture", action
    return result, policy, action


def _alert_ok(r: dict[str, Any], policy: str, op: str, cond: str, action: str) -> bool:
    return (r.get("PolicyName") == policy and r.get("Operation") == op and r.get("Action") == action
            and cond.lower() in str(r.get("Resource", "")).lower())


def _brief(r: dict[str, Any]) -> str:
    keys = ("PolicyName", "Action", "Result", "Operation", "Resource", "Source")
    return "{" + ", ".join(f"{k}={r.get(k)!r}" for k in keys if r.get(k)) + "}"


class _Judge:
    """Runs one scenario's commands and judges each; collects every failure (the script goes on too)."""

    def __init__(self, cluster: Cluster, sc: Scenario, scope: dict[str, str], host_pod: bool) -> None:
        self.cluster, self.sc, self.scope, self.host = cluster, sc, scope, host_pod
        self.failures: list[str] = []
        self.transcript: list[str] = []

    def alerts_since(self, since: int, seen: set[str]) -> list[dict[str, Any]]:
        recs = self.cluster.records("alerts", since=str(since), **self.scope)
        if self.host:
            recs = [r for r in recs if not r.get("PodName")]
        return [r for r in recs if r.get("EventID") not in seen]

    def judge(self, c: Command, run: Any, cond: str) -> None:
        result, policy, action = _expected(c, self.sc.policy_name, self.host)
        since = int(time.time()) - 2
        seen = {str(r.get("EventID")) for r in self.alerts_since(since, set())}
        rc, out, shown = run()
        line = f"{c.file}: $ {shown} -> rc={rc} (expected {result}); {out.strip()[:120]!r}"
        if result in ("passed", "failed") and (rc == 0) != (result == "passed"):
            self.failures.append(f"{line}: exit status says {'passed' if rc == 0 else 'failed'}")
        want_found = result == "failed" or (action == "Audit" and result == "passed")
        if action not in ("Allow", "Audit", "Block"):  # the script checks nothing for these
            self.transcript.append(line + " (no log check: action " + action + ")")
            return
        if want_found:
            passed = action == "Audit" and result == "passed"

            def good(r: dict[str, Any]) -> bool:
                return _alert_ok(r, policy, c.operation, cond, action) and ((r.get("Result") == "Passed") == passed)
            for attempt in range(1, 4 if self.host else 2):
                if attempt > 1:
                    # host events are filtered in the kernel by the monitor's copy of the rules, which may
                    # trail the enforcer's: run the (idempotent) command again, as the script's retry would
                    run()
                self.cluster.flush()
                hit, recs = self.cluster.first_match(lambda: self.alerts_since(since, seen), good,
                                                     grace=5.0 if self.host and attempt < 3 else REPORT_GRACE)
                if hit is not None:
                    runs = f" (run {attempt} times)" if attempt > 1 else ""
                    self.transcript.append(f"{line}; alert {_brief(hit)}{runs}")
                    return
            self.failures.append(
                f"{line}: no alert policy={policy} op={c.operation} resource~{cond!r} action={action} "
                f"result{'=' if passed else '!='}Passed; alerts: " + "; ".join(_brief(r) for r in recs[-6:]))
            return
        self.cluster.flush()
        bad = [r for r in self.alerts_since(since, seen)
               if _alert_ok(r, policy, c.operation, cond, action) and r.get("Result") != "Passed"]
        if bad:
            self.failures.append(f"{line}: unexpected alert(s) " + "; ".join(_brief(r) for r in bad[:4]))
        else:
            self.transcript.append(line + "; no alert, as expected")


def run_container_scenario(cluster: Cluster, sc: Scenario, pod_key: str) -> list[str]:
    """Apply the policy, run and judge every command in the pod, delete the policy."""
    assert sc.policy is not None
    rp = cluster.pod(pod_key)
    container = cluster.container(pod_key)
    judge = _Judge(cluster, sc, {"namespace": rp.pod.namespace, "pod": rp.name}, host_pod=False)
    try:
        cluster.apply(sc.policy)
        for c in sc.commands:
            cmd = NETWORK_TARGETS.get(c.cmd, c.cmd)

            def run(cmd: str = cmd) -> tuple[int, str, str]:
                rc, out = cluster.exec_in(container, cmd)
                return rc, out, cmd
            op, cond = ALERT_SHAPES.get((sc.name, c.file), (c.operation, c.condition))
            if (op, cond) != (c.operation, c.condition):
                judge.transcript.append(f"{c.file}: (translated) alert {c.operation}/{c.condition} "
                                        f"checked as {op}/{cond}")
                c = Command(c.file, c.source, c.cmd, c.result, op, cond, c.action)
            judge.judge(c, run, c.condition)
    finally:
        cluster.delete_all_policies()
    if judge.failures:
        raise StepFailed("\n".join(judge.failures + ["-- transcript:"] + judge.transcript))
    return judge.transcript


# -- host scenarios --------------------------------------------------------------------------------
_PROGRAM_DIRS = ("/usr/bin/", "/bin/")


def _walk_paths(node: Any, fix: Any) -> Any:
    if isinstance(node, dict):
        return {k: (fix(v) if k in ("path", "dir") and isinstance(v, str) else _walk_paths(v, fix))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_paths(v, fix) for v in node]
    return node


def host_policy_for(path: Path, root: Path, node: str) -> tuple[dict[str, Any], list[str]]:
    """The host policy with every path under ``root`` and this node selected; and the paths it names."""
    doc = yaml.safe_load(path.read_text())
    named: list[str] = []

    def fix(p: str) -> str:
        named.append(p)
        return f"{root}{p}"
    spec = doc["spec"]
    for kind in ("process", "file"):
        if kind in spec:
            spec[kind] = _walk_paths(spec[kind], fix)
    spec.setdefault("nodeSelector", {}).setdefault("matchLabels", {})["kubernetes.io/hostname"] = node
    return doc, named


def _stage(root: Path, paths: list[str]) -> None:
    """Copies of the host's programs and files at ``root`` + path (this host has merged /usr: T/bin
    is a link to usr/bin, as /bin is)."""
    (root / "usr" / "bin").mkdir(parents=True, exist_ok=True)
    if not (root / "bin").exists():
        (root / "bin").symlink_to("usr/bin")
    for p in paths:
        if p.endswith("/"):
            (root / p.lstrip("/")).mkdir(parents=True, exist_ok=True)
            continue
        src = Path(p)
        if p.startswith(_PROGRAM_DIRS):
            dest = root / "usr" / "bin" / src.name
            real = shutil.which(src.name) or p
        else:
            dest = root / p.lstrip("/")
            real = p
        if dest.exists():
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(real, dest)


def run_host_scenario(cluster: Cluster, sc: Scenario, root: Path) -> list[str]:
    """The host scenario on test-owned copies under ``root``."""
    assert sc.policy is not None
    doc, named = host_policy_for(sc.policy, root, cluster.stack.node)
    files = [tok for c in sc.commands for tok in c.cmd.split() if tok.startswith("/etc/")]
    _stage(root, named + files)
    rewritten = root / f"{sc.name}.yaml"
    rewritten.write_text(yaml.safe_dump(doc, sort_keys=False))
    env = {**os.environ, "PATH": f"{root}/usr/bin:{root}/bin:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    judge = _Judge(cluster, sc, {"host": cluster.stack.node}, host_pod=True)
    try:
        cluster.apply(rewritten)
        for c in sc.commands:
            cmd = " ".join(f"{root}{tok}" if tok.startswith("/etc/") else tok for tok in c.cmd.split())

            def run(cmd: str = cmd) -> tuple[int, str, str]:
                done = subprocess.run(["/usr/bin/bash", "-c", cmd], env=env, cwd=root, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, timeout=60)
                return done.returncode, done.stdout.decode(errors="replace"), cmd
            cond = f"{root}{c.condition}" if c.condition.startswith("/") else c.condition
            judge.judge(c, run, cond)
    finally:
        cluster.delete_all_policies()
    if judge.failures:
        raise StepFailed("\n".join(judge.failures + ["-- transcript:"] + judge.transcript))
    return judge.transcript
