"""Composer, pod index, runtime ids, Docker mapping and policy requests: pure logic, no I/O."""
from __future__ import annotations

import json

import pytest

from services.identity.backoff import Backoff
from services.identity.composer import Composer
from services.identity.kube.policies import policy_requests
from services.identity.registry import Registry
from services.identity.runtime.docker_inspect import container_from_inspect, parse_docker_time
from services.identity.runtime.facts import KubeEvent, KubeReset, Remove, RuntimeContainer, Snapshot, Upsert
from services.identity.runtime.ids import container_id_from_cgroup, split_runtime_id
from shared.schemas.identity import IdentityEvent, Workload
from tests.fixtures.k8s.fake_apiserver import load

A, B, C = "a" * 64, "b" * 64, "c" * 64


def _rc(cid: str, mntns: int = 1, name: str = "web", labels: dict | None = None) -> RuntimeContainer:
    return RuntimeContainer(id=cid, runtime="docker", name=name, image="img:1", labels=labels or {"app": "web"},
                            pid=10, mntns=mntns, pidns=mntns + 1000, cgroup=f"/docker/{cid}", started_ns=5)


def _apply(reg: Registry, plan: list) -> list[tuple[str, str]]:
    for seq, (kind, wl) in enumerate(plan, start=reg.last_seq + 1):
        reg.apply(IdentityEvent(kind, wl, 1), seq)
    return [(kind, wl.name) for kind, wl in plan]


def test_snapshot_reconciles_started_stopped_and_leaves_unchanged_alone() -> None:
    reg = Registry()
    comp = Composer("n1", reg)
    assert _apply(reg, comp.handle(Snapshot("docker", (_rc(A, name="a"), _rc(B, 2, name="b"))))) == \
        [("started", "a"), ("started", "b")]
    # A restart of the identity service: a fresh composer over the replayed registry.
    comp = Composer("n1", reg)
    plan = comp.handle(Snapshot("docker", (_rc(A, name="a"), _rc(C, 3, name="c"))))
    assert sorted(_apply(reg, plan)) == [("started", "c"), ("stopped", "b")]
    assert comp.handle(Snapshot("docker", (_rc(A, name="a"), _rc(C, 3, name="c")))) == []
    assert reg.get(B).stopped_ns > 0 and reg.get(A).started_ns == 5


def test_upsert_rename_is_changed_new_namespaces_are_a_new_incarnation_remove_stops() -> None:
    reg = Registry()
    comp = Composer("n1", reg)
    _apply(reg, comp.handle(Upsert("docker", _rc(A, name="a"))))
    assert _apply(reg, comp.handle(Upsert("docker", _rc(A, name="renamed")))) == [("changed", "renamed")]
    assert _apply(reg, comp.handle(Upsert("docker", _rc(A, 9, name="renamed")))) == \
        [("stopped", "renamed"), ("started", "renamed")]
    assert _apply(reg, comp.handle(Remove("docker", A, 77))) == [("stopped", "renamed")]
    assert reg.get(A).stopped_ns == 77
    assert comp.handle(Remove("docker", A, 78)) == []  # destroy after die: nothing new
    assert comp.handle(Remove("cri", B)) == []  # unknown: nothing


def test_plain_docker_container_namespace_labels_and_compose() -> None:
    comp = Composer("n1", Registry(), docker_namespace="docker", compose_namespace=True)
    wl = comp.workload_for("docker", _rc(A, labels={"app": "x", "com.docker.compose.project": "shop"}))
    assert (wl.namespace, wl.name, wl.labels["app"], wl.pod, wl.kind) == ("shop", "web", "x", "", "container")
    wl = comp.workload_for("docker", _rc(A, labels={"com.docker.compose.project": "Bad_Name"}))
    assert wl.namespace == "docker"


