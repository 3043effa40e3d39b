"""TLS on every listener (issue 14): NATS client connections of a real service, gRPC with mutual TLS
(what KubeArmor's karmor presents), REST and the websocket over https with tokens. Certificates are made
here, at test time, with ``cryptography``."""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import nats
import pytest
import uvicorn
from websockets.asyncio.client import connect as ws_connect

from bulwark.client import Api
from bulwark.natsserver.config import nats_tls_block
from bulwark.natsserver.process import free_port, wait_for_port
from bulwark.procs import terminate
from services.feeder.auth import ApiAuth
from services.feeder.http.app import FeederDeps, create_app
from services.feeder.hub import AlertHub
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.views import FeederState
from shared.config import Settings
from shared.nats.auth import CLUSTER_ROLES, render_authorization, user_name
from shared.nats.bus import connect, ensure_streams, request
from shared.nats.subjects import POLICY_API
from shared.proto_gen import kubearmor_pb2 as pb
from shared.proto_gen import kubearmor_pb2_grpc as pb_grpc
from shared.proto_gen import policy_pb2 as ppb
from shared.proto_gen import policy_pb2_grpc as ppb_grpc
from tests.integration.test_feeder_pipeline import Feeder
from tests.natsperm import start_nats
from tests.servicetools import service_log, start_service, stop_service, wait_healthy


