"""NATS subject names and JetStream stream definitions: the one place that spells them.

Subjects are dotted so consumers can wildcard them (``bulwark.raw.>``, ``bulwark.alerts.demo.>``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "StreamSpec", "STREAMS", "RAW", "POLICIES", "IDENTITY", "RULES", "ALERTS",
    "raw_events", "identity_events", "rules_for_node", "alert_subject", "health",
    "HEALTH_ALL", "POLICY_API", "IDENTITY_API", "enforcer_await", "POLICY_EVENTS", "DEAD_LETTER",
    "subject_token", "LOGS", "DEAD_LETTERS", "log_subject",
]


@dataclass(frozen=True)
class StreamSpec:
    """A JetStream stream Bulwark owns: its name, subjects and retention."""

    name: str
    subjects: tuple[str, ...]
    max_msgs_per_subject: int = -1
    max_age_seconds: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)


def subject_token(value: str) -> str:
    """Make a value safe as one subject token (no dots, spaces or wildcards)."""
    out = "".join(c if (c.isalnum() or c in "-_") else "_" for c in value)
    return out or "_"


# Raw kernel events, batched by each node's monitor.
RAW = StreamSpec("BULWARK_RAW", ("bulwark.raw.>",), max_age_seconds=24 * 3600)
# Policy event log: ADDED / MODIFIED / DELETED, never rewritten.
POLICY_EVENTS = "bulwark.policies.events"
POLICIES = StreamSpec("BULWARK_POLICIES", (POLICY_EVENTS,))
# Workload identity: started / changed / stopped, per node.
IDENTITY = StreamSpec("BULWARK_IDENTITY", ("bulwark.identity.events.>",))
# Compiled rule sets, the newest one per node.
RULES = StreamSpec("BULWARK_RULES", ("bulwark.rules.>",), max_msgs_per_subject=1)
# Alerts for SIEMs.
ALERTS = StreamSpec("BULWARK_ALERTS", ("bulwark.alerts.>",), max_age_seconds=7 * 24 * 3600)

DEAD_LETTER = "bulwark.deadletter"
# Logs for SIEMs: bulwark.logs.<namespace>.<operation> (host logs: namespace "_host").
LOGS = StreamSpec("BULWARK_LOGS", ("bulwark.logs.>",), max_age_seconds=3 * 24 * 3600)
# Messages a service could not decode or handle, with Bulwark-Reason / Bulwark-Subject headers.
DEAD_LETTERS = StreamSpec("BULWARK_DEADLETTER", (DEAD_LETTER,), max_age_seconds=14 * 24 * 3600)

STREAMS: tuple[StreamSpec, ...] = (RAW, POLICIES, IDENTITY, RULES, ALERTS, LOGS, DEAD_LETTERS)

HEALTH_ALL = "bulwark.health.>"
POLICY_API = "bulwark.api.policy"
IDENTITY_API = "bulwark.api.identity"


def raw_events(node: str) -> str:
    """Subject of a node's batched raw events."""
    return f"bulwark.raw.{subject_token(node)}"


def identity_events(node: str) -> str:
    """Subject of a node's identity events."""
    return f"bulwark.identity.events.{subject_token(node)}"


def rules_for_node(node: str) -> str:
    """Subject of a node's compiled rule set."""
    return f"bulwark.rules.{subject_token(node)}"


def alert_subject(namespace: str, severity: str, policy: str) -> str:
    """Subject an alert is published on for SIEMs: namespace, then severity, then policy."""
    return f"bulwark.alerts.{subject_token(namespace)}.{subject_token(severity or 'none')}.{subject_token(policy)}"


def log_subject(namespace: str, operation: str) -> str:
    """Subject a log is published on: namespace (``_host`` for the host), then operation."""
    return f"bulwark.logs.{subject_token(namespace or '_host')}.{subject_token(operation or 'none')}"


def health(service: str, node: str) -> str:
    """Subject of a service's heartbeat."""
    return f"bulwark.health.{subject_token(service)}.{subject_token(node)}"


def enforcer_await(node: str) -> str:
    """Request subject: reply once the node's enforcer has applied rules covering a workload."""
    return f"bulwark.api.enforcer.{subject_token(node)}.await"
