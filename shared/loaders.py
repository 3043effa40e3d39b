"""The dynamic loader run as a program (``ld.so PROGRAM``): an exec that the kernel sees as an open.

``/lib64/ld-linux-x86-64.so.2 /bin/sleep`` maps /bin/sleep itself after a plain read-only open, so no
exec of /bin/sleep happens. The fanotify enforcer and the feeder judge such an open, by a loader, as an
exec of the opened file too, which closes that bypass of Process rules. Only explicit rules count for
it (allow-list postures do not): the loader opens the program's libraries the same way.
"""
from __future__ import annotations

import fnmatch
import posixpath
from collections.abc import Sequence
from dataclasses import replace

from shared.matcher import Access, Decision, Posture, decide
from shared.schemas.rules import Rule, WorkloadRules

__all__ = ["is_program_loader", "loader_exec_decision", "decide_access"]

_RANK = {"Block": 3, "Audit (Block)": 2, "Audit": 1, "Allow": 0}

# glibc (x86_64, i386, aarch64, ...), musl, and the generic names.
_LOADER_NAMES = ("ld-linux*.so*", "ld-musl-*.so*", "ld.so", "ld.so.[0-9]*", "ld64.so.*")


def is_program_loader(exe: str) -> bool:
    """Whether ``exe`` (a process's executable path) is a dynamic loader."""
    name = posixpath.basename(exe)
    return bool(name) and any(fnmatch.fnmatchcase(name, pattern) for pattern in _LOADER_NAMES)


def loader_exec_decision(rules: Sequence[Rule] | WorkloadRules, access: Access,
                         audited: bool = False) -> Decision | None:
    """For a loader's read-only open, the Process decision for exec'ing that file; else None."""
    if access.operation != "File" or access.access != "read" or not is_program_loader(access.source):
        return None
    if isinstance(rules, WorkloadRules):
        audited = rules.audited
    return decide(rules, replace(access, operation="Process", access="exec"), Posture(audited=audited))


def decide_access(rules: Sequence[Rule] | WorkloadRules, access: Access,
                  posture: Posture | None = None) -> Decision | None:
    """``shared.matcher.decide``, plus the exec a loader's open stands for: the stronger of the two wins."""
    plain = decide(rules, access, posture)
    as_exec = loader_exec_decision(rules, access, bool(posture and posture.audited))
    if as_exec is None:
        return plain
    if plain is None or _RANK.get(as_exec.action, 0) > _RANK.get(plain.action, 0):
        return as_exec
    return plain
