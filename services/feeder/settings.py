"""The feeder's own settings: everything in :class:`shared.config.Settings` plus storage, retention,
throttling, API access, gRPC TLS and SIEM options, all from ``BULWARK_*`` environment variables.

Tokens are comma-separated lists held as SecretStr (``BULWARK_API_READ_TOKENS=t1,t2``); a write token
also grants read. With no token configured the API is open (loopback-only by default).
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from shared.config import Settings

__all__ = ["FeederSettings", "load_feeder_settings", "split_tokens"]


class FeederSettings(Settings):
    """Settings of ``python -m services.feeder``."""

    # retention: by age and by count; 0 disables that limit
    alerts_max_age_seconds: float = 30 * 24 * 3600.0
    alerts_max_rows: int = 5_000_000
    logs_max_age_seconds: float = 7 * 24 * 3600.0
    logs_max_rows: int = 5_000_000
    retention_interval_seconds: float = 60.0
    # KubeArmor-like alert throttling, per container (host: per node)
    alert_throttling: bool = True
    max_alerts_per_sec: int = 10
    throttle_sec: int = 30
    # logs: which operations are visible by default (namespace annotation kubearmor-visibility overrides)
    visibility_containers: str = "process,file,network,capabilities"
    visibility_hosts: str = "none"
    # API access
    # the largest REST body (a policy apply) accepted; larger ones get 413 before being read. Never more
    # than the NATS server's max_payload allows (the body travels to the policy service over NATS).
    api_max_body_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    api_read_tokens: SecretStr | None = None
    api_write_tokens: SecretStr | None = None
    # the node's IP, sent as HostIP in KubeArmor messages (empty: the default route's source address,
    # else 127.0.0.1)
    node_ip: str = ""
    # gRPC TLS (both set = TLS on the LogService/PolicyService port)
    grpc_tls_cert: Path | None = None
    grpc_tls_key: Path | None = None
    # SIEM stream payloads
    siem_format: Literal["json", "cef"] = "json"
    siem_logs: bool = True
    # seconds before an unacked raw batch (feeder died mid-batch) is redelivered
    ingest_ack_wait_seconds: float = 30.0
    # live fan-out queue per client
    ws_queue: int = 256
    grpc_queue: int = 1024


def split_tokens(value: SecretStr | None) -> frozenset[str]:
    """The non-empty tokens of a comma-separated secret."""
    if value is None:
        return frozenset()
    return frozenset(t.strip() for t in value.get_secret_value().split(",") if t.strip())


def load_feeder_settings(**overrides: object) -> FeederSettings:
    """Feeder settings from the environment, explicit overrides winning."""
    clean = {k: v for k, v in overrides.items() if v is not None}
    return FeederSettings(**clean)  # type: ignore[arg-type]
