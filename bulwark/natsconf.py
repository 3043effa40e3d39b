"""``bulwark up --nats-auth``: per-service NATS users, kept in the data directory, and the nats.conf."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from shared.natsauth import CLUSTER_ROLES, NODE_ROLES, new_password, render_authorization, user_name

__all__ = ["AuthFiles", "prepare_auth", "launcher_url"]

AUTH_DIR = "nats-auth"


@dataclass(frozen=True)
class AuthFiles:
    """Where the rendered config lives and the URL (with credentials) of every role."""

    config: Path
    urls: dict[str, str]


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _url(user: str, password: str, port: int) -> str:
    return f"nats://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}"


def prepare_auth(data_dir: Path, node: str, port: int) -> AuthFiles:
    """Create (or reuse) the users' passwords and render nats.conf for ``node``; files are 0600."""
    folder = data_dir / AUTH_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    creds_path = folder / "passwords.json"
    passwords: dict[str, str] = json.loads(creds_path.read_text()) if creds_path.exists() else {}
    users = [user_name(r) for r in CLUSTER_ROLES] + [user_name(r, node) for r in NODE_ROLES]
    for user in users:
        passwords.setdefault(user, new_password())
    _write_private(creds_path, json.dumps(passwords, indent=2))
    store = data_dir / "nats"
    config = folder / "nats.conf"
    _write_private(config, f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: {json.dumps(str(store))} }}\n'
                           + render_authorization(passwords, [node]))
    urls = {r: _url(user_name(r), passwords[user_name(r)], port) for r in CLUSTER_ROLES}
    urls.update({r: _url(user_name(r, node), passwords[user_name(r, node)], port) for r in NODE_ROLES})
    _write_private(folder / "launcher.url", urls["launcher"])
    return AuthFiles(config=config, urls=urls)


def launcher_url(data_dir: Path) -> str | None:
    """The launcher's NATS URL written by ``bulwark up --nats-auth``, if there is one."""
    path = data_dir / AUTH_DIR / "launcher.url"
    return path.read_text().strip() if path.exists() else None
