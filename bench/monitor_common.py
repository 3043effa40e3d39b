"""Shared by the monitor benchmarks: a C load generator, a private nats-server + monitor service,
and the monitor's heartbeat counters. Not a benchmark itself."""
from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BTF_TREE = "/tmp/bw-bench-btf"  # the BTF-built header tree bcc compiles against, shared by the benches

from bulwark.natsserver.process import free_port, start_nats_server  # noqa: E402
from bulwark.procs import terminate  # noqa: E402
from shared.codec import unpack  # noqa: E402
from shared.nats.subjects import health  # noqa: E402

LOADGEN_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
/* openclose N PATH [RATE]: N open+close pairs (paced to RATE/s if given); prints ns per pair
 * exec N: N fork+execve(/bin/true)+wait; prints ns per exec */
int main(int argc, char **argv) {
    long n = atol(argv[2]);
    double t0 = now();
    if (!strcmp(argv[1], "openclose")) {
        double rate = argc > 4 ? atof(argv[4]) : 0;
        for (long i = 0; i < n; i++) {
            int fd = open(argv[3], O_RDONLY);
            if (fd >= 0) close(fd);
            if (rate > 0 && (i & 255) == 0) while (now() - t0 < i / rate) ;
        }
    } else {
        char *args[] = {"/bin/true", NULL};
        for (long i = 0; i < n; i++) {
            pid_t p = fork();
            if (p == 0) { execv(args[0], args); _exit(127); }
            waitpid(p, NULL, 0);
        }
    }
    printf("%.1f\n", (now() - t0) * 1e9 / n);
    return 0;
}
"""


def build_loadgen(workdir: Path) -> str:
    """Compile the load generator (needs gcc)."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise SystemExit("the monitor benchmarks need gcc (apt-get install gcc)")
    src, out = workdir / "loadgen.c", workdir / "loadgen"
    src.write_text(LOADGEN_C)
    subprocess.run([cc, "-O2", "-o", str(out), str(src)], check=True)
    return str(out)


@contextlib.contextmanager
def loadgen_workspace(prefix: str) -> Iterator[tuple[str, str]]:
    """A temporary folder with the compiled load generator and a file to open: (binary, target).

    The folder is removed afterwards, whatever happened.
    """
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        target = work / "target"
        target.write_text("x")
        yield build_loadgen(work), str(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_loadgen(binary: str, *args: str, mount_ns: bool = True) -> float:
    """Run the generator (in its own mount namespace: a "container"); its ns per operation."""
    cmd = (["unshare", "--mount"] if mount_ns else []) + [binary, *args]
    return float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip())


class HeldRules:
    """What enforcers_holding_100_rules yields: the workload's load generator runner and its rules."""

    def __init__(self, ns: Any, rules: list[Any]) -> None:
        self.ns, self.rules = ns, rules

    def openclose(self, binary: str, target: str, opens: int, reps: int) -> float:
        """The best ns per open/close pair of the load generator in the workload over ``reps`` runs."""
        runs = []
        for _ in range(reps):
            rc, out = self.ns.run(f"{binary} openclose {opens} {target}", timeout=300)
            if rc != 0:
                raise RuntimeError(f"load generator failed in the workload: {out}")
            runs.append(float(out.strip().splitlines()[-1]))
        return min(runs)

    def ruleset(self, node: str, version: int) -> Any:
        """The same rules for the workload as a node's RuleSet (what the monitor is sent)."""
        from shared.schemas.rules import RuleSet, WorkloadRules

        return RuleSet(node=node, version=version, policy_seq=version, identity_seq=version,
                       workloads={"bench": WorkloadRules("bench", self.ns.mntns, 0, list(self.rules))})


