"""Issue 7 end to end: the docker-compose stack (NATS, PostgreSQL and the five services, each in its own
locally built image) on a real Docker engine blocks an exec in a labelled container.

Everything is real: a private dockerd (tests/docker/engine.py: its own socket and data root, no bridge),
the images built by scripts/build-images.sh (a debootstrap base cached in /var/cache/bulwark, PyPI and
Debian packages only), Debian's docker-compose 1.29, the CLI's `bulwark apply`, `docker exec`, the REST
API, and the alert row in the compose PostgreSQL. The stack is always brought down, and the engine
(containers, images, volumes) removed, even on failure.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bulwark.natsserver.process import free_port
from shared.nats.auth import inbox_prefix
from shared.nats.creds import NatsCredentials
from shared.nats.subjects import raw_events
from tests.docker.engine import PrivateDocker
from tests.e2e.stack import wait_for_alerts
from tests.natsperm import anonymous_refused, env_file_credentials, publish_ok

pytestmark = [pytest.mark.e2e, pytest.mark.docker, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
COMPOSE = shutil.which("docker-compose")
NS = "docker"
POLICY = {
    "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
    "metadata": {"name": "compose-block-sleep", "namespace": NS},
    "spec": {"severity": 7, "selector": {"matchLabels": {"app": "compose-guarded"}},
             "process": {"matchPaths": [{"path": "/bin/sleep"}]}, "action": "Block"},
}
PG_PASSWORD = "compose-e2e"


@dataclass
class ComposeStack:
    engine: PrivateDocker
    env: dict[str, str]
    rest_port: int
    pg_port: int
    build_seconds: float

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def compose(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([COMPOSE, "-f", str(ROOT / "docker-compose.yml"), *args], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise RuntimeError(f"docker-compose {' '.join(args)}: {done.returncode}\n{done.stdout}\n{done.stderr}")
        return done

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """The host's `bulwark` CLI pointed at the compose feeder's REST port."""
        return subprocess.run([str(BIN / "bulwark"), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def logs(self) -> str:
        done = self.compose("logs", "--no-color", "--tail", "40", check=False, timeout=60)
        return (done.stdout + done.stderr)[-12000:]


def _unavailable() -> str:
    why = PrivateDocker.available()
    if why:
        return why
    if not COMPOSE:
        return "docker-compose missing (scripts/setup-system.sh installs it)"
    if not shutil.which("debootstrap") and not Path("/var/cache/bulwark/rootfs-bookworm-minbase.tar").exists():
        return "debootstrap missing (scripts/setup-system.sh installs it)"
    return ""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ComposeStack]:
    why = _unavailable()
    if why:
        pytest.skip(why)
    engine = PrivateDocker()
    ports = {name: free_port() for name in ("nats", "nats_mon", "rest", "grpc", "pg")}
    auth_dir = tmp_path_factory.mktemp("compose-auth") / "nats-users"
    env = {**os.environ, "DOCKER_HOST": engine.host, "DOCKER_CONFIG": str(engine.root / "cli"),
           "COMPOSE_PROJECT_NAME": f"bkcompose{os.getpid()}",
           "BULWARK_DOCKER_SOCKET": str(engine.socket), "BULWARK_NODE_NAME": "compose-e2e",
           "BULWARK_COMPOSE_NATS_PORT": str(ports["nats"]), "BULWARK_COMPOSE_NATS_MONITOR_PORT": str(ports["nats_mon"]),
           "BULWARK_COMPOSE_REST_PORT": str(ports["rest"]), "BULWARK_COMPOSE_GRPC_PORT": str(ports["grpc"]),
           "BULWARK_COMPOSE_PG_PORT": str(ports["pg"]), "BULWARK_POSTGRES_PASSWORD": PG_PASSWORD,
           "BULWARK_COMPOSE_AUTH_DIR": str(auth_dir),
           # for the host's CLI
           "BULWARK_REST_PORT": str(ports["rest"]), "BULWARK_NATS_URL": f"nats://127.0.0.1:{ports['nats']}"}
    up = None
    try:
        rendered = subprocess.run([str(BIN / "bulwark"), "nats-auth", "compose", "--dir", str(auth_dir),
                                   "--node", env["BULWARK_NODE_NAME"]], capture_output=True, text=True, timeout=60)
        assert rendered.returncode == 0, rendered.stderr
        engine.start()
        started = time.monotonic()
        build = subprocess.run(["bash", str(ROOT / "scripts/build-images.sh")], env=env, capture_output=True,
                               text=True, timeout=1500)
        assert build.returncode == 0, f"build-images.sh failed\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
        cs = ComposeStack(engine, env, ports["rest"], ports["pg"], time.monotonic() - started)
        print(f"images built in {cs.build_seconds:.0f}s")
        up = cs
        cs.compose("up", "-d", timeout=600)
        status = cs.cli("status", "--wait", "180", timeout=200)
        assert status.returncode == 0, f"compose stack not healthy: {status.stderr}\n{cs.logs()}"
        yield cs
    finally:
        try:
            if up is not None:
                up.compose("down", "-v", "--remove-orphans", check=False, timeout=300)
        finally:
            engine.stop()  # every container, image and volume goes with the engine's data root






def test_compose_stack_services_run_with_named_capabilities_not_privileged(stack: ComposeStack) -> None:
    ps = stack.compose("ps", "-q").stdout.split()
    assert len(ps) == 9, stack.compose("ps").stdout
    for cid in ps:
        info = json.loads(stack.engine.cli("inspect", cid).stdout)[0]
        service = info["Config"]["Labels"]["com.docker.compose.service"]
        host = info["HostConfig"]
        if service == "streams":  # one-shot: created the streams as admin, then exited
            assert not info["State"]["Running"] and info["State"]["ExitCode"] == 0, info["State"]
        else:
            assert info["State"]["Running"], (service, info["State"])
        assert host["Privileged"] is False, service
        assert host["NetworkMode"] == "host", service
        if service == "holder":                     # keeps the enforcer's kernel state across its restarts
            assert host["PidMode"] == "host" and "SYS_ADMIN" not in str(host["CapAdd"]), host["CapAdd"]
        elif service in ("monitor", "enforcer"):
            assert host["PidMode"] == "host"
            assert "CAP_SYS_ADMIN" in host["CapAdd"] or "SYS_ADMIN" in host["CapAdd"]
            binds = {b.split(":")[0]: b for b in host["Binds"]}
            assert binds["/sys/fs/cgroup"].endswith(":ro") and "/sys/kernel" in binds
        elif service in ("nats", "postgres", "policy", "feeder", "streams"):
            assert not host["CapAdd"] and host["PidMode"] == "", service
    for name, user in (("nats", "nobody"), ("postgres", "postgres")):
        assert stack.compose("exec", "-T", name, "id", "-un").stdout.strip() == user


def test_compose_stack_blocks_exec_in_labelled_container(stack: ComposeStack, tmp_path: Path) -> None:
    engine = stack.engine
    image = engine.build_busybox_image()
    guarded = engine.run("compose-guarded", image, {"app": "compose-guarded"})
    engine.run("compose-free", image, {"app": "compose-free"})

    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    applied = stack.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr

    blocked = engine.exec_until_refused("compose-guarded")
    assert blocked.returncode != 0, f"exec was never refused\n{stack.logs()}"
    assert "operation not permitted" in (blocked.stderr + blocked.stdout).lower(), blocked
    assert engine.cli("exec", "compose-free", "/bin/sleep", "0", check=False).returncode == 0
    assert engine.cli("exec", "compose-guarded", "/bin/true", check=False).returncode == 0

    alerts = wait_for_alerts(stack.rest_url, 1, namespace=NS, policy="compose-block-sleep")
    if not alerts:  # the monitor's kernel filter may trail the enforcer by a moment: refuse once more
        assert engine.cli("exec", "compose-guarded", "/bin/sleep", "0", check=False).returncode != 0
        alerts = wait_for_alerts(stack.rest_url, 1, timeout=10, namespace=NS, policy="compose-block-sleep")
    assert alerts, f"no alert\n{stack.logs()}"
    alert = alerts[0]
    assert alert["ContainerID"] == guarded and alert["ContainerName"] == "compose-guarded"
    assert alert["HostName"] == "compose-e2e"
    assert (alert["Action"], alert["Result"], alert["Resource"]) == ("Block", "Operation not permitted", "/bin/sleep")
    assert alert["Enforcer"] == "Fanotify"

    # Stored in the compose PostgreSQL, not a SQLite file in the feeder's container.
    rows = stack.compose("exec", "-T", "-e", f"PGPASSWORD={PG_PASSWORD}", "postgres", "psql", "-h", "127.0.0.1",
                         "-p", str(stack.pg_port), "-U", "bulwark", "-d", "bulwark", "-tAc",
                         "select count(*) from alerts where policy = 'compose-block-sleep'", check=False)
    assert rows.returncode == 0 and int(rows.stdout.strip() or 0) >= 1, (rows.stdout, rows.stderr)


def _credentials(stack: ComposeStack, role: str) -> NatsCredentials:
    """A service's NATS user, from the env file docker-compose gives it."""
    return env_file_credentials(Path(stack.env["BULWARK_COMPOSE_AUTH_DIR"]) / f"{role}.env")


