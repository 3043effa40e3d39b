"""The identity service's settings: the shared ones plus where Docker and Kubernetes are."""
from __future__ import annotations

import re

from pydantic import SecretStr, field_validator

from shared.config import Settings

__all__ = ["IdentitySettings", "DOCKER_OFF", "load_identity_settings"]

DOCKER_OFF = ("", "off", "none")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class IdentitySettings(Settings):
    """``BULWARK_DOCKER_HOST`` (``off`` disables), ``BULWARK_KUBECONFIG`` (``off`` disables; empty:
    in-cluster config when ``KUBERNETES_SERVICE_HOST`` is set), and how Docker containers are named."""

    docker_host: str = "unix:///var/run/docker.sock"
    # KubeArmor's non-Kubernetes mode says "container_namespace", which is not a valid namespace name
    # (DNS-1123 label): no KubeArmorPolicy could select it through a validating API. We use "docker".
    docker_namespace: str = "docker"
    docker_compose_namespace: bool = False
    kubeconfig: str = ""
    kube_watch_seconds: int = 300
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 30.0
    cri_scan_seconds: float = 2.0
    # NATS auth callout for node agents (Kubernetes): the issuer's account nkey seed turns it on; node
    # agents present a projected ServiceAccount token for this audience, of this ServiceAccount.
    nats_callout_seed: SecretStr | None = None
    nats_callout_audience: str = "bulwark-nats"
    nats_callout_service_account: str = "system:serviceaccount:bulwark:bulwark-node"
    nats_callout_ttl_seconds: int = 3600

    @field_validator("docker_namespace")
    @classmethod
    def _namespace_is_dns_label(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError(f"BULWARK_DOCKER_NAMESPACE {value!r} must be a DNS-1123 label "
                             "(a policy must be able to name it)")
        return value

    @property
    def docker_enabled(self) -> bool:
        """Whether to follow a Docker engine at all."""
        return self.docker_host.strip().lower() not in DOCKER_OFF


def load_identity_settings(**overrides: object) -> IdentitySettings:
    """Settings from ``BULWARK_*`` variables, explicit overrides winning."""
    return IdentitySettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]
