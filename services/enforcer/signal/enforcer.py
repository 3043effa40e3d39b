"""eBPF signal enforcer: kills processes of selected workloads at the hook (Network protocols, capabilities,
and the presets filelessExec and anonMapExec), and refuses their INET sockets where the kernel allows it.

A tracepoint the kernel lacks (``capability:cap_capable`` appeared after 6.12) is left out: the probe
says so, and ``operations`` then claims only what is attached (selection gives the rest to others).

bcc programs on ``syscalls:sys_enter_socket`` and ``capability:cap_capable`` (bpf/enforce/signal.c)
call ``bpf_send_signal(SIGKILL)`` when the current task's mount namespace is selected and the
(family, type, protocol) or capability is blocked for it (tables from ``sigrules``). This is not a
refusal: socket() completes and the process dies before it returns to user space; a capability use
may complete before the process dies. Every kill is reported through a ring buffer that a thread
drains into ``take_reports()`` (the service publishes them as ``enforce`` raw events).

INET sockets are refused instead where the kernel allows it: ``bwenf_sock_create``, a cgroup sock_create
program linked to the root of the cgroup v2 hierarchy (``cgroup_link``; every process is below it), fails
a blocked socket() with EACCES via ``bpf_set_retval`` (5.18+) in selected namespaces only, and reports a
refusal; ``bwenf_socket`` then leaves INET families to it. ``inet_refusal`` says why not where it cannot.

Presets (shared.presets): a fileless program (a memfd, a deleted file) is killed at
``sched:sched_process_exec``, before its first instruction; an anonymous mapping made executable at
``sys_enter_mmap`` / ``sys_enter_(pkey_)mprotect`` (the mapping is made, the process never uses it).
anonMapExec is claimed only where mprotect's mapping can be found (maple-tree kernels, 6.1+).

With a holder (``bpfhold``, ``BULWARK_FANOTIFY_HOLDER``) the armed programs are handed over and outlive
us: a kill -9 or restart leaves them killing with the last rules until the next enforcer's are armed.
``detach()`` (SIGTERM) leaves them to the holder; ``close()`` is the full stop.
"""
from __future__ import annotations

import ctypes as ct
import logging
import threading
import time
from pathlib import Path
from typing import Any

from services.enforcer.base import ProbeResult
from services.enforcer.bpfhold import ProgramHold, note_orphans, take_attachments, unload
from services.enforcer.presets import claimed_presets, compile_presets
from services.enforcer.reports.kernel import KillRecord, parse_record
from services.enforcer.reports.presets import PresetReport, is_preset_record, parse_preset_record
from services.enforcer.reports.queue import ReportQueue, RingBufferDrain, kernel_reports_lost, record_handler
from services.enforcer.signal.cgroup_link import BPF_CGROUP_INET_SOCK_CREATE, cgroup2_root, link_cgroup
from services.enforcer.signal.rules import OPERATIONS, SELECTED, RuleRef, SignalTables, compile_tables
from shared.lifecycle import Counters
from shared.presets import route_of
from shared.schemas.rules import RuleSet

__all__ = ["SignalEnforcer", "BPF_DIR", "ATTACHMENTS", "prepare_bcc", "program_text", "load_program", "caps_mask",
           "sync_map", "attachments_here"]

log = logging.getLogger("bulwark.enforcer.signal")

BPF_DIR = Path(__file__).resolve().parents[3] / "bpf"
_MPROTECT = ("syscalls:sys_enter_mprotect", "syscalls:sys_enter_pkey_mprotect")
ATTACHMENTS = (("syscalls:sys_enter_socket", "bwenf_socket"), ("capability:cap_capable", "bwenf_cap"),
               ("sched:sched_process_exec", "bwenf_exec"), ("syscalls:sys_enter_mmap", "bwenf_mmap"),
               *((tp, "bwenf_mprot") for tp in _MPROTECT))
# what the enforcer claims -> the tracepoints it needs attached (mprotect's need the maple tree too)
_CLAIMS: dict[str, tuple[str, ...]] = {
    "Network": ("syscalls:sys_enter_socket",), "Capabilities": ("capability:cap_capable",),
    route_of("filelessExec"): ("sched:sched_process_exec",),
    route_of("anonMapExec"): ("syscalls:sys_enter_mmap", *_MPROTECT),
}


