"""AppArmor enforcer: one profile per running workload, loaded before the workload may start.

``apply`` generates each running workload's profile from its compiled rules (``profiles``) and loads
or replaces it with apparmor_parser when its text changed (a confined task moves to the new version
at once); the profiles of workloads that stopped or vanished are removed, and ``close`` removes every
profile this enforcer holds. A profile is attached by name only: ``bulwark run`` starts its command
under ``bulwark-<workload id>`` (change_onexec, bulwark/sandbox.py), a container would be started
with ``--security-opt apparmor=<name>``; nothing else is ever confined by it.

Denials (and audited accesses) come back as audit records (``auditlog``) and are handed out by
``take_reports()`` as :class:`AppArmorReport` s (``report``), each naming the rule it matched.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path

from services.enforcer.apparmor.auditlog import AuditReader, AuditRecord, AuditSource
from services.enforcer.apparmor.kernel import (
    SECURITYFS,
    ProfileError,
    inactive_reason,
    load_profile,
    loaded_profiles,
    remove_profile,
)
from services.enforcer.apparmor.profiles import OPERATIONS, PREFIX, generate_profile, profile_name, workload_of
from services.enforcer.apparmor.report import ENFORCER, AppArmorReport, from_record
from services.enforcer.base import ProbeResult
from services.enforcer.reports.queue import ReportQueue
from shared.lifecycle import Counters
from shared.schemas.rules import RuleSet, WorkloadRules

__all__ = ["AppArmorEnforcer"]

log = logging.getLogger("bulwark.enforcer.apparmor")

_MAX_GONE = 1024  # stopped workloads remembered so late records still name their rule


class AppArmorEnforcer:
    """Process, File, Network and Capabilities rules as AppArmor profiles, one per workload."""

    name = ENFORCER
    operations = OPERATIONS

    def __init__(self, securityfs: Path = SECURITYFS, audit_source: AuditSource | None = None) -> None:
        self.securityfs = securityfs
        self.counters = Counters(profiles=0, loads=0, load_errors=0, removed=0, unsupported_rules=0,
                                 denied=0, audited=0, foreign_records=0, attach_refused=0, reports_lost=0,
                                 audit_lost=0, audit_errors=0)
        self._audit_source = audit_source
        self._lock = threading.Lock()
        self._texts: dict[str, str] = {}  # loaded profile name -> the text loaded
        self._adopted = False
        self._workloads: dict[str, WorkloadRules] = {}  # profile name -> rules, running workloads
        self._gone: OrderedDict[str, WorkloadRules] = OrderedDict()
        self._reports: ReportQueue[AppArmorReport] = ReportQueue(self.counters)
        self._reader: AuditReader | None = None
        self._closed = False

    def probe(self) -> ProbeResult:
        """Supported when AppArmor is active and a (confining nothing) profile loads and is removed."""
        reason = inactive_reason(self.securityfs)
        if reason:
            return False, reason
        name = f"{PREFIX}probe-{os.getpid()}"
        try:
            load_profile(f"profile {name} {{\n}}\n")
            remove_profile(name, self.securityfs)
        except (ProfileError, OSError) as exc:
            return False, f"AppArmor profile load refused: {exc}"
        return True, "AppArmor active: per-workload profiles load with apparmor_parser (change_onexec)"

    def profile_for(self, workload_id: str) -> str:
        """The name of the profile a workload must be started under."""
        return profile_name(workload_id)

    def apply(self, ruleset: RuleSet) -> None:
        """Make the loaded Bulwark profiles exactly those of ``ruleset``'s running workloads."""
        with self._lock:
            if self._closed:
                raise RuntimeError("AppArmor enforcer is closed")
            if not self._adopted:  # profiles left by an enforcer that did not close: ours to manage
                self._texts.update({n: "" for n in loaded_profiles(PREFIX, self.securityfs)
                                    if not n.startswith(f"{PREFIX}probe-")})
                self._adopted = True
            wanted = {profile_name(wr.workload_id): wr for wr in ruleset.running()}
            skipped = 0
            for name, wr in wanted.items():
                profile = generate_profile(wr.workload_id, wr.rules, wr.file_posture, wr.network_posture,
                                           wr.capabilities_posture)
                skipped += profile.skipped
                if self._texts.get(name) == profile.text:
                    continue
                try:
                    load_profile(profile.text)
                except ProfileError as exc:  # its workload cannot start: the exec under it fails
                    self.counters.inc("load_errors")
                    log.error("profile not loaded", extra={"profile": name, "error": str(exc)})
                    continue
                self._texts[name] = profile.text
                self.counters.inc("loads")
            self._remember(wanted)
            for name in [n for n in self._texts if n not in wanted]:
                self._remove(name)
            self.counters["profiles"] = len(self._texts)
            self.counters["unsupported_rules"] = skipped
            if self._reader is None:
                self._reader = AuditReader(self._on_record, self.counters, self._audit_source)
            log.info("rules applied", extra={"version": ruleset.version, "profiles": len(self._texts),
                                             "unsupported_rules": skipped})

    def _remember(self, wanted: dict[str, WorkloadRules]) -> None:
        for name, wr in self._workloads.items():
            if name not in wanted:
                self._gone[name] = wr
                self._gone.move_to_end(name)
        while len(self._gone) > _MAX_GONE:
            self._gone.popitem(last=False)
        self._workloads = dict(wanted)  # replaced whole: the audit thread reads it without the lock

    def _remove(self, name: str) -> None:
        try:
            remove_profile(name, self.securityfs)
            self.counters.inc("removed")
        except (ProfileError, OSError) as exc:
            self.counters.inc("load_errors")
            log.error("profile not removed", extra={"profile": name, "error": str(exc)})
            return
        self._texts.pop(name, None)

    def _on_record(self, record: AuditRecord) -> None:
        """An audit record from the reader thread: a report when it is about one of our profiles."""
        label = workload_of(record.get("profile", ""))
        if not label.startswith(PREFIX):
            if record.get("operation") == "change_onexec" and record.get("name", "").startswith(PREFIX):
                self.counters.inc("attach_refused")  # a workload asked for a profile that is not loaded
            else:
                self.counters.inc("foreign_records")
            return
        wr = self._workloads.get(label) or self._gone.get(label)
        report = from_record(record, wr, wr.workload_id if wr else label.removeprefix(PREFIX), label)
        if report is None:
            return
        if self._reports.put(report):
            self.counters.inc("denied" if report.ret < 0 else "audited")

    def take_reports(self) -> list[AppArmorReport]:
        """Reports since the last call (oldest first)."""
        return self._reports.take()

    def close(self) -> None:
        """Stop reading audit records and remove every profile this enforcer loaded; safe to call twice."""
        with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()
            for name in list(self._texts):
                self._remove(name)
            self._texts.clear()
            self.counters["profiles"] = 0

    def detach(self) -> None:
        """Stop reading audit records but leave the profiles loaded, confining their workloads: for a
        restart, whose first ``apply`` adopts them (and removes those no longer wanted)."""
        with self._lock:
            self._closed = True
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()
            self._texts.clear()

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat."""
        return dict(self.counters)
