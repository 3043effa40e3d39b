"""``bulwark up``: the embedded nats-server, the fd holder and the five services on this host,
in the foreground, each restarted with back-off when it dies."""
from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bulwark.natsserver.config import create_streams, prepare_auth, prepare_tls
from bulwark.natsserver.process import start_nats_server, wait_for_port
from bulwark.procs import terminate
from services.enforcer.holding import HOLDER_ENV
from shared.config import Settings

__all__ = ["SERVICES", "Supervisor", "backoff"]

# Start order: who others depend on first; the monitor last so it reports into a ready pipeline.
SERVICES = ("identity", "policy", "feeder", "enforcer", "monitor")
NATS, HOLDER = "nats", "fdholder"  # supervised like the services, started before them, stopped after
STABLE_SECONDS = 60.0  # a child that ran this long starts its back-off over


def backoff(restarts: int) -> float:
    """Seconds before restart number ``restarts + 1``: 0.5 s doubling up to 30 s."""
    return min(30.0, 0.5 * 2 ** min(restarts, 6))


@dataclass
class Child:
    """One supervised process and its restart bookkeeping."""

    name: str
    proc: subprocess.Popen[bytes]
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    due: float | None = None  # when it exited: the monotonic time its restart is due


class Supervisor:
    """Starts NATS, the fd holder (the enforcer's fanotify group and BPF programs), then the services;
    restarts any of them that dies (with back-off, logged on stderr); stops all on a signal."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.log_dir = settings.data_dir / "logs"
        self.holder_socket = holder_socket(settings.data_dir)
        self.nats: subprocess.Popen[bytes] | None = None
        self.nats_config: Path | None = None
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
            HOLDER_ENV: str(self.holder_socket),
        })
        if s.db_url:
            env["BULWARK_DB_URL"] = s.db_url
        server_tls = s.nats_server_tls()
        if server_tls is not None and s.nats_tls_ca is None:
            env["BULWARK_NATS_TLS_CA"] = str(server_tls[0])  # a self-signed certificate is its own CA
        return env

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        if name == NATS:
            return self._start_nats()
        log = open(self.log_dir / f"{name}.log", "ab")
        if name == HOLDER:
            args = [sys.executable, "-m", "bulwark.fdholder", str(self.holder_socket)]
        else:
            args = [sys.executable, "-m", f"services.{name}"]
        return subprocess.Popen(args, env=self._env(name), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    def _start_nats(self) -> subprocess.Popen[bytes]:
        s = self.settings
        proc = start_nats_server(s.nats_port, s.data_dir / "nats", log_file=self.log_dir / "nats.log",
                                 config=self.nats_config, wait=False)
        try:
            wait_for_port(s.nats_port, timeout=10.0)
        except TimeoutError:
            say(f"nats-server is not listening on port {s.nats_port} after 10s (see {self.log_dir / 'nats.log'})")
            terminate(proc, grace=2)  # an exit like any other: restarted with back-off
        return proc

    def start(self) -> None:
        """Start NATS, the holder and every service."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        server_tls = self.settings.nats_server_tls()
        if server_tls is not None and self.settings.nats_tls_ca is None:
            os.environ["BULWARK_NATS_TLS_CA"] = str(server_tls[0])  # this process's own clients (streams)
        if self.settings.nats_auth:
            cert, key = server_tls or (None, None)
            auth = prepare_auth(self.settings.data_dir, self.settings.node_name, self.settings.nats_port,
                                tls_cert=cert, tls_key=key)
            self.nats_config, self.nats_urls = auth.config, auth.urls
        elif server_tls is not None:
            self.nats_config = prepare_tls(self.settings.data_dir, self.settings.nats_port, *server_tls)
        self.nats = start_nats_server(self.settings.nats_port, self.settings.data_dir / "nats",
                                      log_file=self.log_dir / "nats.log", config=self.nats_config)
        self.children[NATS] = Child(NATS, self.nats)
        if self.settings.nats_auth:
            asyncio.run(create_streams(self.nats_urls["admin"]))  # services may not create streams
        self.children[HOLDER] = Child(HOLDER, self._spawn(HOLDER))
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
                f"  services {', '.join(SERVICES)}, nats-server and the fd holder, each restarted "
                f"if it dies; stop with Ctrl-C")

    def check(self, now: float) -> None:
        """One pass: note children that exited, restart those whose back-off is over."""
        for child in list(self.children.values()):
            if self.stopping:
                return
            if child.due is None:
                code = child.proc.poll()
                if code is None:
                    continue
                if now - child.started >= STABLE_SECONDS:
                    child.restarts = 0
                delay = backoff(child.restarts)
                child.due = now + delay
                log_name = "nats.log" if child.name == NATS else f"{child.name}.log"
                say(f"{child.name} exited with {code} after {now - child.started:.1f}s; restarting in "
                    f"{delay:.1f}s (restart {child.restarts + 1}; see {self.log_dir / log_name})")
            if child.due is not None and now >= child.due:
                child.proc = self._spawn(child.name)
                if child.name == NATS:
                    self.nats = child.proc
                child.restarts += 1
                child.started, child.due = time.monotonic(), None
                say(f"{child.name} restarted (pid {child.proc.pid})")

    def watch(self) -> None:
        """Restart children that exit (with back-off) until a stop is requested."""
        while not self.stopping:
            self.check(time.monotonic())
            time.sleep(0.2)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every service (SIGTERM, then SIGKILL after ``grace``), then the holder, then NATS."""
        self.stopping = True
        procs = [self.children[n].proc for n in reversed(SERVICES) if n in self.children]
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
        if HOLDER in self.children:  # the full release: the fanotify group's marks, the held BPF programs
            terminate(self.children[HOLDER].proc, grace=5)
        if NATS in self.children:
            terminate(self.children[NATS].proc, grace=5)


def holder_socket(data_dir: Path) -> Path:
    """Where the fd holder listens: in the data directory, or under /run when that path is too
    long for a unix socket (108 bytes)."""
    path = data_dir / "run" / "fanotify.sock"
    if len(str(path).encode()) < 100:
        return path
    return Path("/run/bulwark") / f"fanotify-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:16]}.sock"


def say(line: str) -> None:
    """One line on ``bulwark up``'s stderr."""
    sys.stderr.write(f"bulwark up: {line}\n")
    sys.stderr.flush()


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

