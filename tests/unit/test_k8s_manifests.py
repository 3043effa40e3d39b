"""deploy/k8s validated offline: Kubernetes API schemas (kubernetes-validate), our CRDs, least privilege.

No cluster runs here: what a real API server and kubelet would do with these stays unverified.
"""
from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from services.policy.parser import parse_documents
from services.policy.validate import validate

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
VERSION = "1.32"


def _docs() -> list[tuple[str, dict]]:
    out = []
    for path in sorted(K8S.glob("*.yaml")) + sorted((K8S / "crds").glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def _by_kind(kind: str) -> list[dict]:
    return [d for _, d in _docs() if d["kind"] == kind]


@pytest.mark.parametrize("name,doc", _docs(), ids=lambda v: v if isinstance(v, str) else v.get("kind", ""))
def test_every_manifest_is_valid_for_the_kubernetes_api(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, VERSION, strict=True)


def test_the_validator_rejects_a_misspelt_field() -> None:
    ds = copy.deepcopy(_by_kind("DaemonSet")[0])
    ds["spec"]["template"]["spec"]["hostPid"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, VERSION, strict=True)


def test_crds_cover_the_policy_kinds() -> None:
    kinds = {d["spec"]["names"]["kind"] for d in _by_kind("CustomResourceDefinition")}
    assert {"KubeArmorPolicy", "KubeArmorClusterPolicy", "KubeArmorHostPolicy", "KubeArmorNetworkPolicy"} <= kinds
    for crd in _by_kind("CustomResourceDefinition"):
        assert crd["spec"]["group"] == "security.kubearmor.com"
        assert any(v["name"] == "v1" and v["served"] and v["storage"] for v in crd["spec"]["versions"])


def test_identity_may_only_read_and_nobody_else_talks_to_the_api() -> None:
    (role,) = _by_kind("ClusterRole")
    for rule in role["rules"]:
        if rule["resources"] == ["tokenreviews"]:  # asking whose token a node agent shows NATS
            assert rule["apiGroups"] == ["authentication.k8s.io"] and rule["verbs"] == ["create"]
            continue
        assert set(rule["verbs"]) <= {"get", "list", "watch"}
    bound = {s["name"] for b in _by_kind("ClusterRoleBinding") + _by_kind("RoleBinding") for s in b["subjects"]}
    assert bound == {"bulwark-identity"}
    for sa in _by_kind("ServiceAccount"):
        if sa["metadata"]["name"] != "bulwark-identity":
            assert sa.get("automountServiceAccountToken") is False


def _containers(kind: str) -> list[dict]:
    return [c for d in _by_kind(kind) for c in d["spec"]["template"]["spec"]["containers"]]


def test_node_agents_get_host_pid_and_named_capabilities_but_are_not_privileged() -> None:
    (ds,) = _by_kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    assert pod["hostPID"] is True and not pod.get("hostNetwork")
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert not sc.get("privileged") and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
    names = {v["name"]: v for v in pod["volumes"]}
    assert names["sys-kernel"]["hostPath"]["path"] == "/sys/kernel"


def test_the_enforcer_keeps_its_kernel_state_with_a_holder_in_its_pod() -> None:
    (ds,) = _by_kind("DaemonSet")
    containers = {c["name"]: c for c in ds["spec"]["template"]["spec"]["containers"]}
    enforcer, holder = containers["enforcer"], containers["holder"]
    env = {e["name"]: e.get("value") for e in enforcer["env"]}
    assert holder["command"][-1] == env["BULWARK_FANOTIFY_HOLDER"] == "/run/bulwark/holder.sock"
    mounts = [{m["name"]: m["mountPath"] for m in c["volumeMounts"]} for c in (enforcer, holder)]
    assert all(m["holder-run"] == "/run/bulwark" for m in mounts)


def test_cluster_services_run_unprivileged() -> None:
    for c in _containers("Deployment") + _containers("StatefulSet"):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    for d in _by_kind("Deployment") + _by_kind("StatefulSet"):
        assert d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_example_policies_pass_our_crd_validation() -> None:
    examples = Path(__file__).resolve().parents[1] / "e2e" / "policies"
    for path in (examples / "block-sleep.yaml", examples / "audit-true.yaml"):
        for label, doc in parse_documents(path.read_text(), str(path)):
            assert validate(doc, label) == []


def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_generated_nats_secrets_are_valid_for_the_kubernetes_api(tmp_path: Path) -> None:
    from bulwark.natsserver.deploy import render_kubernetes

    docs = [d for d in yaml.safe_load_all(render_kubernetes(tmp_path).read_text()) if d]
    assert {d["kind"] for d in docs} == {"Secret"}
    for doc in docs:
        kubernetes_validate.validate(doc, VERSION, strict=True)


def test_each_cluster_service_gets_only_its_own_nats_user() -> None:
    from bulwark.natsserver.deploy import CALLOUT_SEED_KEY, SECRET_USERS

    seen = {}
    for d in _by_kind("Deployment"):
        pod = d["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            env = _env(c)
            ref = env["BULWARK_NATS_PASSWORD"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == SECRET_USERS and ref["key"] == env["BULWARK_NATS_USER"]["value"]
            seen[c["name"]] = ref["key"]
    # admin (which may create streams) only in the policy Deployment's init container
    assert seen == {"identity": "identity", "policy": "policy", "feeder": "feeder", "streams": "admin"}
    seeds = [(d["metadata"]["name"], e["name"]) for d in _by_kind("Deployment")
             for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])
             if e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == CALLOUT_SEED_KEY]
    assert seeds == [("bulwark-identity", "BULWARK_NATS_CALLOUT_SEED")]  # only identity signs node agents' users


def test_node_agents_log_in_with_a_projected_serviceaccount_token_and_hold_no_secret() -> None:
    (ds,) = _by_kind("DaemonSet")
    pod = ds["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    (source,) = volumes["nats-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["audience"] == "bulwark-nats"
    assert not any("secret" in v for v in pod["volumes"])
    for c in pod["containers"]:
        if c["name"] == "holder":                   # talks to no one but the enforcer: no NATS login
            assert not any(m["name"] == "nats-token" for m in c["volumeMounts"]) and "env" not in c
            continue
        env = _env(c)
        mount = next(m for m in c["volumeMounts"] if m["name"] == "nats-token")
        token_file = f"{mount['mountPath']}/{source['serviceAccountToken']['path']}"
        assert env["BULWARK_NATS_TOKEN_FILE"]["value"] == token_file and mount["readOnly"]
        assert "BULWARK_NATS_PASSWORD" not in env and "BULWARK_NATS_USER" not in env


def test_nats_reads_the_generated_authorization() -> None:
    from bulwark.natsserver.deploy import SECRET_AUTH

    (sts,) = [d for d in _by_kind("StatefulSet") if d["metadata"]["name"] == "bulwark-nats"]
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["auth"]["secret"]["secretName"] == SECRET_AUTH
    (conf,) = [d["data"]["nats.conf"] for d in _by_kind("ConfigMap") if d["metadata"]["name"] == "bulwark-nats-config"]
    mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert "include ../auth/auth.conf" in conf and Path(mounts["config"]).parent / "auth" == Path(mounts["auth"])
