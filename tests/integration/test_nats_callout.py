"""Kubernetes NATS logins end to end, short of a cluster: nats-server configured as deploy/k8s configures it
(the ConfigMap plus the rendered Secret laid out as the kubelet mounts them), the real identity service
answering the auth callout, and the real Kubernetes client asking a scripted API server's TokenReview.

Node agents present a projected ServiceAccount token and get their own node's rights, whatever they
claim; cluster services use their static users. Unverified here: a real API server's TokenReview, the
kubelet's token projection and rotation.
"""
from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import nats
import yaml

from bulwark.natsserver.config import create_streams
from bulwark.natsserver.deploy import (
    CALLOUT_SEED_KEY,
    SECRET_AUTH,
    SECRET_USERS,
    render_kubernetes,
)
from bulwark.natsserver.process import free_port
from bulwark.procs import terminate
from shared.codec import pack
from shared.config import Settings
from shared.nats.bus import connect
from shared.nats.creds import NatsCredentials, credentials_for
from shared.nats.subjects import POLICY_EVENTS, raw_events
from tests.fixtures.k8s.fake_apiserver import FakeApiServer
from tests.natsperm import anonymous_refused, login_refused, probe, publish_ok, start_nats
from tests.servicetools import service_log, start_service, stop_service, wait_healthy

ROOT = Path(__file__).resolve().parents[2]
SA = "system:serviceaccount:bulwark:bulwark-node"
NODE = "node-a"
REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"
TOKENS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "tok-a": (SA, {"authentication.kubernetes.io/node-name": ["node-a"]}),
    "tok-a-rotated": (SA, {"authentication.kubernetes.io/node-name": ["node-a"]}),
    "tok-b-pod": (SA, {"authentication.kubernetes.io/pod-name": ["bulwark-node-x7"]}),  # pre-1.30 binding
    "tok-nosy": ("system:serviceaccount:default:nosy", {"authentication.kubernetes.io/node-name": ["node-a"]}),
}


def _review(body: dict[str, Any]) -> dict[str, Any]:
    spec = body["spec"]
    found = TOKENS.get(spec["token"])
    status: dict[str, Any] = {"authenticated": False, "error": "invalid bearer token"}
    if found:
        status = {"authenticated": True, "audiences": spec.get("audiences", []),
                  "user": {"username": found[0], "uid": "u-1", "extra": found[1]}}
    return {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec, "status": status}


def _configmap_conf(port: int, http: int, store: Path) -> str:
    """deploy/k8s's nats.conf, with this test's ports and store (the include line is kept as is)."""
    docs = list(yaml.safe_load_all((ROOT / "deploy/k8s/30-nats.yaml").read_text()))
    conf = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["nats.conf"]
    conf = re.sub(r"listen: \S+", f"listen: 127.0.0.1:{port}", conf)
    conf = re.sub(r"http: \S+", f"http: 127.0.0.1:{http}", conf)
    return re.sub(r"store_dir: \S+", f"store_dir: {store}", conf)


def _agent(token_file: Path, role: str, node: str = NODE) -> NatsCredentials | None:
    """The DaemonSet's way: BULWARK_NATS_TOKEN_FILE."""
    return credentials_for(Settings(nats_token_file=token_file, node_name=node), role)


