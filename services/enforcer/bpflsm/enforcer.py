"""The BPF-LSM enforcer: bpf/enforce/lsm.c refuses exec, opens, sockets and capabilities inline, and the
attacks of the presets filelessExec, protectEnv and anonMapExec (services.enforcer.presets).

The programs are loaded once (by a successful probe, or the first rule set that selects a namespace)
and stay attached until ``close``; with no namespace selected they return at once. Rule
changes only rewrite maps (``maps.write_tables`` from ``rules.compile_tables``). Refused and audited
operations are reported through a ring buffer that a thread drains into ``take_reports()`` (the service
publishes them as ``enforce`` raw events, Enforcer ``BPFLSM``). ``close`` detaches every program.

With a holder (``bpfhold``, as the signal enforcer) the programs are handed over after the first rule
set is written and outlive us: a kill -9 or restart leaves them refusing with the last rules until the
next enforcer's are armed; ``detach()`` (SIGTERM) leaves them to the holder, ``close()`` is the full stop.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

from services.enforcer.base import ProbeResult
from services.enforcer.bpfhold import ProgramHold, note_orphans, take_attachments, unload
from services.enforcer.bpflsm.load import D_PATH, load_lsm
from services.enforcer.bpflsm.maps import clear_tables, write_tables
from services.enforcer.bpflsm.probe import probe_bpf_lsm
from services.enforcer.bpflsm.rules import KINDS, Classes, LsmTables, compile_tables
from services.enforcer.presets import claimed_presets, compile_presets
from services.enforcer.reports.kernel import LSM_ENFORCER, LsmRecord, parse_lsm_record
from services.enforcer.reports.presets import PresetReport, is_preset_record, parse_preset_record
from services.enforcer.reports.queue import ReportQueue, RingBufferDrain, kernel_reports_lost, record_handler
from services.enforcer.signal.enforcer import BPF_DIR
from services.enforcer.signal.rules import RuleRef
from shared.lifecycle import Counters
from shared.presets import route_of
from shared.schemas.rules import RuleSet

__all__ = ["BpfLsmEnforcer", "HOOKS"]

log = logging.getLogger("bulwark.enforcer.bpflsm")

HOOKS = ("bprm_check_security", "file_open", "socket_create", "capable", "mmap_file", "file_mprotect")
PRESET_FLAG_SHIFT = 16  # a namespace's flags: bit 16 + enum bw_preset for each preset it Blocks (lsm.c)


class BpfLsmEnforcer:
    """Process, File, Network and Capabilities rules refused in the kernel's LSM hooks, per mount namespace."""

    name = LSM_ENFORCER
    operations = frozenset(KINDS) | frozenset(route_of(p) for p in ("filelessExec", "protectEnv", "anonMapExec"))

    def __init__(self, bpf_dir: Path = BPF_DIR, btf_tree: Path | None = None, holder: str | None = None) -> None:
        self.counters = Counters(refused=0, audited=0, reports_lost=0, report_errors=0, unsupported_rules=0,
                                 unenforced=0, errors=0, namespaces=0, verdicts=0, paths=0)
        self.bpf_dir = bpf_dir
        self.btf_tree = btf_tree
        self._bpf: Any = None
        self._links: list[int] = []  # attachment fds (ours, out of bcc's tables: see bpfhold)
        self._armed_ns = 0           # CLOCK_MONOTONIC when our programs first had rules
        self._hold = ProgramHold("bpflsm", holder, self.counters, self._orphans)
        self._lock = threading.Lock()
        self._refs: dict[int, RuleRef] = {}
        self._ids: dict[RuleRef, int] = {}      # stable rule ids: a late report never names another rule
        self._classes = Classes()               # stable class ids: a rule change never renumbers
        self._reports: ReportQueue[LsmRecord | PresetReport] = ReportQueue(self.counters)
        self._on_record = record_handler(self._parse, self._reports, self.counters,
                                         lambda rec: "refused" if rec.refused else "audited", "BPF-LSM report", log)
        self._drain = RingBufferDrain("bpflsm-reports", lambda: self._bpf, self.counters)
        self._closed = False
        self.paths_read_by = D_PATH

    def probe(self) -> ProbeResult:
        """A no-op LSM program must load and attach, then Bulwark's own (maps empty: they refuse nothing)."""
        try:
            ok, reason = probe_bpf_lsm()
        except Exception as exc:  # a probe must never take the service down
            return False, f"probe failed: {exc!r}"
        if not ok:  # the kernel's own refusal is the reason (compiling lsm.c here would only cost time)
            return False, reason
        with self._lock:
            if self._closed:
                return False, "BPF-LSM enforcer is closed"
            try:  # kept loaded: with no namespace selected the programs refuse nothing, and apply needs them
                self._load()
            except Exception as exc:
                return False, f"kernel accepts BPF-LSM, but Bulwark's LSM programs are refused: {exc}"
        return True, (f"BPF-LSM programs load and attach ({', '.join(HOOKS)}; paths read by "
                      f"{self.paths_read_by}); {reason}")

    def _load(self) -> None:
        if self._bpf is not None:
            return
        # LSM_PROBE functions are loaded and attached by bcc as the module loads; the maps are empty.
        bpf, self.paths_read_by = load_lsm(self.bpf_dir, self.btf_tree, self._on_record)
        self._links = take_attachments(bpf)
        self._bpf = bpf

    def _unload(self) -> None:
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            unload(bpf, self._links)

    def apply(self, ruleset: RuleSet) -> None:
        """Load on first use, then make the kernel maps hold exactly this rule set's verdicts."""
        with self._lock:
            if self._closed:
                raise RuntimeError("BPF-LSM enforcer is closed")
            tables = self._tables(ruleset)
            self.counters["unsupported_rules"] = tables.unsupported
            self.counters["unenforced"] = tables.unenforced
            if not tables.namespaces and self._bpf is None:
                self._hold.settle()  # what an older enforcer left must not keep refusing
                return  # nothing to enforce: do not even load
            self._load()
            self._refs = {**self._refs, **tables.refs}  # reports in flight for removed rules still resolve
            write_tables(self._bpf, tables)
            if not self._hold.held:  # armed: only now may the older generation go
                self._armed_ns = self._armed_ns or time.monotonic_ns()
                self._hold.hold(self._bpf, self._links, self._armed_ns)
            self.counters["namespaces"] = len(tables.namespaces)
            self.counters["verdicts"] = len(tables.verdicts)
            self.counters["paths"] = len(tables.paths)
            self._drain.start()
            log.info("rules applied", extra={"version": ruleset.version, "namespaces": len(tables.namespaces),
                                             "verdicts": len(tables.verdicts), "paths": len(tables.paths),
                                             "unsupported": tables.unsupported})

    def _tables(self, ruleset: RuleSet) -> LsmTables:
        """The path, socket and capability verdicts, and the presets' Blocks (flag bits of their namespaces)."""
        tables = compile_tables(ruleset, self._ids, self._classes)
        blocked = compile_presets(ruleset, claimed_presets(self.operations), self._ids)
        tables.presets = blocked.verdicts
        tables.refs.update(blocked.refs)
        for ns, presets in blocked.namespaces.items():
            for preset in presets:
                tables.namespaces[ns] = tables.namespaces.get(ns, 0) | 1 << (PRESET_FLAG_SHIFT + preset)
        return tables

    def _parse(self, raw: bytes) -> LsmRecord | PresetReport:
        if is_preset_record(raw):
            return parse_preset_record(raw, self._refs)
        return parse_lsm_record(raw, self._refs)

    def take_reports(self) -> list[LsmRecord | PresetReport]:
        """Refusal and audit reports since the last call (oldest first)."""
        return self._reports.take()

    def keep_held(self) -> None:
        """Hand our programs to a holder that restarted (or was unreachable); cheap when held."""
        with self._lock:
            if not self._closed and self._bpf is not None and self._armed_ns:
                self._hold.keep_held(self._bpf, self._links, self._armed_ns)

    def detach(self) -> None:
        """Stop, leaving our programs (and their last rules) to the holder, if it has them; else ``close``."""
        with self._lock:
            self._closed = True
            self._drain.stop()
            self._hold.close()
            self._unload()

    def _orphans(self, records: list[bytes], armed_ns: int) -> None:
        def key(raw: bytes) -> tuple[int, int]:
            head = self._parse(raw).head
            return head.ktime, head.mntns

        note_orphans(records, key, armed_ns, self.counters, log)

    def close(self) -> None:
        """Forget every namespace, detach every program (the holder's copies too) and free every map;
        safe to call twice."""
        with self._lock:
            self._closed = True
            self._drain.stop()
            self._hold.release()
            if self._bpf is not None:
                try:
                    clear_tables(self._bpf)
                except Exception as exc:
                    log.warning("clearing maps failed", extra={"error": repr(exc)})
            self._unload()

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat (kernel-side lost reports included)."""
        return {**self.counters, "reports_lost": self.counters["reports_lost"] + kernel_reports_lost(self._bpf),
                "allowed": 0, "denied": self.counters["refused"]}
