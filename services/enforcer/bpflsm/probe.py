"""Whether this kernel runs BPF-LSM programs, and Bulwark's: probed for real, with the kernel's answer.

The probe finds ``bpf_lsm_file_open`` in the kernel's BTF, loads ``r0 = 0; exit`` as a
BPF_PROG_TYPE_LSM program with the raw ``bpf()`` syscall and attaches it (BPF_LINK_CREATE, or on
5.7-5.10 BPF_RAW_TRACEPOINT_OPEN); both are released at once. A no-op LSM hook returning 0 allows
everything, so the probe cannot harm anyone.
The enforcer's own probe then compiles Bulwark's real LSM programs (bpf/enforce/lsm.c) and loads them
with their maps empty (nothing is selected, so nothing can be refused), reporting the kernel's answer.
"""
from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

from services.enforcer.base import ProbeResult
from shared.bpf.btf import VMLINUX_BTF
from shared.bpf.rawload import LSM_MAC, PROG_TYPE_LSM, attach_btf_prog, btf_func_id, load_noop

__all__ = ["btf_func_id", "probe_bpf_lsm", "probe_lsm_source"]

_HOOK = "bpf_lsm_file_open"


def probe_bpf_lsm(btf_path: Path = VMLINUX_BTF) -> ProbeResult:
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
    prog_fd, err, detail = load_noop(PROG_TYPE_LSM, LSM_MAC, btf_id)
    if prog_fd < 0:
        return False, (f"BPF_PROG_LOAD(LSM {_HOOK}) refused: {errno.errorcode.get(err, err)} "
                       f"({os.strerror(err)}){'; ' + detail if detail else ''}; lsm={lsms}")
    try:
        link_fd, how = attach_btf_prog(prog_fd, LSM_MAC)
        if link_fd < 0:
            err = -link_fd
            how = f"{how}(LSM)"
            return False, f"{how} refused: {errno.errorcode.get(err, err)} ({os.strerror(err)}); lsm={lsms}"
        os.close(link_fd)
    finally:
        os.close(prog_fd)
    return True, f"kernel accepts BPF-LSM programs (no-op {_HOOK} loaded and attached with {how}); lsm={lsms}"


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
