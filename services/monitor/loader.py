"""Load, attach and detach the monitor's programs; take or drain their ring buffer without blocking.

All programs are one compile unit (bpf/monitor.c) so they share one ring buffer, one set of kernel
counters, the visibility map and the per-process cache. A tracepoint this kernel lacks is skipped
and listed in :attr:`Probes.missing` (e.g. openat2 on old kernels); the exec ones are required.
The preset programs on hot syscalls (opens, mmap, mprotect: ``PRESET_ATTACHMENTS``) are attached only
while some namespace wants their preset (the visibility masks' union has its bit).
"""
from __future__ import annotations

import ctypes as ct
import logging
import mmap
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.monitor.namesigs import SIG_BYTES, entry_names, signature_bits
from services.monitor.ringbuf import Chunk, RingBuffer
from shared.bpf.abi import BW_VIS_PRESET_ANON_EXEC, BW_VIS_PRESET_ENV
from shared.bpf.btf import Btf, BtfError
from shared.bpf.headers import maple_cflags
from shared.bpf.rawload import fexit_accepted

__all__ = ["Probes", "ExecProbes", "DEFAULT_BPF_DIR", "read_boot_id", "ATTACHMENTS", "PRESET_ATTACHMENTS",
           "REQUIRED", "STATS", "RAW_SYSCALLS", "tracepoint_exists", "monitor_source", "kernel_cflags",
           "tracepoint_has_field", "kprobe_available", "cap_source", "CAP_TRACEPOINT", "CAP_FUNCTION"]

log = logging.getLogger("bulwark.monitor.loader")

DEFAULT_BPF_DIR = Path(__file__).resolve().parents[2] / "bpf"
TRACEFS = Path("/sys/kernel/tracing")
RB_PAGES = 4096  # 16 MiB ring buffer
VIS_SLOTS = 4096  # bw_vis_slots: the direct-mapped copy of bw_visibility
_VIS_SHARED = 0xFFFFFFFF

_SYS = "syscalls:sys_{}_{}"
# (tracepoint, program); "raw:" = raw tracepoint. Program names are what `bpftool prog show` lists.
ATTACHMENTS: tuple[tuple[str, str], ...] = (
    ("syscalls:sys_enter_execve", "bwmon_ex_enter"),
    ("syscalls:sys_enter_execveat", "bwmon_exat_ent"),
    ("syscalls:sys_exit_execve", "bwmon_ex_exit"),
    ("syscalls:sys_exit_execveat", "bwmon_exat_exit"),
    ("sched:sched_process_exec", "bwmon_sched_ex"),
    ("raw:sched_process_fork", "bwmon_fork"),
    ("sched:sched_process_exit", "bwmon_exit"),
    ("capability:cap_capable", "bwmon_capable"),
    *((_SYS.format("enter", name), prog) for name, prog in (
        ("unlink", "bwmon_unlink_e"), ("rmdir", "bwmon_unlink_e"), ("unlinkat", "bwmon_unlnkat_e"),
        ("chown", "bwmon_chown_e"), ("lchown", "bwmon_chown_e"), ("fchown", "bwmon_fchown_e"),
        ("fchownat", "bwmon_fchowat_e"),
        ("socket", "bwmon_socket_e"), ("connect", "bwmon_connect_e"), ("bind", "bwmon_connect_e"),
        ("listen", "bwmon_listen_e"), ("accept", "bwmon_accept_e"), ("accept4", "bwmon_accept4_e"),
        ("setuid", "bwmon_setid1_e"), ("setgid", "bwmon_setid1_e"), ("setreuid", "bwmon_setid2_e"),
        ("setregid", "bwmon_setid2_e"), ("setresuid", "bwmon_setid3_e"), ("setresgid", "bwmon_setid3_e"),
        ("ptrace", "bwmon_setid2_e"), ("mount", "bwmon_mount_e"), ("umount", "bwmon_umount_e"),
    )),
    # opens are handled at exit only (arguments from the saved registers): no enter program
    *((_SYS.format("exit", name), "bwmon_open_x") for name in ("open", "openat", "openat2")),
    *((_SYS.format("exit", name), "bwmon_sys_x") for name in (
        "unlink", "rmdir", "unlinkat", "chown", "lchown", "fchown",
        "fchownat", "socket", "connect", "bind", "listen", "setuid", "setgid", "setreuid", "setregid",
        "setresuid", "setresgid", "ptrace", "mount", "umount")),
    (_SYS.format("exit", "accept"), "bwmon_accept_x"),
    (_SYS.format("exit", "accept4"), "bwmon_accept_x"),
)
REQUIRED = frozenset(tp for tp, _ in ATTACHMENTS[:5])
# (visibility bit, tracepoint, program) of bpf/presets/presets.c, attached while the bit is wanted; the
# open exits also carry bwmon_open_x, so these are attached by fd (bcc keeps one per tracepoint)
PRESET_ATTACHMENTS: tuple[tuple[int, str, str], ...] = (
    *((BW_VIS_PRESET_ENV, _SYS.format("exit", name), "bwmon_env_x") for name in ("open", "openat", "openat2")),
    *((BW_VIS_PRESET_ANON_EXEC, _SYS.format(side, name), prog)
      for name, enter in (("mmap", "bwmon_mmap_e"), ("mprotect", "bwmon_mprot_e"), ("pkey_mprotect", "bwmon_mprot_e"))
      for side, prog in (("enter", enter), ("exit", "bwmon_pre_x"))),
)
RAW_SYSCALLS = (("raw_syscalls:sys_enter", "bwmon_raw_e"), ("raw_syscalls:sys_exit", "bwmon_raw_x"))
# bw_stats indices (enum bw_stat in bpf/include/bw_maps.h)
STATS = {"lost_kernel": 0, "exit_without_enter": 1, "stash_failed": 2, "lost_kernel_proc": 3,
         "filtered_kernel": 4, "stale_stash": 5, "emitted_kernel": 6, "filtered_kernel_names": 7}
