"""The NATS users rendered for Compose and for Kubernetes, against a real nats-server configured the way
docker-compose.yml and deploy/k8s configure it, with credentials read the way the services read them.

What stays unverified here: the kubelet mounting the Secrets (no cluster), and Docker Compose's own
env-file handling (the Compose end-to-end test in tests/compose covers that with a real engine).
"""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from bulwark.natsconf import create_streams
from bulwark.natsd import free_port, nats_server_binary, wait_for_port
from bulwark.natsdeploy import (
    SECRET_AUTH,
    SECRET_NODE_USERS,
    SECRET_USERS,
    render_compose,
    render_kubernetes,
)
from bulwark.procs import terminate
from shared.config import Settings
from shared.natscreds import NatsCredentials, credentials_for
from shared.subjects import POLICY_EVENTS, raw_events
from tests.natsperm import anonymous_refused, publish_ok

ROOT = Path(__file__).resolve().parents[2]


def _env_file(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if line)


def _start(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([nats_server_binary(), *args], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for_port(port)
    except TimeoutError:
        terminate(proc, grace=2)
        raise AssertionError(f"nats-server did not start: {log.read_text()[-2000:]}") from None
    return proc


async def test_compose_users_from_env_files(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    render_compose(auth, "compose-a")
    assert oct(auth.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in auth.glob("*.env"))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    # The nats service's command in docker-compose.yml, with this test's paths and port.
    proc = _start(["-c", str(auth / "nats-auth.conf"), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1",
                   "-p", str(port)], port, tmp_path / "nats.log")
    try:
        def creds(role: str) -> NatsCredentials | None:
            env = _env_file(auth / f"{role}.env")
            settings = Settings(nats_url=url, node_name="compose-a", nats_user=env["BULWARK_NATS_USER"],
                                nats_password=env["BULWARK_NATS_PASSWORD"])
            return credentials_for(settings, role)

        await create_streams(url, creds("admin"))
        assert await publish_ok(url, raw_events("compose-a"), creds("monitor"))
        assert await publish_ok(url, raw_events("compose-a"), creds("enforcer"))
        assert not await publish_ok(url, raw_events("compose-b"), creds("monitor"))
        assert not await publish_ok(url, raw_events("compose-a"), creds("feeder"))
        assert await publish_ok(url, POLICY_EVENTS, creds("policy"))
        assert await anonymous_refused(url)
    finally:
        terminate(proc, grace=5)


def _configmap_conf(port: int, http: int, store: Path) -> str:
    """deploy/k8s's nats.conf, with this test's ports and store (the include line is kept as is)."""
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/30-nats.yaml").read_text()))
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["nats.conf"]
    conf = re.sub(r"listen: \S+", f"listen: 127.0.0.1:{port}", conf)
    conf = re.sub(r"http: \S+", f"http: 127.0.0.1:{http}", conf)
    return re.sub(r"store_dir: \S+", f"store_dir: {store}", conf)


def _mount_secret(doc: dict, where: Path) -> Path:
    """What the kubelet does with a Secret volume: one file per key."""
    where.mkdir(parents=True)
    for key, value in doc["stringData"].items():
        (where / key).write_text(value)
    return where


async def test_kubernetes_users_from_the_rendered_secrets(tmp_path: Path) -> None:
    manifest = render_kubernetes(tmp_path / "render", ["node-a", "node-b.example"])
    secrets = {d["metadata"]["name"]: d for d in yaml.safe_load_all(manifest.read_text()) if d}
    port, http = free_port(), free_port()
    url = f"nats://127.0.0.1:{port}"
    # The pod's mounts: the ConfigMap at /etc/nats/config, the auth Secret at /etc/nats/auth.
    (tmp_path / "etc/config").mkdir(parents=True)
    (tmp_path / "etc/config/nats.conf").write_text(_configmap_conf(port, http, tmp_path / "js"))
    _mount_secret(secrets[SECRET_AUTH], tmp_path / "etc/auth")
    node_dir = _mount_secret(secrets[SECRET_NODE_USERS], tmp_path / "node-users")
    users = secrets[SECRET_USERS]["stringData"]
    assert set(users) == {"admin", "identity", "policy", "feeder"}
    proc = _start(["-c", str(tmp_path / "etc/config/nats.conf")], port, tmp_path / "nats.log")
    try:
        def agent(role: str, node: str) -> NatsCredentials | None:   # the DaemonSet's way
            return credentials_for(Settings(nats_credentials_dir=node_dir, node_name=node), role)

        def cluster(role: str) -> NatsCredentials | None:           # a Deployment's secretKeyRef
            return credentials_for(Settings(nats_user=role, nats_password=users[role]), role)

        await create_streams(url, cluster("admin"))
        assert await publish_ok(url, raw_events("node-a"), agent("monitor", "node-a"))
        assert await publish_ok(url, raw_events("node-b.example"), agent("enforcer", "node-b.example"))
        assert not await publish_ok(url, raw_events("node-b.example"), agent("monitor", "node-a"))
        assert not await publish_ok(url, raw_events("node-a"), cluster("feeder"))
        assert await publish_ok(url, POLICY_EVENTS, cluster("policy"))
        assert await anonymous_refused(url)
    finally:
        terminate(proc, grace=5)


def test_rerendering_keeps_passwords_and_adds_nodes(tmp_path: Path) -> None:
    first = yaml.safe_load_all(render_kubernetes(tmp_path, ["node-a"]).read_text())
    before = {d["metadata"]["name"]: d["stringData"] for d in first if d}
    after = {d["metadata"]["name"]: d["stringData"] for d in
             yaml.safe_load_all(render_kubernetes(tmp_path, ["node-a", "node-c"]).read_text()) if d}
    assert after[SECRET_USERS] == before[SECRET_USERS]
    assert after[SECRET_NODE_USERS]["monitor-node-a"] == before[SECRET_NODE_USERS]["monitor-node-a"]
    assert "monitor-node-c" in after[SECRET_NODE_USERS]
    with pytest.raises(ValueError, match="--nodes"):
        render_kubernetes(tmp_path, [])
