"""Which NATS user a service logs in as: URL, user + password, or a node agent's token file."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from shared.nats.creds import CredentialsError, credentials_for


def test_no_credentials_means_the_url_carries_them() -> None:
    assert credentials_for(Settings(nats_url="nats://u:p@127.0.0.1:4222"), "feeder") is None


def test_user_and_password_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BULWARK_NATS_USER", "feeder")
    monkeypatch.setenv("BULWARK_NATS_PASSWORD", "s3cret")
    creds = credentials_for(Settings(), "feeder")
    assert creds is not None and (creds.user, creds.password) == ("feeder", "s3cret")
    assert "s3cret" not in repr(creds) and "s3cret" not in repr(Settings())


def test_a_user_without_a_password_is_refused() -> None:
    with pytest.raises(CredentialsError, match="BULWARK_NATS_PASSWORD"):
        credentials_for(Settings(nats_user="feeder"), "feeder")


def test_a_node_agent_refuses_another_nodes_user() -> None:
    settings = Settings(nats_user="monitor-node-b", nats_password="x", node_name="node-a")
    with pytest.raises(CredentialsError, match="'monitor-node-a'"):
        credentials_for(settings, "monitor")


def test_a_node_agent_logs_in_with_its_token_file_read_again_on_refresh(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("token-1\n")
    creds = credentials_for(Settings(nats_token_file=token, node_name="node-a"), "enforcer")
    assert creds is not None and (creds.user, creds.password) == ("enforcer", "token-1")
    token.write_text("token-2")  # the kubelet rotated it
    assert creds.refresh is not None and creds.refresh() == "token-2"
    assert "token" not in repr(creds).replace("NatsCredentials", "")


def test_token_file_errors_name_the_file_and_the_role(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    with pytest.raises(CredentialsError, match=str(missing)):
        credentials_for(Settings(nats_token_file=missing), "monitor")
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(CredentialsError, match="is empty"):
        credentials_for(Settings(nats_token_file=tmp_path / "empty"), "monitor")
    with pytest.raises(CredentialsError, match="not feeder"):
        credentials_for(Settings(nats_token_file=missing), "feeder")
