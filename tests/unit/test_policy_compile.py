"""Compiling policies into per-node RuleSets: selection and KubeArmor's defaults."""
from __future__ import annotations

from pathlib import Path

import pytest

from services.policy.compiler import compile_rules, selects
from services.policy.model import normalise_action, to_policy
from services.policy.parser import parse_documents
from services.policy.validate import admit
from shared.matcher import Access, decide
from shared.schemas.identity import Workload
from shared.schemas.rules import RuleSet


def policy(text: str):
    (label, doc), = parse_documents(text)
    return to_policy(admit(doc, label).doc)


def wl(id: str, labels: dict[str, str] | None = None, namespace: str = "default", kind: str = "container",
       name: str | None = None, stopped: int = 0) -> Workload:
    return Workload(id=id, name=name or id, namespace=namespace, kind=kind, node="n1", mntns=hash(id) % 1000,
                    pidns=1, labels=labels or {}, stopped_ns=stopped)


KSP = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: ksp, namespace: shop}
spec:
  severity: 3
  tags: [spec-tag]
  message: spec message
  selector:
    matchLabels: {app: web}
  process:
    severity: 7
    action: Audit
    matchPaths:
    - path: /bin/sleep
    - path: /bin/ls
      action: Allow
      tags: [rule-tag]
      message: rule message
  file:
    matchDirectories:
    - dir: /etc/
      recursive: true
      readOnly: true
      fromSource:
      - path: /bin/cat
"""


def test_defaults_fall_back_rule_section_spec() -> None:
    p = policy(KSP)
    sleep, ls, etc = p.rules
    assert (sleep.operation, sleep.path, sleep.action, sleep.severity, sleep.tags, sleep.message) == \
        ("Process", "/bin/sleep", "Audit", 7, ["spec-tag"], "spec message")
    assert (ls.action, ls.severity, ls.tags, ls.message) == ("Allow", 7, ["rule-tag"], "rule message")
    assert (etc.operation, etc.dir, etc.recursive, etc.read_only, etc.action, etc.severity) == \
        ("File", "/etc/", True, True, "Block", 3)
    assert etc.from_source == [{"path": "/bin/cat"}]
    assert (etc.policy, etc.policy_kind, etc.policy_namespace) == ("ksp", "KubeArmorPolicy", "shop")


def test_action_normalisation() -> None:
    assert [normalise_action(a) for a in ("block", "AUDIT", "allow", "", None)] == \
        ["Block", "Audit", "Allow", "Block", "Block"]


def test_ksp_selects_namespace_and_labels_and_container_names() -> None:
    p = policy(KSP)
    assert selects(p, wl("a", {"app": "web", "x": "y"}, "shop"))
    assert not selects(p, wl("b", {"app": "web"}, "other"))
    assert not selects(p, wl("c", {"app": "db"}, "shop"))
    assert not selects(p, wl("h", {"app": "web"}, "shop", kind="host"))
    named = policy(KSP.replace("{app: web}", '{app: web, kubearmor.io/container.name: "[nginx, side]"}'))
    assert named.container_names == ("nginx", "side")
    assert selects(named, wl("d", {"app": "web"}, "shop", name="nginx"))
    assert not selects(named, wl("e", {"app": "web"}, "shop", name="other"))


def test_cluster_policy_match_expressions() -> None:
    p = policy("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorClusterPolicy
metadata: {name: csp}
spec:
  selector:
    matchExpressions:
    - {key: namespace, operator: NotIn, values: [kube-system]}
    - {key: label, operator: In, values: ["tier=front", "tier=edge"]}
  process:
    matchPaths: [{path: /usr/bin/apt}]
  action: Block
""")
    assert selects(p, wl("a", {"tier": "front"}, "shop"))
    assert not selects(p, wl("b", {"tier": "front"}, "kube-system"))
    assert not selects(p, wl("c", {"tier": "back"}, "shop"))
    assert p.rules[0].policy_namespace == ""


def test_host_policy_by_node_labels() -> None:
    p = policy("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorHostPolicy
metadata: {name: hsp}
spec:
  nodeSelector:
    matchLabels: {kubernetes.io/hostname: n1}
  capabilities:
    matchCapabilities:
    - capability: net_raw
      fromSource: [{path: /bin/ping}]
  network:
    matchProtocols:
    - protocol: ICMP
      fromSource: [{path: /bin/ping}]
  action: Audit
""")
    host = wl("host:n1", {"kubernetes.io/hostname": "n1"}, "", kind="host")
    assert selects(p, host)
    assert not selects(p, wl("host:n2", {"kubernetes.io/hostname": "n2"}, "", kind="host"))
    assert not selects(p, wl("c", {"kubernetes.io/hostname": "n1"}))
    assert [(r.operation, r.capability, r.protocol, r.action) for r in p.rules] == \
        [("Network", "", "icmp", "Audit"), ("Capabilities", "net_raw", "", "Audit")]
    star = policy("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorHostPolicy
metadata: {name: any}
spec:
  nodeSelector: {matchLabels: {kubearmor.io/hostname: "*"}}
  process: {matchPaths: [{path: /bin/su}]}
""")
    assert selects(star, host)


