"""A bcc "kernel source" tree built from the running kernel's BTF, for hosts without kernel headers.

bcc wants kernel headers; this kernel has none, and other kernels' headers give wrong offsets. So:
``bpftool btf dump file /sys/kernel/btf/vmlinux format c`` gives every kernel type in one vmlinux.h,
which we fix for two bugs (bcc misplaces members after unnamed ``long: 64;`` pads; bpftool 7.1 prints
1-byte enums as 4-byte ones), plus a few stub headers bcc includes. The tree is cached and rebuilt only
when the kernel release or its BTF changes.
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

from services.monitor.btf import VMLINUX_BTF, Btf

__all__ = ["ensure_btf_tree", "fix_vmlinux_text", "use_btf_tree"]

log = logging.getLogger("bulwark.monitor.btf_tree")

_STAMP = ".bulwark-stamp"
_PAD_RE = re.compile(r"^(\s*)long: 64;$", re.M)
_ENUM_OPEN_RE = re.compile(r"^enum (\w+) \{$")

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


def _kernel_stamp(btf_bytes: bytes) -> str:
    digest = hashlib.sha256(btf_bytes).hexdigest()[:16]
    return f"{platform.release()} {digest}\n"


def _version_h() -> str:
    nums = re.findall(r"\d+", platform.release())[:3] + ["0", "0", "0"]
    major, minor, patch = (int(n) for n in nums[:3])
    code = (major << 16) + (minor << 8) + min(patch, 255)
    return (f"#define LINUX_VERSION_CODE {code}\n"
            "#define KERNEL_VERSION(a,b,c) (((a) << 16) + ((b) << 8) + ((c) > 255 ? 255 : (c)))\n")


def _write_tree(root: Path, vmlinux_h: str, stamp: str) -> None:
    inc = root / "include"
    for sub in ("linux", "uapi/linux"):
        (inc / sub).mkdir(parents=True, exist_ok=True)
    (root / "arch/x86/include/asm").mkdir(parents=True, exist_ok=True)
    (inc / "vmlinux.h").write_text(vmlinux_h)
    (inc / "linux/kconfig.h").write_text(_KCONFIG)
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
    tree.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bcc-btf-", dir=tree.parent))
    try:
        _write_tree(tmp, text, stamp)
        if tree.exists():
            shutil.rmtree(tree)
        tmp.rename(tree)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("bcc BTF tree built", extra={"tree": str(tree), "pads_renamed": pads, "enums_packed": packed})
    return tree


def use_btf_tree(tree: Path) -> None:
    """Point bcc at the tree (read by bcc when it compiles, so set it before loading)."""
    os.environ["BCC_KERNEL_SOURCE"] = str(tree)