_STAT_LOST_OP, _STAT_N = 8, 24


def read_boot_id() -> str:
    """This boot's random id (part of every event id)."""
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


CAP_TRACEPOINT = "capability:cap_capable"
CAP_FUNCTION = "security_capable"  # capability checks are recorded at its return (bpf/caps/caps.c)


def tracepoint_has_field(tp: str, name: str) -> bool:
    """Whether tracepoint ``group:name``'s format lists the field ``name``."""
    group, event = tp.split(":")
    try:
        text = (TRACEFS / "events" / group / event / "format").read_text()
    except OSError:
        return False
    return re.search(rf"field:[^;]*\b{name};", text) is not None


def kprobe_available(symbol: str) -> bool:
    """Whether a kprobe can be put on ``symbol``: kprobe events exist and the kernel has the symbol."""
    if not (TRACEFS / "kprobe_events").exists():
        return False
    try:
        with open("/proc/kallsyms") as syms:
            return any(line.rstrip().endswith(f" {symbol}") for line in syms)
    except OSError:
        return False


def cap_source() -> str:
    """How this kernel lets the monitor record capability checks: ``fexit`` or ``kprobe`` at
    security_capable()'s return (the fexit tried for real with a no-op: some VMs list BPF trampolines
    yet refuse them with EPERM), else ``tracepoint`` (capability:cap_capable, before the LSMs and a
    kill there have spoken), else "" (not seen)."""
    if fexit_accepted(CAP_FUNCTION):
        return "fexit"
    if kprobe_available(CAP_FUNCTION):
        return "kprobe"
    return "tracepoint" if tracepoint_exists(CAP_TRACEPOINT) else ""