def test_ruleset_lists_every_workload_given() -> None:
    p = policy(KSP)
    rs = compile_rules([p], [wl("a", {"app": "web"}, "shop"), wl("b"), wl("gone", {"app": "web"}, "shop", stopped=1)],
                       "n1", version=4, policy_seq=9, identity_seq=2)
    assert set(rs.workloads) == {"a", "b", "gone"}
    assert rs.workloads["gone"].rules == rs.workloads["a"].rules
    assert len(rs.workloads["a"].rules) == 3 and rs.workloads["b"].rules == []
    assert (rs.node, rs.version, rs.policy_seq, rs.identity_seq) == ("n1", 4, 9, 2)
    decision = decide(rs.workloads["a"].rules, Access("Process", "/bin/sleep"))
    assert decision is not None and decision.action == "Audit"


def test_patterns_are_globs_and_syscalls_audit() -> None:
    p = policy("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: pat}
spec:
  file:
    matchPatterns: [{pattern: /etc/*hado?}]
  syscalls:
    matchSyscalls: [{syscall: [unlink, rmdir]}]
  action: Block
""")
    assert decide(p.rules, Access("File", "/etc/shadow")) is not None
    assert decide(p.rules, Access("File", "/etc/x/shadow")) is None
    assert [(r.syscall, r.action) for r in p.rules[1:]] == [("unlink", "Audit"), ("rmdir", "Audit")]


def test_stopped_workloads_stay_compiled_for_their_grace_only() -> None:
    from services.policy.store import Workloads
    from shared.schemas.identity import IdentityEvent

    ws = Workloads(grace_seconds=10)
    ws.apply(IdentityEvent("started", wl("a"), 1), 1)
    ws.apply(IdentityEvent("stopped", wl("a"), 5_000_000_000), 2)
    assert ws.on_node("n1") == [] and [w.id for w in ws.compiled_on_node("n1")] == ["a"]
    assert ws.expire(now_ns=14_000_000_000) == set()
    assert ws.expire(now_ns=16_000_000_000) == {"n1"}
    assert ws.compiled_on_node("n1") == []


def test_stopped_workloads_are_marked_so_enforcers_skip_them() -> None:
    rs = compile_rules([policy(KSP)], [wl("a", {"app": "web"}, "shop"), wl("gone", {"app": "web"}, "shop",
        stopped=7)], "n1")
    assert rs.workloads["gone"].stopped_ns == 7
    assert [w.workload_id for w in rs.running()] == ["a"]
    assert RuleSet.from_wire(rs.to_wire()).workloads["gone"].stopped_ns == 7


def test_ksp_empty_container_name_list_selects_every_container_of_the_pods() -> None:
    """KubeArmor: ``"[]"``, ``""`` or only empty entries name no container, so all are selected."""
    for value in ('"[]"', '""', '"[ , ]"'):
        p = policy(KSP.replace("{app: web}", "{app: web, kubearmor.io/container.name: " + value + "}"))
        assert p.container_names is None, value
        assert selects(p, wl("a", {"app": "web"}, "shop", name="container-1"))
        assert selects(p, wl("b", {"app": "web"}, "shop", name="container-2"))
        assert not selects(p, wl("c", {"app": "db"}, "shop", name="container-1"))
    malformed = policy(KSP.replace("{app: web}", '{app: web, kubearmor.io/container.name: "[container-1,,]"}'))
    assert malformed.container_names == ("container-1",)
    assert not selects(malformed, wl("d", {"app": "web"}, "shop", name="container-2"))


def test_suite_empty_container_name_manifests_select_both_containers() -> None:
    """The KubeArmor suite's empty-array and empty-label manifests select every container of the pod."""
    base = Path("/work/shared/conformance/kubearmor/tests/tests/k8s_env/multicontainer/manifests")
    if not base.is_dir():
        pytest.skip("KubeArmor conformance manifests not present")
    for name in ("empty-array-ls-block.yaml", "empty-label-ls-block.yaml"):
        p = policy(base.joinpath(name).read_text())
        for container in ("container-1", "container-2"):
            assert selects(p, wl(container, {"container": "multicontainer"}, "multicontainer", name=container))
