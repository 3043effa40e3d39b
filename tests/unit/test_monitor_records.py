"""The record decoder on crafted bw_sys_event/bw_proc_event records, and the kernel filter maps."""
from __future__ import annotations

import struct

import pytest

from services.monitor.decode.exec_record import DecodeContext
from services.monitor.decode.kinds import sockaddr
from services.monitor.decode.records import PROC_SIZE, SYS_HEAD, SYS_SIZE, RecordDecoder
from services.monitor.kernel_filters import ALL, CAPS_NAMED, FILE_PATHS, needs_owner, visibility_masks, wanted_syscalls
from shared.bpf.abi import BwProcEvent, BwSysEvent, offset
from shared.bpf.names import protocol_name
from shared.errors import DecodeError
from shared.schemas.events import RawEvent
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

CTX = DecodeContext(node="n1", boot_id="b", boot_offset_ns=1_000)
PATH_BUF = 768


def path_rec(components: list[str]) -> bytes:
    buf = b"".join(c.encode() + b"\0" for c in reversed(components))
    return struct.pack("<HHHH", len(buf), 1, len(components), 0) + buf.ljust(PATH_BUF, b"\0")


def task(op: int, size: int, pid: int = 100) -> bytes:
    return struct.pack("<IIQ10IQ16s", op, size, 5_000, pid, pid + 1, 1, 7, 1, 0, 0, 4026532000,
                       4026532001, 0, 42, b"cat")


def sys_rec(op: int, nr: int, args: tuple[int, ...] = (0,) * 6, ret: int = 0, flags: int = 0,
            name: str = "", aux: bytes = b"", dir_: list[str] | None = None) -> bytes:
    name_b = name.encode() + b"\0" if name else b""
    head = SYS_HEAD.pack(op, 0, 5_000, 100, 101, 1, 7, 1, 0, 0, 4026532000, 4026532001, 0, 42, b"cat",
                         ret, *args, nr, flags, len(name_b), len(aux))
    body = head + aux.ljust(128, b"\0") + name_b
    if dir_ is not None:
        body = head + aux.ljust(128, b"\0") + name_b.ljust(512, b"\0") + path_rec(dir_)
    return struct.pack("<II", op, len(body)) + body[8:]


def proc_rec(pid: int, exe: list[str], tty: bytes = b"", argv: bytes = b"", args_flags: int = 0) -> bytes:
    """A process record; ``argv`` as the kernel copies mm->arg_start.. (each argument NUL-ended)."""
    return (task(2, PROC_SIZE, pid) + path_rec(exe) + tty.ljust(16, b"\0")
            + struct.pack("<HHI", len(argv), args_flags, 0) + argv.ljust(256, b"\0"))


def test_layout() -> None:
    assert (SYS_SIZE, PROC_SIZE) == (1568, 1136)
    assert [offset(BwProcEvent, m) for m in ("tty", "args_len", "args")] == [856, 872, 880]
    assert [offset(BwSysEvent, m) for m in ("ret", "syscall", "aux", "name", "dir")] == [80, 136, 152, 280, 792]
    assert SYS_HEAD.format == "<IIQIIIIIIIIIIQ16sq6qiHHH6x"  # the decoder's hot format: pad[3] skipped


def test_process_record_feeds_the_exe_of_later_events() -> None:
    dec = RecordDecoder(CTX)
    assert dec.feed(proc_rec(100, ["usr", "bin", "cat"])) is None
    e = dec.feed(sys_rec(5, 257, (-100, 0o2000000, 0, 0, 0, 0), ret=3, flags=128 | 256, name="/etc/passwd"))
    assert (e["kind"], e["exe"], e["path"], e["syscall"], e["ret"], e["flags"]) == (
        "file", "/usr/bin/cat", "/etc/passwd", "openat", 3, 0o2000000)
    assert (e["pid"], e["tid"], e["ns_pid"], e["mntns"], e["cgroup_id"], e["comm"]) == (
        100, 101, 7, 4026532000, 42, "cat")
    assert e["event_id"] == "n1:b:5000:101" and e["ts_ns"] == 6_000
    assert RawEvent.from_wire(e).to_wire() == e


def test_relative_names_resolve_against_the_walked_directory() -> None:
    dec = RecordDecoder(CTX)
    e = dec.feed(sys_rec(5, 263, (-100, 0, 0, 0, 0, 0), name="x/../y", flags=1, dir_=["tmp", "w"]))
    assert (e["path"], e["cwd"], e["extra"]["filename"], e["syscall"]) == ("/tmp/w/y", "/tmp/w", "x/../y",
                                                                          "unlinkat")
    fd = dec.feed(sys_rec(5, 260, (5, 0, 0, 0, 0, 0), name="", flags=2, dir_=["etc", "f"]))
    assert (fd["path"], fd["cwd"], fd["extra"]["dirfd"]) == ("/etc/f", "", 5)