@dataclass
class Pki:
    """A test CA, a server certificate for localhost/127.0.0.1 and a client certificate, as PEM files."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _write_key(key: Any, path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def make_pki(folder: Path) -> Pki:
    """A fresh CA and two leaves signed by it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    def build(subject: str, key: Any, issuer: x509.Name, signer: Any, *, ca: bool = False,
              usage: Any = None, sans: list[Any] | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(issuer).public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
        if usage is not None:
            b = b.add_extension(x509.ExtendedKeyUsage([usage]), False)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), False)
        return b.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bulwark test CA")])
    ca = build("bulwark test CA", ca_key, ca_name, ca_key, ca=True)
    server_key, client_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    server = build("localhost", server_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.SERVER_AUTH,
                   sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    client = build("karmor", client_key, ca_name, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    pki = Pki(folder / "ca.crt", folder / "server.crt", folder / "server.key", folder / "client.crt",
              folder / "client.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.server_cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    pki.client_cert.write_bytes(client.public_bytes(serialization.Encoding.PEM))
    _write_key(server_key, pki.server_key)
    _write_key(client_key, pki.client_key)
    return pki


async def test_a_real_service_talks_to_nats_over_tls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    users = [user_name(r) for r in CLUSTER_ROLES]
    conf = tmp_path / "nats.conf"
    conf.write_text(f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: {json.dumps(str(tmp_path / "js"))} }}\n'
                    + nats_tls_block(pki.server_cert, pki.server_key)
                    + render_authorization({u: f"pw-{u}" for u in users}, []))
    proc = start_nats(["-c", str(conf)], port, tmp_path / "nats.log")
    url = lambda user: f"nats://{user}:pw-{user}@127.0.0.1:{port}"  # noqa: E731
    try:
        # A client that does not trust the server's certificate is refused by the handshake.
        with pytest.raises(ssl.SSLCertVerificationError):
            await nats.connect(url("admin"), allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=3)
        monkeypatch.setenv("BULWARK_NATS_TLS_CA", str(pki.ca))  # what every service reads
        admin = await connect(url("admin"), "admin")
        await ensure_streams(admin.jetstream())
        policy = start_service("policy", url("policy"), tmp_path / "policy", node="tls-node",
                               BULWARK_NATS_TLS_CA=str(pki.ca))
        try:
            await wait_healthy(admin, "policy", "tls-node")
            feeder = await connect(url("feeder"), "feeder")
            assert (await request(feeder, POLICY_API, {"op": "list"}))["ok"] is True
            assert feeder._transport is not None and feeder.ssl_context is not None
            await feeder.close()
        finally:
            assert stop_service(policy) == 0, service_log(tmp_path / "policy", "policy")
            await admin.close()
    finally:
        terminate(proc, grace=5)


async def test_grpc_mutual_tls_is_what_karmor_presents(nats_server: Any, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    feeder = Feeder(nats_server.url, tmp_path / "data", BULWARK_GRPC_TLS_CERT=str(pki.server_cert),
                    BULWARK_GRPC_TLS_KEY=str(pki.server_key), BULWARK_GRPC_TLS_CLIENT_CA=str(pki.ca),
                    BULWARK_API_READ_TOKENS="reader", BULWARK_API_WRITE_TOKENS="writer")
    try:
        await feeder.ready()
        target = f"127.0.0.1:{feeder.grpc_port}"
        with_cert = grpc.ssl_channel_credentials(pki.ca.read_bytes(), pki.client_key.read_bytes(),
                                                 pki.client_cert.read_bytes())
        async with grpc.aio.secure_channel(target, with_cert) as channel:
            stub = pb_grpc.LogServiceStub(channel)
            # A verified client certificate reads (BULWARK_GRPC_CERT_SCOPES, default read) without a token.
            async for _ in stub.WatchAlerts(pb.RequestMessage(Filter="none"), timeout=10):
                pass
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await ppb_grpc.PolicyServiceStub(channel).containerPolicy(ppb.policy(policy=b"{}"), timeout=10)
            assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # The write token still writes (an invalid body: the answer comes from PolicyService itself).
            reply = await ppb_grpc.PolicyServiceStub(channel).containerPolicy(
                ppb.policy(policy=b"not json"), metadata=(("authorization", "Bearer writer"),), timeout=10)
            assert reply.status == ppb.Invalid
        without_cert = grpc.ssl_channel_credentials(pki.ca.read_bytes())
        async with grpc.aio.secure_channel(target, without_cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.LogServiceStub(channel).HealthCheck(pb.NonceMessage(nonce=1), timeout=10)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake wants a certificate
    finally:
        assert feeder.stop() == 0, feeder.log.read_text()[-3000:]


async def test_rest_and_websocket_over_https_with_tokens(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    settings = Settings(rest_port=port, rest_tls_cert=pki.server_cert, rest_tls_key=pki.server_key,
                        rest_tls_ca=pki.ca)
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    deps = FeederDeps(FeederState(), RecordStore(engine), AlertHub(), None,
                      auth=ApiAuth(frozenset({"reader"}), frozenset({"writer"})))
    server = uvicorn.Server(uvicorn.Config(create_app(deps), host="127.0.0.1", port=port, log_config=None,
                                           lifespan="off", **settings.rest_tls_options()))
    task = asyncio.create_task(server.serve())
    try:
        await asyncio.to_thread(wait_for_port, port, 20.0)
        assert settings.rest_url == f"https://127.0.0.1:{port}"
        trust = ssl.create_default_context(cafile=str(pki.ca))
        async with httpx.AsyncClient(base_url=settings.rest_url, verify=trust) as http:
            assert (await http.get("/api/v1/alerts")).status_code == 401
            ok = await http.get("/api/v1/alerts", headers={"Authorization": "Bearer reader"})
            assert ok.status_code == 200 and ok.json() == []
        with pytest.raises(httpx.ConnectError):  # the system CAs do not vouch for the test CA
            await asyncio.to_thread(httpx.get, f"{settings.rest_url}/healthz")
        assert await asyncio.to_thread(Api(settings.rest_url, token="reader", ca=pki.ca).alerts) == []
        async with ws_connect(f"wss://127.0.0.1:{port}/api/v1/stream?token=reader", ssl=trust) as ws:
            received = asyncio.ensure_future(ws.recv())
            while not received.done():  # until the server side has subscribed and forwarded one
                deps.hub.publish({"Timestamp": 1, "NamespaceName": "demo", "PolicyName": "p", "Action": "Block",
                                  "Type": "MatchedPolicy"}, "alert")
                await asyncio.wait({received}, timeout=0.1)
            got = json.loads(received.result())
            assert got["PolicyName"] == "p"
    finally:
        server.should_exit = True
        await task
        engine.dispose()
