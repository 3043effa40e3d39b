"""Raw ``bpf()`` calls for probes: find a kernel function's BTF id, load a no-op program typed to attach
there, attach it, release it. Whether the kernel *accepts* a kind of program is answered by trying
(bcc's own tests only read symbols: a VM may list trampolines yet refuse them with EPERM)."""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from functools import cache
from pathlib import Path

from shared.bpf.btf import VMLINUX_BTF

__all__ = ["btf_func_id", "bpf_syscall", "load_noop", "attach_btf_prog", "fexit_accepted",
           "PROG_TYPE_TRACING", "PROG_TYPE_LSM", "TRACE_FEXIT", "LSM_MAC"]

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN, _BPF_LINK_CREATE = 5, 17, 28
PROG_TYPE_TRACING, PROG_TYPE_LSM = 26, 29
TRACE_FEXIT, LSM_MAC = 25, 27
_BTF_KIND_FUNC = 12
# Bytes that follow each btf_type, by kind: fixed, plus this much per vlen entry.
_KIND_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
               15: (0, 12), 17: (4, 0), 19: (0, 12)}
_NOOP = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit


def btf_func_id(btf: bytes, name: str) -> int:
    """The BTF type id of FUNC ``name`` in a raw BTF blob (e.g. /sys/kernel/btf/vmlinux); 0 if absent."""
    magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", btf)
    if magic != 0xEB9F:
        raise ValueError("not little-endian BTF")
    strings = btf[hdr_len + str_off: hdr_len + str_off + str_len]
    wanted = strings.find(b"\0" + name.encode() + b"\0")
    if wanted < 0:
        return 0
    wanted += 1
    pos, end, type_id = hdr_len + type_off, hdr_len + type_off + type_len, 1
    while pos < end:
        name_off, info, _ = struct.unpack_from("<III", btf, pos)
        kind, vlen = (info >> 24) & 0x1F, info & 0xFFFF
        if kind == _BTF_KIND_FUNC and name_off == wanted:
            return type_id
        fixed, per = _KIND_EXTRA.get(kind, (0, 0))
        pos += 12 + fixed + per * vlen
        type_id += 1
    return 0


def bpf_syscall(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> tuple[int, int]:
    """``bpf(cmd, attr)``: (the result, errno when it is negative, else 0)."""
    libc = ctypes.CDLL(None, use_errno=True)
    nr = _BPF_SYSCALL.get(platform.machine())
    if nr is None:
        return -1, errno.ENOSYS
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    return ret, ctypes.get_errno() if ret < 0 else 0


def load_noop(prog_type: int, attach_type: int, btf_id: int) -> tuple[int, int, str]:
    """Load ``r0 = 0; exit`` as a BTF-attached program: (fd or -1, errno, the verifier's last line)."""
    insns = ctypes.create_string_buffer(_NOOP)
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, prog_type, 2, ctypes.addressof(insns),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("12s", attr, 48, b"bulwark_prob")  # prog_name
    struct.pack_into("<I", attr, 68, attach_type)       # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_id)           # attach_btf_id
    fd, err = bpf_syscall(_BPF_PROG_LOAD, attr)
    last = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
    return fd, err, last[0]


def attach_btf_prog(prog_fd: int, attach_type: int) -> tuple[int, str]:
    """Attach a BTF-typed program (LSM, fentry/fexit): BPF_LINK_CREATE (5.11+), else
    BPF_RAW_TRACEPOINT_OPEN with no name, as 5.5-5.10 do. (fd or -errno, the command used)."""
    link_attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIII", link_attr, 0, prog_fd, 0, attach_type, 0)
    link_fd, err = bpf_syscall(_BPF_LINK_CREATE, link_attr)
    if link_fd >= 0:
        return link_fd, "BPF_LINK_CREATE"
    if err != errno.EINVAL:
        return -err, "BPF_LINK_CREATE"
    raw_attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", raw_attr, 0, 0, prog_fd)  # name NULL: the program's own attach_btf_id
    fd, err = bpf_syscall(_BPF_RAW_TRACEPOINT_OPEN, raw_attr)
    return (fd, "BPF_RAW_TRACEPOINT_OPEN") if fd >= 0 else (-err, "BPF_RAW_TRACEPOINT_OPEN")


@cache
def fexit_accepted(func: str, btf_path: Path = VMLINUX_BTF) -> bool:
    """Whether the kernel loads and attaches an fexit program on ``func`` (a no-op, released at once:
    an fexit program's answer is ignored, so it can harm no one)."""
    try:
        btf_id = btf_func_id(btf_path.read_bytes(), func)
    except (OSError, ValueError, struct.error):
        return False
    if not btf_id:
        return False
    fd, _err, _last = load_noop(PROG_TYPE_TRACING, TRACE_FEXIT, btf_id)
    if fd < 0:
        return False
    try:
        link, _how = attach_btf_prog(fd, TRACE_FEXIT)
        if link < 0:
            return False
        os.close(link)
        return True
    finally:
        os.close(fd)
