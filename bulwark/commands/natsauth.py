"""``bulwark nats-auth``: render per-service NATS users for Compose or Kubernetes, and create the streams.

Only the admin user may create streams, so a deployment with per-service users runs ``bulwark nats-auth
streams`` as admin once NATS is up (Compose: the one-shot ``streams`` service; Kubernetes: an init
container of the policy Deployment) before the services start.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_nats_auth_parser"]


def cmd_compose(args: argparse.Namespace) -> int:
    from bulwark.natsserver.deploy import render_compose

    for path in render_compose(args.dir, args.node):
        print(path)
    return 0


def cmd_kubernetes(args: argparse.Namespace) -> int:
    from bulwark.natsserver.deploy import render_kubernetes

    print(render_kubernetes(args.dir, args.namespace))
    return 0


def cmd_streams(args: argparse.Namespace) -> int:
    from bulwark.natsserver.config import create_streams
    from shared.config import load_settings
    from shared.nats.creds import credentials_for

    settings = load_settings(nats_url=args.nats_url)
    try:
        asyncio.run(create_streams(settings.nats_url, credentials_for(settings, "admin"), args.wait))
    except Exception as exc:
        raise SystemExit(f"bulwark nats-auth streams: {settings.nats_url}: {exc!r}") from None
    sys.stdout.write("bulwark nats-auth streams: every stream exists\n")
    return 0


def add_nats_auth_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``nats-auth`` on the CLI's subparsers."""
    p = sub.add_parser("nats-auth", help="per-service NATS users for Compose or Kubernetes; create streams")
    inner = p.add_subparsers(dest="nats_auth_cmd", required=True)
    compose = inner.add_parser("compose", help="write nats-auth.conf and one <service>.env per service")
    compose.add_argument("--dir", type=Path, default=Path(".bulwark-compose"),
                         help="output directory, as BULWARK_COMPOSE_AUTH_DIR (default ./.bulwark-compose)")
    compose.add_argument("--node", default="compose-node", help="BULWARK_NODE_NAME of the stack (default compose-node)")
    compose.set_defaults(func=cmd_compose)
    k8s = inner.add_parser("kubernetes", help="write nats-auth.yaml: the Secrets deploy/k8s expects (node agents "
                                              "log in with their ServiceAccount token: no node list)")
    k8s.add_argument("--dir", type=Path, default=Path(".bulwark-k8s"), help="output directory (passwords kept there)")
    k8s.add_argument("--namespace", default="bulwark")
    k8s.set_defaults(func=cmd_kubernetes)
    streams = inner.add_parser("streams", help="create every stream as the admin user (BULWARK_NATS_USER/PASSWORD)")
    streams.add_argument("--nats-url", help="NATS URL (env BULWARK_NATS_URL)")
    streams.add_argument("--wait", type=float, default=60.0, help="keep trying to reach NATS this long")
    streams.set_defaults(func=cmd_streams)
    return p
