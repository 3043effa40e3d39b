"""Policy parsing and validation: field paths and messages a user can act on."""
from __future__ import annotations

import pytest

from services.policy.parser import parse_documents
from services.policy.validate import admit, canonical_kind, validate
from shared.errors import ValidationFailed

KSP = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata:
  name: ksp-group-1-proc-path-block
  namespace: multiubuntu
spec:
  severity: 5
  message: "block /bin/sleep"
  selector:
    matchLabels:
      group: group-1
  process:
    matchPaths:
    - path: /bin/sleep
  action:
    Block
"""


def one(text: str) -> dict:
    (_, doc), = parse_documents(text)
    return doc


def paths(text: str) -> list[str]:
    return [e.path for e in validate(one(text))]


def test_documented_example_is_valid() -> None:
    assert validate(one(KSP)) == []


def test_invalid_action_names_spec_action() -> None:
    errors = validate(one(KSP.replace("    Block", "    Kill")))
    assert [e.path for e in errors] == ["spec.action"]
    assert "Allow, Audit, Block" in errors[0].message


def test_action_case_is_checked_like_the_crd_with_a_hint() -> None:
    errors = validate(one(KSP.replace("    Block", "    block")))
    assert [e.path for e in errors] == ["spec.action"]
    assert "did you mean 'Block'" in errors[0].message


def test_severity_out_of_range() -> None:
    assert paths(KSP.replace("severity: 5", "severity: 11")) == ["spec.severity"]
    assert paths(KSP.replace("severity: 5", "severity: 0")) == ["spec.severity"]
    assert paths(KSP.replace("severity: 5", "severity: high")) == ["spec.severity"]


def test_relative_path() -> None:
    errors = validate(one(KSP.replace("path: /bin/sleep", "path: bin/sleep")))
    assert [e.path for e in errors] == ["spec.process.matchPaths[0].path"]
    assert "absolute" in errors[0].message


def test_path_must_not_end_with_slash_and_dir_must() -> None:
    assert paths(KSP.replace("path: /bin/sleep", "path: /bin/")) == ["spec.process.matchPaths[0].path"]
    text = KSP.replace("matchPaths:\n    - path: /bin/sleep", "matchDirectories:\n    - dir: /bin")
    assert paths(text) == ["spec.process.matchDirectories[0].dir"]
    assert paths(text.replace("dir: /bin", "dir: /bin/\n      recursive: yes-please")) == \
        ["spec.process.matchDirectories[0].recursive"]


def test_envelope_checks() -> None:
    assert paths(KSP.replace("security.kubearmor.com/v1", "v1")) == ["apiVersion"]
    assert paths(KSP.replace("kind: KubeArmorPolicy", "kind: Pod")) == ["kind"]
    assert paths(KSP.replace("  name: ksp-group-1-proc-path-block\n", "")) == ["metadata.name"]
    assert paths(KSP.replace("name: ksp-group-1-proc-path-block", "name: Bad_Name")) == ["metadata.name"]


def test_network_capabilities_syscalls_and_tags() -> None:
    base = KSP.replace("  process:\n    matchPaths:\n    - path: /bin/sleep\n", "{}")
    net = base.replace("{}", "  network:\n    matchProtocols:\n    - protocol: smtp\n")
    assert paths(net) == ["spec.network.matchProtocols[0].protocol"]
    cap = base.replace("{}", "  capabilities:\n    matchCapabilities:\n    - capability: fly\n")
    assert paths(cap) == ["spec.capabilities.matchCapabilities[0].capability"]
    sc = base.replace("{}", "  syscalls:\n    matchSyscalls:\n    - syscall: [unlink, nosuch]\n")
    assert paths(sc) == ["spec.syscalls.matchSyscalls[0].syscall[1]"]
    assert paths(base.replace("{}", "  tags: [a, 3]\n")) == ["spec.tags[1]"]
    assert paths(base.replace("{}", "  file:\n    matchPaths:\n    - path: /etc/x\n      readOnly: 1\n")) == \
        ["spec.file.matchPaths[0].readOnly"]


def test_host_policy_requires_node_selector_and_fromsource_for_protocols() -> None:
    text = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorHostPolicy
metadata: {name: hsp-net}
spec:
  network:
    matchProtocols:
    - protocol: udp
"""
    assert sorted(paths(text)) == ["spec.network.matchProtocols[0].fromSource", "spec.nodeSelector"]


def test_several_documents_are_labelled() -> None:
    bad = KSP.replace("severity: 5", "severity: 11")
    docs = parse_documents(KSP + "---\n" + bad, "p.yaml")
    assert [label for label, _ in docs] == ["p.yaml#1", "p.yaml#2"]
    errors = [e for label, doc in docs for e in validate(doc, label)]
    assert [(e.document, e.path) for e in errors] == [("p.yaml#2", "spec.severity")]


def test_json_and_nulls_and_syntax_errors() -> None:
    (label, doc), = parse_documents('{"kind": "KubeArmorPolicy", "spec": {"message": null}}')
    assert label == "document 1" and doc == {"kind": "KubeArmorPolicy", "spec": {}}
    with pytest.raises(ValidationFailed) as info:
        parse_documents(KSP + "---\nspec: [unclosed\n")
    assert info.value.errors[0].document == "document 2"
    with pytest.raises(ValidationFailed):
        parse_documents("- just\n- a list\n")


