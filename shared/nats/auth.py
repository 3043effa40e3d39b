"""NATS users and subject permissions for Bulwark's services: one table, rendered into nats.conf.

Each service gets its own user with only the subjects it needs; node agents get one user per node,
so a node's monitor may publish only that node's raw events (``bulwark.raw.<node>``). nats-server's
static configuration has no per-user templates, so per-node rights mean one user per node.
JetStream access is granted per stream: reading a stream means creating unnamed (ephemeral, ordered)
consumers on it; named consumers may be created, fetched from, acknowledged and deleted only under the
user's own durable names (:data:`DURABLES`), so no user can delete, rebind or drain another's consumer.
Only the ``admin`` user (``bulwark up`` itself) may create streams.

Replies are private: each user receives on its own inbox prefix ``_INBOX_<user>`` (:func:`inbox_prefix`;
the clients pass it as nats-py's ``inbox_prefix``), never on the shared ``_INBOX.>``, so no user can read
the replies meant for another. Responders answer through ``allow_responses``.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from shared.nats.subjects import (
    ALERTS,
    DEAD_LETTER,
    DEAD_LETTERS,
    IDENTITY,
    IDENTITY_API,
    LOGS,
    POLICIES,
    POLICY_API,
    POLICY_EVENTS,
    RAW,
    RULES,
    StreamSpec,
    enforcer_await,
    raw_events,
    subject_token,
)

__all__ = ["Permissions", "CLUSTER_ROLES", "NODE_ROLES", "AUTH_CALLOUT_SUBJECT", "permissions_for", "user_name",
           "render_authorization", "new_password", "inbox_prefix", "DURABLES"]

CLUSTER_ROLES = ("admin", "identity", "policy", "feeder", "launcher")
# Where nats-server asks who a login is when no static user matches (auth callout: identity answers).
AUTH_CALLOUT_SUBJECT = "$SYS.REQ.USER.AUTH"
NODE_ROLES = ("monitor", "enforcer")
# The named (durable) consumers each role owns, per stream; every other consumer is unnamed.
# services/feeder/ingest.py: DURABLE (tests/unit check that the two agree).
DURABLES: dict[str, dict[str, tuple[str, ...]]] = {"feeder": {RAW.name: ("bulwark-feeder",)}}


@dataclass
class Permissions:
    """What one user may publish and subscribe to, and whether it may answer requests."""

    publish: list[str] = field(default_factory=list)
    subscribe: list[str] = field(default_factory=list)
    responses: bool = False


def inbox_prefix(user: str) -> str:
    """The private inbox prefix of NATS user ``user`` (its replies arrive under ``<prefix>.>``)."""
    return f"_INBOX_{subject_token(user)}"


def _reads(role: str, *streams: StreamSpec) -> list[str]:
    """Publish rights to consume ``streams``: unnamed consumers, stream gets, and ``role``'s own durables."""
    out: list[str] = []
    for s in streams:
        n = s.name
        out += [f"$JS.API.CONSUMER.CREATE.{n}", f"$JS.API.CONSUMER.INFO.{n}.>", f"$JS.API.STREAM.MSG.GET.{n}",
                f"$JS.API.DIRECT.GET.{n}", f"$JS.API.DIRECT.GET.{n}.>", f"$JS.FC.{n}.>"]
        for d in DURABLES.get(role, {}).get(n, ()):
            out += [f"$JS.API.CONSUMER.CREATE.{n}.{d}", f"$JS.API.CONSUMER.CREATE.{n}.{d}.>",
                    f"$JS.API.CONSUMER.DURABLE.CREATE.{n}.{d}", f"$JS.API.CONSUMER.DELETE.{n}.{d}",
                    f"$JS.API.CONSUMER.MSG.NEXT.{n}.{d}", f"$JS.ACK.{n}.{d}.>"]
    return out


def _common(role: str, node: str) -> Permissions:
    where = subject_token(node) if node else "*"  # cluster services beat under the node they run on
    inbox = inbox_prefix(user_name(role, node))
    return Permissions(publish=["$JS.API.STREAM.INFO.*", "$JS.API.STREAM.NAMES", f"bulwark.health.{role}.{where}"],
                       subscribe=[f"{inbox}.>"])


def permissions_for(role: str, node: str = "") -> Permissions:
    """The permissions of ``role`` (for node roles, on ``node``)."""
    if role == "admin":
        return Permissions(publish=[">"], subscribe=[">"], responses=True)
    p = _common(role, node)
    if role == "monitor":
        p.publish += [raw_events(node), *_reads(role, RULES, IDENTITY)]
    elif role == "enforcer":
        p.publish += [raw_events(node), *_reads(role, RULES)]
        p.subscribe += [enforcer_await(node)]
        p.responses = True
    elif role == "identity":
        p.publish += ["bulwark.identity.events.>", POLICY_API, *_reads(role, IDENTITY)]
        p.subscribe += [IDENTITY_API]
        p.responses = True
    elif role == "policy":
        p.publish += [POLICY_EVENTS, "bulwark.rules.>", *_reads(role, POLICIES, IDENTITY, RULES)]
        p.subscribe += [POLICY_API]
        p.responses = True
    elif role == "feeder":
        p.publish += ["bulwark.alerts.>", "bulwark.logs.>", DEAD_LETTER, POLICY_API,
                      *_reads(role, RAW, IDENTITY, RULES, ALERTS, LOGS, DEAD_LETTERS)]
        p.subscribe += ["bulwark.health.>"]
    elif role == "launcher":
        p.publish = [IDENTITY_API, "bulwark.api.enforcer.*.await"]
    else:
        raise ValueError(f"unknown NATS role {role!r}")
    return p


def user_name(role: str, node: str = "") -> str:
    """The NATS user of ``role`` (node roles carry the node: ``monitor-<node>``)."""
    return f"{role}-{subject_token(node)}" if role in NODE_ROLES else role


def new_password() -> str:
    """A random password for one user."""
    return secrets.token_urlsafe(24)


def render_authorization(passwords: dict[str, str], nodes: list[str], *, roles: tuple[str, ...] = CLUSTER_ROLES,
                         callout_issuer: str | None = None) -> str:
    """The ``authorization { users = [...] }`` block for ``roles`` and every node's agents.

    With ``callout_issuer`` (an account public nkey) node agents have no static users: every login that
    matches none goes to identity's auth callout (services/identity/kube/callout.py), which may answer
    on the callout subject; the static users bypass it.
    """
    entries, names = [], []
    listed = [(r, "") for r in roles] + [(r, n) for n in nodes for r in NODE_ROLES]
    for role, node in listed:
        name = user_name(role, node)
        perms = permissions_for(role, node)
        if callout_issuer and role == "identity":
            perms.subscribe.append(AUTH_CALLOUT_SUBJECT)
        block = {"publish": {"allow": perms.publish}, "subscribe": {"allow": perms.subscribe}}
        if perms.responses:
            block["allow_responses"] = True  # type: ignore[assignment]
        entries.append(f"    {{user: {json.dumps(name)}, password: {json.dumps(passwords[name])}, "
                       f"permissions: {json.dumps(block)}}}")
        names.append(name)
    out = "authorization {\n  users = [\n" + "\n".join(entries) + "\n  ]\n"
    if callout_issuer:
        out += (f"  auth_callout {{\n    issuer: {json.dumps(callout_issuer)}\n"
                f"    auth_users: {json.dumps(names)}\n  }}\n")
    return out + "}\n"
