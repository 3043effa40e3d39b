"""Marks launched workloads of this node stopped when their first process is gone."""
from __future__ import annotations

import os

from shared.schemas.identity import Workload

__all__ = ["is_gone"]


def is_gone(wl: Workload) -> bool:
    """True when the workload's recorded process no longer exists in its mount namespace."""
    if wl.source != "launcher" or not wl.host_pid:
        return False
    try:
        return os.stat(f"/proc/{wl.host_pid}/ns/mnt").st_ino != wl.mntns
    except OSError:
        return True
