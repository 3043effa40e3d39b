"""Refuse to run with wrong offsets: compare what bcc compiled with the kernel's BTF, the records of
bpf/include/events.h as compiled with their Python copy (shared/bpf/abi.py), and what the programs
report about this very process with what /proc says about it.

Compiled offsets are read from a tiny program (bpf/selfcheck/selfcheck.c) built with the same headers
as the real ones and run once, in this process, on ``getppid()``; the records' layout from that
program's own BTF, read back from the kernel through its anchor map (every member of every record).
"""
from __future__ import annotations

import ctypes as ct
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from shared.bpf import abi
from shared.bpf.abicheck import AbiCheck, compare_abi
from shared.bpf.btf import Btf, BtfError
from shared.bpf.paths import decode_path
from shared.bpf.progbtf import map_btf
from shared.errors import BulwarkError

__all__ = ["SelfCheckFailed", "SelfReport", "BwSelfReport", "parse_field_list", "compare_offsets",
           "check_tracepoint_formats", "check_abi", "run_selfcheck"]

log = logging.getLogger("bulwark.monitor.selfcheck")

_FIELD_RE = re.compile(r"X\((\w+),\s*([\w.]+)\)")
_SIZE_RE = re.compile(r"X\((\w+)\)")
_ANCHOR = "bw_abi_anchor"
# tracepoint field -> byte offset our structs in bpf/include/bw_tp.h assume
TRACEPOINT_FIELDS: dict[str, dict[str, int]] = {
    "syscalls/sys_enter_execve": {"filename": 16},
    "syscalls/sys_enter_execveat": {"fd": 16, "filename": 24, "flags": 48},
    "syscalls/sys_exit_execve": {"ret": 16},
    "syscalls/sys_exit_execveat": {"ret": 16},
    "sched/sched_process_exec": {"filename": 8, "pid": 12, "old_pid": 16},
    "sched/sched_process_exit": {"pid": 24, "group_dead": 32},
    "capability/cap_capable": {"cap": 32, "ret": 36},
    "raw_syscalls/sys_enter": {"id": 8, r"args\[6\]": 16},
    "raw_syscalls/sys_exit": {"id": 8, "ret": 16},
}
# fields older kernels' formats lack (the programs have another way there, see loader.kernel_cflags)
OPTIONAL_FIELDS = {"sched/sched_process_exit": {"group_dead"}}
# tracepoints older kernels lack (the loader skips them or puts a kprobe in their place)
OPTIONAL_TRACEPOINTS = {"capability/cap_capable"}
_ARG_RE = re.compile(r"field:[^;]*?(\w+);\s*offset:(\d+);\s*size:(\d+);")


class SelfCheckFailed(BulwarkError):
    """The programs would read the kernel wrongly here; the monitor must not run."""


class BwSelfReport(abi.Record):
    """struct bw_self_report of bpf/selfcheck/selfcheck.c (compared with BTF like the records)."""

    C_NAME = "bw_self_report"
    _fields_ = [("seen", ct.c_uint32), ("tgid", ct.c_uint32), ("mntns", ct.c_uint32), ("pidns", ct.c_uint32),
                ("ns_pid", ct.c_uint32), ("mntns_btf", ct.c_uint32), ("exe", abi.BwPath), ("cwd", abi.BwPath)]


@dataclass(frozen=True, slots=True)
class SelfReport:
    """This process as the BPF helpers see it; ``abi_compared``: members compared with BTF, per struct."""

    tgid: int
    mntns: int
    pidns: int
    ns_pid: int
    exe: str
    cwd: str
    abi_compared: dict[str, int] = field(default_factory=dict)


def parse_field_list(header: str) -> tuple[list[tuple[str, str]], list[str]]:
    """The (struct, member) pairs of BW_FIELDS and the structs of BW_SIZES in bw_fields.h."""
    fields_part, _, sizes_part = header.partition("#define BW_SIZES")
    fields = _FIELD_RE.findall(fields_part.partition("#define BW_FIELDS")[2])
    sizes = _SIZE_RE.findall(sizes_part.split("#endif")[0])
    return fields, sizes


def compare_offsets(btf: Btf, fields: list[tuple[str, str]], compiled: list[tuple[int, int]],
                    sizes: list[str], compiled_sizes: list[int]) -> list[str]:
    """Every disagreement between compiled offsets/sizes (offsetof, member access) and BTF."""
    problems = []
    for (sname, member), (by_offsetof, by_access) in zip(fields, compiled, strict=True):
        try:
            want = btf.offsetof(sname, member)
        except BtfError as exc:
            problems.append(str(exc))
            continue
        if by_offsetof != want or by_access != want:
            problems.append(f"{sname}.{member}: BTF {want}, offsetof {by_offsetof}, access {by_access}")
    for sname, got in zip(sizes, compiled_sizes, strict=True):
        want = btf.sizeof(sname)
        if got != want:
            problems.append(f"sizeof(struct {sname}): BTF {want}, compiled {got}")
    return problems


def check_tracepoint_formats(tracefs: Path = Path("/sys/kernel/tracing")) -> list[str]:
    """Disagreements between the tracepoint format files and the offsets our programs assume."""
    problems = []
    for tp, expected in TRACEPOINT_FIELDS.items():
        fmt = tracefs / "events" / tp / "format"
        if tp in OPTIONAL_TRACEPOINTS and not fmt.parent.is_dir():
            continue
        try:
            text = fmt.read_text()
        except OSError as exc:
            problems.append(f"{fmt}: {exc.strerror} (is tracefs mounted?)")
            continue
        for name, off in expected.items():
            found = re.search(rf"field:[^;]*\b{name};\s*offset:(\d+);", text)
            if not found and name in OPTIONAL_FIELDS.get(tp, ()):
                continue
            if not found or int(found.group(1)) != off:
                problems.append(f"{tp}.{name}: format says {found and found.group(1)}, we read {off}")
    problems += check_syscall_slots(tracefs)
    return problems