def kernel_cflags(btf: Btf) -> list[str]:
    """Defines for what this kernel offers, found, not assumed from its version: the open name
    prefilter (bpf/include/bw_names.h) needs the dentry's inline name as ``d_shortname`` (6.14 and
    later) and its size; sched_process_exit may lack ``group_dead`` (the exit program then reads
    signal->live); capability checks are recorded at security_capable()'s return, by fexit where the
    kernel has BPF trampolines, else by a kprobe and its return, else (neither) at the
    capability:cap_capable tracepoint, where there is one."""
    flags: list[str] = []
    try:
        btf.offsetof("dentry", "d_shortname")
        inline = btf.sizeof("shortname_store")
        flags += ["-DBW_NAMES_PREFILTER=1", f"-DBW_NAME_INLINE={inline}"]
    except BtfError:
        log.info("dentry has no d_shortname: every open in a path-filtered namespace reads its path")
    if not tracepoint_has_field("sched:sched_process_exit", "group_dead"):
        flags.append("-DBW_EXIT_NO_GROUP_DEAD=1")
    source = cap_source()
    if source == "fexit":
        flags.append("-DBW_CAP_FEXIT=1")
    elif source == "kprobe":
        flags.append("-DBW_CAP_KPROBE=1")
    flags += maple_cflags(btf)               # anonMapExec finds mprotect's mapping (bw_presets.h)
    return flags


def monitor_source(bpf_dir: Path) -> str:
    """bpf/monitor.c with every ``#include "..."`` of our tree inlined, once each: bcc only loads
    programs, and rewrites map calls, that are in the main file."""
    seen: set[Path] = set()

    def inline(path: Path) -> list[str]:
        out = []
        for line in path.read_text().splitlines():
            found = re.fullmatch(r'#include "([\w/.]+)"', line.strip())
            if not found:
                out.append(line)
                continue
            target = next((d / found.group(1) for d in (path.parent, bpf_dir / "include", bpf_dir)
                           if (d / found.group(1)).is_file()), None)
            if target is None:
                out.append(line)
            elif target.resolve() not in seen:
                seen.add(target.resolve())
                out.extend(inline(target))
        return out

    return "\n".join(inline(bpf_dir / "monitor.c")) + "\n"


def tracepoint_exists(tp: str) -> bool:
    """Whether ``group:name`` (or ``raw:name``, checked as any sched/... event of that name) exists."""
    if tp.startswith("raw:"):
        name = tp[4:]
        return any((d / name).is_dir() for d in (TRACEFS / "events").iterdir())
    group, name = tp.split(":")
    return (TRACEFS / "events" / group / name).is_dir()