def test_pod_correlation_docker_and_containerd_alike() -> None:
    reg = Registry()
    comp = Composer("k8s-node", reg)
    pods = load("pods-list.json", DOCKER_ID=A, CRI_ID=C)["items"]
    ns = load("namespaces-list.json")["items"]
    _apply(reg, comp.handle(Upsert("docker", _rc(A, name="k8s_web_shop-web"))))
    _apply(reg, comp.handle(Upsert("cri", _rc(C, 3, name="db"))))
    assert comp.handle(KubeReset("namespaces", tuple(ns))) == []  # nothing correlated yet: unchanged
    plan = comp.handle(KubeReset("pods", tuple(pods)))
    by_id = {wl.id: wl for _, wl in plan}
    assert [k for k, _ in plan] == ["changed", "changed"]
    web, db = by_id[A], by_id[C]
    assert (web.namespace, web.pod, web.name, web.image) == \
        ("shop", "shop-web-7d9c-abcde", "web", "registry.local/shop/web:1.2")
    assert web.labels == {"app": "web", "pod-template-hash": "7d9c"}
    assert web.namespace_annotations == {"kubearmor-file-posture": "block", "kubearmor-visibility": "process,file"}
    assert web.annotations["kubearmor-policy"] == \
        "audited" and "kubectl.kubernetes.io/last-applied-configuration" not in web.annotations
    assert web.annotations["bulwark.io/owner-kind"] == "ReplicaSet"
    assert (db.namespace, db.pod, db.name, db.labels) == ("shop", "shop-db-0", "db", {"app": "db"})
    _apply(reg, plan)
    assert comp.wanted_cri_ids() == set()
    comp2 = Composer("k8s-node", Registry())
    comp2.handle(KubeReset("pods", tuple(pods)))
    assert comp2.wanted_cri_ids() == {C}  # docker ids are Docker's to report


def test_dockershim_labels_without_pod_and_node_labels_to_host() -> None:
    reg = Registry()
    comp = Composer("k8s-node", reg)
    wl = comp.workload_for("docker", _rc(A, labels={"io.kubernetes.pod.namespace": "shop",
        "io.kubernetes.pod.name": "p",
                                                   "io.kubernetes.container.name": "c", "team": "a"}))
    assert (wl.namespace, wl.pod, wl.name, wl.labels) == ("shop", "p", "c", {"team": "a"})
    host = Workload(id="host:k8s-node", name="k8s-node", namespace="", kind="host", node="k8s-node", mntns=1,
                    pidns=2, labels={"kubernetes.io/hostname": "k8s-node"}, source="host")
    reg.apply(IdentityEvent("started", host, 1), 1)
    plan = comp.handle(KubeReset("nodes", tuple(load("nodes-list.json")["items"])))
    assert [(k, wl.labels.get("topology.kubernetes.io/zone")) for k, wl in plan] == [("changed", "zone-a")]


def test_runtime_ids_and_cgroups() -> None:
    assert split_runtime_id(f"docker://{A}") == ("docker", A)
    assert split_runtime_id(f"containerd://{A}") == ("containerd", A)
    assert split_runtime_id(f"cri-o://{A}") == ("cri-o", A)
    assert split_runtime_id(A) == ("", A)
    with pytest.raises(ValueError, match="unknown runtime"):
        split_runtime_id(f"rkt://{A}")
    with pytest.raises(ValueError, match="64 lowercase hex"):
        split_runtime_id("docker://abc")
    for path in (f"/docker/{A}", f"/system.slice/docker-{A}.scope",
                 f"/kubepods.slice/kubepods-pod1.slice/cri-containerd-{A}.scope",
                 f"/kubepods/besteffort/pod0a1b/{A}", f"/kubepods.slice/crio-{A}.scope"):
        assert container_id_from_cgroup(path) == A, path
    assert container_id_from_cgroup("/user.slice/session-1.scope") is None


