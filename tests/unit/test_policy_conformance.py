"""The 283 real KubeArmor policy documents against EXPECTED.tsv (what the CRD schemas admit).

Two layers are measured: the CRD schema walk alone must agree with every verdict (and name the same
field for rejects); the full validator (envelope + schema + semantic checks) must agree exactly too.
A missing apiVersion (one document says ``Version:``) is defaulted with a warning, as EXPECTED says.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from services.policy.parser import parse_documents
from services.policy.schema import slashed
from services.policy.validate import check_document, schema_issues, validate

REF = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "kubearmor"

def _rows() -> list[list[str]]:
    lines = [ln for ln in (REF / "EXPECTED.tsv").read_text().splitlines() if ln and not ln.startswith("#")]
    return [ln.split("\t") for ln in lines[1:]]


def _documents() -> list[tuple[list[str], str, dict]]:
    cache: dict[str, list[tuple[str, dict]]] = {}
    out = []
    for row in _rows():
        file, index = row[0], int(row[1])
        if file not in cache:
            cache[file] = parse_documents((REF / file).read_text(), file)
        label, doc = cache[file][index]
        out.append((row, label, doc))
    return out


pytestmark = pytest.mark.skipif(not (REF / "EXPECTED.tsv").exists(), reason="conformance corpus not present")


def test_schema_layer_matches_every_expected_verdict() -> None:
    docs = _documents()
    assert len(docs) == 283
    mismatches = []
    for (file, index, _kind, verdict, first_error, *_), _label, doc in docs:
        issues, _ = schema_issues(doc)
        got = "reject" if issues else "accept"
        if got != verdict:
            mismatches.append((file, index, verdict, [i.path for i in issues]))
            continue
        if verdict == "reject":
            first = issues[0]
            parts = first.parts[:-1] if first.code == "required" else first.parts
            assert first_error.split(":")[0] == slashed(parts), (file, first_error, first)
    assert mismatches == []


def test_full_validator_matches_every_expected_verdict() -> None:
    mismatches = []
    for (file, _index, _kind, verdict, _first, *_), label, doc in _documents():
        errors = validate(doc, label)
        if ("reject" if errors else "accept") != verdict:
            mismatches.append((file, [str(e) for e in errors]))
    assert mismatches == []


def test_every_error_names_its_document_and_field() -> None:
    for (file, _i, _k, verdict, first_error, *_), label, doc in _documents():
        errors, warnings = check_document(doc, label)
        for e in errors + warnings:
            assert e.document == label and file in label and e.message, (file, e)
        if verdict == "reject":
            assert all(e.path.startswith(("spec", "metadata", "apiVersion", "kind")) for e in errors), (file, errors)
            # the first error names the field EXPECTED names, in dotted form (spec.x[0].y)
            want = first_error.split(":")[0].split("/")
            assert any(e.path.replace("[", ".").replace("]", "").split(".")[:len(want)] == want
                       or e.path.replace("[", ".").replace("]", "").split(".") == want[:-1] for e in errors), \
                (file, first_error, [str(e) for e in errors])


def test_missing_api_version_is_defaulted_with_a_warning() -> None:
    from services.policy.validate import admit

    docs = [(row, label, doc) for row, label, doc in _documents() if row[0].endswith("disc-tools.yaml")]
    assert len(docs) == 1
    _row, label, doc = docs[0]
    admitted = admit(doc, label)
    assert admitted.doc["apiVersion"] == "security.kubearmor.com/v1" and "Version" not in admitted.doc
    assert [w.path for w in admitted.warnings][:2] == ["apiVersion", "Version"]


def test_every_admitted_document_compiles() -> None:
    """Every document the CRDs accept is admitted and compiles, except the two controller samples
    whose ``spec:`` holds only a TODO comment: admission refuses a policy that declares no rule."""
    import re

    from services.policy.model import to_policy
    from services.policy.validate import admit, check_document

    compiled, ruleless = 0, []
    for (file, _i, _k, verdict, *_), label, doc in _documents():
        if verdict == "accept" and not validate(doc, label):
            errors, _warnings = check_document(doc, label)
            if errors:
                assert [e.path for e in errors] == ["spec"] and "declares no rule" in errors[0].message, errors
                ruleless.append(file)
                continue
            policy = to_policy(admit(doc, label).doc)
            for rule in policy.rules:
                if rule.pattern:
                    re.compile(rule.pattern)
            compiled += 1
    assert sorted(ruleless) == [
        "policies/pkg/KubeArmorController/config/samples/security_v1_kubearmorhostpolicy.yaml",
        "policies/pkg/KubeArmorController/config/samples/security_v1_kubearmorpolicy.yaml"]
    assert compiled == 279
