"""Per-service NATS users: passwords kept in a directory, ``bulwark up --nats-auth``'s nats.conf, stream creation."""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from shared.nats.auth import CLUSTER_ROLES, NODE_ROLES, new_password, render_authorization, user_name
from shared.nats.bus import connect, ensure_streams
from shared.nats.creds import NatsCredentials

__all__ = ["AuthFiles", "prepare_auth", "prepare_tls", "launcher_url", "load_passwords", "node_users",
           "create_streams", "write_private", "nats_tls_block"]

AUTH_DIR = "nats-auth"


@dataclass(frozen=True)
class AuthFiles:
    """Where the rendered config lives and the URL (with credentials) of every role."""

    config: Path
    urls: dict[str, str]


def write_private(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``path`` with ``mode`` from its creation on (never readable by others in between)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, mode)  # an existing file keeps its old mode through O_CREAT


def _url(user: str, password: str, port: int) -> str:
    return f"nats://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}"


def load_passwords(folder: Path, users: list[str]) -> dict[str, str]:
    """The passwords kept in ``folder/passwords.json``, with new ones made for ``users`` that lack one.

    Re-rendering keeps every existing password, so adding a node does not log the others out.
    """
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / "passwords.json"
    passwords: dict[str, str] = json.loads(path.read_text()) if path.exists() else {}
    for user in users:
        passwords.setdefault(user, new_password())
    write_private(path, json.dumps(passwords, indent=2))
    return passwords


def node_users(nodes: list[str]) -> list[str]:
    """Every cluster user plus each node's monitor and enforcer users."""
    return [user_name(r) for r in CLUSTER_ROLES] + [user_name(r, n) for n in nodes for r in NODE_ROLES]


def nats_tls_block(cert: Path, key: Path, client_ca: Path | None = None) -> str:
    """nats.conf's ``tls`` block: clients must speak TLS (and, with ``client_ca``, present a certificate)."""
    lines = [f"  cert_file: {json.dumps(str(cert))}", f"  key_file: {json.dumps(str(key))}", "  timeout: 5"]
    if client_ca is not None:
        lines += [f"  ca_file: {json.dumps(str(client_ca))}", "  verify: true"]
    return "tls {\n" + "\n".join(lines) + "\n}\n"


def prepare_auth(data_dir: Path, node: str, port: int, *, tls_cert: Path | None = None,
                 tls_key: Path | None = None) -> AuthFiles:
    """Create (or reuse) the users' passwords and render nats.conf for ``node``; files are 0600.

    With ``tls_cert`` and ``tls_key`` the server speaks only TLS (clients trust it with BULWARK_NATS_TLS_CA).
    """
    folder = data_dir / AUTH_DIR
    passwords = load_passwords(folder, node_users([node]))
    store = data_dir / "nats"
    config = folder / "nats.conf"
    tls = nats_tls_block(tls_cert, tls_key) if tls_cert is not None and tls_key is not None else ""
    write_private(config, f'listen: "127.0.0.1:{port}"\njetstream {{ store_dir: {json.dumps(str(store))} }}\n'
                           + tls + render_authorization(passwords, [node]))
    urls = {r: _url(user_name(r), passwords[user_name(r)], port) for r in CLUSTER_ROLES}
    urls.update({r: _url(user_name(r, node), passwords[user_name(r, node)], port) for r in NODE_ROLES})
    write_private(folder / "launcher.url", urls["launcher"])
    return AuthFiles(config=config, urls=urls)


def prepare_tls(data_dir: Path, port: int, tls_cert: Path, tls_key: Path) -> Path:
    """nats.conf for a server without per-service users that speaks only TLS; returns its path."""
    folder = data_dir / AUTH_DIR
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    config = folder / "nats-tls.conf"
    write_private(config, f'listen: "127.0.0.1:{port}"\n'
                          f'jetstream {{ store_dir: {json.dumps(str(data_dir / "nats"))} }}\n'
                          + nats_tls_block(tls_cert, tls_key))
    return config


def launcher_url(data_dir: Path) -> str | None:
    """The launcher's NATS URL written by ``bulwark up --nats-auth``, if there is one."""
    path = data_dir / AUTH_DIR / "launcher.url"
    return path.read_text().strip() if path.exists() else None


async def create_streams(url: str, credentials: NatsCredentials | None = None, wait: float = 0.0) -> None:
    """Create every Bulwark stream as the admin user, trying to reach NATS for up to ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            nc = await connect(url, "bulwark-streams", credentials=credentials)
            break
        except Exception:  # NATS not up yet (a Kubernetes init container may start first)
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(1.0)
    try:
        await ensure_streams(nc.jetstream())
    finally:
        await nc.close()
