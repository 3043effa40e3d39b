"""A bcc "kernel source" tree built from the running kernel's BTF, for hosts without kernel headers.

bcc wants kernel headers; this kernel has none, and other kernels' headers give wrong offsets. So:
``bpftool btf dump file /sys/kernel/btf/vmlinux format c`` gives every kernel type in one vmlinux.h,
which we fix for two bugs (bcc misplaces members after unnamed ``long: 64;`` pads; bpftool 7.1 prints
1-byte enums as 4-byte ones), plus a few stub headers bcc includes. Helpers that bcc's own
``helpers.h`` names but this kernel's ``enum bpf_func_id`` lacks (``BPF_FUNC_cgrp_storage_get`` on 6.1,
many more on 5.10) are defined to an id no kernel has, so the header compiles and only a program that
really calls one is refused, by the verifier. The tree is cached and rebuilt only when the kernel
release, its BTF or bcc changes.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from shared.bpf.btf import VMLINUX_BTF, Btf, BtfError

__all__ = ["ensure_btf_tree", "fix_vmlinux_text", "use_btf_tree", "absent_helpers", "bcc_helper_names",
           "present_helpers", "maple_cflags",
           "ABSENT_HELPER_ID"]

log = logging.getLogger("bulwark.monitor.btf_tree")

_STAMP = ".bulwark-stamp"
_PAD_RE = re.compile(r"^(\s*)long: 64;$", re.M)
_ENUM_OPEN_RE = re.compile(r"^enum (\w+) \{$")
_HELPER_RE = re.compile(rb"\bBPF_FUNC_(\w+)\b")
_ENUMERATOR_RE = re.compile(r"^\s+BPF_FUNC_(\w+) = \d+,?$", re.M)
_TREE_FORMAT = "3"  # bumped when the tree's layout changes, so older cached trees are rebuilt
ABSENT_HELPER_ID = 0x7FFF0000  # "no such helper": the verifier refuses a call to it (invalid func)

_KCONFIG = """/* bcc force-includes this first: every kernel type comes from BTF (vmlinux.h) */
#define CONFIG_BPF_SYSCALL 1
#define CONFIG_X86_64 1
#define _UAPI__LINUX_BPF_H__
#define BPF_NO_PRESERVE_ACCESS_INDEX
#include "../vmlinux.h"
#ifndef NULL
#define NULL ((void *)0)
#endif
#define offsetof(TYPE, MEMBER) __builtin_offsetof(TYPE, MEMBER)
#define container_of(ptr, type, member) ((type *)((void *)(ptr) - offsetof(type, member)))
"""
_KCONFIG_HELPERS = """/* helpers bcc's helpers.h names that this kernel lacks (enum bpf_func_id) */
"""
_STUBS = ("linux/types.h", "linux/bpf_common.h", "uapi/linux/if_packet.h", "uapi/linux/if_ether.h",
          "uapi/linux/ptrace.h", "linux/log2.h", "linux/sched.h")


def fix_vmlinux_text(text: str, enum_sizes: dict[str, int]) -> tuple[str, int, int]:
    """Fix bpftool's vmlinux.h for bcc; returns (text, pads renamed, enums packed)."""
    counter = iter(range(1, 1 << 30))
    text, pads = _PAD_RE.subn(lambda m: f"{m.group(1)}long __bw_pad{next(counter)};", text)
    out: list[str] = []
    packed, current = 0, None
    for line in text.split("\n"):
        opened = _ENUM_OPEN_RE.fullmatch(line)
        if opened:
            current = opened.group(1)
        elif current is not None and line == "};":
            if enum_sizes.get(current) == 1:
                line = "} __attribute__((packed));"
                packed += 1
            current = None
        out.append(line)
    return "\n".join(out), pads, packed


def bcc_helper_names(lib: Path | None = None) -> frozenset[str]:
    """Every ``BPF_FUNC_<name>`` bcc's library knows (its embedded helpers.h names them all)."""
    path = lib or _libbcc_path()
    if path is None:
        return frozenset()
    return frozenset(m.decode() for m in _HELPER_RE.findall(path.read_bytes()))


def _libbcc_path() -> Path | None:
    for cand in (Path("/usr/lib/x86_64-linux-gnu/libbcc.so.0"), Path("/usr/lib64/libbcc.so.0"),
                 Path("/usr/lib/libbcc.so.0")):
        if cand.exists():
            return cand.resolve()
    return None


def absent_helpers(vmlinux_h: str, wanted: frozenset[str]) -> list[str]:
    """The helper names in ``wanted`` that the dumped ``enum bpf_func_id`` does not define."""
    present = set(_ENUMERATOR_RE.findall(vmlinux_h))
    return sorted(wanted - present)