def check_syscall_slots(tracefs: Path = Path("/sys/kernel/tracing")) -> list[str]:
    """Every syscalls:* tracepoint we attach: arguments in 8-byte slots from offset 16 (bw_tp.h)."""
    from services.monitor.loader import ATTACHMENTS, PRESET_ATTACHMENTS

    problems = []
    attached = {tp for tp, _ in ATTACHMENTS} | {tp for _bit, tp, _ in PRESET_ATTACHMENTS}
    for tp in sorted(tp for tp in attached if tp.startswith("syscalls:")):
        fmt = tracefs / "events" / tp.replace(":", "/") / "format"
        if not fmt.exists():
            continue  # optional tracepoints the loader skips
        fields = [(n, int(o), int(z)) for n, o, z in _ARG_RE.findall(fmt.read_text())
                  if not n.startswith("common_")]
        want = [("__syscall_nr", 8, 4)] + [(n, 16 + 8 * i, 8) for i, (n, _o, _z) in enumerate(fields[1:])]
        if fields != want:
            problems.append(f"{tp}: fields {fields}, expected 8-byte slots from 16")
    return problems


def check_abi(anchor_map_fd: int) -> AbiCheck:
    """Every member of every record (and of the self-check's report) in the BTF of the program that
    created ``anchor_map_fd``, compared with shared/bpf/abi.py."""
    try:
        found = map_btf(anchor_map_fd)
        btf = Btf(found.blob)
        anchor = btf.type_info(found.value_type_id)
    except BtfError as exc:
        return AbiCheck(problems=[f"the self-check program's BTF: {exc}"])
    check = compare_abi(btf, (*abi.RECORDS, BwSelfReport))
    if anchor.name != _ANCHOR:
        check.problems.append(f"the anchor map's value is {anchor.kind} {anchor.name}, not struct {_ANCHOR}")
    return check


def _read_array(table: Any, n: int) -> list[int]:
    return [int(table[ct.c_int(i)].value) for i in range(n)]


def _runtime_problems(report: SelfReport) -> list[str]:
    problems = []
    expect = {
        "tgid": os.getpid(), "ns_pid": os.getpid(),
        "mntns": os.stat("/proc/self/ns/mnt").st_ino, "pidns": os.stat("/proc/self/ns/pid").st_ino,
        "exe": os.path.realpath("/proc/self/exe"), "cwd": os.getcwd(),
    }
    for name, want in expect.items():
        got = getattr(report, name)
        if got != want:
            problems.append(f"own {name}: programs see {got!r}, /proc says {want!r}")
    return problems


def _fail(problems: list[str]) -> NoReturn:
    raise SelfCheckFailed("BPF self-check failed: " + "; ".join(problems))


def run_selfcheck(bpf_dir: Path, btf: Btf) -> SelfReport:
    """Compile and run the self-check program once; SelfCheckFailed lists every problem found."""
    from bcc import BPF  # imported late: needs BCC_KERNEL_SOURCE set first

    problems = check_tracepoint_formats()
    fields, sizes = parse_field_list((bpf_dir / "include/bw_fields.h").read_text())
    bpf = BPF(src_file=str(bpf_dir / "selfcheck/selfcheck.c").encode(),
              cflags=[f"-I{bpf_dir / 'include'}", f"-DBW_SELF_TGID={os.getpid()}"])
    try:
        bpf.attach_tracepoint(tp=b"syscalls:sys_enter_getppid", fn_name=b"bwmon_selfchk")
        os.getppid()
        flat = _read_array(bpf[b"bw_self_fields"], 2 * len(fields))
        compiled = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(fields))]
        compiled_sizes = _read_array(bpf[b"bw_self_sizes"], len(sizes))
        raw_obj = bpf[b"bw_self_report"][ct.c_int(0)]
        raw = ct.string_at(ct.addressof(raw_obj), ct.sizeof(raw_obj))
        abi_check = check_abi(bpf[_ANCHOR.encode()].map_fd)
    finally:
        bpf.cleanup()
    problems += compare_offsets(btf, fields, compiled, sizes, compiled_sizes)
    problems += abi_check.problems
    if len(raw) != ct.sizeof(BwSelfReport):
        problems.append(f"self-check report is {len(raw)} bytes, expected {ct.sizeof(BwSelfReport)}")
    if abi_check.problems or len(raw) != ct.sizeof(BwSelfReport):
        _fail(problems)                     # the report below would be read with a wrong layout
    own = BwSelfReport.from_buffer_copy(raw)
    if not own.seen:
        raise SelfCheckFailed("self-check program did not run (tracepoint syscalls:sys_enter_getppid)")
    report = SelfReport(own.tgid, own.mntns, own.pidns, own.ns_pid, decode_path(bytes(own.exe))[0],
                        decode_path(bytes(own.cwd))[0], abi_check.compared)
    problems += _runtime_problems(report)
    if own.mntns_btf != own.mntns:
        problems.append(f"own mntns through the BTF task pointer: {own.mntns_btf}, explicit reads: {own.mntns}")
    if problems:
        _fail(problems)
    log.info("self-check passed", extra={"fields": len(fields), "abi_members": sum(abi_check.compared.values()),
                                         "mntns": own.mntns, "pidns": own.pidns, "exe": report.exe})
    return report
