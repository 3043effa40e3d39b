"""Kubernetes pods emulated on a private Docker engine, and the Bulwark stack that watches them.

A pod is what the kubelet's dockershim would have made of KubeArmor's deployment: a sandbox ("pause")
container holding the pod's network namespace (label ``io.kubernetes.docker.type=podsandbox``, which
Bulwark's identity service skips, as it skips real pause containers), and one container per
``spec.containers`` entry joined to it, labelled ``io.kubernetes.pod.namespace``/``.pod.name``/
``.container.name`` plus the pod template's labels (``container=ubuntu-1``, ``group=group-1``, ...).
Bulwark's identity service turns those labels into the pod's identity (namespace, pod, container
name, labels), as it does for dockershim/cri-dockerd containers.

What else a pod has in Kubernetes and KubeArmor's tests rely on: a service account token mounted at
/run/secrets/kubernetes.io/serviceaccount (a bind mount of a test-owned directory), the hostPath
volume of ubuntu-3 (a test-owned directory, not the host's /var/log), and an eth0. Pods whose tests
run arping get an eth0 (veth, 192.0.2.10/24, TEST-NET-1, inside the pod's network namespace only)
whose peer sits in a second sandbox container answering ARP at 192.0.2.1; no host interface,
bridge or route is created. No pod has a route off the machine (there is none to have).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.docker.engine import PrivateDocker
from tests.e2e.stack import Stack
from tests.kubearmor_suite.images import Images
from tests.kubearmor_suite.rulewatch import RuleWatch, policies_in, running

__all__ = ["Container", "Pod", "Cluster", "ARP_PEER", "SANDBOX_LABEL", "unavailable_capabilities"]

SANDBOX_LABEL = "io.kubernetes.docker.type"
# An enforcer's report (a kill, a refusal) reaches the feeder beside the monitor's records, not behind them:
# flush() proves the monitor's side is stored, the report may be stored a little later (KubeArmor's own
# tests wait for alerts with a timeout the same way).
REPORT_GRACE = 20.0
ARP_PEER = "192.0.2.1"  # answers ARP from the pod's eth0 (192.0.2.10)
_POD_ADDR = "192.0.2.10/24"
_CAPS = ("CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP LINUX_IMMUTABLE "
         "NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER SYS_MODULE SYS_RAWIO SYS_CHROOT "
         "SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE "
         "AUDIT_WRITE AUDIT_CONTROL SETFCAP MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ "
         "PERFMON BPF CHECKPOINT_RESTORE").split()


def unavailable_capabilities() -> list[str]:
    """Capabilities missing from this process's bounding set (a sandboxed machine may lack some): a
    container asking for them fails ("unable to apply caps"), so --privileged and --cap-add ALL cannot
    be used as they are."""
    with open("/proc/self/status", encoding="utf-8") as f:
        bnd = next(int(line.split()[1], 16) for line in f if line.startswith("CapBnd:"))
    return [name for bit, name in enumerate(_CAPS) if not bnd >> bit & 1]


@dataclass(frozen=True)
class Container:
    """One ``spec.containers`` entry."""

    name: str
    image: str = "ubuntu"  # an Images role
    privileged: bool = False
    cap_add: tuple[str, ...] = ()
    command: tuple[str, ...] = ()  # empty: the image's CMD (ubuntu-w-utils: /entrypoint.sh)


@dataclass(frozen=True)
class Pod:
    """One replica of a deployment: namespace, deployment name, template labels, containers, extras."""

    namespace: str
    deployment: str
    labels: tuple[tuple[str, str], ...]
    containers: tuple[Container, ...]
    arp_peer: bool = False
    host_var_log: bool = False  # ubuntu-3's hostPath volume at /host/var/log
    workdir: str = ""
    files: tuple[tuple[str, str], ...] = ()  # (path, content) written before the pod is used
    dirs: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.deployment}"


def _pod_name(deployment: str) -> str:
    """``<deployment>-<10 hex>-<5 chars>``, as a ReplicaSet names its pods."""
    template = hashlib.sha256(deployment.encode()).hexdigest()[:10]
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    return f"{deployment}-{template}-{''.join(secrets.choice(alphabet) for _ in range(5))}"


@dataclass
class RunningPod:
    pod: Pod
    name: str
    containers: dict[str, str]  # container name -> docker container name
    ids: dict[str, str] = field(default_factory=dict)  # container name -> 64-hex id


class Cluster:
    """Pods on ``docker``, policies and records through the Bulwark ``stack``."""

    def __init__(self, docker: PrivateDocker, images: Images, stack: Stack, work: Path) -> None:
        self.docker, self.images, self.stack, self.work = docker, images, stack, work
        self.rules = RuleWatch(stack.env["BULWARK_NATS_URL"], stack.node)
        self.pods: dict[str, RunningPod] = {}
        self.rest = stack.rest_url
        self.flusher = ""

    # -- pods -------------------------------------------------------------------------------
    def ensure(self, *pods: Pod) -> list[RunningPod]:
        """Start the pods not running yet, then wait until the node's enforcer covers all of them."""
        started = [self._start(p) for p in pods if p.key not in self.pods]
        out = [self.pods[p.key] for p in pods]
        ids = {cid for rp in out for cid in rp.ids.values()}
        if started:
            self.rules.wait(lambda rs: ids <= set(running(rs)), f"identity of {sorted(p.key for p in pods)}",
                            covered=next(iter(ids)))
            for rp in started:
                self._prepare(rp)
        return out

    def _start(self, pod: Pod) -> RunningPod:
        name = _pod_name(pod.deployment)
        uid = secrets.token_hex(4)
        common = {"io.kubernetes.pod.namespace": pod.namespace, "io.kubernetes.pod.name": name,
                  "io.kubernetes.pod.uid": uid}
        sandbox = f"k8s_POD_{name}_{pod.namespace}_{uid}_0"
        self.docker.cli("run", "-d", "--network", "none", "--hostname", name, "--name", sandbox,
                        *self._labels({**common, SANDBOX_LABEL: "podsandbox"}), self.images.busybox,
                        "/bin/sleep", "2147483647")
        if pod.arp_peer:
            self._veth(pod, name, uid, sandbox)
        token = self.work / "serviceaccount" / name
        token.mkdir(parents=True)
        (token / "token").write_text(f"eyJhbGciOiJSUzI1NiJ9.kubearmor-suite.{secrets.token_hex(16)}\n")
        (token / "namespace").write_text(pod.namespace)
        (token / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\nkubearmor-suite\n-----END CERTIFICATE-----\n")
        rp = RunningPod(pod, name, {})
        for c in pod.containers:
            cname = f"k8s_{c.name}_{name}_{pod.namespace}_{uid}_0"
            args = ["run", "-d", "--name", cname, "--network", f"container:{sandbox}",
                    "-v", f"{token}:/run/secrets/kubernetes.io/serviceaccount:ro"]
            if pod.host_var_log:
                logs = self.work / "hostpath-var-log"
                logs.mkdir(exist_ok=True)
                args += ["-v", f"{logs}:/host/var/log"]
            if pod.workdir:
                args += ["-w", pod.workdir]
            missing = unavailable_capabilities()
            if c.privileged and not missing:
                args.append("--privileged")
            elif c.privileged:
                # --privileged minus what this machine cannot grant: every other capability, no seccomp
                # filter, /proc and /sys unmasked and writable
                args += ["--cap-add", "ALL", "--security-opt", "seccomp=unconfined",
                         "--security-opt", "systempaths=unconfined"]
            for cap in c.cap_add:
                args += ["--cap-add", cap]
            if c.privileged or "ALL" in c.cap_add:
                for cap in missing:
                    args += ["--cap-drop", cap]
            labels = {**dict(pod.labels), **common, "io.kubernetes.container.name": c.name}
            args += self._labels(labels)
            rp.ids[c.name] = self.docker.cli(*args, self.images.by_role(c.image), *c.command).stdout.strip()
            rp.containers[c.name] = cname
        self.pods[pod.key] = rp
        return rp

    @staticmethod
    def _labels(labels: dict[str, str]) -> list[str]:
        out: list[str] = []
        for k, v in labels.items():
            out += ["--label", f"{k}={v}"]
        return out

    def _pid(self, container: str) -> int:
        return int(self.docker.cli("inspect", "-f", "{{.State.Pid}}", container).stdout.strip())

    def _veth(self, pod: Pod, name: str, uid: str, sandbox: str) -> None:
        """eth0 in the pod's network namespace, its peer in an ARP-answering sandbox next to it."""
        peer = f"k8s_ARPPEER_{name}_{pod.namespace}_{uid}_0"
        self.docker.cli("run", "-d", "--network", "none", "--name", peer,
                        *self._labels({SANDBOX_LABEL: "podsandbox", "kubearmor-suite/role": "arp-peer"}),
                        self.images.busybox, "/bin/sleep", "2147483647")
        pod_pid, peer_pid = self._pid(sandbox), self._pid(peer)
        dev = f"ka{secrets.token_hex(3)}"  # created in the pod's namespace: no name clash with the host
        steps = [
            (pod_pid, ["ip", "link", "add", "eth0", "type", "veth", "peer", "name", dev]),
            (pod_pid, ["ip", "link", "set", dev, "netns", str(peer_pid)]),
            (pod_pid, ["ip", "addr", "add", _POD_ADDR, "dev", "eth0"]),
            (pod_pid, ["ip", "link", "set", "eth0", "up"]),
            (peer_pid, ["ip", "addr", "add", f"{ARP_PEER}/24", "dev", dev]),
            (peer_pid, ["ip", "link", "set", dev, "up"]),
        ]
        for pid, cmd in steps:
            done = subprocess.run(["nsenter", "-t", str(pid), "-n", *cmd], capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"pod network for {name}: {' '.join(cmd)}: {done.stderr.strip()}")

    def _prepare(self, rp: RunningPod) -> None:
        """The image content the stand-in images lack (the real images have it), and ready servers."""
        for cname in rp.containers.values():
            for d in rp.pod.dirs:
                self.docker.cli("exec", cname, "mkdir", "-p", d)
            for path, content in rp.pod.files:
                self._write(cname, path, content)
        if any(c.image == "ubuntu" and not c.command for c in rp.pod.containers):
            first = next(iter(rp.containers.values()))
            # the entrypoint's flask server (8000) and apache2 (80) stand in for remote web servers
            self.wait_for(lambda: self.exec_in(first, "curl -s -o /dev/null http://127.0.0.1:8000/ && "
                                                      "curl -s -o /dev/null http://127.0.0.1:80/")[0] == 0,
                          f"web servers of {rp.name}", 120)

    def _write(self, container: str, path: str, content: str) -> None:
        tmp = self.work / f"file-{secrets.token_hex(4)}"
        tmp.write_text(content)
        parent = os.path.dirname(path) or "/"
        self.docker.cli("exec", container, "mkdir", "-p", parent)
        self.docker.cli("cp", str(tmp), f"{container}:{path}")
        tmp.unlink()

    def pod(self, key: str) -> RunningPod:
        return self.pods[key]

    def container(self, key: str, name: str | None = None) -> str:
        """Docker name of the pod's container ``name`` (default: its first)."""
        rp = self.pods[key]
        return rp.containers[name] if name else next(iter(rp.containers.values()))

    # -- commands -----------------------------------------------------------------------------
    def exec_in(self, container: str, cmd: str, timeout: float = 60, shell: str = "bash") -> tuple[int, str]:
        """``kubectl exec POD -- bash -c CMD``: (exit status, stdout and stderr merged)."""
        env = {**os.environ, "DOCKER_HOST": self.docker.host, "DOCKER_CONFIG": str(self.docker.root / "cli")}
        try:
            done = subprocess.run(["docker", "exec", container, shell, "-c", cmd], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            return 124, (exc.stdout or b"").decode(errors="replace") + f"\n[timed out after {timeout}s]"
        return done.returncode, done.stdout.decode(errors="replace")

    @staticmethod
    def wait_for(check: Any, what: str, timeout: float, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not ready after {timeout:.0f}s")
            time.sleep(interval)

    def start_flusher(self) -> None:
        """A container no policy selects (Docker namespace, no labels), for :meth:`flush` markers."""
        cid = self.docker.cli("run", "-d", "--network", "none", "--name", "kubearmor-suite-flush",
                              self.images.busybox, "/bin/sleep", "2147483647").stdout.strip()
        self.rules.wait(lambda rs: cid in running(rs), "identity of the flush container", covered=cid)
        self.flusher = "kubearmor-suite-flush"

    def flush(self, timeout: float = 180.0) -> None:
        """Exec a path that does not exist in the flush container and wait until its record is stored:
        whatever happened before it on this node has been stored by then (events stay in order). The
        deadline is generous (a loaded machine slows the pipeline down); running out of it says whether
        the monitor reported lost events."""
        marker = f"/kubearmor-suite-flush-{secrets.token_hex(6)}"
        since = str(int(time.time()) - 5)
        self.exec_in(self.flusher, marker, shell="/bin/sh")
        deadline = time.monotonic() + timeout
        while not any(self.records(t, q=marker, since=since) for t in ("logs", "alerts")):
            if time.monotonic() > deadline:
                raise AssertionError(f"the flush marker {marker} was never stored in {timeout:.0f}s; {self.health()}")
            time.sleep(0.5)

    @staticmethod
    def first_match(fetch: Any, match: Any, grace: float = REPORT_GRACE) -> tuple[dict[str, Any] | None,
                                                                                  list[dict[str, Any]]]:
        """After :meth:`flush`: the first record ``fetch()`` returns that ``match``es, asked again for up to
        ``grace`` s; (None, the last records) when none came."""
        deadline = time.monotonic() + grace
        while True:
            recs = fetch()
            hit = next((r for r in recs if match(r)), None)
            if hit is not None or time.monotonic() > deadline:
                return hit, recs
            time.sleep(0.5)

    def health(self) -> str:
        """The monitor's and feeder's health as /healthz reports it, and any EventsLost alert."""
        try:
            body = httpx.get(f"{self.rest}/healthz", timeout=10).json()
            services = body.get("services", {})
            parts = [f"{name}: {json.dumps({k: v for k, v in info.items() if k not in ('resources', 'nodes')})}"
                     for name, info in services.items() if name in ("monitor", "feeder")]
            lost = [r for r in self.records("alerts", type="SystemEvent") if r.get("Operation") == "EventsLost"]
            return "; ".join(parts) + f"; EventsLost alerts: {len(lost)}"
        except Exception as exc:  # diagnostics only
            return f"health unavailable: {exc!r}"

    # -- policies -----------------------------------------------------------------------------
    def apply_file(self, path: Path) -> list[str]:
        """``bulwark apply -f`` (what ``kubectl apply -f`` was); the names of the policies it held."""
        res = self.stack.cli("apply", "-f", str(path))
        if res.returncode != 0:
            raise AssertionError(f"bulwark apply -f {path.name} failed ({res.returncode}): {res.stderr}{res.stdout}")
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        return [str((d.get("metadata") or {}).get("name", "")) for d in docs
                if str(d.get("kind", "")).startswith("KubeArmor")]

    def apply(self, path: Path, wait: bool = True) -> list[str]:
        """Apply and wait until every policy of the file has rules on the node and the enforcer applied them.
        A policy the policy service says selects no workload fails at once (it would never get there)."""
        names = self.apply_file(path)
        if wait and names:
            listed = {p.get("name"): p for p in self.policies()}
            idle = [n for n in names if n in listed and not listed[n].get("selects")]
            if idle:
                raise AssertionError(f"apply {path.name}: {', '.join(idle)} select(s) no workload "
                                     f"(`bulwark get policies`: SELECTS empty; running pods: {sorted(self.pods)})")
            self.rules.wait(lambda rs: set(names) <= policies_in(rs), f"apply {path.name} ({', '.join(names)})")
        return names

    def policies(self) -> list[dict[str, Any]]:
        resp = httpx.get(f"{self.rest}/api/v1/policies", timeout=30)
        resp.raise_for_status()
        return list(resp.json().get("policies", []))

    def delete_all_policies(self) -> None:
        """DeleteAllKsp/Csp/Hsp: every stored policy, then wait until no workload has rules left."""
        for p in self.policies():
            params = {"namespace": p["namespace"]} if p.get("namespace") else {}
            resp = httpx.delete(f"{self.rest}/api/v1/policies/{p['kind']}/{p['name']}", params=params, timeout=30)
            if resp.status_code not in (200, 204, 404):
                raise AssertionError(f"delete {p['kind']} {p['name']}: {resp.status_code} {resp.text}")
        self.rules.wait(lambda rs: not policies_in(rs), "delete every policy")

    # -- records ------------------------------------------------------------------------------
    def records(self, table: str, **params: str) -> list[dict[str, Any]]:
        """Every stored alert or log (``table``) matching the REST filters, oldest first."""
        out: list[dict[str, Any]] = []
        query: dict[str, str] = {k: v for k, v in params.items() if v}
        query["limit"] = "10000"
        while True:
            resp = httpx.get(f"{self.rest}/api/v1/{table}", params=query, timeout=30)
            resp.raise_for_status()
            out += resp.json()
            cursor = resp.headers.get("X-Next-Cursor")
            if not cursor:
                break
            query["cursor"] = cursor
        out.reverse()
        return out

    def stop(self) -> None:
        """Remove the pods (the engine's teardown removes anything left)."""
        for rp in self.pods.values():
            for cname in rp.containers.values():
                self.docker.cli("rm", "-f", cname, check=False)
        shutil.rmtree(self.work / "serviceaccount", ignore_errors=True)

