"""The rules enforcers load agree with the matcher that reports (the feeder) and the simulator.

The fanotify enforcer marks the files ``exec_block_rules`` names and, on an exec of a marked file,
denies when ``decide`` over the rules of the process's mount namespace says Block (see
``FanotifyEnforcer.apply`` and ``_should_deny``). Its verdict is replayed here exactly, against the
feeder's (``decide`` on the workload's compiled entry, postures included), for generated policies.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.enforcer.base import exec_block_rules
from services.policy.compiler import compile_rules
from services.policy.model import to_policy
from services.policy.validate import admit
from shared.matcher import Access, decide
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, WorkloadRules

PATHS = ["/bin/sh", "/bin/ls", "/usr/bin/apt", "/usr/bin/curl"]
SOURCES = ["/bin/bash", "/bin/dash", "/usr/bin/env", ""]


@st.composite
def process_policy(draw: st.DrawFn, index: int) -> dict:
    items = []
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3, unique=True)):
        item: dict = {"path": path, "action": draw(st.sampled_from(["Allow", "Audit", "Block"]))}
        sources = draw(st.lists(st.sampled_from(SOURCES[:-1]), max_size=2, unique=True))
        if sources:
            item["fromSource"] = [{"path": s} for s in sources]
        if draw(st.booleans()):
            item["ownerOnly"] = True
        items.append(item)
    if draw(st.booleans()):
        items.append({"dir": "/usr/bin/", "action": draw(st.sampled_from(["Allow", "Audit", "Block"]))})
    section = {"matchPaths": [i for i in items if "path" in i], "matchDirectories": [i for i in items if "dir" in i]}
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": f"p{index}", "namespace": "demo"},
            "spec": {"selector": {"matchLabels": {"app": draw(st.sampled_from(["a", "b"]))}},
                     "process": {k: v for k, v in section.items() if v}}}


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list, list[Workload]]:
    docs = [draw(process_policy(i)) for i in range(draw(st.integers(1, 4)))]
    workloads = []
    for i, app in enumerate(draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=3))):
        notes = {"kubearmor-policy": "audited"} if draw(st.booleans()) else {}
        ns_notes = {"kubearmor-file-posture": draw(st.sampled_from(["audit", "block"]))}
        workloads.append(Workload(id=f"w{i}", name=f"w{i}", namespace="demo", kind="container", node="n", mntns=100 + i,
                                  pidns=1, labels={"app": app}, annotations=notes, namespace_annotations=ns_notes))
    return [to_policy(admit(d).doc) for d in docs], workloads


def fanotify_denies(rules: list[Rule], access: Access) -> bool:
    """FanotifyEnforcer's verdict: a marked file, and decide() over the namespace's rules says Block."""
    marked = {r.path for r in exec_block_rules(rules)}
    if access.resource not in marked:
        return False
    decision = decide(rules, Access(operation="Process", resource=access.resource, source=access.source,
                                    access="exec"))
    return decision is not None and decision.action == "Block"


def feeder_decision(wr: WorkloadRules, access: Access):
    return decide(wr, access)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_fanotify_blocks_exactly_what_the_matcher_blocks_by_exact_path_rules(case) -> None:
    policies, workloads = case
    rs = compile_rules(policies, workloads, "n")
    for wr in rs.running():
        for path in PATHS + ["/usr/bin/vim"]:
            for source in SOURCES:
                access = Access("Process", path, source=source, access="exec")
                denied = fanotify_denies(wr.rules, access)
                decision = feeder_decision(wr, access)
                blocked = decision is not None and decision.action == "Block"
                if denied:  # whatever the enforcer denies, the matcher reports as Block
                    assert blocked, (wr.workload_id, path, source, decision)
                elif blocked:  # the only Blocks fanotify leaves alone: directory rules and the posture
                    by_dir_or_posture = decision.policy == "DefaultPosture" or (
                        decision.rule is not None and not decision.rule.path)
                    assert by_dir_or_posture, \
                        (wr.workload_id, path, source, decision)
                if wr.audited:  # an audited workload is never enforced
                    assert not denied and not blocked


def test_audited_block_rules_are_not_loaded_by_exec_enforcers() -> None:
    doc = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
           "metadata": {"name": "no-sh", "namespace": "demo"},
           "spec": {"selector": {"matchLabels": {"app": "a"}}, "process": {"matchPaths": [{"path": "/bin/sh"}]},
                    "action": "Block"}}
    policy = to_policy(admit(doc).doc)
    plain = Workload(id="plain", name="plain", namespace="demo", kind="container", node="n", mntns=1, pidns=1,
                     labels={"app": "a"})
    audited = Workload(id="aud", name="aud", namespace="demo", kind="container", node="n", mntns=2, pidns=1,
                       labels={"app": "a"}, annotations={"kubearmor-policy": "audited"})
    rs = compile_rules([policy], [plain, audited], "n")
    assert [r.path for r in exec_block_rules(rs.workloads["plain"].rules)] == ["/bin/sh"]
    assert exec_block_rules(rs.workloads["aud"].rules) == []
    assert decide(rs.workloads["aud"], Access("Process", "/bin/sh")).action == "Audit (Block)"
    assert policy.rules[0].action == "Block"  # the shared compiled policy is untouched