def present_helpers(vmlinux_h: str) -> list[str]:
    """The helper names this kernel's ``enum bpf_func_id`` defines."""
    return sorted(set(_ENUMERATOR_RE.findall(vmlinux_h)))


def _helpers_header(absent: list[str], present: list[str]) -> str:
    lines = [f"#define BPF_FUNC_{name} {ABSENT_HELPER_ID:#x}" for name in absent]
    lines.append("/* helpers this kernel has: the programs choose their way with #ifdef BW_HELPER_<name> */")
    lines += [f"#define BW_HELPER_{name} 1" for name in present]
    return _KCONFIG_HELPERS + "\n".join(lines) + "\n"


def _kernel_stamp(btf_bytes: bytes) -> str:
    digest = hashlib.sha256(btf_bytes).hexdigest()[:16]
    lib = _libbcc_path()
    bcc = f"{lib}:{lib.stat().st_mtime_ns}" if lib else "no-libbcc"
    return f"{platform.release()} {digest} {bcc} v{_TREE_FORMAT}\n"


def _version_h() -> str:
    nums = re.findall(r"\d+", platform.release())[:3] + ["0", "0", "0"]
    major, minor, patch = (int(n) for n in nums[:3])
    code = (major << 16) + (minor << 8) + min(patch, 255)
    return (f"#define LINUX_VERSION_CODE {code}\n"
            "#define KERNEL_VERSION(a,b,c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n")


def _write_tree(root: Path, vmlinux_h: str, stamp: str, absent: list[str]) -> None:
    """The tree: vmlinux.h, the force-included kconfig.h (with the helper defines), stubs."""
    inc = root / "include"
    for sub in ("linux", "uapi/linux"):
        (inc / sub).mkdir(parents=True, exist_ok=True)
    (root / "arch/x86/include/asm").mkdir(parents=True, exist_ok=True)
    (inc / "vmlinux.h").write_text(vmlinux_h)
    (inc / "linux/kconfig.h").write_text(_KCONFIG + _helpers_header(absent, present_helpers(vmlinux_h)))
    (inc / "uapi/linux/bpf.h").write_text('#include "../../vmlinux.h"\n')
    for stub in _STUBS:
        (inc / stub).parent.mkdir(parents=True, exist_ok=True)
        (inc / stub).write_text("/* all types come from vmlinux.h */\n")
    (inc / "linux/version.h").write_text(_version_h())
    (root / "arch/x86/include/asm/page.h").write_text("#define PAGE_SIZE 4096\n")
    (root / _STAMP).write_text(stamp)


def ensure_btf_tree(tree: Path, btf_path: Path = VMLINUX_BTF, btf: Btf | None = None) -> Path:
    """Build the tree at ``tree`` unless a tree for this very kernel is already there."""
    btf_bytes = btf_path.read_bytes()
    stamp = _kernel_stamp(btf_bytes)
    stamp_file = tree / _STAMP
    if stamp_file.exists() and stamp_file.read_text() == stamp and (tree / "include/vmlinux.h").exists():
        log.info("bcc BTF tree cached", extra={"tree": str(tree)})
        return tree
    dump = subprocess.run(["bpftool", "btf", "dump", "file", str(btf_path), "format", "c"],
                          check=True, capture_output=True, text=True).stdout
    parsed = btf or Btf(btf_bytes)
    text, pads, packed = fix_vmlinux_text(dump, parsed.enum_sizes())
    absent = absent_helpers(text, bcc_helper_names())
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bcc-btf-", dir=tree.parent))
    try:
        _write_tree(tmp, text, stamp, absent)
        if tree.exists():
            shutil.rmtree(tree)
        tmp.rename(tree)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("bcc BTF tree built", extra={"tree": str(tree), "pads_renamed": pads, "enums_packed": packed,
                                          "helpers_absent": len(absent)})
    return tree


def use_btf_tree(tree: Path) -> None:
    """Point bcc at the tree (read by bcc when it compiles, so set it before loading)."""
    os.environ["BCC_KERNEL_SOURCE"] = str(tree)


def maple_cflags(btf: Btf) -> list[str]:
    """``-DBW_MAPLE_MM=1`` where a process's memory maps are a maple tree (6.1+): the anonMapExec preset
    then finds the mapping an mprotect changes (bpf/include/bw_presets.h); elsewhere it cannot."""
    try:
        btf.offsetof("mm_struct", "mm_mt")
    except BtfError:
        return []
    return ["-DBW_MAPLE_MM=1"]
