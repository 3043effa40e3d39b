"""Run the whole Bulwark stack (``bulwark up``) for a test, on free ports, and tear it down."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bulwark.natsd import free_port
from bulwark.procs import terminate

BIN = Path(sys.executable).parent


@dataclass
class Stack:
    """A running ``bulwark up`` and how to talk to it."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    rest_port: int
    grpc_port: int
    nats_port: int
    node: str
    env: dict[str, str]

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run the ``bulwark`` CLI against this stack."""
        return subprocess.run([str(BIN / "bulwark"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def logs(self) -> str:
        """Every service's log, for failure messages."""
        out = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            out.append(f"==== {log.name}\n{log.read_text(errors='replace')[-4000:]}")
        return "\n".join(out)

    def stop(self) -> int:
        """SIGTERM ``bulwark up`` and wait; returns its exit status."""
        return terminate(self.proc, grace=30, group=True)


def start_stack(data_dir: Path, node: str = "e2e-node", btf_tree: Path | None = None,
                extra_env: dict[str, str] | None = None) -> Stack:
    """Start ``bulwark up`` in its own session with private ports and data (plus ``extra_env`` settings)."""
    rest, grpc, nats = free_port(), free_port(), free_port()
    env = dict(os.environ)
    env.update({"BULWARK_DATA_DIR": str(data_dir), "BULWARK_REST_PORT": str(rest),
                "BULWARK_GRPC_PORT": str(grpc), "BULWARK_NATS_PORT": str(nats),
                "BULWARK_NATS_URL": f"nats://127.0.0.1:{nats}", "BULWARK_NODE_NAME": node})
    if btf_tree:
        env["BULWARK_BTF_TREE_DIR"] = str(btf_tree)
    env.update(extra_env or {})
    out = open(data_dir.parent / f"{data_dir.name}-up.log", "wb")
    proc = subprocess.Popen([str(BIN / "bulwark"), "up"], env=env, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return Stack(proc, data_dir, rest, grpc, nats, node, env)


def wait_for_alerts(rest_url: str, count: int = 1, timeout: float = 5.0, interval: float = 0.1,
                    **params: object) -> list[dict]:
    """GET /api/v1/alerts with ``params`` until at least ``count`` arrive or ``timeout`` passes."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        found = httpx.get(f"{rest_url}/api/v1/alerts", params=params, timeout=5).json()
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(interval)
