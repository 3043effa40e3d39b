"""Settings for every Bulwark process, read from flags and ``BULWARK_*`` environment variables.

Settings are built by :func:`load_settings`, never at import time.
"""
from __future__ import annotations

import socket
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_settings", "DEFAULT_DATA_DIR"]

DEFAULT_DATA_DIR = Path("/var/lib/bulwark")


class Settings(BaseSettings):
    """Everything a Bulwark service or the CLI needs to find the others."""

    model_config = SettingsConfigDict(env_prefix="BULWARK_", extra="ignore")

    data_dir: Path = DEFAULT_DATA_DIR
    nats_url: str = "nats://127.0.0.1:4222"
    nats_port: int = 4222
    nats_auth: bool = False
    # Credentials when the URL carries none: a user and password (Compose env files, Kubernetes
    # secretKeyRef), or a node agent's Kubernetes ServiceAccount token file (auth callout).
    nats_user: str | None = None
    nats_password: SecretStr | None = None
    nats_token_file: Path | None = None
    node_name: str = Field(default_factory=socket.gethostname)
    cluster_name: str = "default"
    rest_host: str = "127.0.0.1"
    rest_port: int = 8080
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 32767
    db_url: str | None = None
    btf_tree_dir: Path | None = None
    enforcer_order: str = "bpflsm,fanotify,audit"
    heartbeat_seconds: float = 1.0
    stopped_grace_seconds: float = 60.0
    batch_max_events: int = 512
    batch_max_delay_ms: int = 20
    log_level: str = "INFO"
    # Default postures (audit|block) for workloads with an allow-list; namespaces override them with
    # the kubearmor-file-posture / -network-posture / -capabilities-posture annotations.
    default_file_posture: str = "audit"
    default_network_posture: str = "audit"
    default_capabilities_posture: str = "audit"

    @property
    def database_url(self) -> str:
        """The SQLAlchemy URL: the configured one, or SQLite in the data directory."""
        return self.db_url or f"sqlite:///{self.data_dir / 'bulwark.db'}"

    @property
    def btf_tree(self) -> Path:
        """Where the bcc header tree built from the kernel's BTF lives."""
        return self.btf_tree_dir or self.data_dir / "bcc-btf"

    @property
    def rest_url(self) -> str:
        """Base URL of the feeder's REST API."""
        return f"http://{self.rest_host}:{self.rest_port}"


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (flags) winning."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
