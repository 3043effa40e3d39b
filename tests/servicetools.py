"""Start a Bulwark service as a real subprocess for a test, and wait for its heartbeat."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from bulwark.procs import terminate
from shared.codec import unpack
from shared.nats.subjects import health


def start_service(name: str, nats_url: str, data_dir: Path, node: str = "test-node",
                  **env: str) -> subprocess.Popen[bytes]:
    """``python -m services.NAME`` with the given settings; its log goes to data_dir/NAME.log."""
    data_dir.mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "BULWARK_NATS_URL": nats_url, "BULWARK_DATA_DIR": str(data_dir),
                "BULWARK_NODE_NAME": node, "BULWARK_HEARTBEAT_SECONDS": "0.2", **env}
    log = open(data_dir / f"{name}.log", "ab")
    return subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=full_env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


async def wait_healthy(nc, name: str, node: str = "test-node", timeout: float = 30.0) -> dict:
    """Wait for one heartbeat of service ``name`` on ``node``; returns it."""
    sub = await nc.subscribe(health(name, node))
    try:
        msg = await sub.next_msg(timeout=timeout)
        return unpack(msg.data)
    finally:
        await sub.unsubscribe()


def stop_service(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    return terminate(proc, grace=timeout)


def service_log(data_dir: Path, name: str) -> str:
    """The service's log, for assertion messages."""
    path = data_dir / f"{name}.log"
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


async def eventually(check, timeout: float = 5.0, interval: float = 0.05):
    """Await ``check()`` until it returns something truthy; returns it (or the last falsy value)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check() if asyncio.iscoroutinefunction(check) else check()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(interval)