class Probes:
    """The monitor's programs: ``open`` attaches, ``cleanup`` detaches all (also on failure)."""

    def __init__(self, bpf_dir: Path = DEFAULT_BPF_DIR, rb_pages: int = RB_PAGES, btf: Btf | None = None,
                 vis_slots: int = VIS_SLOTS) -> None:
        if vis_slots <= 0 or vis_slots & (vis_slots - 1):
            raise ValueError(f"vis_slots must be a power of two, not {vis_slots}")
        self.bpf_dir = bpf_dir
        self.btf = btf
        self.vis_slots = vis_slots
        self._slots: dict[int, tuple[int, int]] = {}  # bw_vis_slots entries that are not {0, 0}
        self.rb_pages = rb_pages
        self.missing: list[str] = []
        self.cflags: list[str] = []
        self.attached = 0
        self._bpf: Any = None
        self._ring: RingBuffer | None = None
        self._on_record: Callable[[bytes], None] = lambda _data: None
        self._raw_attached = False
        self._paths: set[tuple[int, bytes]] = set()  # entries in bw_file_paths
        self._names: frozenset[bytes] = frozenset()     # names whose signatures are in bw_name_sigs
        self._caps = 0                                   # bw_caps_named[0]
        self._preset_fds: dict[tuple[str, str], int] = {}  # PRESET_ATTACHMENTS attached now -> perf fd
        self.preset_refused: dict[str, str] = {}           # preset program -> why the kernel refused it

    def open(self, on_record: Callable[[bytes], None]) -> None:
        """Compile, attach every tracepoint and open the ring buffer (``on_record`` gets raw bytes)."""
        from bcc import BPF  # imported late: bcc reads BCC_KERNEL_SOURCE when it compiles

        self.cflags = kernel_cflags(self.btf or Btf.load())

        self._bpf = BPF(text=monitor_source(self.bpf_dir).encode(),
                        cflags=[f"-I{self.bpf_dir / 'include'}", f"-I{self.bpf_dir}",
                                f"-DBW_RB_PAGES={self.rb_pages}", f"-DBW_MONITOR_TGID={os.getpid()}",
                                f"-DBW_VIS_SLOTS={self.vis_slots}",
                                *self.cflags])
        try:
            for tp, fn in ATTACHMENTS:
                self._attach(tp, fn)
            self._load_presets()
            self._ring = RingBuffer(self._bpf[b"bw_events"].map_fd, self.rb_pages * mmap.PAGESIZE)
            self._on_record = on_record
        except Exception:
            self.cleanup()
            raise
        log.info("monitor probes attached", extra={"programs": self.attached, "missing": self.missing})

    def _load_presets(self) -> None:
        """Load (verify) the preset programs now, attached later when wanted. One the kernel refuses
        costs only its preset's records: it is listed in ``missing`` and never attached."""
        for _bit, tp, fn in PRESET_ATTACHMENTS:
            if fn in self.preset_refused or not tracepoint_exists(tp):
                continue
            try:
                self._bpf.load_func(fn.encode(), self._bpf.TRACEPOINT)
            except Exception as exc:
                reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else repr(exc)
                self.preset_refused[fn] = reason
                self.missing.append(f"{fn} (preset program refused: {reason})")
                log.error("preset program refused", extra={"program": fn, "error": reason})

    def _attach(self, tp: str, fn: str) -> None:
        if tp == CAP_TRACEPOINT and "-DBW_CAP_FEXIT=1" in self.cflags:
            self.attached += 1           # kretfunc__security_capable: bcc attached it as it loaded
            return
        if tp == CAP_TRACEPOINT and "-DBW_CAP_KPROBE=1" in self.cflags:
            self._bpf.attach_kprobe(event=CAP_FUNCTION.encode(), fn_name=b"bwmon_cap_k")
            self._bpf.attach_kretprobe(event=CAP_FUNCTION.encode(), fn_name=b"bwmon_cap_kr")
            self.attached += 2
            return
        if not tracepoint_exists(tp):
            if tp in REQUIRED:
                raise RuntimeError(f"tracepoint {tp} is missing")
            self.missing.append(tp)
            return
        if tp.startswith("raw:"):
            self._bpf.attach_raw_tracepoint(tp=tp[4:].encode(), fn_name=fn.encode())
        else:
            self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
        self.attached += 1

    def set_visibility(self, masks: dict[int, int]) -> None:
        """Replace the visibility map: mntns (0 = every other) -> BW_VIS_* bits, and the path trie
        with ``masks.paths`` when it has them (:class:`~services.monitor.kernel_filters.Visibility`;
        a plain dict empties the trie), the open prefilter's names with ``masks.names`` (the
        entries' own last names when it has none), and the named capabilities with ``masks.caps``.

        Entry 0 lives in a small array with the union of all entries next to it (bw_vis_default):
        the programs read both without a hash lookup, and skip it for kinds nobody wants. While the
        entries change, the union covers the old and the new ones (never filter what either wants).
        Likewise new path entries, names and capabilities go in before the masks that rely on them,
        and old ones leave only after the masks no longer do."""
        paths = frozenset(getattr(masks, "paths", ()))
        names = getattr(masks, "names", None)
        names = entry_names(paths, resolve=False) if names is None else frozenset(names)
        caps = int(getattr(masks, "caps", 0))
        union = 0
        for mask in masks.values():
            union |= mask
        self._attach_presets(union, keep=True)
        self._add_paths(paths - self._paths)
        self._set_names(self._names | names)
        self._set_caps(self._caps | caps)
        self._set_masks(masks)
        self._remove_paths(frozenset(self._paths - paths))
        self._set_names(names)
        self._set_caps(caps)
        self._attach_presets(union, keep=False)

    def _attach_presets(self, union: int, keep: bool) -> None:
        """Attach the preset programs ``union`` wants; with ``keep`` False, detach the others."""
        from bcc.libbcc import lib

        for bit, tp, fn in PRESET_ATTACHMENTS:
            key = (tp, fn)
            if fn in self.preset_refused:
                continue
            if union & bit and key not in self._preset_fds and tracepoint_exists(tp):
                prog = self._bpf.load_func(fn.encode(), self._bpf.TRACEPOINT)
                category, event = tp.encode().split(b":")
                fd = lib.bpf_attach_tracepoint(prog.fd, category, event)
                if fd < 0:
                    raise RuntimeError(f"attaching {fn} to {tp} failed")
                self._preset_fds[key] = fd
            elif not keep and not union & bit and key in self._preset_fds:
                lib.bpf_close_perf_event_fd(self._preset_fds.pop(key))

    @property
    def preset_programs(self) -> list[str]:
        """``tracepoint:program`` of every preset program attached now."""
        return sorted(f"{tp}:{fn}" for tp, fn in self._preset_fds)

    def _set_caps(self, caps: int) -> None:
        """The capability numbers CAPS_NAMED namespaces emit (bit = number)."""
        self._bpf[b"bw_caps_named"][ct.c_int(0)] = ct.c_uint64(caps)
        self._caps = caps

    def _set_names(self, names: frozenset[bytes]) -> None:
        """Arm the open prefilter with the signatures of ``names`` (one array value, bits only
        added or only removed per call, so a reader never misses a name both sides list)."""
        table = self._bpf[b"bw_name_sigs"]
        value = table.Leaf()
        value.armed = 1
        ct.memmove(ct.addressof(value) + type(value).bits.offset, signature_bits(names), SIG_BYTES)
        table[ct.c_int(0)] = value
        self._names = names

    def _set_masks(self, masks: dict[int, int]) -> None:
        table = self._bpf[b"bw_visibility"]
        defaults = self._bpf[b"bw_vis_default"]
        union = 0
        for mask in masks.values():
            union |= mask
        defaults[ct.c_int(1)] = ct.c_uint(union | int(defaults[ct.c_int(1)].value))
        for mntns, mask in masks.items():
            if mntns:
                table[ct.c_uint(mntns)] = ct.c_uint(mask)
        self._set_slots({mntns: mask for mntns, mask in masks.items() if mntns})
        for key in list(table.keys()):
            if int(key.value) not in masks:
                del table[key]
        defaults[ct.c_int(0)] = ct.c_uint(masks.get(0, 0))
        defaults[ct.c_int(1)] = ct.c_uint(union)

    def _set_slots(self, listed: dict[int, int]) -> None:
        """Lay the listed namespaces out in bw_vis_slots (the hash already holds them): a slot
        two of them share says so and sends its readers to the hash; only changed slots are written."""
        slots: dict[int, tuple[int, int]] = {}
        for mntns, mask in listed.items():
            idx = mntns & (self.vis_slots - 1)
            slots[idx] = (_VIS_SHARED, 0) if idx in slots else (mntns, mask)
        table = self._bpf[b"bw_vis_slots"]
        for idx in set(self._slots) | set(slots):
            value = slots.get(idx, (0, 0))
            if self._slots.get(idx, (0, 0)) != value:
                leaf = table.Leaf()
                leaf.mntns, leaf.mask = value
                table[ct.c_int(idx)] = leaf
        self._slots = slots

    def _path_key(self, mntns: int, prefix: bytes) -> Any:
        """The bw_file_paths key for ``prefix`` (an exact path ends with its NUL) in ``mntns``."""
        table = self._bpf[b"bw_file_paths"]
        key = table.Key()
        room = type(key).path.size
        if len(prefix) > room:
            raise ValueError(f"path entry of {len(prefix)} bytes: at most {room} fit a key")
        key.prefixlen = (4 + len(prefix)) * 8
        key.mntns = mntns
        ct.memmove(ct.addressof(key) + type(key).path.offset, prefix, len(prefix))
        return key

    def _add_paths(self, entries: frozenset[tuple[int, bytes]]) -> None:
        table = self._bpf[b"bw_file_paths"]
        for mntns, prefix in sorted(entries):
            table[self._path_key(mntns, prefix)] = ct.c_ubyte(1)
            self._paths.add((mntns, prefix))

    def _remove_paths(self, entries: frozenset[tuple[int, bytes]]) -> None:
        table = self._bpf[b"bw_file_paths"]
        for mntns, prefix in sorted(entries):
            try:
                del table[self._path_key(mntns, prefix)]
            except KeyError:
                pass  # already gone: the goal is its absence
            self._paths.discard((mntns, prefix))

    def set_config(self, owner: bool) -> None:
        """Kernel options: ``owner`` = read the owner uid of every opened file (ownerOnly rules)."""
        self._bpf[b"bw_config"][ct.c_int(0)] = ct.c_uint(1 if owner else 0)

    def set_syscalls(self, wanted: dict[int, int]) -> None:
        """Syscall nr -> bw_sys_wanted value; raw_syscalls are attached only while any is wanted."""
        table = self._bpf[b"bw_sys_wanted"]
        for nr in range(512):
            value = wanted.get(nr, 0)
            if table[ct.c_int(nr)].value != value:
                table[ct.c_int(nr)] = ct.c_ubyte(value)
        if wanted and not self._raw_attached:
            for tp, fn in RAW_SYSCALLS:
                self._bpf.attach_tracepoint(tp=tp.encode(), fn_name=fn.encode())
            self._raw_attached = True
        elif not wanted and self._raw_attached:
            for tp, _fn in RAW_SYSCALLS:
                self._bpf.detach_tracepoint(tp=tp.encode())
            self._raw_attached = False

    def drain(self, limit: int = 1 << 30) -> int:
        """Hand up to ``limit`` waiting records to the callback; never waits. Returns how many."""
        if self._ring is None:
            return 0
        return self._ring.consume(self._handle, limit)

    def take(self, limit: int) -> Chunk:
        """Up to ``limit`` committed records copied out in one piece (see :meth:`RingBuffer.take`)."""
        return self._ring.take(limit) if self._ring is not None else (b"", [])

    def wait_fd(self) -> int | None:
        """The ring buffer's fd, readable while records wait (None when it is not open)."""
        return self._ring.fd if self._ring is not None else None

    def pending_bytes(self) -> int:
        """Bytes in the ring buffer not consumed yet (0 when it is not open)."""
        return self._ring.pending_bytes() if self._ring is not None else 0

    def _handle(self, data: bytes) -> None:
        try:
            self._on_record(data)
        except Exception:  # never let one record break the drain
            log.exception("ring buffer record handler failed")

    def kernel_stats(self) -> dict[str, int]:
        """Every kernel-side counter (summed over CPUs): losses, filtered, emitted."""
        if self._bpf is None:
            return {}
        table = self._bpf[b"bw_stats"]
        values = [int(sum(table[ct.c_int(i)])) for i in range(_STAT_N)]
        out = {name: values[i] for name, i in STATS.items()}
        for op, name in _OP_NAMES.items():
            if values[_STAT_LOST_OP + op]:
                out[f"lost_kernel_{name}"] = values[_STAT_LOST_OP + op]
        return out

    def lost_kernel(self) -> int:
        """Records the kernel could not put in the ring buffer (it was full), since start."""
        stats = self.kernel_stats()
        return stats.get("lost_kernel", 0) + stats.get("lost_kernel_proc", 0)

    def cleanup(self) -> None:
        """Detach every program and free the ring buffer; safe to call twice."""
        bpf, self._bpf = self._bpf, None
        ring, self._ring = self._ring, None
        if ring is not None:
            ring.close()
        if self._preset_fds:
            from bcc.libbcc import lib

            for fd in self._preset_fds.values():
                lib.bpf_close_perf_event_fd(fd)
            self._preset_fds.clear()
        if bpf is not None:
            bpf.cleanup()
            log.info("monitor probes detached")


_OP_NAMES = {1: "exec", 3: "fork", 4: "exit", 5: "file", 6: "network", 7: "capability", 8: "syscall", 11: "preset"}
ExecProbes = Probes  # the walking skeleton's name
