"""The Kubernetes list-watch loop against scripted API answers, through the REAL kubernetes client.

Covers: LIST then WATCH from its resourceVersion; a dropped connection resumes from the last seen
version (BOOKMARKs included); a 410 ERROR event and an HTTP 410 both re-LIST; a failing LIST is
retried with backoff; field selectors for this node.
"""
from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.identity.backoff import Backoff
from services.identity.kube.provider import kube_api_client, kube_watchers
from services.identity.runtime.facts import KubeEvent, KubeReset
from shared.lifecycle import Counters
from tests.fixtures.k8s.fake_apiserver import FakeApiServer, load, load_events

DOCKER_ID, CRI_ID = "d" * 64, "c" * 64
PODS = "/api/v1/pods"


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    try:
        yield server
    finally:
        server.stop()


def _facts(q: queue.Queue, count: int, timeout: float = 10) -> list[object]:
    out = []
    for _ in range(count):
        out.append(q.get(timeout=timeout))
    return out


def _watcher(api: FakeApiServer, tmp_path: Path, resource: str, counters: Counters, q: queue.Queue):
    client = kube_api_client(str(api.kubeconfig(tmp_path / "kubeconfig")))
    watchers = kube_watchers(client, "k8s-node", q.put, counters, lambda: Backoff(0.05, 0.2), watch_seconds=30)
    return next(w for w in watchers if w.resource == resource)


def test_list_watch_resumes_after_drop_and_relists_after_410(api: FakeApiServer, tmp_path: Path) -> None:
    ids = {"DOCKER_ID": DOCKER_ID, "CRI_ID": CRI_ID}
    api.add_list(PODS, {"kind": "Status", "code": 500, "message": "etcd unavailable"}, status=500)
    api.add_list(PODS, load("pods-list.json", **ids))
    api.add_list(PODS, load("pods-list-2.json"))
    api.add_watch(PODS, *load_events("pods-watch-1.jsonl", **ids), ("drop",))
    api.add_watch(PODS, *load_events("gone.jsonl"))
    api.add_watch(PODS, ("status", 410))
    api.add_watch(PODS, *load_events("pods-watch-2.jsonl"))
    counters, q = Counters(), queue.Queue()
    watcher = _watcher(api, tmp_path, "pods", counters, q)
    watcher.start()
    try:
        facts = _facts(q, 5)
        calls = api.wait_calls(PODS, 8)
    finally:
        watcher.stop()

    first, modified, relisted, relisted_again, added = facts
    assert isinstance(first, KubeReset) and [p["metadata"]["name"] for p in first.items] == \
        ["shop-web-7d9c-abcde", "shop-db-0"]
    assert isinstance(modified, KubeEvent) and modified.type == "MODIFIED"
    assert modified.obj["metadata"]["labels"]["tier"] == "front"  # the raw object, as the server sent it
    assert isinstance(relisted, KubeReset) and relisted.items == ()
    assert isinstance(relisted_again, KubeReset) and relisted_again.items == ()
    assert isinstance(added, KubeEvent) and added.type == "ADDED" and added.obj["metadata"]["name"] == "late-pod"

    shape = [(c.get("watch", "list"), c.get("resourceVersion")) for c in calls]
    assert shape == [
        ("list", None),          # 500: retried with backoff
        ("list", None),          # rv 100
        ("true", "100"),         # MODIFIED 101, BOOKMARK 105, then the connection drops
        ("true", "105"),         # resumed from the bookmark: ERROR 410
        ("list", None),          # re-listed: rv 200
        ("true", "200"),         # HTTP 410
        ("list", None),          # re-listed again
        ("true", "200"),         # ADDED late-pod, then idle
    ], shape
    assert all(c["fieldSelector"] == "spec.nodeName=k8s-node" for c in calls)
    assert calls[2].get("allowWatchBookmarks") == "true" and calls[2].get("timeoutSeconds") == "30"
    assert counters["k8s_pods_gone"] == 2 and counters["k8s_pods_lists"] == 3
    assert counters["k8s_pods_errors"] >= 2  # the 500 and the dropped connection
    assert watcher.resource_version == "201"


def test_refused_connection_retries_without_blocking_other_resources(api: FakeApiServer, tmp_path: Path) -> None:
    api.add_list("/api/v1/namespaces", load("namespaces-list.json"))
    counters, q = Counters(), queue.Queue()
    client = kube_api_client(str(api.kubeconfig(tmp_path / "kubeconfig")))
    watchers = kube_watchers(client, "k8s-node", q.put, counters, lambda: Backoff(0.05, 0.2), watch_seconds=30)
    for w in watchers:
        w.start()
    try:
        fact = q.get(timeout=10)  # namespaces arrive although pods/nodes/policies 404 and retry
        assert isinstance(fact, KubeReset) and fact.resource == "namespaces"
        api.wait_calls(PODS, 3)
        assert counters.get("k8s_pods_errors", 0) >= 2
        path = "/apis/security.kubearmor.com/v1/kubearmorhostpolicies"
        assert api.wait_calls(path, 2), api.requests
    finally:
        for w in watchers:
            w.stop()
