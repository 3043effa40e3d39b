"""Which NATS user a service logs in as: URL, user + password, or a directory of password files."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from shared.natscreds import CredentialsError, credentials_for


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


def test_the_credentials_directory_is_looked_up_by_role_and_node(tmp_path: Path) -> None:
    (tmp_path / "enforcer-ip-10-0-0-7_ec2_internal").write_text("pw-7\n")
    settings = Settings(nats_credentials_dir=tmp_path, node_name="ip-10-0-0-7.ec2.internal")
    creds = credentials_for(settings, "enforcer")
    assert creds is not None and (creds.user, creds.password) == ("enforcer-ip-10-0-0-7_ec2_internal", "pw-7")


def test_a_missing_password_file_is_named(tmp_path: Path) -> None:
    settings = Settings(nats_credentials_dir=tmp_path, node_name="node-z")
    with pytest.raises(CredentialsError, match=str(tmp_path / "monitor-node-z")):
        credentials_for(settings, "monitor")
    (tmp_path / "monitor-node-z").write_text("  \n")
    with pytest.raises(CredentialsError, match="is empty"):
        credentials_for(settings, "monitor")
