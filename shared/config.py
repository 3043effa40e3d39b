"""Settings for every Bulwark process, read from flags and ``BULWARK_*`` environment variables.

Settings are built by :func:`load_settings`, never at import time.

TLS on every listener and client: REST and the websocket (``BULWARK_REST_TLS_CERT``/``_KEY`` on the feeder,
``BULWARK_REST_TLS_CA`` for clients), gRPC (``BULWARK_GRPC_TLS_CERT``/``_KEY``, with
``BULWARK_GRPC_TLS_CLIENT_CA`` mutual TLS), NATS client connections (``BULWARK_NATS_TLS_CA``, and
``BULWARK_NATS_TLS_CERT``/``_KEY`` when the server wants client certificates).
"""
from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings", "load_settings", "DEFAULT_DATA_DIR", "client_tls_context"]

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
    # TLS (see the module docstring); a verified gRPC client certificate grants grpc_cert_scopes
    rest_tls_cert: Path | None = None
    rest_tls_key: Path | None = None
    rest_tls_ca: Path | None = None
    grpc_tls_client_ca: Path | None = None
    grpc_cert_scopes: str = "read"
    nats_tls_ca: Path | None = None
    nats_tls_cert: Path | None = None
    nats_tls_key: Path | None = None
    # `bulwark up`'s own nats-server speaks only TLS with these (clients trust BULWARK_NATS_TLS_CA,
    # which defaults to this certificate for the services `bulwark up` starts)
    nats_server_tls_cert: Path | None = None
    nats_server_tls_key: Path | None = None
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
        """Base URL of the feeder's REST API (https when REST TLS is configured)."""
        scheme = "https" if self.rest_tls_cert or self.rest_tls_ca else "http"
        return f"{scheme}://{self.rest_host}:{self.rest_port}"

    def rest_tls_options(self) -> dict[str, Any]:
        """uvicorn.Config keywords serving REST and the websocket over TLS ({} when not configured)."""
        if (self.rest_tls_cert is None) != (self.rest_tls_key is None):
            raise ValueError("REST TLS needs both BULWARK_REST_TLS_CERT and BULWARK_REST_TLS_KEY")
        if self.rest_tls_cert is None:
            return {}
        for what, path in (("BULWARK_REST_TLS_CERT", self.rest_tls_cert), ("BULWARK_REST_TLS_KEY", self.rest_tls_key)):
            if not path or not path.is_file():
                raise ValueError(f"{what}: {path} is not a readable file")
        return {"ssl_certfile": str(self.rest_tls_cert), "ssl_keyfile": str(self.rest_tls_key)}

    def nats_server_tls(self) -> tuple[Path, Path] | None:
        """(cert, key) for the embedded nats-server's TLS; None when not configured. ValueError naming
        the setting when only one is given or a file is unreadable."""
        cert, key = self.nats_server_tls_cert, self.nats_server_tls_key
        if cert is None and key is None:
            return None
        if cert is None or key is None:
            raise ValueError("NATS server TLS needs both BULWARK_NATS_SERVER_TLS_CERT and BULWARK_NATS_SERVER_TLS_KEY")
        for what, path in (("BULWARK_NATS_SERVER_TLS_CERT", cert), ("BULWARK_NATS_SERVER_TLS_KEY", key)):
            if not path.is_file():
                raise ValueError(f"{what}: {path} is not a readable file")
        return cert.resolve(), key.resolve()

    def nats_tls_context(self) -> ssl.SSLContext | None:
        """The TLS context for NATS client connections (None when not configured)."""
        return client_tls_context(self.nats_tls_ca, self.nats_tls_cert, self.nats_tls_key, what="BULWARK_NATS_TLS")


def client_tls_context(ca: Path | None, cert: Path | None = None, key: Path | None = None, *,
                       what: str = "TLS") -> ssl.SSLContext | None:
    """A verifying client context trusting ``ca`` (plus a client certificate); None when nothing is set."""
    if ca is None and cert is None and key is None:
        return None
    if (cert is None) != (key is None):
        raise ValueError(f"{what}: a client certificate needs both _CERT and _KEY")
    try:
        ctx = ssl.create_default_context(cafile=str(ca) if ca else None)
        if cert is not None and key is not None:
            ctx.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"{what}: cannot load {exc}") from exc
    return ctx


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, with explicit overrides (flags) winning."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return Settings(**clean)  # type: ignore[arg-type]
