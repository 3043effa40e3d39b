"""``bulwark up``: the embedded nats-server and the five services on this host, in the foreground."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from bulwark.natsconf import create_streams, prepare_auth
from bulwark.natsd import start_nats_server
from bulwark.procs import terminate
from shared.config import Settings

__all__ = ["SERVICES", "Supervisor"]

# Start order: who others depend on first; the monitor last so it reports into a ready pipeline.
SERVICES = ("identity", "policy", "feeder", "enforcer", "monitor")


@dataclass
class Child:
    """One supervised service process and its restart bookkeeping."""

    name: str
    proc: subprocess.Popen[bytes]
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts NATS then the services, restarts a service that dies, stops all on a signal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_dir = settings.data_dir / "logs"
        self.nats: subprocess.Popen[bytes] | None = None
        self.children: dict[str, Child] = {}
        self.stopping = False
        self.nats_urls: dict[str, str] = {}

    def _env(self, name: str) -> dict[str, str]:
        s = self.settings
        env = dict(os.environ)
        env.update({
            "BULWARK_DATA_DIR": str(s.data_dir), "BULWARK_NATS_URL": self.nats_urls.get(name, s.nats_url),
            "BULWARK_NODE_NAME": s.node_name, "BULWARK_REST_HOST": s.rest_host,
            "BULWARK_REST_PORT": str(s.rest_port), "BULWARK_GRPC_HOST": s.grpc_host,
            "BULWARK_GRPC_PORT": str(s.grpc_port), "BULWARK_CLUSTER_NAME": s.cluster_name,
        })
        if s.db_url:
            env["BULWARK_DB_URL"] = s.db_url
        return env

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")
        return subprocess.Popen([sys.executable, "-m", f"services.{name}"], env=self._env(name),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def start(self) -> None:
        """Start NATS and every service."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        config = None
        if self.settings.nats_auth:
            auth = prepare_auth(self.settings.data_dir, self.settings.node_name, self.settings.nats_port)
            config, self.nats_urls = auth.config, auth.urls
        self.nats = start_nats_server(self.settings.nats_port, self.settings.data_dir / "nats",
                                      log_file=self.log_dir / "nats.log", config=config)
        if self.settings.nats_auth:
            asyncio.run(create_streams(self.nats_urls["admin"]))  # services may not create streams
        for name in SERVICES:
            self.children[name] = Child(name, self._spawn(name))

    def banner(self) -> str:
        """Where everything listens."""
        s = self.settings
        return (f"bulwark up: node {s.node_name}\n"
                f"  REST     {s.rest_url}  (websocket {s.rest_url.replace('http', 'ws')}/api/v1/stream)\n"
                f"  gRPC     {s.grpc_host}:{s.grpc_port}  (feeder.LogService)\n"
                f"  NATS     {s.nats_url}  (JetStream in {s.data_dir / 'nats'}"
                f"{'; per-service users in ' + str(s.data_dir / 'nats-auth') if s.nats_auth else ''})\n"
                f"  data     {s.data_dir}  logs {self.log_dir}\n"
                f"  services {', '.join(SERVICES)}; stop with Ctrl-C")

    def watch(self) -> None:
        """Restart services that exit (with back-off) until a stop is requested."""
        while not self.stopping:
            for child in list(self.children.values()):
                code = child.proc.poll()
                if code is None or self.stopping:
                    continue
                delay = min(30.0, 0.5 * 2 ** min(child.restarts, 6))
                sys.stderr.write(f"bulwark up: {child.name} exited with {code}; restarting in {delay:.1f}s "
                                 f"(see {self.log_dir / (child.name + '.log')})\n")
                time.sleep(delay)
                if not self.stopping:
                    child.proc = self._spawn(child.name)
                    child.restarts += 1
            time.sleep(0.2)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every service (SIGTERM, then SIGKILL after ``grace``), then NATS."""
        self.stopping = True
        procs = [c.proc for c in reversed(list(self.children.values()))]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self.nats:
            terminate(self.nats, grace=5)


def run_up(settings: Settings) -> int:
    """Run everything until SIGINT/SIGTERM; returns the exit status."""
    sup = Supervisor(settings)

    def on_signal(_signum: int, _frame: object) -> None:
        sup.stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        sup.start()
        print(sup.banner(), flush=True)
        sup.watch()
    finally:
        sup.stop()
        print("bulwark up: stopped", flush=True)
    return 0