def attachments_here() -> list[tuple[str, str]]:
    """The (tracepoint, program) pairs of ATTACHMENTS this kernel can have: a tracepoint it lacks is
    left out (capability:cap_capable is newer than 6.12), and mprotect's where memory maps are no
    maple tree (before 6.1: the mapping cannot be found)."""
    from bcc import BPF

    from shared.bpf.btf import Btf
    from shared.bpf.headers import maple_cflags

    maple = bool(maple_cflags(Btf.load()))
    return [(tp, fn) for tp, fn in ATTACHMENTS
            if BPF.tracepoint_exists(*tp.split(":")) and (maple or tp not in _MPROTECT)]


def prepare_bcc(tree: Path | None = None) -> None:
    """Point bcc at the monitor's BTF header tree (built once per kernel, shared with the monitor)."""
    from shared.bpf.headers import ensure_btf_tree, use_btf_tree

    if tree is None:
        from shared.config import load_settings

        tree = load_settings().btf_tree
    use_btf_tree(ensure_btf_tree(tree))


def program_text(bpf_dir: Path, name: str) -> str:
    """``bpf/enforce/<name>`` with bw_enforce.h inlined: bcc only rewrites map calls in its main text."""
    header = (bpf_dir / "enforce/bw_enforce.h").read_text()
    return (bpf_dir / "enforce" / name).read_text().replace('#include "bw_enforce.h"', header, 1)


def load_program(bpf_dir: Path, name: str, btf_tree: Path | None, on_record: Any,
                 attach: Any = None, defines: tuple[str, ...] = ()) -> Any:
    """Compile and load ``bpf/enforce/<name>`` with bcc (``-D`` each of ``defines``), run ``attach(bpf)``
    (tracepoints; LSM probes attach as the module loads), and open its report ring buffer; everything is
    released on failure."""
    prepare_bcc(btf_tree)
    from bcc import BPF  # late: bcc reads BCC_KERNEL_SOURCE when it compiles

    from shared.bpf.btf import Btf
    from shared.bpf.headers import maple_cflags

    bpf = BPF(text=program_text(bpf_dir, name).encode(),
              cflags=[f"-I{bpf_dir / 'include'}", *(f"-D{d}" for d in defines), *maple_cflags(Btf.load())])
    try:
        if attach is not None:
            attach(bpf)
        bpf[b"bw_enf_events"].open_ring_buffer(on_record)
    except Exception:
        bpf.cleanup()
        raise
    return bpf


def caps_mask(cap_keys: Any) -> int:
    """Bit n set when some (mntns, cap) verdict names capability n (< 64): bw_enf_caps_any."""
    mask = 0
    for _mntns, cap, _src in cap_keys:
        if cap < 64:
            mask |= 1 << cap
    return mask


def sync_map(table: Any, wanted: dict[Any, Any], make_key: Any, make_val: Any) -> None:
    """Make a bcc map hold exactly ``wanted``: add/update first, then delete what is gone."""
    prune_map(table, fill_map(table, wanted, make_key, make_val))


def fill_map(table: Any, wanted: dict[Any, Any], make_key: Any, make_val: Any) -> set[bytes]:
    """Add or update every entry of ``wanted`` in a bcc map; the raw keys written."""
    keep = set()
    for key, val in wanted.items():
        k = make_key(table.Key(), key)
        table[k] = make_val(table.Leaf(), val)
        keep.add(bytes(k))
    return keep


def prune_map(table: Any, keep: set[bytes]) -> None:
    """Delete every entry of a bcc map whose raw key is not in ``keep``."""
    for k in list(table.keys()):
        if bytes(k) not in keep:
            try:
                del table[k]
            except KeyError:
                pass


def _counted(rec: KillRecord | PresetReport) -> str:
    """The counter a report adds to: a socket refused at creation was not a kill."""
    return "refused" if isinstance(rec, KillRecord) and rec.refused else "killed"


