"""Policies + the workloads of one node -> that node's RuleSet. Pure: no I/O, no clock unless asked.

Selection, as KubeArmor does it:

* KubeArmorPolicy: container workloads in the policy's namespace whose labels include every
  ``matchLabels`` entry (an empty selector selects the whole namespace); ``kubearmor.io/container.name:
  "[a,b]"`` narrows to those container names; ``matchExpressions`` (key ``label``) must all hold.
* KubeArmorClusterPolicy: container workloads, in any namespace, for which every
  ``matchExpressions`` entry holds (key ``namespace``: the workload's namespace; key ``label``: a
  ``k=v`` label; operator In or NotIn). No expressions selects every container.
* KubeArmorHostPolicy: ``host`` workloads whose labels (the node's labels) include every
  ``nodeSelector.matchLabels`` entry; a value ``*`` matches any value.
* KubeArmorNetworkPolicy: parsed and stored, not compiled yet.
"""
from __future__ import annotations

from collections.abc import Iterable

from shared.schemas.identity import Workload
from shared.schemas.rules import RuleSet, WorkloadRules
from services.policy.model import Expression, Policy

__all__ = ["compile_rules", "selects", "compile"]


def _labels_include(labels: dict[str, str], wanted: dict[str, str], wildcard: bool = False) -> bool:
    for key, value in wanted.items():
        if wildcard and value == "*":
            continue
        if labels.get(key) != value:
            return False
    return True


def _expression_holds(expr: Expression, wl: Workload) -> bool:
    if expr.key == "namespace":
        hit = wl.namespace in expr.values
    elif expr.key == "label":
        pairs = {f"{k}={v}" for k, v in wl.labels.items()} | set(wl.labels)
        hit = any(v in pairs for v in expr.values)
    else:
        return False
    if expr.operator == "In":
        return hit
    if expr.operator == "NotIn":
        return not hit
    return False


def selects(policy: Policy, wl: Workload) -> bool:
    """Whether ``policy`` applies to workload ``wl``."""
    if policy.kind == "KubeArmorHostPolicy":
        return wl.kind == "host" and _labels_include(wl.labels, policy.node_labels, wildcard=True)
    if wl.kind == "host":
        return False
    if policy.kind == "KubeArmorPolicy":
        if wl.namespace != policy.namespace or not _labels_include(wl.labels, policy.match_labels):
            return False
        if policy.container_names is not None and wl.name not in policy.container_names:
            return False
        return all(_expression_holds(e, wl) for e in policy.expressions)
    if policy.kind == "KubeArmorClusterPolicy":
        return all(_expression_holds(e, wl) for e in policy.expressions)
    return False


def compile_rules(policies: Iterable[Policy], workloads: Iterable[Workload], node: str, *,
                  version: int = 0, policy_seq: int = 0, identity_seq: int = 0,
                  generated_ns: int = 0) -> RuleSet:
    """The RuleSet of ``node``: every workload given, with the rules of the policies selecting it.

    The caller decides which workloads to give: the running ones, and those stopped so recently that
    events they caused may still be on their way.
    """
    pols = [p for p in policies if p.rules]
    out: dict[str, WorkloadRules] = {}
    for wl in workloads:
        rules = [r for p in pols if selects(p, wl) for r in p.rules]
        out[wl.id] = WorkloadRules(workload_id=wl.id, mntns=wl.mntns, pidns=wl.pidns, rules=rules,
                                   stopped_ns=wl.stopped_ns)
    return RuleSet(node=node, version=version, policy_seq=policy_seq, identity_seq=identity_seq,
                   workloads=out, generated_ns=generated_ns)


compile = compile_rules  # noqa: A001 - the name the design uses
