"""``bulwark up --nats-tls-cert/--nats-tls-key``: the embedded nats-server speaks only TLS, every service
and the launcher still connect (per-service users over TLS), and a plaintext client gets nowhere."""
from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.stack import Stack, healthy_stack, wait_for_alerts
from tests.integration.test_tls import make_pki

POLICIES = Path(__file__).parent / "policies"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def tls_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    pki = make_pki(tmp_path_factory.mktemp("pki"))
    with healthy_stack(tmp_path_factory.mktemp("tls") / "data", node="tls-node", drop_nats_url=True,
                       extra_env={"BULWARK_NATS_AUTH": "true", "BULWARK_NATS_SERVER_TLS_CERT": str(pki.server_cert),
                                  "BULWARK_NATS_SERVER_TLS_KEY": str(pki.server_key),
                                  "BULWARK_NATS_TLS_CA": str(pki.ca)}) as s:
        yield s


def test_services_speak_tls_to_nats_and_a_plaintext_client_is_refused(tls_stack: Stack) -> None:
    s = tls_stack
    with socket.create_connection(("127.0.0.1", s.nats_port), timeout=5) as plain:
        info = plain.recv(4096).decode()
    assert info.startswith("INFO ") and json.loads(info[5:])["tls_required"] is True, info
    assert s.cli("apply", "-f", str(POLICIES / "block-sleep.yaml")).returncode == 0
    blocked = s.cli("run", "--namespace", "demo", "--label", "app=demo", "--", "/usr/bin/sleep", "0.1")
    assert blocked.returncode != 0 and "Operation not permitted" in blocked.stderr, blocked.stderr
    alerts = wait_for_alerts(s.rest_url, 1, timeout=20.0, policy="block-sleep")
    assert [a["Action"] for a in alerts] == ["Block"], s.logs()
