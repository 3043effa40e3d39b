"""Which operations of a workload are logged when no policy matched (KubeArmor's visibility).

Global defaults come from settings (``visibility_containers``: process,file,network,capabilities;
``visibility_hosts``: none); a namespace annotation ``kubearmor-visibility`` (a comma list, or
``none``) overrides the default for containers in that namespace. Syscall records (the setuid family,
ptrace, mount, umount2: what the monitor records of a process besides its execs) are logged under
``process``, as KubeArmor logs its ``Operation: Syscall`` records with process visibility. Pure, no I/O.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Protocol

from shared.schemas.identity import Workload

__all__ = ["visible", "parse_visibility", "VISIBILITY_ANNOTATION", "KNOWN"]

VISIBILITY_ANNOTATION = "kubearmor-visibility"
KNOWN = frozenset({"process", "file", "network", "capabilities"})
_DEFAULT_CONTAINERS = "process,file,network,capabilities"


class _VisibilitySettings(Protocol):
    visibility_containers: str
    visibility_hosts: str


@lru_cache(maxsize=1024)
def parse_visibility(text: str) -> frozenset[str]:
    """``"process, File"`` -> {"process", "file"}; ``"none"`` or empty -> {}; unknown words ignored."""
    words = {w.strip().lower() for w in text.split(",")}
    return frozenset(words & KNOWN)


def visible(workload: Workload, operation: str, settings: _VisibilitySettings | None = None) -> bool:
    """Whether ``operation`` (a KubeArmor Operation, e.g. ``Process``) of ``workload`` is logged."""
    op = operation.lower()
    if op == "syscall":
        op = "process"
    if workload.kind == "host":
        default = settings.visibility_hosts if settings is not None else "none"
        annotated = workload.annotations.get(VISIBILITY_ANNOTATION)
        return op in parse_visibility(annotated if annotated is not None else default)
    annotated = workload.namespace_annotations.get(VISIBILITY_ANNOTATION)
    if annotated is None:
        annotated = settings.visibility_containers if settings is not None else _DEFAULT_CONTAINERS
    return op in parse_visibility(annotated)
