"""Loading bpf/enforce/lsm.c: as written where the kernel lets LSM hooks call bpf_d_path, else (5.10:
"helper call is not allowed in probe") compiled with ``BW_NO_D_PATH``, reading paths by a dentry walk."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from services.enforcer.signal.enforcer import load_program

__all__ = ["load_lsm", "D_PATH", "WALK"]

D_PATH = "bpf_d_path"
WALK = "a dentry walk (this kernel refuses bpf_d_path in LSM hooks)"


def load_lsm(bpf_dir: Path, btf_tree: Path | None, on_record: Any) -> tuple[Any, str]:
    """The loaded module and how its paths are read (:data:`D_PATH` or :data:`WALK`). A refusal of the
    walking build too raises the first refusal, with the second's reason appended."""
    try:
        return load_program(bpf_dir, "lsm.c", btf_tree, on_record), D_PATH
    except Exception as first:
        if "Failed to load BPF program" not in str(first) or "Invalid argument" not in str(first):
            raise  # does not compile, not permitted, or the ring buffer failed: not the helper
        try:
            return load_program(bpf_dir, "lsm.c", btf_tree, on_record, defines=("BW_NO_D_PATH",)), WALK
        except Exception as second:
            raise RuntimeError(f"{first}; with paths walked instead of bpf_d_path: {second}") from first
