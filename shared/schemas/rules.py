"""Compiled rules: what the policy service publishes per node and enforcers and the feeder load."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.schemas._wire import from_map, to_map

__all__ = ["Rule", "WorkloadRules", "RuleSet"]


@dataclass(slots=True)
class Rule:
    """One compiled rule for one workload, with every default already applied.

    ``operation`` is a KubeArmor Operation (``Process``, ``File``, ``Network``, ``Capabilities``,
    ``Syscall``), or ``Preset`` for a policy preset, which ``preset`` names (``filelessExec``...;
    shared.presets); exactly one of ``path``, ``dir`` or ``pattern`` names the resource for Process and
    File rules. ``action`` is ``Allow``, ``Audit`` or ``Block`` (already normalised), or
    ``Audit (Block)`` for a Block rule compiled for a workload annotated ``kubearmor-policy: audited``
    (reported, never enforced). ``pattern`` is a regular expression for a full match (the policy's
    glob, translated by the compiler).
    """

    policy: str
    policy_kind: str
    policy_namespace: str
    operation: str
    action: str
    severity: int = 0
    message: str = ""
    tags: list[str] = field(default_factory=list)
    path: str = ""
    dir: str = ""
    recursive: bool = False
    pattern: str = ""
    exec_name: str = ""
    read_only: bool = False
    owner_only: bool = False
    from_source: list[dict[str, Any]] = field(default_factory=list)
    protocol: str = ""
    capability: str = ""
    syscall: str = ""
    preset: str = ""

    def to_wire(self) -> dict[str, Any]:
        """As a msgpack-ready map."""
        return to_map(self)

    @classmethod
    def from_wire(cls, data: Any) -> Rule:
        """From a bus map; DecodeError when it is not one."""
        return from_map(cls, data, "rule")


@dataclass(slots=True)
class WorkloadRules:
    """The rules that apply to one workload, with the namespaces that identify it in the kernel.

    ``stopped_ns`` is set for a workload that has stopped but is still listed so that events it
    caused are judged by its rules. Enforcers must ignore such entries: the kernel reuses namespace
    inode numbers, so its ``mntns`` may already belong to another workload.

    ``*_posture`` (``audit`` or ``block``) is what an access outside an allow-list of that kind gets
    (Process allow-lists use the file posture); ``audited`` marks a workload whose Block rules are
    only reported. With these the matcher decides from the RuleSet alone.
    """

    workload_id: str
    mntns: int
    pidns: int
    rules: list[Rule] = field(default_factory=list)
    stopped_ns: int = 0
    file_posture: str = "audit"
    network_posture: str = "audit"
    capabilities_posture: str = "audit"
    audited: bool = False

    def to_wire(self) -> dict[str, Any]:
        """As a msgpack-ready map."""
        return {"workload_id": self.workload_id, "mntns": self.mntns, "pidns": self.pidns,
                "rules": [r.to_wire() for r in self.rules], "stopped_ns": self.stopped_ns,
                "file_posture": self.file_posture, "network_posture": self.network_posture,
                "capabilities_posture": self.capabilities_posture, "audited": self.audited}

    @classmethod
    def from_wire(cls, data: Any) -> WorkloadRules:
        """From a bus map; DecodeError when it is not one."""
        wr = from_map(cls, data, "workload rules")
        wr.rules = [Rule.from_wire(r) for r in (wr.rules or [])]
        return wr


@dataclass(slots=True)
class RuleSet:
    """A node's complete compiled rules. ``workloads`` lists every workload known on the node,
    including those no policy selects, so a reader can tell "no rules" from "not yet compiled".
    ``version`` grows with every compile; ``policy_seq``/``identity_seq`` are the stream sequences
    it was compiled from."""

    node: str
    version: int
    policy_seq: int
    identity_seq: int
    workloads: dict[str, WorkloadRules] = field(default_factory=dict)
    generated_ns: int = 0

    def to_wire(self) -> dict[str, Any]:
        """As a msgpack-ready map."""
        return {"node": self.node, "version": self.version, "policy_seq": self.policy_seq,
                "identity_seq": self.identity_seq, "generated_ns": self.generated_ns,
                "workloads": {k: v.to_wire() for k, v in self.workloads.items()}}

    def running(self) -> list[WorkloadRules]:
        """The workloads an enforcer acts on: every listed workload that has not stopped."""
        return [wr for wr in self.workloads.values() if not wr.stopped_ns]

    @classmethod
    def from_wire(cls, data: Any) -> RuleSet:
        """From a bus map; DecodeError when it is not one."""
        rs = from_map(cls, data, "rule set")
        rs.workloads = {k: WorkloadRules.from_wire(v) for k, v in (rs.workloads or {}).items()}
        return rs
