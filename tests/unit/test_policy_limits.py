"""What a valid rule asks that Bulwark cannot fully do is said, never silently dropped or overdone:
allowedArgs at apply time and in the status, file write protection in the status."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.policy.limits import rule_warnings, write_warnings
from services.policy.model import to_policy
from services.policy.parser import parse_documents
from services.policy.validate import admit, status_warnings

ARGS = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: ksp-ubuntu-1-allow-proc-args, namespace: multiubuntu}
spec:
  severity: 5
  selector: {matchLabels: {container: ubuntu-1}}
  process:
    matchPaths:
    - path: /usr/bin/python3.6
      allowedArgs: [-m, random]
    - path: /usr/bin/sleep
  action: Block
"""

MOUNT = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: ksp-wordpress-block-mount-file, namespace: wordpress-mysql}
spec:
  severity: 5
  selector: {matchLabels: {app: wordpress}}
  file:
    matchDirectories:
    - {dir: /dev/shm/, readOnly: true, recursive: true}
    matchPaths:
    - {path: /etc/hosts, readOnly: true}
    - {path: /etc/passwd}
    - {path: /etc/shadow, action: Allow}
  action: Block
"""


def doc(text: str) -> dict:
    (_, parsed), = parse_documents(text)
    return parsed


def test_allowed_args_are_warned_at_apply_and_in_the_status() -> None:
    admitted = admit(doc(ARGS))
    [warning] = [w for w in admitted.warnings if w.path.endswith("allowedArgs")]
    assert warning.path == "spec.process.matchPaths[0].allowedArgs"
    assert "/usr/bin/python3.6" in warning.message and "every run is refused" in warning.message
    assert [w.path for w in status_warnings(admitted.doc["spec"])] == [warning.path]


def test_allowed_args_warning_says_what_the_rule_does_for_each_action() -> None:
    allow = admit(doc(ARGS.replace("action: Block", "action: Allow"))).warnings
    audit = admit(doc(ARGS.replace("action: Block", "action: Audit"))).warnings
    assert "every run is allowed" in allow[0].message and "every run is reported" in audit[0].message


def test_allowed_args_rule_still_compiles_to_the_path_rule() -> None:
    """The rule is not dropped: python3.6 stays blocked (fail closed), as the warning says."""
    rules = to_policy(admit(doc(ARGS)).doc).rules
    assert [(r.path, r.action) for r in rules] == [("/usr/bin/python3.6", "Block"), ("/usr/bin/sleep", "Block")]


def test_write_protection_limits_are_one_status_warning_not_an_apply_warning() -> None:
    admitted = admit(doc(MOUNT))
    assert admitted.warnings == []                      # apply: nothing to say about these rules
    [warning] = status_warnings(admitted.doc["spec"])
    assert warning.path == "spec.file"
    assert "(matchDirectories[0], matchPaths[0])" in warning.message    # not the plain or Allow paths
    assert "`touch` of a file already there" in warning.message and "removed" in warning.message


def test_rules_without_limits_get_no_warning() -> None:
    spec = doc(MOUNT)["spec"]
    spec["action"] = "Audit"
    assert rule_warnings(spec) == []
    assert write_warnings({"file": {"matchPaths": [{"path": "/etc/passwd"}]}}) == []
    assert rule_warnings({"process": {"matchPaths": [{"path": "/bin/ls"}]}}) == []


def test_the_suite_policies_get_their_warnings() -> None:
    base = Path("/work/shared/conformance/kubearmor/tests/tests/k8s_env")
    if not base.is_dir():
        pytest.skip("KubeArmor conformance manifests not present")
    args = admit(doc((base / "ksp/multiubuntu/ksp-ubuntu-1-allow-proc-args.yaml").read_text()))
    assert any(w.path.endswith("allowedArgs") for w in args.warnings)
    mount = admit(doc((base / "smoke/res/ksp-wordpress-block-mount-file.yaml").read_text()))
    assert [w.path for w in status_warnings(mount.doc["spec"])] == ["spec.file"]
