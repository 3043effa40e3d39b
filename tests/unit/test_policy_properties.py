"""Property tests of policy admission and compilation (hypothesis)."""
from __future__ import annotations

import copy
import re
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.policy.compiler import compile_rules
from services.policy.globs import glob_to_regex
from services.policy.model import to_policy
from services.policy.validate import KINDS, admit, check_document, validate
from shared.matcher import Access, decide
from shared.schemas.identity import Workload
from shared.schemas.rules import RuleSet

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

segment = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=8).filter(
    lambda s: s not in (".", ".."))
abs_path = st.lists(segment, min_size=1, max_size=4).map(lambda parts: "/" + "/".join(parts))
abs_dir = st.lists(segment, min_size=0, max_size=3).map(lambda parts: "/" + "".join(p + "/" for p in parts))
action = st.sampled_from(["Allow", "Audit", "Block"])
label_key = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
label_value = st.from_regex(r"[a-z0-9]{1,6}", fullmatch=True)
labels = st.dictionaries(label_key, label_value, min_size=1, max_size=3)


def _base(severity: Any = 5) -> dict[str, Any]:
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"severity": severity, "selector": {"matchLabels": {"app": "a"}},
                     "process": {"matchPaths": [{"path": "/bin/sh"}]}, "action": "Block"}}


@SETTINGS
@given(st.one_of(st.integers(max_value=0), st.integers(min_value=11)))
def test_any_severity_outside_1_to_10_is_rejected_naming_spec_severity(severity: int) -> None:
    errors = validate(_base(severity), "doc")
    assert errors and all(e.path == "spec.severity" for e in errors)
    assert all(e.document == "doc" for e in errors)


@SETTINGS
@given(st.integers(min_value=1, max_value=10))
def test_any_severity_from_1_to_10_is_accepted(severity: int) -> None:
    assert validate(_base(severity)) == []


@st.composite
def policies(draw: st.DrawFn) -> dict[str, Any]:
    """Valid KubeArmorPolicy documents with process, file and network rules."""
    spec: dict[str, Any] = {"selector": {"matchLabels": draw(labels)}, "action": draw(action)}
    if draw(st.booleans()):
        spec["severity"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        spec["tags"] = draw(st.lists(segment, max_size=3))
    proc = [{"path": p} for p in draw(st.lists(abs_path, max_size=3))]
    proc += [{"dir": d, "recursive": draw(st.booleans())} for d in draw(st.lists(abs_dir, max_size=2))]
    if proc:
        spec["process"] = {"matchPaths": [x for x in proc if "path" in x],
                           "matchDirectories": [x for x in proc if "dir" in x]}
        spec["process"] = {k: v for k, v in spec["process"].items() if v}
    files = [{"path": p, "readOnly": draw(st.booleans()), "ownerOnly": draw(st.booleans()),
              "action": draw(action)} for p in draw(st.lists(abs_path, max_size=3))]
    if files or not proc:
        spec["file"] = {"matchPaths": files or [{"path": "/etc/passwd"}]}
    if draw(st.booleans()):
        spec["network"] = {"matchProtocols": [{"protocol": draw(st.sampled_from(["tcp", "UDP", "icmp", "raw",
            "all"]))}]}
    name = draw(st.from_regex(r"[a-z][a-z0-9-]{0,10}[a-z0-9]", fullmatch=True))
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": name, "namespace": "ns"}, "spec": spec}


@SETTINGS
@given(policies())
def test_valid_policies_round_trip_through_admit_and_compile(doc: dict[str, Any]) -> None:
    assert validate(doc) == [], [str(e) for e in validate(doc)]
    admitted = admit(copy.deepcopy(doc))
    assert admit(admitted.doc).doc == admitted.doc  # admission is idempotent
    policy = to_policy(admitted.doc)
    n_items = sum(len(v) for section in ("process", "file", "network") for v in doc["spec"].get(section, {}).values())
    assert len(policy.rules) == n_items
    assert all(r.action in ("Allow", "Audit", "Block") for r in policy.rules)
    chosen = Workload(id="in", name="c", namespace="ns", kind="container", node="n", mntns=1, pidns=1,
                      labels={**doc["spec"]["selector"]["matchLabels"], "extra": "x"})
    elsewhere = Workload(id="out", name="c", namespace="other", kind="container", node="n", mntns=2, pidns=1,
                         labels=dict(chosen.labels))
    rs = compile_rules([policy], [chosen, elsewhere], "n", policy_seq=7, identity_seq=3)
    assert rs.workloads["in"].rules == policy.rules and rs.workloads["out"].rules == []
    again = RuleSet.from_wire(rs.to_wire())
    assert again.to_wire() == rs.to_wire() and (again.policy_seq, again.identity_seq) == (7, 3)
    for rule in policy.rules:  # every exact-path rule decides its own path (unless a stronger one does)
        if rule.path and rule.operation == "Process":
            assert decide(rs.workloads["in"], Access("Process", rule.path)) is not None


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=10))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=25)
field_names = st.sampled_from(["apiVersion", "kind", "metadata", "spec", "name", "namespace", "selector",
                               "matchLabels", "process", "file", "matchPaths", "path", "dir", "severity",
                               "action", "fromSource", "network", "matchProtocols", "syscalls", "ingress"])


@st.composite
def arbitrary_documents(draw: st.DrawFn) -> Any:
    """Dicts shaped a bit like policies (real kinds and field names) with arbitrary values inside."""
    keyed = st.recursive(json_scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(field_names, st.text(max_size=5)), inner, max_size=5)),
        max_leaves=30)
    doc = draw(st.dictionaries(st.one_of(field_names, st.text(max_size=5)), keyed, max_size=6))
    if draw(st.booleans()):
        doc["kind"] = draw(st.sampled_from(KINDS + ("ksp", "Pod")))
    if draw(st.booleans()):
        doc["apiVersion"] = draw(st.sampled_from(["security.kubearmor.com/v1", "v1", 3]))
    return doc


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(arbitrary_documents(), json_values))
def test_the_validator_never_raises_on_arbitrary_input(doc: Any) -> None:
    errors, warnings = check_document(doc, "doc")
    assert all(e.document == "doc" and isinstance(e.path, str) and e.message for e in errors + warnings)
    if not errors:  # whatever it admits compiles
        to_policy(admit(doc, "doc").doc)


@SETTINGS
@given(abs_path)
def test_a_glob_without_wildcards_matches_only_itself(path: str) -> None:
    regex = re.compile(glob_to_regex(path))
    assert regex.fullmatch(path) and not regex.fullmatch(path + "x") and not regex.fullmatch("/x" + path)
