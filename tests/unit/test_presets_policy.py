"""Policy presets from the document to the verdict: admission (names, actions, warnings), the compiled
rules, the matcher, and the monitor's kernel filter bits."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.monitor.kernel_filters import PRESET_BITS, visibility_masks
from services.policy.compiler import compile_rules
from services.policy.model import to_policy
from services.policy.parser import parse_documents
from services.policy.validate import admit, check_document
from shared.bpf.abi import BW_VIS_PRESET_ANON_EXEC, BW_VIS_PRESET_ENV, BW_VIS_PRESET_FILELESS
from shared.errors import ValidationFailed
from shared.matcher import Access, decide
from shared.presets import PRESETS, ROUTES, route
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule

CORPUS = Path(__file__).resolve().parents[3] / "shared/conformance/kubearmor/policies"


def policy(presets: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": "p", "namespace": "presets"},
            "spec": {"selector": {"matchLabels": {"app": "fileless"}}, "presets": presets, **spec}}


def test_known_presets_compile_to_preset_rules_with_the_specs_fields() -> None:
    doc = policy([{"name": "filelessExec", "action": "Block"}, {"name": "protectEnv", "action": "Audit"},
                  {"name": "anonMapExec"}, {"name": "exec", "action": "Audit"}],
                 severity=8, message="fileless!", tags=["MITRE"], action="Audit")
    rules = to_policy(admit(doc).doc).rules
    assert [(r.operation, r.preset, r.action) for r in rules] == [
        ("Preset", "filelessExec", "Block"), ("Preset", "protectEnv", "Audit"),
        ("Preset", "anonMapExec", "Block"),        # its own action only: KubeArmor blocks unless Audit
        ("Preset", "exec", "Audit")]
    assert {(r.severity, r.message, tuple(r.tags)) for r in rules} == {(8, "fileless!", ("MITRE",))}
    assert {route(r) for r in rules} <= ROUTES


@pytest.mark.parametrize("presets, path, words", [
    ([{"name": "filelesExec", "action": "Block"}], "spec.presets[0].name", "unknown preset 'filelesExec'"),
    ([{"name": "exec"}, {"action": "Block"}], "spec.presets[1].name", "is required"),
    ([{"name": "protectEnv", "action": "Allow"}], "spec.presets[0].action", "Audit"),
])
def test_unknown_or_nameless_presets_and_allow_are_refused_by_field_path(presets: list[dict[str, Any]],
                                                                        path: str, words: str) -> None:
    errors, _ = check_document(policy(presets))
    assert [e.path for e in errors] == [path] and words in errors[0].message
    with pytest.raises(ValidationFailed):
        admit(policy(presets))


def test_a_block_preset_says_in_advance_who_can_block_it() -> None:
    _, warnings = check_document(policy([{"name": "filelessExec", "action": "Block"}, {"name": "exec"},
                                         {"name": "protectEnv", "action": "Audit"}]))
    by_path = {w.path: w.message for w in warnings}
    assert set(by_path) == {"spec.presets[0].action", "spec.presets[1].action", "spec.presets[1].name"}
    assert "PID namespace" in by_path["spec.presets[1].name"]
    assert "eBPF signal" in by_path["spec.presets[0].action"] and "Audit (Block)" in by_path["spec.presets[0].action"]
    assert "never blocks" in by_path["spec.presets[1].action"]
    audit_only = check_document(policy([{"name": "protectEnv", "action": "Audit"}, {"name": "exec",
                                                                                      "action": "Audit"}]))[1]
    assert [w.path for w in audit_only] == ["spec.presets[1].name"]          # the exec preset's scope only


def test_a_policy_with_only_presets_declares_rules() -> None:
    stored = admit(policy([{"name": "protectEnv", "action": "Audit"}]))
    assert not [w for w in stored.warnings if "does not enforce" in w.message]


@pytest.mark.skipif(not CORPUS.is_dir(), reason="the KubeArmor conformance corpus is not on this machine")
def test_kubearmors_preset_policies_are_admitted_and_compile() -> None:
    files = sorted(CORPUS.rglob("*preset*.yaml"))
    assert len(files) == 5
    for f in files:
        [(label, doc)] = parse_documents(f.read_text(), str(f))
        rules = to_policy(admit(doc, label).doc).rules
        assert rules and all(r.operation == "Preset" and r.preset in PRESETS for r in rules), f


def _rule(preset: str, action: str = "Block", policy: str = "pre") -> Rule:
    return Rule(policy=policy, policy_kind="KubeArmorPolicy", policy_namespace="ns", operation="Preset",
                action=action, severity=5, preset=preset)


def test_the_matcher_matches_a_preset_only_against_that_presets_attack() -> None:
    rules = [_rule("filelessExec"), _rule("protectEnv", "Audit", "env"),
             Rule(policy="allow-ls", policy_kind="KubeArmorPolicy", policy_namespace="ns", operation="Process",
                  action="Allow", path="/bin/ls")]
    fileless = decide(rules, Access("Preset", "memfd:x", preset="filelessExec"))
    assert fileless is not None and (fileless.action, fileless.policy) == ("Block", "pre")
    env = decide(rules, Access("Preset", "/proc/1/environ", preset="protectEnv"))
    assert env is not None and (env.action, env.policy) == ("Audit", "env")
    assert decide(rules, Access("Preset", "", preset="anonMapExec")) is None
    # a Process allow-list's posture never judges a preset's record, nor a preset an exec
    assert decide(rules, Access("Process", "memfd:x", access="exec")) is not None
    assert decide([_rule("filelessExec")], Access("Process", "memfd:x", access="exec")) is None


def test_block_and_audit_of_one_preset_block() -> None:
    both = [_rule("anonMapExec", "Audit", "a"), _rule("anonMapExec", "Block", "b")]
    decision = decide(both, Access("Preset", preset="anonMapExec"))
    assert decision is not None and (decision.action, decision.policy) == ("Block", "b")


def test_an_audited_workload_gets_its_block_presets_as_audit_block() -> None:
    doc = admit(policy([{"name": "filelessExec", "action": "Block"}])).doc
    wl = Workload(id="w", name="w", namespace="presets", kind="container", node="n", mntns=11, pidns=12,
                  labels={"app": "fileless"}, annotations={"kubearmor-policy": "audited"})
    rs = compile_rules([to_policy(doc)], [wl], "n")
    assert [r.action for r in rs.workloads["w"].rules] == ["Audit (Block)"]


def test_preset_rules_set_their_bits_for_their_namespace_and_the_default() -> None:
    doc = admit(policy([{"name": "filelessExec"}, {"name": "protectEnv", "action": "Audit"}])).doc
    wl = Workload(id="w", name="w", namespace="presets", kind="container", node="n", mntns=11, pidns=12,
                  labels={"app": "fileless"})
    other = Workload(id="o", name="o", namespace="presets", kind="container", node="n", mntns=13, pidns=14)
    rs = compile_rules([to_policy(doc)], [wl, other], "n")
    masks = visibility_masks(rs, {"w": wl, "o": other}, host_mntns=1)
    wanted = BW_VIS_PRESET_FILELESS | BW_VIS_PRESET_ENV
    assert masks[11] & wanted == wanted and not masks[11] & BW_VIS_PRESET_ANON_EXEC
    assert masks[13] & wanted == 0                  # a workload no preset selects
    assert masks[0] & wanted == wanted              # a namespace not known yet
    assert masks[1] & wanted == 0                   # the host
    assert set(PRESET_BITS) == set(PRESETS)


class _Stub:
    def __init__(self, name: str, operations: frozenset[str]) -> None:
        self.name, self.operations = name, operations


def test_probe_says_which_enforcer_blocks_each_preset_here() -> None:
    from bulwark.cli import preset_lines
    from services.enforcer.composite import CompositeEnforcer

    fanotify = _Stub("Fanotify", frozenset({"Process", "File"}))
    signal = _Stub("eBPF Signal", frozenset({"Network", "Preset:filelessExec", "Preset:anonMapExec"}))
    lines = preset_lines(CompositeEnforcer([(fanotify, fanotify.operations),        # type: ignore[list-item]
                                            (signal, signal.operations)]))
    by_name = {line.split()[1]: line for line in lines}
    assert set(by_name) == set(PRESETS)
    assert "Block enforced by eBPF Signal" in by_name["filelessExec"]
    assert "Block enforced by eBPF Signal" in by_name["anonMapExec"]
    assert "only reported here, as Audit (Block)" in by_name["protectEnv"]
    assert "only reported here" in by_name["exec"]
    alone = preset_lines(_Stub("BPFLSM", frozenset({"Process", "Preset:protectEnv"})))
    assert "Block enforced by BPFLSM" in next(line for line in alone if " protectEnv " in line)