def test_admit_defaults_namespace_and_prunes_unknown_fields() -> None:
    text = KSP.replace("  namespace: multiubuntu\n", "").replace("  severity: 5", "  severity: 5\n  colour: red")
    admitted = admit(one(text), "document 1")
    assert admitted.doc["metadata"] == {"name": "ksp-group-1-proc-path-block", "namespace": "default"}
    assert "colour" not in admitted.doc["spec"]
    assert [w.path for w in admitted.warnings] == ["spec.colour"]
    with pytest.raises(ValidationFailed) as info:
        admit(one(KSP.replace("    Block", "    Kill")), "document 1")
    assert info.value.errors[0].document == "document 1"


def test_cluster_policy_drops_namespace_and_short_kinds() -> None:
    text = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorClusterPolicy
metadata: {name: csp, namespace: ignored}
spec:
  selector:
    matchExpressions:
    - {key: namespace, operator: In, values: [a]}
  process:
    matchPaths: [{path: /bin/ls}]
"""
    assert admit(one(text)).key == ("KubeArmorClusterPolicy", "", "csp")
    assert canonical_kind("ksp") == "KubeArmorPolicy" and canonical_kind("kubearmorhostpolicy") == "KubeArmorHostPolicy"


def test_network_policy_cel_rule() -> None:
    text = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorNetworkPolicy
metadata: {name: nsp}
spec:
  selector: {matchLabels: {app: a}}
  nodeSelector: {matchLabels: {kubernetes.io/hostname: n}}
"""
    assert paths(text) == ["spec"]


def test_missing_api_version_is_defaulted_with_a_warning_and_a_wrong_one_is_an_error() -> None:
    from services.policy.validate import check_document

    text = KSP.replace("apiVersion: security.kubearmor.com/v1\n", "Version: security.kubearmor.com/v1\n")
    errors, warnings = check_document(one(text), "f.yaml#1")
    assert errors == []
    assert [(w.document, w.path, w.message) for w in warnings] == [
        ("f.yaml#1", "apiVersion", "missing: defaulted to security.kubearmor.com/v1"),
        ("f.yaml#1", "Version", "unknown field, ignored")]
    assert admit(one(text)).doc["apiVersion"] == "security.kubearmor.com/v1"
    errors, _ = check_document(one(KSP.replace("security.kubearmor.com/v1", "security.kubearmor.com/v2")))
    assert [(e.path, e.message) for e in errors] == [
        ("apiVersion", "must be security.kubearmor.com/v1, got 'security.kubearmor.com/v2'")]
    assert [e.message for e in check_document(["not", "a", "map"], "d")[0]] == ["a policy must be a map, got list"]


def test_validate_command_prints_warnings_after_ok(tmp_path) -> None:
    from bulwark.commands.policy import validate_paths

    f = tmp_path / "p.yaml"
    f.write_text(KSP.replace("apiVersion:", "Version:"))
    lines, ok = validate_paths([str(f)])
    assert ok and lines == ["OK KubeArmorPolicy multiubuntu/ksp-group-1-proc-path-block",
                            f"WARNING {f}#1: apiVersion: missing: defaulted to security.kubearmor.com/v1",
                            f"WARNING {f}#1: Version: unknown field, ignored"]


@pytest.mark.parametrize("text, path, words", [
    ("a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9)),
     "f[0]", "too many values"),
    ("a: &x [*x]\n", "a[0]", "recursive"),
    ("a: *nope\n", "a", "names no anchor"),
    ("spec:\n  action: Block\n  action: Audit\n", "spec.action", "duplicate key 'action' (line 3; first at line 2)"),
    ('{"spec": {"a": 1, "a": 2}}', "spec.a", "duplicate key 'a'"),
    ("1: a\n'1': b\n", "1", "duplicate key '1'"),
    ("- " * 70 + "x\n", "[0]" * 64, "nested deeper than 64 levels"),
    ('{"a": ' * 70 + "1" + "}" * 70, ".".join(["a"] * 64), "nested deeper than 64 levels"),
    ("a: " + "9" * 5000 + "\n", "a", "does not fit in 64 bits"),
    ('{"a": [1, ' + "9" * 5000 + "]}", "a[1]", "does not fit in 64 bits"),
    ("a: .inf\n", "a", "not a finite number"),
    ('{"a": NaN}', "", "NaN is not a JSON number"),
    ("a: !!binary aGk=\n", "a", "cannot be stored"),
    ('{"a": "\\ud800"}', "a", "lone surrogate"),
    ("x" * (2 ** 20 + 1), "", "at most 1048576"),
])
def test_bounded_reader_refuses_bombs_duplicates_depth_and_odd_values(text: str, path: str, words: str) -> None:
    with pytest.raises(ValidationFailed) as info:
        parse_documents(text)
    (error,) = info.value.errors
    assert error.path == path and words in error.message, error


def test_bounded_reader_keeps_what_kubectl_keeps() -> None:
    (_, doc), = parse_documents("a: &m {x: 1, y: 2}\nb: {<<: *m, x: 3}\nwhen: 2024-01-01\nn: null\n")
    assert doc == {"a": {"x": 1, "y": 2}, "b": {"x": 3, "y": 2}, "when": "2024-01-01"}


def test_names_with_a_trailing_newline_and_policies_without_rules_are_refused() -> None:
    assert paths(KSP.replace("name: ksp-group-1-proc-path-block", 'name: "abc\\n"')) == ["metadata.name"]
    assert paths(KSP.replace("namespace: multiubuntu", 'namespace: "demo\\n"')) == ["metadata.namespace"]
    ruleless = KSP.split("  process:")[0]
    assert validate(one(ruleless)) == []  # what the CRD admits...
    with pytest.raises(ValidationFailed) as info:  # ...but a policy without a rule would do nothing
        admit(one(ruleless))
    assert [(e.path, "declares no rule" in e.message) for e in info.value.errors] == [("spec", True)]