def test_docker_inspect_mapping() -> None:
    data = {"Id": A, "Name": "/web",
            "State": {"Running": True, "Pid": 42, "StartedAt": "2026-11-26T19:40:40.123456789Z"},
            "Config": {"Image": "busybox:1", "Labels": {"app": "web"}}}
    rc = container_from_inspect(data, ns_reader=lambda pid, kind: {"mnt": 11, "pid": 12}[kind],
                                cgroup_reader=lambda pid: f"/docker/{A}")
    assert (rc.id, rc.name, rc.image, rc.labels, rc.pid, rc.mntns, rc.pidns) == \
        (A, "web", "busybox:1", {"app": "web"}, 42, 11, 12)
    assert rc.started_ns % 1_000_000_000 == 123456789
    assert container_from_inspect({**data, "State": {"Running": False, "Pid": 0}}) is None
    sandbox = {**data, "Config": {"Labels": {"io.kubernetes.docker.type": "podsandbox"}}}
    assert container_from_inspect(sandbox, ns_reader=lambda p, k: 1, cgroup_reader=lambda p: "") is None
    with pytest.raises(ValueError, match="64 hex"):
        container_from_inspect({**data, "Id": "short"})
    assert parse_docker_time("0001-01-01T00:00:00Z") == 0 and parse_docker_time("junk") == 0
    assert parse_docker_time("2026-11-26T20:40:40.5+01:00") == parse_docker_time("2026-11-26T19:40:40.5Z")


def test_policy_requests_from_watch_facts() -> None:
    known: set = set()
    listed = load("kubearmorpolicies-list.json")["items"]
    reqs = policy_requests(KubeReset("kubearmorpolicies", tuple(listed)), known)
    assert [r["op"] for r in reqs] == ["apply"]
    doc = json.loads(reqs[0]["text"])
    assert doc["metadata"] == {"name": "shop-block-sh", "namespace": "shop"}  # no managedFields, uid, ...
    assert doc["kind"] == "KubeArmorPolicy" and doc["spec"]["action"] == "Block"
    gone = policy_requests(KubeEvent("kubearmorpolicies", "DELETED", listed[0]), known)
    assert gone == [{"op": "delete", "kind": "KubeArmorPolicy", "namespace": "shop", "name": "shop-block-sh"}]
    policy_requests(KubeEvent("kubearmorpolicies", "ADDED", listed[0]), known)
    relist = policy_requests(KubeReset("kubearmorpolicies", ()), known)  # deleted while the watch was gone
    assert relist == gone and not known
    host = {"metadata": {"name": "h", "namespace": "ignored"}, "spec": {}}
    hreq = policy_requests(KubeEvent("kubearmorhostpolicies", "ADDED", host), known)
    assert json.loads(hreq[0]["text"])["metadata"] == {"name": "h"}
    with pytest.raises(ValueError):
        policy_requests(KubeEvent("kubearmorpolicies", "ADDED", {"metadata": {}}), known)


def test_backoff_grows_caps_and_resets() -> None:
    b = Backoff(1, 8, jitter=0)
    assert [b.next() for _ in range(5)] == [1, 2, 4, 8, 8]
    b.reset()
    assert b.next() == 1
    with pytest.raises(ValueError):
        Backoff(0, 1)


def test_restart_keeps_pod_identity_until_pods_are_listed() -> None:
    reg = Registry()
    comp = Composer("k8s-node", reg, kube=True)
    _apply(reg, comp.handle(Upsert("docker", _rc(A))))
    _apply(reg, comp.handle(KubeReset("pods", tuple(load("pods-list.json", DOCKER_ID=A, CRI_ID=C)["items"]))))
    assert reg.get(A).pod == "shop-web-7d9c-abcde"
    restarted = Composer("k8s-node", reg, kube=True)  # Docker answers before the API server
    assert restarted.handle(Snapshot("docker", (_rc(A),))) == []
    plan = restarted.handle(KubeReset("pods", ()))  # the pod is gone: back to the container's identity
    assert [(k, wl.namespace, wl.pod) for k, wl in plan] == [("changed", "docker", "")]