@contextlib.contextmanager
def enforcers_holding(ruleset: Any) -> Iterator[list[Any]]:
    """The Fanotify and eBPF-signal enforcers, in this process, holding ``ruleset``; both are closed
    afterwards, whatever happened (also one that loaded when the other failed to)."""
    from services.enforcer.fanotify.enforcer import FanotifyEnforcer
    from services.enforcer.signal.enforcer import SignalEnforcer

    enforcers: list[Any] = []
    try:
        enforcers.append(FanotifyEnforcer())
        enforcers.append(SignalEnforcer(btf_tree=Path(BTF_TREE)))
        for enforcer in enforcers:
            enforcer.apply(ruleset)
        yield enforcers
    finally:
        for enforcer in enforcers:
            enforcer.close()


@contextlib.contextmanager
def enforcers_holding_100_rules() -> Iterator[HeldRules]:
    """The Fanotify and eBPF-signal enforcers, in this process, holding bench/enforcer_overhead.py's
    100 rules for a workload (a shell in its own mount namespace). Yields a HeldRules: its
    ``openclose`` measures the load generator in that workload (opens of an unmarked file, as almost
    all are), its ``ruleset`` gives the same rules to a monitor. Everything is released afterwards."""
    from enforcer_overhead import setup

    from tests.kernel.nsutil import NsShell, ruleset

    root = Path(tempfile.mkdtemp(prefix="bw-bench-rules-"))
    root.chmod(0o755)
    ns = NsShell()
    try:
        rules, _paths = setup(root)
        with enforcers_holding(ruleset(1, w=(ns.mntns, rules))):
            yield HeldRules(ns, rules)
    finally:
        ns.close()
        shutil.rmtree(root, ignore_errors=True)


class MonitorStack:
    """A private nats-server and ``python -m services.monitor`` with the given extra environment."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="bw-bench-"))
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.env = env or {}
        self.nats: subprocess.Popen[bytes] | None = None
        self.monitor: subprocess.Popen[bytes] | None = None
        self.nc: Any = None

    async def start(self) -> dict[str, Any]:
        """Start both; returns the first heartbeat's details (programs attached)."""
        import nats

        self.nats = start_nats_server(self.port, self.dir / "js")
        env = {**os.environ, "BULWARK_NATS_URL": self.url, "BULWARK_NODE_NAME": "bench",
               "BULWARK_DATA_DIR": str(self.dir / "data"), "BULWARK_BTF_TREE_DIR": BTF_TREE,
               "BULWARK_HEARTBEAT_SECONDS": "0.5", **self.env}
        log = open(self.dir / "monitor.log", "wb")
        self.monitor = subprocess.Popen([sys.executable, "-m", "services.monitor"], cwd=REPO, env=env,
                                        stdout=log, stderr=subprocess.STDOUT)
        self.nc = await nats.connect(self.url)
        return await self.heartbeat(timeout=180)

    async def heartbeat(self, timeout: float = 10) -> dict[str, Any]:
        """The next heartbeat's details (counters)."""
        sub = await self.nc.subscribe(health("monitor", "bench"))
        try:
            msg = await sub.next_msg(timeout=timeout)
            return unpack(msg.data)["details"]
        finally:
            await sub.unsubscribe()

    async def settle(self, quiet_s: float = 1.5, limit_s: float = 10.0) -> dict[str, Any]:
        """Heartbeats until the event counters stop moving and nothing is queued (at most
        ``limit_s``: other processes on the node may keep it busy); the last one."""
        last, still, give_up = None, time.monotonic(), time.monotonic() + limit_s
        while time.monotonic() < give_up:
            beat = await self.heartbeat()
            key = (beat.get("events"), beat.get("emitted_kernel"), beat.get("batches"))
            if key != last or beat.get("queued"):
                last, still = key, time.monotonic()
            elif time.monotonic() - still >= quiet_s:
                return beat
            await asyncio.sleep(0.1)
        return beat

    async def stop(self) -> int:
        """Stop the monitor (SIGTERM: it drains and detaches) and the server."""
        rc = terminate(self.monitor, grace=30) if self.monitor else 0
        if self.nc is not None:  # None when start() failed before connecting
            await self.nc.close()
        if self.nats:
            terminate(self.nats, grace=5)
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc
