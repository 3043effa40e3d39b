"""Which NATS user a service logs in as, and with what, from its settings.

Three sources, first match wins:
- the URL itself (``nats://user:pass@host``, what ``bulwark up --nats-auth`` hands its children): nothing here;
- ``BULWARK_NATS_USER`` + ``BULWARK_NATS_PASSWORD`` (a Compose env file, a Kubernetes secretKeyRef);
- ``BULWARK_NATS_TOKEN_FILE`` (node agents on Kubernetes): the user is the role (``monitor``), the password
  the projected ServiceAccount token in that file. Identity's auth callout checks the token and grants that
  role's rights on the token's own node (services/identity/kube/callout.py). The kubelet rotates the file, so
  it is read again before every reconnect.

Each user receives replies on its own inbox prefix (``shared.nats.auth.inbox_prefix``): for a token login
that is the prefix of the user the callout grants (``monitor-<node>``), not of the role it logs in as.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from shared.errors import BulwarkError
from shared.nats.auth import NODE_ROLES, inbox_prefix, user_name

if TYPE_CHECKING:
    from shared.config import Settings

__all__ = ["NatsCredentials", "CredentialsError", "credentials_for"]


class CredentialsError(BulwarkError):
    """The configured NATS credentials cannot be used (missing or empty password or token)."""


@dataclass(frozen=True)
class NatsCredentials:
    """A NATS user and its password; ``refresh`` re-reads a password that rotates (a token file);
    ``inbox`` is the private inbox prefix the server grants this login (default: the user's)."""

    user: str
    password: str
    refresh: Callable[[], str] | None = field(default=None, compare=False)
    inbox: str = ""

    @property
    def inbox_prefix(self) -> str:
        """Where this login's replies arrive (``<prefix>.>``)."""
        return self.inbox or inbox_prefix(self.user)

    def __repr__(self) -> str:  # never log a password
        return f"NatsCredentials(user={self.user!r})"


def _read_token(path: Path) -> str:
    try:
        token = path.read_text().strip()
    except OSError as exc:
        raise CredentialsError(f"BULWARK_NATS_TOKEN_FILE: cannot read {path}: {exc.strerror}") from None
    if not token:
        raise CredentialsError(f"BULWARK_NATS_TOKEN_FILE: {path} is empty")
    return token


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
    path = settings.nats_token_file
    if path is None:
        return None
    if role not in NODE_ROLES:
        raise CredentialsError(f"BULWARK_NATS_TOKEN_FILE is for node agents ({', '.join(NODE_ROLES)}), not {role}")
    return NatsCredentials(role, _read_token(path), refresh=lambda: _read_token(path),
                           inbox=inbox_prefix(user_name(role, settings.node_name)))
