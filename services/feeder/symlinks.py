"""An exec through symlinks, judged by the file it ran as well as by the path it asked for.

The kernel's enforcers judge the file an exec runs: fanotify by its inode, BPF-LSM and AppArmor by its
real path. ``/usr/bin/python3`` (a symlink) runs ``/usr/bin/python3.6``, so a rule naming the latter
refuses it, while the exec record names the former. The monitor resolves the symlinks inside the
workload's root (``extra real_path``, services/monitor/decode/workload_files.py); the feeder then asks
the matcher about both paths and keeps the decision a rule made: the real path's when only it is named
by a rule (so the refusal has its alert, with that path as Resource), the stronger of two rules' when
both are, and the path as written when neither is (a posture decides it the same way for both).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from shared.loaders import decide_access
from shared.matcher import POSTURE_POLICY, Access, Decision
from shared.schemas.events import RawEvent
from shared.schemas.rules import Rule, WorkloadRules

__all__ = ["real_path", "decide_through_symlinks"]

_RANK = {"Block": 3, "Audit (Block)": 2, "Audit": 1, "Allow": 0}


def real_path(event: RawEvent) -> str:
    """The real path of the program an exec record asked for through symlinks, "" when none or the same."""
    if event.kind != "exec":
        return ""
    real = event.extra.get("real_path")
    return real if isinstance(real, str) and real.startswith("/") and real != event.path else ""


def _rule_rank(decision: Decision | None) -> int:
    """-1 unless a rule (not a posture) made ``decision``; else how strong it is."""
    if decision is None or decision.policy == POSTURE_POLICY:
        return -1
    return _RANK.get(decision.action, 0)


def decide_through_symlinks(rules: Sequence[Rule] | WorkloadRules, access: Access,
                            event: RawEvent) -> tuple[Decision | None, RawEvent]:
    """The decision for ``access`` (with shared.loaders), and the record to report it with: ``event`` with
    its real path when that path's decision is the one kept (see the module docstring)."""
    plain = decide_access(rules, access)
    real = real_path(event)
    if not real:
        return plain, event
    via = decide_access(rules, replace(access, resource=real))
    if _rule_rank(via) > _rule_rank(plain):
        return via, replace(event, path=real)
    return plain, event
