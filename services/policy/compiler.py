"""Policies + the workloads of one node -> that node's RuleSet. Pure: no I/O, no clock unless asked.

Selection, as KubeArmor does it:

* KubeArmorPolicy: container workloads in the policy's namespace whose labels include every
  ``matchLabels`` entry (an empty selector selects the whole namespace); ``kubearmor.io/container.name:
  "[a,b]"`` narrows to those container names (an empty list, ``"[]"`` or ``""``, narrows nothing);
  ``matchExpressions`` (key ``label``) must all hold.
* KubeArmorClusterPolicy: container workloads, in any namespace, for which every
  ``matchExpressions`` entry holds (key ``namespace``: the workload's namespace; key ``label``: a
  ``k=v`` label; operator In or NotIn). No expressions selects every container.
* KubeArmorHostPolicy: ``host`` workloads whose labels (the node's labels) include every
  ``nodeSelector.matchLabels`` entry; a value ``*`` matches any value.
* KubeArmorNetworkPolicy: parsed and stored, not compiled yet.

Each workload's entry also carries its default postures (global default, overridden by namespace
annotations) and its audited flag (see :mod:`services.policy.posture`): a workload annotated
``kubearmor-policy: audited`` gets its Block rules as ``Audit (Block)``, one annotated ``disabled``
gets no rules. The matcher then decides from the RuleSet alone.
"""
from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable

from services.policy.model import Expression, Policy
from services.policy.posture import policy_mode, workload_posture
from shared.matcher import DEFAULT_POSTURE, Posture
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

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


def _audited(rules: list[Rule], cache: dict[int, Rule]) -> list[Rule]:
    """``rules`` with every Block turned into ``Audit (Block)`` (copies shared across workloads)."""
    out = []
    for rule in rules:
        if rule.action == "Block":
            if id(rule) not in cache:
                cache[id(rule)] = dataclasses.replace(rule, action="Audit (Block)")
            rule = cache[id(rule)]
        out.append(rule)
    return out


class _Candidates:
    """The policies worth testing for a workload: namespaced ones of its namespace, and the others."""

    def __init__(self, policies: Iterable[Policy]) -> None:
        self.by_namespace: dict[str, list[Policy]] = defaultdict(list)
        self.cluster: list[Policy] = []
        self.host: list[Policy] = []
        self.order: dict[int, int] = {}
        for i, p in enumerate(p for p in policies if p.rules):
            self.order[id(p)] = i
            if p.kind == "KubeArmorPolicy":
                self.by_namespace[p.namespace].append(p)
            elif p.kind == "KubeArmorHostPolicy":
                self.host.append(p)
            else:
                self.cluster.append(p)

    def selecting(self, wl: Workload) -> list[Policy]:
        """Every policy selecting ``wl``, in the order the policies were given."""
        if wl.kind == "host":
            pool = self.host
        else:
            pool = self.by_namespace.get(wl.namespace, []) + self.cluster
        hits = [p for p in pool if selects(p, wl)]
        hits.sort(key=lambda p: self.order[id(p)])
        return hits


def compile_rules(policies: Iterable[Policy], workloads: Iterable[Workload], node: str, *,
                  version: int = 0, policy_seq: int = 0, identity_seq: int = 0,
                  generated_ns: int = 0, default_posture: Posture = DEFAULT_POSTURE) -> RuleSet:
    """The RuleSet of ``node``: every workload given, with the rules of the policies selecting it.

    The caller decides which workloads to give: the running ones, and those stopped so recently that
    events they caused may still be on their way. ``default_posture`` is the global default.
    """
    candidates = _Candidates(policies)
    audited_cache: dict[int, Rule] = {}
    out: dict[str, WorkloadRules] = {}
    for wl in workloads:
        mode = policy_mode(wl)
        rules = [] if mode == "disabled" else [r for p in candidates.selecting(wl) for r in p.rules]
        if mode == "audited":
            rules = _audited(rules, audited_cache)
        posture = workload_posture(wl, default_posture)
        out[wl.id] = WorkloadRules(workload_id=wl.id, mntns=wl.mntns, pidns=wl.pidns, rules=rules,
                                   stopped_ns=wl.stopped_ns, file_posture=posture.file,
                                   network_posture=posture.network, capabilities_posture=posture.capabilities,
                                   audited=posture.audited)
    return RuleSet(node=node, version=version, policy_seq=policy_seq, identity_seq=identity_seq,
                   workloads=out, generated_ns=generated_ns)


compile = compile_rules  # noqa: A001 - the name the design uses