def test_network_capability_and_lifecycle_records() -> None:
    dec = RecordDecoder(CTX)
    addr = struct.pack("<H", 2) + struct.pack(">H", 8080) + bytes([127, 0, 0, 1]) + bytes(8)
    e = dec.feed(sys_rec(6, 42, (3, 16, 0, 2, 1, 6), flags=32, aux=addr))
    assert (e["kind"], e["syscall"], e["path"]) == ("network", "connect", "127.0.0.1:8080")
    assert e["extra"]["protocol"] == "TCP" and e["extra"]["family"] == "AF_INET" and e["extra"]["port"] == 8080
    cap = dec.feed(sys_rec(7, -1, (13, 0, 0, 0, 0, 0), ret=-1))
    assert (cap["kind"], cap["path"], cap["ret"], cap["extra"]["capability"]) == ("capability", "CAP_NET_RAW",
                                                                                  -1, "net_raw")
    ex = dec.feed(sys_rec(4, -1, (0x100, 0, 0, 0, 0, 0), ret=0x100))
    assert ex["kind"] == "exit" and ex["extra"]["exit_code"] == 1


def test_bad_records() -> None:
    dec = RecordDecoder(CTX)
    with pytest.raises(DecodeError):
        dec.feed(b"\x63\0\0\0" + bytes(20))
    with pytest.raises(DecodeError):
        dec.feed(sys_rec(5, 257, name="/x")[:200])


def test_sockaddr_and_protocols() -> None:
    six = struct.pack("<H", 10) + struct.pack(">H", 53) + bytes(4) + bytes(15) + b"\x01" + bytes(4)
    assert sockaddr(six)["addr"] == "::1"
    assert sockaddr(struct.pack("<H", 1) + b"\0abstract\0")["addr"] == "@abstract"
    assert protocol_name(2, 2, 0) == \
        "UDP" and protocol_name(2, 3, 1) == "ICMP" and protocol_name(1, 5, 0) == "seqpacket"


def _rs(*workloads: WorkloadRules) -> RuleSet:
    return RuleSet(node="n", version=1, policy_seq=1, identity_seq=1, workloads={w.workload_id: w for w in workloads})


def _r(op: str, **kw: object) -> Rule:
    return Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="ns", operation=op, action="Block", **kw)


def test_visibility_masks_never_hide_what_rules_need() -> None:
    assert visibility_masks(None, {}, 1) == {0: ALL}
    quiet = Workload(id="w1", name="a", namespace="ns", kind="container", node="n", mntns=50, pidns=51,
                     namespace_annotations={"kubearmor-visibility": "none"})
    rs = _rs(WorkloadRules("w1", 50, 51, [_r("Network", protocol="tcp")]), WorkloadRules("w2", 60, 61, []),
             WorkloadRules("host", 1, 2, [_r("Capabilities", capability="net_raw")]),
             WorkloadRules("gone", 70, 71, [_r("Syscall", syscall="unlink")], stopped_ns=5))
    masks = visibility_masks(rs, {"w1": quiet}, host_mntns=1)
    assert masks[50] == 4                 # annotation "none", but its Network rule
    assert masks[60] == 15                # container default: process,file,network,capabilities
    assert masks[1] == CAPS_NAMED         # host default none, plus the capability its rule names
    assert masks.caps == 1 << 13          # CAP_NET_RAW
    assert masks[0] == 15 | 4 | 8 and 70 not in masks   # unknown mntns: default | every rule's kind
    # an allow-list of capabilities judges every other one: every capability event
    allow = Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="ns", operation="Capabilities",
                 action="Allow", capability="chown")
    masks = visibility_masks(_rs(WorkloadRules("host", 1, 2, [allow])), {}, host_mntns=1)
    assert masks[1] == 8 and masks.caps == 0
    masks = visibility_masks(rs, {}, host_mntns=1, hosts="capabilities")
    assert masks[1] == 8 and masks.caps == 0   # visibility wants them all already
    assert visibility_masks(rs, {}, 1, containers="process", hosts="file")[60] == 1
    # A Process Block also needs the opens of its program (`ld.so PROGRAM`: shared.loaders): by path,
    # in the workload and on the host (tests/unit/test_monitor_paths.py has the details).
    rs = _rs(WorkloadRules("w1", 50, 51, [_r("Process", path="/bin/sleep")]),
             WorkloadRules("host", 1, 2, [_r("Process", path="/bin/sleep")]))
    masks = visibility_masks(rs, {"w1": quiet}, host_mntns=1)
    assert masks[50] == 1 | FILE_PATHS and masks[1] == 1 | FILE_PATHS
    assert masks.paths == {(50, b"/bin/sleep\0"), (1, b"/bin/sleep\0")}
    assert masks[0] == 15 | 1 | 2          # unknown mntns: whole kinds, as before