class SignalEnforcer:
    """Network protocol and capability blocks by SIGKILL at the tracepoint, per mount namespace."""

    name = "eBPF Signal"
    operations = OPERATIONS

    def __init__(self, bpf_dir: Path = BPF_DIR, btf_tree: Path | None = None, holder: str | None = None) -> None:
        self.counters = Counters(killed=0, refused=0, reports_lost=0, report_errors=0, unsupported_rules=0,
                                 errors=0, namespaces=0, sources=0)
        self.bpf_dir = bpf_dir
        self.btf_tree = btf_tree
        self._bpf: Any = None
        self._links: list[int] = []  # attachment fds (ours, out of bcc's tables: see bpfhold)
        self._armed_ns = 0           # CLOCK_MONOTONIC when our programs first had rules
        self._hold = ProgramHold("signal", holder, self.counters, self._orphans)
        self._lock = threading.Lock()
        self._refs: dict[int, RuleRef] = {}
        self._ids: dict[RuleRef, int] = {}  # stable rule ids: a late report never names another rule
        self._source_ids: dict[tuple[int, str], int] = {}  # stable source classes (see _write)
        self._reports: ReportQueue[KillRecord | PresetReport] = ReportQueue(self.counters)
        self._on_record = record_handler(self._parse, self._reports, self.counters, _counted,
                                         "kill report", log)
        self._drain = RingBufferDrain("signal-reports", lambda: self._bpf, self.counters)
        self._closed = False
        self.attached: tuple[str, ...] = tuple(tp for tp, _ in ATTACHMENTS)
        self.operations = OPERATIONS | frozenset(_CLAIMS)
        self.maple = True  # until loaded: whether mprotect's mapping can be found (anonMapExec)
        self.inet_refusal = "not loaded"  # "" once INET sockets are refused at creation, else why not

    def _parse(self, raw: bytes) -> KillRecord | PresetReport:
        if is_preset_record(raw):
            return parse_preset_record(raw, self._refs)
        return parse_record(raw, self._refs)

    def probe(self) -> ProbeResult:
        """Compile, load and attach the programs with empty tables (nothing can be killed), then detach."""
        try:
            self._load()
        except Exception as exc:
            return False, f"signal programs refused: {exc}"
        finally:
            self._unload()
        left = [op for op in _CLAIMS if op not in self.operations]
        why = f"; not enforced by signal here: {', '.join(left)}" if left else ""
        if route_of("anonMapExec") in left and not self.maple:
            why += " (mprotect's mapping cannot be found: memory maps are a maple tree only from 6.1)"
        if "Network" in self.operations:
            why += ("; INET sockets refused at creation (EACCES, cgroup sock_create), other families killed"
                    if not self.inet_refusal else f"; sockets killed, not refused: {self.inet_refusal}")
        return True, f"tracepoints + bpf_send_signal(SIGKILL) load ({', '.join(self.attached)}){why}"

    def _load(self) -> None:
        if self._bpf is not None:
            return
        attached: list[str] = []

        def attach(bpf: Any) -> None:
            for tp, fn in attachments_here():
                bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
                attached.append(tp)
            if not attached:
                raise RuntimeError("none of the tracepoints exists: " + ", ".join(tp for tp, _ in ATTACHMENTS))

        bpf = load_program(self.bpf_dir, "signal.c", self.btf_tree, self._on_record, attach)
        self._links = take_attachments(bpf)
        self._bpf = bpf
        self.inet_refusal = self._refuse_inet_sockets(bpf)
        self.attached = tuple(attached)
        self.maple = any(tp in attached for tp in _MPROTECT)  # attached only where the maple tree is
        self.operations = frozenset(op for op, tps in _CLAIMS.items() if all(tp in attached for tp in tps))

    def _refuse_inet_sockets(self, bpf: Any) -> str:
        """Attach bwenf_sock_create to the cgroup v2 root and tell bwenf_socket to leave INET families to it;
        "" when done, else why not (sockets of every family are then killed at socket())."""
        from bcc import BPF

        root, why = cgroup2_root()
        if root is None:
            return why
        try:
            fn = bpf.load_func(b"bwenf_sock_create", BPF.CGROUP_SOCK)
        except Exception as exc:  # e.g. no bpf_set_retval before 5.18: the program was not even compiled
            return f"cgroup sock_create program refused: {exc}"
        try:
            self._links.append(link_cgroup(fn.fd, root, BPF_CGROUP_INET_SOCK_CREATE))
        except OSError as exc:
            return str(exc)
        bpf[b"bw_enf_conf"][ct.c_int(0)] = ct.c_uint32(1)  # attached first: never a moment without either
        return ""

    def _unload(self) -> None:
        bpf, self._bpf = self._bpf, None
        if bpf is not None:
            unload(bpf, self._links)

    def apply(self, ruleset: RuleSet) -> None:
        """Load on first use, then make the kernel tables hold exactly this rule set's blocks."""
        with self._lock:
            if self._closed:
                raise RuntimeError("signal enforcer is closed")
            tables = compile_tables(ruleset, self._ids, self._source_ids)
            blocked = compile_presets(ruleset, claimed_presets(self.operations), self._ids)
            tables.presets = blocked.verdicts
            tables.refs.update(blocked.refs)
            for ns in blocked.namespaces:
                tables.namespaces.setdefault(ns, SELECTED)
            self.counters["unsupported_rules"] = tables.unsupported
            if not tables.namespaces and self._bpf is None:
                self._refs = {}
                self._hold.settle()  # what an older enforcer left must not keep killing
                return  # nothing to enforce: do not even load
            self._load()
            self._write(tables)
            if not self._hold.held:  # armed: only now may the older generation go
                self._armed_ns = self._armed_ns or time.monotonic_ns()
                self._hold.hold(self._bpf, self._links, self._armed_ns)
            self._drain.start()
            log.info("rules applied", extra={"version": ruleset.version, "namespaces": len(tables.namespaces),
                                             "net_keys": len(tables.net), "cap_keys": len(tables.cap),
                                             "presets": len(tables.presets)})

    def _write(self, tables: SignalTables) -> None:
        """Namespaces last when adding, first when removing: a selected namespace always has its rules.
        Verdicts of a source class are written before the trie entries that give a program that class,
        and deleted after them: a program is never in a class whose verdicts are not there."""
        bpf = self._bpf
        self._refs = {**self._refs, **tables.refs}  # reports in flight for removed rules still resolve

        def verdict(leaf: Any, rid: int) -> Any:
            leaf.rule_id, leaf.action = rid, int(rid != 0)  # 0: allowed here (see signal.rules)
            return leaf

        def net_key(k: Any, key: tuple[int, int, int, int, int]) -> Any:
            k.mntns, k.family, k.type, k.protocol, k.src = key
            return k

        def cap_key(k: Any, key: tuple[int, int, int]) -> Any:
            k.mntns, k.cap, k.src = key
            return k

        def src_key(k: Any, key: tuple[int, bytes]) -> Any:
            k.prefixlen, k.mntns = 32 + 8 * len(key[1]), key[0]
            k.path = key[1]
            return k

        def src_class(leaf: Any, cls: int) -> Any:
            leaf.value = cls
            return leaf

        ns_map, caps_any = bpf[b"bw_enf_ns"], bpf[b"bw_enf_caps_any"]
        for k in list(ns_map.keys()):
            if k.value not in tables.namespaces:
                del ns_map[k]
        wanted = caps_mask(tables.cap)
        caps_any[ct.c_int(0)] = ct.c_uint64(caps_any[ct.c_int(0)].value | wanted)  # new bits before their verdicts
        def preset_key(k: Any, key: tuple[int, int]) -> Any:
            k.mntns, k.preset = key
            return k

        net_map, cap_map = bpf[b"bw_enf_net"], bpf[b"bw_enf_cap"]
        net_keep = fill_map(net_map, tables.net, net_key, verdict)
        cap_keep = fill_map(cap_map, tables.cap, cap_key, verdict)
        sync_map(bpf[b"bw_enf_src"], tables.sources, src_key, src_class)
        prune_map(net_map, net_keep)
        prune_map(cap_map, cap_keep)
        sync_map(bpf[b"bw_enf_preset"], tables.presets, preset_key, verdict)
        caps_any[ct.c_int(0)] = ct.c_uint64(wanted)  # old bits once their verdicts are gone
        for ns, flags in tables.namespaces.items():
            ns_map[ct.c_uint32(ns)] = ct.c_uint32(flags)
        self.counters["namespaces"] = len(tables.namespaces)
        self.counters["sources"] = len(tables.sources)

    def take_reports(self) -> list[KillRecord | PresetReport]:
        """Kill reports since the last call (oldest first)."""
        return self._reports.take()

    def keep_held(self) -> None:
        """Hand our programs to a holder that restarted (or was unreachable); cheap when held."""
        with self._lock:
            if not self._closed and self._bpf is not None:
                self._hold.keep_held(self._bpf, self._links, self._armed_ns)

    def detach(self) -> None:
        """Stop, leaving our programs (and their last rules) to the holder, if it has them; else ``close``."""
        with self._lock:
            self._closed = True
            self._drain.stop()
            self._hold.close()
            self._unload()

    def close(self) -> None:
        """Detach every program (the holder's copies too) and free every map; safe to call twice."""
        with self._lock:
            self._closed = True
            self._drain.stop()
            self._hold.release()
            self._unload()

    def _orphans(self, records: list[bytes], armed_ns: int) -> None:
        def key(raw: bytes) -> tuple[int, int]:
            rec = parse_preset_record(raw, {}).head if is_preset_record(raw) else parse_record(raw, {})
            return rec.ktime, rec.mntns

        note_orphans(records, key, armed_ns, self.counters, log)

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat (kernel-side lost reports included)."""
        return {**self.counters, "reports_lost": self.counters["reports_lost"] + kernel_reports_lost(self._bpf)}