def test_compose_services_log_in_as_their_own_nats_users(stack: ComposeStack) -> None:
    import asyncio
    import urllib.request

    # After the blocked exec above: every service did its work within its own rights.
    nats_log = stack.compose("logs", "--no-color", "nats", check=False).stdout
    assert "Permissions Violation" not in nats_log, nats_log[-4000:]
    monitor_port = stack.env["BULWARK_COMPOSE_NATS_MONITOR_PORT"]
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/connz?auth=true&limit=1000", timeout=5) as r:
        conns = json.load(r)["connections"]
    users = {c.get("name", ""): c.get("authorized_user", "") for c in conns}
    node = stack.env["BULWARK_NODE_NAME"]
    expected = {f"monitor-{node}": f"monitor-{node}", f"enforcer-{node}": f"enforcer-{node}",
                "identity": "identity", "policy": "policy", f"feeder@{node}": "feeder"}
    assert {name: users.get(name) for name in expected} == expected, users
    assert "admin" not in users.values()  # the one-shot streams service has logged out

    url = stack.env["BULWARK_NATS_URL"]
    assert asyncio.run(anonymous_refused(url))
    assert not asyncio.run(publish_ok(url, raw_events("another-node"), _credentials(stack, "monitor")))
    assert not asyncio.run(publish_ok(url, raw_events(node), _credentials(stack, "feeder")))


async def _stream_messages(url: str, stream: str, creds: NatsCredentials) -> int:
    import nats

    nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, user=creds.user,
                            password=creds.password, inbox_prefix=inbox_prefix(creds.user))  # its private inbox
    try:
        return (await nc.jetstream().stream_info(stream)).state.messages
    finally:
        await nc.close()


def test_compose_nats_keeps_jetstream_on_its_volume(stack: ComposeStack) -> None:
    import asyncio

    url = stack.env["BULWARK_NATS_URL"]
    feeder = _credentials(stack, "feeder")  # may read every stream, create none
    before = asyncio.run(_stream_messages(url, "BULWARK_POLICIES", feeder))
    assert before >= 1  # the policy applied above
    stack.compose("rm", "-s", "-f", "nats", timeout=120)  # the container goes; the named volume stays
    stack.compose("up", "-d", "nats", timeout=120)
    deadline = time.monotonic() + 60
    while True:
        try:
            after = asyncio.run(_stream_messages(url, "BULWARK_POLICIES", feeder))
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert after == before
    status = stack.cli("status", "--wait", "120", timeout=150)  # the services reconnect
    assert status.returncode == 0, f"not healthy after a NATS restart: {status.stderr}\n{stack.logs()}"
