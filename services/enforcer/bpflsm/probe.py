"""Whether this kernel runs BPF-LSM programs, and Bulwark's: probed for real, with the kernel's answer.

The probe finds ``bpf_lsm_file_open`` in the kernel's BTF, loads ``r0 = 0; exit`` as a
BPF_PROG_TYPE_LSM program with the raw ``bpf()`` syscall and attaches it (BPF_LINK_CREATE, or on
5.7-5.10 BPF_RAW_TRACEPOINT_OPEN); both are released at once. A no-op LSM hook returning 0 allows
everything, so the probe cannot harm anyone.
The enforcer's own probe then compiles Bulwark's real LSM programs (bpf/enforce/lsm.c) and loads them
with their maps empty (nothing is selected, so nothing can be refused), reporting the kernel's answer.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform
import struct
from pathlib import Path

from services.enforcer.base import ProbeResult

__all__ = ["btf_func_id", "probe_bpf_lsm", "probe_lsm_source"]

_BPF_SYSCALL = {"x86_64": 321, "aarch64": 280}
_BPF_PROG_LOAD, _BPF_RAW_TRACEPOINT_OPEN, _BPF_LINK_CREATE = 5, 17, 28
_BPF_PROG_TYPE_LSM, _BPF_LSM_MAC = 29, 27
_BTF_KIND_FUNC = 12
_HOOK = "bpf_lsm_file_open"
# Bytes that follow each btf_type, by kind: fixed, plus this much per vlen entry.
_KIND_EXTRA = {1: (4, 0), 3: (12, 0), 4: (0, 12), 5: (0, 12), 6: (0, 8), 13: (0, 8), 14: (4, 0),
               15: (0, 12), 17: (4, 0), 19: (0, 12)}


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


def _bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> tuple[int, int]:
    libc = ctypes.CDLL(None, use_errno=True)
    nr = _BPF_SYSCALL.get(platform.machine())
    if nr is None:
        return -1, errno.ENOSYS
    ret = libc.syscall(ctypes.c_long(nr), ctypes.c_int(cmd), attr, ctypes.c_uint(len(attr)))
    return ret, ctypes.get_errno() if ret < 0 else 0


def probe_bpf_lsm(btf_path: Path = Path("/sys/kernel/btf/vmlinux")) -> ProbeResult:
    """Try to load and attach a no-op LSM program; (True, ...) only when the kernel accepts both."""
    try:
        lsms = Path("/sys/kernel/security/lsm").read_text().strip()
    except OSError:
        lsms = "?"  # securityfs may not be mounted; the load attempt below is what counts
    try:
        btf_id = btf_func_id(btf_path.read_bytes(), _HOOK)
    except (OSError, ValueError, struct.error) as exc:
        return False, f"no usable kernel BTF ({exc})"
    if not btf_id:
        return False, f"{_HOOK} not in kernel BTF (CONFIG_BPF_LSM off?)"
    insns = ctypes.create_string_buffer(bytes.fromhex("b700000000000000" "9500000000000000"))
    license_ = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(4096)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into("<IIQQIIQ", attr, 0, _BPF_PROG_TYPE_LSM, 2, ctypes.addressof(insns),
                     ctypes.addressof(license_), 1, len(log), ctypes.addressof(log))
    struct.pack_into("12s", attr, 48, b"bulwark_prob")  # prog_name
    struct.pack_into("<I", attr, 68, _BPF_LSM_MAC)      # expected_attach_type
    struct.pack_into("<I", attr, 108, btf_id)           # attach_btf_id
    prog_fd, err = _bpf(_BPF_PROG_LOAD, attr)
    if prog_fd < 0:
        detail = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        return False, (f"BPF_PROG_LOAD(LSM {_HOOK}) refused: {errno.errorcode.get(err, err)} "
                       f"({os.strerror(err)}){'; ' + detail[0] if detail[0] else ''}; lsm={lsms}")
    try:
        link_fd, how = _attach(prog_fd)
        if link_fd < 0:
            err = -link_fd
            return False, f"{how} refused: {errno.errorcode.get(err, err)} ({os.strerror(err)}); lsm={lsms}"
        os.close(link_fd)
    finally:
        os.close(prog_fd)
    return True, f"kernel accepts BPF-LSM programs (no-op {_HOOK} loaded and attached with {how}); lsm={lsms}"


def _attach(prog_fd: int) -> tuple[int, str]:
    """Attach an LSM program: BPF_LINK_CREATE (5.11+), else BPF_RAW_TRACEPOINT_OPEN with no name, the way
    5.7-5.10 attach LSM programs (and bcc's attach_lsm always does). (fd or -errno, the command used)."""
    link_attr = ctypes.create_string_buffer(64)
    struct.pack_into("<IIII", link_attr, 0, prog_fd, 0, _BPF_LSM_MAC, 0)
    link_fd, err = _bpf(_BPF_LINK_CREATE, link_attr)
    if link_fd >= 0:
        return link_fd, "BPF_LINK_CREATE"
    if err != errno.EINVAL:
        return -err, "BPF_LINK_CREATE(LSM)"
    raw_attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", raw_attr, 0, 0, prog_fd)  # name NULL: the program's own attach_btf_id
    fd, err = _bpf(_BPF_RAW_TRACEPOINT_OPEN, raw_attr)
    return (fd, "BPF_RAW_TRACEPOINT_OPEN") if fd >= 0 else (-err, "BPF_RAW_TRACEPOINT_OPEN(LSM)")


def probe_lsm_source(btf_tree: Path | None = None) -> str:
    """Compile bpf/enforce/lsm.c with bcc and try to load it (maps empty: it could deny nothing)."""
    try:
        from services.enforcer.bpflsm.load import load_lsm
        from services.enforcer.signal.enforcer import BPF_DIR
    except Exception as exc:
        return f"lsm.c not tried: {exc!r}"
    try:
        bpf, paths = load_lsm(BPF_DIR, btf_tree, lambda *_args: None)
    except Exception as exc:
        if "compile" in str(exc).lower():
            return f"lsm.c does not compile: {exc}"
        return f"lsm.c compiles, its load is refused: {exc}"
    bpf.cleanup()
    return f"lsm.c compiles and loads (paths read by {paths})"
