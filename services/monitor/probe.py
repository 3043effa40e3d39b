"""What the monitor needs from this kernel, and what it lacks, said exactly (for ``bulwark probe``).

Nothing is assumed from the kernel's version: the helpers the programs call are read from their own
source and looked up in this kernel's ``enum bpf_func_id``, the map types in ``enum bpf_map_type``, the
tracepoints in tracefs, and then the programs are compiled, loaded and attached once, and detached.
``python -m services.monitor.probe [--static]`` prints one ``Monitor supported|unsupported <reason>``
line, in the format of ``bulwark probe``, then one line per finding (``--static``: without the load).
"""
from __future__ import annotations

import logging
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from services.monitor.loader import (
    ATTACHMENTS,
    CAP_FUNCTION,
    CAP_TRACEPOINT,
    DEFAULT_BPF_DIR,
    REQUIRED,
    Probes,
    cap_source,
    monitor_source,
    tracepoint_exists,
    tracepoint_has_field,
)
from shared.bpf.btf import VMLINUX_BTF, Btf
from shared.bpf.headers import ensure_btf_tree, use_btf_tree

__all__ = ["MonitorProbe", "helpers_called", "probe_monitor", "HELPER_SINCE", "FALLBACKS"]

log = logging.getLogger("bulwark.monitor.probe")

# the first mainline release of the helpers and map types a kernel may lack (for the message only)
HELPER_SINCE = {"get_current_task_btf": "5.11", "task_pt_regs": "5.15", "ringbuf_reserve": "5.8",
                "ringbuf_submit": "5.8", "ringbuf_output": "5.8", "probe_read_kernel": "5.5",
                "probe_read_user": "5.5", "probe_read_kernel_str": "5.5", "probe_read_user_str": "5.5",
                "send_signal": "5.3", "get_current_cgroup_id": "4.18"}
# helpers the programs can do without (bpf/include/bw_task.h): what they do instead
FALLBACKS = {"get_current_task_btf": "the current task is read with explicit reads, not plain loads",
             "task_pt_regs": "an open's registers are read from the top of the kernel stack"}
_MAPS = {"BPF_RINGBUF_OUTPUT": ("RINGBUF", "5.8"), "BPF_LPM_TRIE": ("LPM_TRIE", "4.11"),
         '"lru_hash"': ("LRU_HASH", "4.10"), "BPF_PERCPU_ARRAY": ("PERCPU_ARRAY", "4.6")}
_CALL_RE = re.compile(r"\bbpf_(\w+)\s*\(")
_RINGBUF_CALLS = ("ringbuf_reserve", "ringbuf_submit", "ringbuf_output")


@dataclass
class MonitorProbe:
    """The outcome: what is missing (the monitor cannot run) and what is only degraded."""

    missing: list[str] = field(default_factory=list)
    degraded: list[str] = field(default_factory=list)
    loaded: bool = False
    error: str = ""

    static: bool = False

    @property
    def supported(self) -> bool:
        return (self.loaded or self.static) and not self.missing

    def line(self) -> str:
        """``Monitor supported|unsupported <reason>``, as ``bulwark probe`` prints enforcers."""
        if self.supported:
            extra = f"; degraded: {'; '.join(self.degraded)}" if self.degraded else ""
            how = "nothing missing (not loaded: --static)" if self.static else "bcc programs load on tracepoints"
            return f"{'Monitor':12} {'supported':12} {how}{extra}"
        why = "; ".join(self.missing) or self.error or "programs not loaded"
        if self.missing and self.error:
            why += f"; load: {self.error}"
        return f"{'Monitor':12} {'unsupported':12} {why}"


def helpers_called(source: str) -> set[str]:
    """Helper names (without ``bpf_``) the monitor's C source calls, bcc's ring buffer calls included."""
    called = set(_CALL_RE.findall(source))
    if "BPF_RINGBUF_OUTPUT" in source:
        called.update(_RINGBUF_CALLS)
    return called


def _static_findings(btf: Btf, source: str, result: MonitorProbe) -> None:
    helpers = btf.enumerators("bpf_func_id")
    maps = btf.enumerators("bpf_map_type")
    for name in sorted(helpers_called(source)):
        if f"BPF_FUNC_{name}" not in helpers and name in HELPER_SINCE:
            what = f"helper bpf_{name} absent (since {HELPER_SINCE[name]})"
            if name in FALLBACKS:
                result.degraded.append(f"{what}: {FALLBACKS[name]}")
            else:
                result.missing.append(what)
    for marker, (kind, since) in _MAPS.items():
        if marker in source and f"BPF_MAP_TYPE_{kind}" not in maps:
            result.missing.append(f"map type {kind} absent (since {since})")
    for tp, _fn in ATTACHMENTS:
        if tp == CAP_TRACEPOINT:
            _cap_finding(result)
        elif not tracepoint_exists(tp):
            (result.missing if tp in REQUIRED else result.degraded).append(
                f"tracepoint {tp} absent" + ("" if tp in REQUIRED else ": its events are not seen"))
    exit_fmt = "sched:sched_process_exit"
    if tracepoint_exists(exit_fmt) and not tracepoint_has_field(exit_fmt, "group_dead"):
        result.degraded.append(f"{exit_fmt} has no group_dead: a process's end is read from signal->live")
    if not btf.has_member("dentry", "d_shortname"):
        result.degraded.append("dentry has no d_shortname (6.14+): path-filtered opens read their path")


def _cap_finding(result: MonitorProbe) -> None:
    """What the node's way of recording capability checks (loader.cap_source) costs, if anything."""
    source = cap_source()
    if source == "kprobe":
        result.degraded.append(f"no BPF trampolines: capability checks by a kprobe on {CAP_FUNCTION}()")
    elif source == "tracepoint":
        result.degraded.append(f"no fexit or kprobe on {CAP_FUNCTION}(): capability checks at {CAP_TRACEPOINT}, "
                               "before LSMs and kills have spoken")
    elif not source:
        result.degraded.append("no fexit, kprobe or tracepoint for capability checks: they are not seen")


def probe_monitor(bpf_dir: Path = DEFAULT_BPF_DIR, btf_path: Path = VMLINUX_BTF,
                  load: bool = True) -> MonitorProbe:
    """Check this kernel for the monitor; with ``load``, compile, attach and detach the programs."""
    result = MonitorProbe(static=not load)
    if not btf_path.exists():
        result.missing.append(f"no kernel BTF at {btf_path} (CONFIG_DEBUG_INFO_BTF)")
        return result
    btf = Btf.load(btf_path)
    _static_findings(btf, monitor_source(bpf_dir), result)
    if not load:
        return result
    with tempfile.TemporaryDirectory(prefix="bulwark-probe-") as tmp:
        use_btf_tree(ensure_btf_tree(Path(tmp) / "bcc-btf", btf_path, btf=btf))
        probes = Probes(bpf_dir, rb_pages=16, btf=btf)
        try:
            probes.open(lambda _data: None)
            result.loaded = True
        except Exception as exc:  # the reason is the probe's answer
            result.error = _first_line(exc)
        finally:
            probes.cleanup()
    return result


def _first_line(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


def main(argv: list[str]) -> int:
    """Print the probe's line and its findings; exit 0 when the monitor can run here."""
    result = probe_monitor(load="--static" not in argv)
    print(result.line())
    for item in result.missing:
        print(f"  missing: {item}")
    for item in result.degraded:
        print(f"  degraded: {item}")
    return 0 if result.supported else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
