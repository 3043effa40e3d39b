"""The JetStream streams the feeder adds: logs for SIEMs and persistent dead letters.

(Alerts for SIEMs are :data:`shared.subjects.ALERTS`, subjects ``bulwark.alerts.<ns>.<severity>.<policy>``.)
"""
from __future__ import annotations

from shared.subjects import DEAD_LETTER, StreamSpec, subject_token

__all__ = ["LOGS", "DEAD_LETTERS", "FEEDER_STREAMS", "log_subject"]

# Logs for SIEMs: bulwark.logs.<namespace>.<operation> (host logs: namespace "_host").
LOGS = StreamSpec("BULWARK_LOGS", ("bulwark.logs.>",), max_age_seconds=3 * 24 * 3600)
# Messages the feeder could not decode or handle, with Bulwark-Reason / Bulwark-Subject headers.
DEAD_LETTERS = StreamSpec("BULWARK_DEADLETTER", (DEAD_LETTER,), max_age_seconds=14 * 24 * 3600)
FEEDER_STREAMS = (LOGS, DEAD_LETTERS)


def log_subject(namespace: str, operation: str) -> str:
    """Subject a log is published on: namespace (``_host`` for the host), then operation."""
    return f"bulwark.logs.{subject_token(namespace or '_host')}.{subject_token(operation or 'none')}"
