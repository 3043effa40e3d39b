"""Which node a node agent's Kubernetes ServiceAccount token belongs to, asked of the API server.

The DaemonSet mounts a projected token with its own audience (``bulwark-nats``); a TokenReview says
whether the API server issued it, for that audience, to the node agents' ServiceAccount. The node
comes from the token's pod binding: the ``authentication.kubernetes.io/node-name`` extra (Kubernetes
1.30+), else the bound pod's ``spec.nodeName``.
"""
from __future__ import annotations

from typing import Any

__all__ = ["TokenRefused", "TokenReviewVerifier", "NODE_NAME_EXTRA", "POD_NAME_EXTRA"]

NODE_NAME_EXTRA = "authentication.kubernetes.io/node-name"
POD_NAME_EXTRA = "authentication.kubernetes.io/pod-name"


class TokenRefused(Exception):
    """The token does not prove a node agent (the message says why; it is logged, never the token)."""


def _first(values: Any) -> str:
    return str(values[0]) if isinstance(values, list) and values else ""


class TokenReviewVerifier:
    """``node_of(token)``: the node of a node agent's projected ServiceAccount token, or TokenRefused."""

    def __init__(self, api_client: Any, audience: str, service_account: str) -> None:
        self.api_client = api_client
        self.audience = audience
        self.service_account = service_account  # system:serviceaccount:<namespace>:<name>

    def node_of(self, token: str) -> str:
        """Blocking (one or two API calls): run it off the event loop."""
        from kubernetes import client

        if not token:
            raise TokenRefused("no token presented")
        review = client.AuthenticationV1Api(self.api_client).create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience])))
        status = review.status
        if status is None or not status.authenticated:
            raise TokenRefused(f"token not authenticated: {getattr(status, 'error', None) or 'no reason given'}")
        if self.audience not in (status.audiences or []):
            raise TokenRefused(f"token not issued for audience {self.audience!r}")
        user = status.user
        if user is None or user.username != self.service_account:
            raise TokenRefused(f"{getattr(user, 'username', None)!r} is not {self.service_account!r}")
        extra = user.extra or {}
        node = _first(extra.get(NODE_NAME_EXTRA))
        if node:
            return node
        pod = _first(extra.get(POD_NAME_EXTRA))
        if not pod:
            raise TokenRefused("token is not bound to a pod (use a projected ServiceAccount token)")
        namespace = self.service_account.split(":")[2]
        spec = client.CoreV1Api(self.api_client).read_namespaced_pod(pod, namespace).spec
        node = str(spec.node_name or "") if spec is not None else ""
        if not node:
            raise TokenRefused(f"pod {namespace}/{pod} is not scheduled on a node")
        return str(node)