async def _publish_soon(nc: nats.NATS, subject: str, within: float = 20.0) -> bool:
    """Whether a JetStream publish on ``nc`` is acked within ``within`` seconds (NATS is restarting)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            return (await nc.jetstream().publish(subject, pack({"x": 1}), timeout=2)).seq > 0
        except Exception:
            await asyncio.sleep(0.3)
    return False


async def test_node_agents_log_in_with_their_serviceaccount_token(tmp_path: Path) -> None:
    manifest = render_kubernetes(tmp_path / "render")
    secrets = {d["metadata"]["name"]: d["stringData"] for d in yaml.safe_load_all(manifest.read_text()) if d}
    users = secrets[SECRET_USERS]
    port, http = free_port(), free_port()
    url = f"nats://127.0.0.1:{port}"
    # The NATS pod's mounts: the ConfigMap at /etc/nats/config, the auth Secret at /etc/nats/auth.
    (tmp_path / "etc/config").mkdir(parents=True)
    (tmp_path / "etc/auth").mkdir()
    (tmp_path / "etc/config/nats.conf").write_text(_configmap_conf(port, http, tmp_path / "js"))
    (tmp_path / "etc/auth/auth.conf").write_text(secrets[SECRET_AUTH]["auth.conf"])
    api = FakeApiServer()
    api.add_post(REVIEWS, _review)
    api.add_list("/api/v1/namespaces/bulwark/pods/bulwark-node-x7",
                 {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bulwark-node-x7", "namespace": "bulwark"},
                  "spec": {"nodeName": "node-b", "containers": []}})
    api.start()
    proc = start_nats(["-c", str(tmp_path / "etc/config/nats.conf")], port, tmp_path / "nats.log")
    identity = None
    try:
        def cluster(role: str) -> NatsCredentials | None:  # a Deployment's secretKeyRef
            return credentials_for(Settings(nats_user=role, nats_password=users[role]), role)

        await create_streams(url, cluster("admin"))
        identity = start_service(
            "identity", url, tmp_path / "identity", node="cluster-node", BULWARK_NATS_USER="identity",
            BULWARK_NATS_PASSWORD=users["identity"], BULWARK_NATS_CALLOUT_SEED=users[CALLOUT_SEED_KEY],
            BULWARK_KUBECONFIG=str(api.kubeconfig(tmp_path / "kubeconfig")),
            BULWARK_DOCKER_HOST="off")
        admin = await connect(url, "test", credentials=cluster("admin"))
        try:
            await wait_healthy(admin, "identity", "cluster-node")
        finally:
            await admin.close()
        token = tmp_path / "token"
        token.write_text("tok-a")
        assert await publish_ok(url, raw_events(NODE), _agent(token, "monitor"))
        assert await publish_ok(url, raw_events(NODE), _agent(token, "enforcer"))
        assert not await publish_ok(url, raw_events("node-b"), _agent(token, "monitor"))   # its own node only
        token_b = tmp_path / "token-b"
        token_b.write_text("tok-b-pod")  # the node found through the bound pod
        assert await publish_ok(url, raw_events("node-b"), _agent(token_b, "monitor", "node-b"))
        assert not await publish_ok(url, raw_events(NODE), _agent(token_b, "monitor", "node-b"))
        for user, bad in (("monitor", "tok-nosy"), ("monitor", "forged"), ("feeder", "tok-a"), ("admin", "tok-a")):
            assert await login_refused(url, user, bad), (user, bad)
        assert not await publish_ok(url, raw_events(NODE), cluster("feeder"))
        assert await publish_ok(url, POLICY_EVENTS, cluster("policy"))
        assert await anonymous_refused(url)
        # The callout's user has a private inbox: other users' replies stay out of its reach.
        spy = await probe(url, creds=_agent(token, "monitor"))
        try:
            for inbox in ("_INBOX.>", "_INBOX_feeder.>"):
                await spy.nc.subscribe(inbox)
                await spy.violation(inbox)
        finally:
            await spy.close()
        assert len(api.calls(REVIEWS)) >= 5

        # The kubelet rotates the token; NATS restarts: the agent logs in again with the new token by itself.
        nc = await connect(url, "monitor-test", credentials=_agent(token, "monitor"))
        try:
            token.write_text("tok-a-rotated")
            seen = len(api.calls(REVIEWS))
            terminate(proc, grace=5)
            proc = start_nats(["-c", str(tmp_path / "etc/config/nats.conf")], port, tmp_path / "nats.log")
            assert await _publish_soon(nc, raw_events(NODE)) and nc.options["password"] == "tok-a-rotated"
            assert len(api.calls(REVIEWS)) > seen
        finally:
            await nc.close()
    finally:
        if identity is not None:
            stop_service(identity)
        terminate(proc, grace=5)
        api.stop()
    log = (tmp_path / "identity" / "identity.log").read_text(errors="replace")  # whole: retries fill its tail
    assert "node agent login refused" in log and "node agent logged in" in log, service_log(tmp_path / "identity",
                                                                                             "identity")
