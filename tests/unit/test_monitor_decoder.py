"""The monitor's decoder on crafted ring-buffer records (no kernel needed)."""
from __future__ import annotations

import struct

import pytest

from services.monitor.decode.exec_record import EXEC_SIZE, DecodeContext, decode
from shared.bpf.abi import BwExecEvent, offset
from shared.bpf.paths import decode_path
from shared.codec import pack, unpack
from shared.errors import DecodeError
from shared.schemas.events import RawEvent

CTX = DecodeContext(node="n1", boot_id="boot-1", boot_offset_ns=1_700_000_000_000_000_000)
PATH_BUF = 768
COMPLETE, TRUNCATED = 1, 2


def path_rec(components: list[str] | None, flags: int = COMPLETE) -> bytes:
    """A struct bw_path as the kernel writes it: components leaf first, NUL-terminated."""
    if components is None:
        return struct.pack("<HHHH", 0, 0, 0, 0) + bytes(PATH_BUF)
    buf = b"".join(c.encode() + b"\0" for c in reversed(components))
    return struct.pack("<HHHH", len(buf), flags, len(components), 0) + buf.ljust(PATH_BUF, b"\xaa")


def exec_rec(*, filename: str = "/usr/bin/true", ret: int = 0, syscall: int = 0, dirfd: int = -100,
             flags: int = 0, at_flags: int = 0, exe: bytes | None = None, parent: bytes | None = None,
             cwd: bytes | None = None, op: int = 1, size: int | None = None, ktime: int = 123_456,
             tty: bytes = b"") -> bytes:
    head = struct.pack("<IIQ", op, EXEC_SIZE if size is None else size, ktime)
    ids = struct.pack("<10I", 4242, 4243, 4000, 2, 1, 1000, 1001, 4026532000, 4026532001, syscall)
    rest = struct.pack("<i3IQq", dirfd, flags, at_flags, 0, 77, ret)
    comm = b"sh".ljust(16, b"\0")
    fname = filename.encode().ljust(512, b"\0")
    return (head + ids + rest + comm + fname
            + (exe if exe is not None else path_rec(["usr", "bin", "dash"]))
            + (parent if parent is not None else path_rec(["usr", "bin", "dash"]))
            + (cwd if cwd is not None else path_rec(["work", "main"]))
            + tty.ljust(16, b"\0"))


def test_layout_constants_match_the_c_header() -> None:
    assert EXEC_SIZE == 2960 == len(exec_rec())
    assert [offset(BwExecEvent, m) for m in ("ret", "exe", "cwd")] == [80, 616, 2168]


def test_successful_exec_decodes_every_field() -> None:
    ev = decode(exec_rec(), CTX)
    assert isinstance(ev, RawEvent)
    assert (ev.kind, ev.pid, ev.tid, ev.ppid, ev.ns_pid, ev.ns_ppid) == ("exec", 4242, 4243, 4000, 2, 1)
    assert (ev.uid, ev.gid, ev.mntns, ev.pidns, ev.cgroup_id) == (1000, 1001, 4026532000, 4026532001, 77)
    assert (ev.comm, ev.exe, ev.parent_exe, ev.cwd) == ("sh", "/usr/bin/dash", "/usr/bin/dash", "/work/main")
    assert (ev.path, ev.ret, ev.syscall, ev.flags, ev.extra) == ("/usr/bin/true", 0, "execve", 0, {})
    assert ev.ts_ns == CTX.boot_offset_ns + 123_456
    assert ev.event_id == "n1:boot-1:123456:4243"
    assert RawEvent.from_wire(unpack(pack(ev.to_wire()))) == ev


def test_failed_exec_keeps_negative_errno() -> None:
    assert decode(exec_rec(ret=-13), CTX).ret == -13


def test_relative_filename_is_resolved_against_cwd() -> None:
    ev = decode(exec_rec(filename="./bin/../tool"), CTX)
    assert ev.path == "/work/main/tool"
    assert ev.extra["filename"] == "./bin/../tool"


def test_execveat_with_a_directory_fd_keeps_the_name_as_written() -> None:
    ev = decode(exec_rec(filename="tool", syscall=1, dirfd=5, at_flags=0x1000), CTX)
    assert (ev.syscall, ev.path, ev.flags, ev.extra["dirfd"]) == ("execveat", "tool", 0x1000, 5)


def test_root_unknown_and_truncated_paths() -> None:
    assert decode_path(path_rec([])) == ("/", False)
    assert decode_path(path_rec(None)) == ("", False)
    assert decode_path(path_rec(["deep", "leaf"], flags=TRUNCATED)) == (".../deep/leaf", True)
    ev = decode(exec_rec(filename="rel", cwd=path_rec(["a"], flags=TRUNCATED)), CTX)
    assert ev.path == "rel" and ev.extra["truncated"] == ["cwd"]


def test_kernel_flags_show_in_extra() -> None:
    ev = decode(exec_rec(flags=3), CTX)
    assert ev.extra["filename_truncated"] and ev.extra["filename_from_kernel"]


def test_invalid_utf8_does_not_break_the_wire() -> None:
    raw = exec_rec()
    bad = raw[:104] + b"/tmp/\xff\xfe".ljust(512, b"\0") + raw[616:]
    ev = decode(bad, CTX)
    assert ev.path == "/tmp/\\xff\\xfe"
    pack(ev.to_wire())


@pytest.mark.parametrize("data, message", [
    (b"", "shorter than the header"),
    (b"\x01\x00\x00\x00" * 3, "shorter than the header"),
    (exec_rec(op=99), "unknown op code 99"),
    (exec_rec(size=100), "header size 100"),
    (exec_rec()[:2000], "record 2000 bytes"),
    (exec_rec(syscall=7), "unknown syscall 7"),
    (exec_rec(exe=struct.pack("<HHHH", 900, COMPLETE, 1, 0) + bytes(PATH_BUF)), "exceeds its buffer"),
    (exec_rec(exe=struct.pack("<HHHH", 4, COMPLETE, 3, 0) + b"usr\0".ljust(PATH_BUF, b"\0")),
     "header says 3"),
])
def test_bad_records_raise_decode_error(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        decode(data, CTX)


def test_the_callers_controlling_tty_is_kept() -> None:
    assert decode(exec_rec(tty=b"pts0"), CTX).extra["tty"] == "pts0"
    assert "tty" not in decode(exec_rec(), CTX).extra
