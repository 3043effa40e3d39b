"""Which NATS user a service logs in as, and with which password, from its settings.

Three sources, first match wins:
- the URL itself (``nats://user:pass@host``, what ``bulwark up --nats-auth`` hands its children): nothing here;
- ``BULWARK_NATS_USER`` + ``BULWARK_NATS_PASSWORD`` (a Compose env file, a Kubernetes secretKeyRef);
- ``BULWARK_NATS_CREDENTIALS_DIR``: one file per user name holding its password (a mounted Secret). The
  user is the role's name on this node (``monitor-<node>``), so a DaemonSet needs no per-node manifest.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from shared.errors import BulwarkError
from shared.natsauth import NODE_ROLES, user_name

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["NatsCredentials", "CredentialsError", "credentials_for"]


class CredentialsError(BulwarkError):
    """The configured NATS credentials cannot be used (missing or empty password)."""


@dataclass(frozen=True)
class NatsCredentials:
    """A NATS user and its password."""

    user: str
    password: str

    def __repr__(self) -> str:  # never log a password
        return f"NatsCredentials(user={self.user!r})"


def credentials_for(settings: Settings, role: str) -> NatsCredentials | None:
    """The credentials ``role`` (a natsauth role) uses on ``settings.node_name``; None when the URL has them."""
    if settings.nats_user:
        if settings.nats_password is None or not settings.nats_password.get_secret_value():
            raise CredentialsError("BULWARK_NATS_USER is set but BULWARK_NATS_PASSWORD is empty")
        if role in NODE_ROLES and settings.nats_user != user_name(role, settings.node_name):
            # Another node's user would be refused on this node's subjects: every event would be lost.
            raise CredentialsError(f"BULWARK_NATS_USER {settings.nats_user!r} is not the {role} user of node "
                                   f"{settings.node_name!r} (BULWARK_NODE_NAME): expected "
                                   f"{user_name(role, settings.node_name)!r}")
        return NatsCredentials(settings.nats_user, settings.nats_password.get_secret_value())
    folder = settings.nats_credentials_dir
    if folder is None:
        return None
    user = user_name(role, settings.node_name)
    path = folder / user
    try:
        password = path.read_text().strip()
    except OSError as exc:
        raise CredentialsError(f"BULWARK_NATS_CREDENTIALS_DIR: no password for NATS user {user!r} at {path}: "
                               f"{exc.strerror}") from None
    if not password:
        raise CredentialsError(f"BULWARK_NATS_CREDENTIALS_DIR: {path} is empty")
    return NatsCredentials(user, password)
