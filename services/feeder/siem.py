"""The SIEM sink: alerts and logs on JetStream streams with wildcardable subjects.

Alerts: ``bulwark.alerts.<namespace>.<severity>.<policy>`` (stream ``BULWARK_ALERTS``); logs:
``bulwark.logs.<namespace>.<operation>`` (stream ``BULWARK_LOGS``). Payload: the record as JSON, or one
CEF line (``BULWARK_SIEM_FORMAT=cef``). Every message carries ``Nats-Msg-Id: <EventID>`` so a
redelivered batch republished after a crash is dropped by JetStream's duplicate window, never doubled.
A failed publish is counted (``siem_errors``) and reported to the caller, which naks the raw batch:
the records are already stored, and the redelivery publishes them again (duplicates dropped by JetStream).
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from nats.js import JetStreamContext

from services.feeder.cef import to_cef
from shared.lifecycle import Counters
from shared.nats.subjects import ALERTS, LOGS, alert_subject, log_subject

__all__ = ["SiemSink", "encode", "subject_of"]

log = logging.getLogger("bulwark.feeder.siem")


def encode(record: dict[str, Any], fmt: str) -> bytes:
    """The message payload for ``record`` in format ``json`` or ``cef``."""
    if fmt == "cef":
        return to_cef(record).encode()
    return json.dumps(record).encode()


def subject_of(record: dict[str, Any], kind: str) -> str:
    """The subject of an alert (``kind="alert"``) or a log."""
    if kind == "alert":
        return alert_subject(str(record.get("NamespaceName", "")), str(record.get("Severity", "")),
                             str(record.get("PolicyName", "") or record.get("Operation", "")))
    return log_subject(str(record.get("NamespaceName", "")), str(record.get("Operation", "")))


class SiemSink:
    """Publishes records to the SIEM streams, concurrently, counting failures."""

    def __init__(self, js: JetStreamContext, counters: Counters, *, fmt: str = "json", logs: bool = True,
                 timeout: float = 5.0) -> None:
        self.js, self.counters, self.fmt, self.logs, self.timeout = js, counters, fmt, logs, timeout

    async def publish(self, alerts: list[dict[str, Any]], logs: list[dict[str, Any]]) -> int:
        """Publish every alert (and log, when enabled); returns how many failed (counted too)."""
        jobs = [self._one(a, "alert") for a in alerts]
        if self.logs:
            jobs += [self._one(r, "log") for r in logs]
        if not jobs:
            return 0
        return sum(not ok for ok in await asyncio.gather(*jobs))

    async def _one(self, record: dict[str, Any], kind: str) -> bool:
        stream = ALERTS.name if kind == "alert" else LOGS.name
        try:
            await self.js.publish(subject_of(record, kind), encode(record, self.fmt), stream=stream,
                                  timeout=self.timeout, headers={"Nats-Msg-Id": str(record["EventID"])})
            self.counters.inc(f"siem_{kind}s")
            return True
        except Exception as exc:
            self.counters.inc("siem_errors")
            log.warning("siem publish failed", extra={"kind": kind, "error": repr(exc)})
            return False