def test_wanted_syscalls() -> None:
    rs = _rs(WorkloadRules("w", 50, 51, [_r("Syscall", syscall="unlinkat"), _r("Syscall", syscall="SYS_RMDIR"),
                                         _r("Syscall", syscall="setuid"), _r("Syscall", syscall="getpid")]))
    assert wanted_syscalls(rs) == {263: 1 | 2 << 1 | 16, 84: 1 | 1 << 1, 39: 1}
    assert not needs_owner(rs) and needs_owner(None)
    assert needs_owner(_rs(WorkloadRules("w", 50, 51, [_r("File", path="/x", owner_only=True)])))


def chunk_of(*recs: bytes) -> tuple[bytes, list[int]]:
    """Records framed as RingBuffer.take returns them: 8-byte ring header, 8-byte aligned."""
    chunk, offsets = b"", []
    for rec in recs:
        offsets.append(len(chunk))
        chunk += struct.pack("<II", len(rec), 0) + rec + bytes(-len(rec) % 8)
    return chunk, offsets


def with_ktime(rec: bytes, ktime: int) -> bytes:
    return rec[:8] + struct.pack("<Q", ktime) + rec[16:]


def test_a_chunk_decodes_like_its_records_one_by_one_and_counts_every_bad_one() -> None:
    good = [proc_rec(100, ["usr", "bin", "cat"]), sys_rec(5, 257, name="/a", ret=3),
            sys_rec(6, 42, (3, 16, 0, 2, 1, 6), flags=32), sys_rec(4, -1, (0x100, 0, 0, 0, 0, 0))]
    bad = [b"\x63\0\0\0" + bytes(20), sys_rec(5, 257, name="/x")[:200], struct.pack("<IIQ", 5, 10_000, 1)]
    chunk, offsets = chunk_of(good[0], bad[0], good[1], bad[1], good[2], bad[2], good[3])
    events, errors = RecordDecoder(CTX).feed_chunk(chunk, offsets)
    one = RecordDecoder(CTX)
    assert events == [e for e in map(one.feed, good) if e is not None]
    assert len(errors) == 3 and all(isinstance(e, DecodeError) for e in errors)


def test_repeated_records_decode_exactly_like_new_ones() -> None:
    dec = RecordDecoder(CTX)
    rec = sys_rec(5, 257, (-100, 0, 0, 0, 0, 0), ret=3, flags=128, name="/etc/hosts")
    first = dec.feed(rec)
    for kt in (6_000, 7_000):
        again = dec.feed(with_ktime(rec, kt))
        assert again == RecordDecoder(CTX).feed(with_ktime(rec, kt))
        assert again["event_id"] == f"n1:b:{kt}:101"
        assert again["extra"] is not first["extra"]
    assert first["ts_ns"] == 6_000


def test_a_process_record_refreshes_what_repeats_would_reuse() -> None:
    dec = RecordDecoder(CTX)
    rec = sys_rec(5, 257, name="/etc/hosts")
    dec.feed(proc_rec(100, ["bin", "sh"]))
    assert dec.feed(rec)["exe"] == "/bin/sh"
    dec.feed(proc_rec(100, ["usr", "bin", "python3"]))          # the process exec'd
    assert dec.feed(with_ktime(rec, 9_000))["exe"] == "/usr/bin/python3"


def test_records_that_never_repeat_still_decode_when_the_lookup_is_bypassed() -> None:
    dec = RecordDecoder(CTX)
    for i in range(5000):                                        # more than the remembered records
        rec = sys_rec(5, 257, ret=i, name=f"/f{i}")
        assert dec.feed(rec) == RecordDecoder(CTX).feed(rec)
    assert dec._same_bypass > 0                                  # repeats were rare: not looked up


def test_the_controlling_tty_of_a_process_record_names_its_events() -> None:
    with_tty, without = RecordDecoder(CTX), RecordDecoder(CTX)
    with_tty.feed(proc_rec(100, ["bin", "sh"], tty=b"pts3"))
    without.feed(proc_rec(100, ["bin", "sh"]))
    assert with_tty.feed(sys_rec(5, 257, name="/etc/hosts"))["extra"]["tty"] == "pts3"
    assert "tty" not in without.feed(sys_rec(5, 257, name="/etc/hosts"))["extra"]
