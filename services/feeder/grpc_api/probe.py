"""KubeArmor's ``policy.ProbeService`` (``karmor probe`` in non-Kubernetes mode), answered from the feeder's views.

``containerList``: the running containers' names; ``containerMap``: per container (that has a RuleSet
entry) the names of the policies applied to it and ``policyEnabled`` (0 disabled, 1 enabled, 2 audited,
from the ``kubearmor-policy`` annotation); ``hostMap``: per node the names of its host policies. Bulwark
adds ``nodeMap`` (field 100, skipped by KubeArmor's clients): per node, what its heartbeats report, the
enforcer (name as alerts carry it, per operation, and Bulwark's name) and each service's last status;
this is what ``bulwark probe`` prints on that node. ``policyListData`` is left empty.
"""
from __future__ import annotations

from typing import Any

import grpc

from services.feeder.views import FeederState
from shared.proto_gen import policy_pb2 as ppb
from shared.proto_gen import policy_pb2_grpc as ppb_grpc
from shared.schemas.identity import Workload
from shared.schemas.rules import WorkloadRules

__all__ = ["ProbeService", "probe_response", "policy_enabled"]

_DISABLED, _ENABLED, _AUDITED = 0, 1, 2


def policy_enabled(workload: Workload | None, rules: WorkloadRules) -> int:
    """KubeArmor's PolicyEnabled: 0 disabled, 1 enabled, 2 audited."""
    mode = workload.annotations.get("kubearmor-policy", "") if workload is not None else ""
    if mode == "disabled":
        return _DISABLED
    return _AUDITED if rules.audited or mode == "audited" else _ENABLED


def _names(rules: WorkloadRules) -> list[str]:
    return sorted({r.policy for r in rules.rules if r.policy})


def _node_probe(state: FeederState, node: str) -> ppb.NodeProbe:
    out = ppb.NodeProbe(enforcer=state.enforcers.get(node, ""))
    out.enforcers.update(state.enforcers_by_operation.get(node, {}))
    for (service, where), entry in state.health.items():
        if where != node:
            continue
        out.services[service] = entry.status
        if service == "enforcer":
            out.active = str(entry.details.get("active", ""))
    return out


def probe_response(state: FeederState) -> ppb.ProbeResponse:
    """The ProbeResponse for what ``state`` holds now."""
    by_id: dict[str, Workload] = {w.id: w for w in state.workloads.values()}
    by_id.update({w.id: w for w in state.hosts.values()})
    out = ppb.ProbeResponse()
    out.containerList.extend(sorted({w.name for w in state.workloads.values()
                                     if w.kind != "host" and not w.stopped_ns}))
    for node, ruleset in state.rulesets.items():
        for wid, rules in ruleset.workloads.items():
            workload = by_id.get(wid)
            if workload is not None and workload.kind == "host":
                out.hostMap[node].policyList.extend(_names(rules))
                continue
            name = workload.name if workload is not None else wid
            entry = out.containerMap[name]
            entry.policyList.extend(n for n in _names(rules) if n not in entry.policyList)
            entry.policyEnabled = policy_enabled(workload, rules)
    nodes = set(state.rulesets) | {node for _service, node in state.health if node}
    for node in sorted(nodes):
        out.hostMap.get_or_create(node)  # KubeArmor always lists its host, with or without policies
        out.nodeMap[node].CopyFrom(_node_probe(state, node))
    return out


class ProbeService(ppb_grpc.ProbeServiceServicer):
    """getProbeData over the feeder's :class:`FeederState`."""

    def __init__(self, state: FeederState) -> None:
        self.state = state

    async def getProbeData(self, request: Any, context: grpc.aio.ServicerContext) -> ppb.ProbeResponse:
        """The containers, their policies, the hosts' policies and each node's enforcers."""
        return probe_response(self.state)
