"""NATS auth callout: node agents log in with their Kubernetes ServiceAccount token, not a password.

nats-server sends each login that no static user matches to ``$SYS.REQ.USER.AUTH``. A node agent logs
in as user ``monitor`` or ``enforcer`` with its projected token as the password; the verifier (a
TokenReview) says which node the token's pod runs on, and the answer is a user JWT with that role's rights on
that node only (``shared.nats.auth``). So a node's agents can publish only ``bulwark.raw.<their node>``,
whatever they claim, and no node holds another node's credentials.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg

from shared.lifecycle import Counters
from shared.nats import jwt as natsjwt
from shared.nats.auth import AUTH_CALLOUT_SUBJECT, NODE_ROLES, permissions_for, user_name

__all__ = ["AuthCallout", "NodeVerifier"]

log = logging.getLogger("bulwark.identity.callout")


class NodeVerifier(Protocol):
    """Maps a presented token to the node it proves (raises on anything else)."""

    def node_of(self, token: str) -> str: ...


class AuthCallout:
    """Answers nats-server's authorization requests for node agents."""

    def __init__(self, issuer_seed: str, verifier: NodeVerifier, counters: Counters, *, account: str = "$G",
                 ttl_seconds: int = 3600) -> None:
        self.seed = issuer_seed
        self.verifier = verifier
        self.counters = counters
        self.account = account
        self.ttl_seconds = ttl_seconds
        for name in ("callout_granted", "callout_refused", "callout_bad_requests"):
            counters.setdefault(name, 0)

    async def start(self, nc: Client) -> None:
        """Subscribe to the callout subject (the identity user may, see shared.nats.auth)."""
        await nc.subscribe(AUTH_CALLOUT_SUBJECT, cb=self._on_request)

    async def _on_request(self, msg: Msg) -> None:
        try:
            request = natsjwt.decode(msg.data.decode())["nats"]
            user_nkey, server_id = request["user_nkey"], request["server_id"]["id"]
        except (natsjwt.JwtError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.counters.inc("callout_bad_requests")
            log.warning("undecodable auth callout request", extra={"error": str(exc)})
            return  # no answer: the server times out and refuses the login
        response = await self._decide(request.get("connect_opts") or {}, user_nkey, server_id)
        await msg.respond(natsjwt.encode(response, self.seed).encode())

    async def _decide(self, opts: dict[str, Any], user_nkey: str, server_id: str) -> dict[str, Any]:
        role = str(opts.get("user") or "")
        try:
            if role not in NODE_ROLES:
                raise PermissionError(f"user {role!r} is not a node agent role ({', '.join(NODE_ROLES)})")
            token = str(opts.get("pass") or opts.get("auth_token") or "")
            node = await asyncio.to_thread(self.verifier.node_of, token)
        except Exception as exc:  # TokenRefused, an API error, ...: refuse this login, keep serving
            self.counters.inc("callout_refused")
            log.warning("node agent login refused", extra={"role": role, "reason": str(exc)})
            return natsjwt.response_claims(user_nkey, server_id, None, "not authorized")
        perms = permissions_for(role, node)
        claims = natsjwt.user_claims(user_nkey, user_name(role, node), self.account, perms.publish,
                                     perms.subscribe, perms.responses, self.ttl_seconds)
        self.counters.inc("callout_granted")
        log.info("node agent logged in", extra={"user": user_name(role, node), "node": node})
        return natsjwt.response_claims(user_nkey, server_id, natsjwt.encode(claims, self.seed))
