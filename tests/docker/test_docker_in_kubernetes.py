"""Docker-in-Kubernetes: a Docker container whose pod says ``docker://<id>`` takes the pod's identity
(the same correlation code containerd containers go through)."""
from __future__ import annotations

from pathlib import Path

import pytest

from shared.nats.bus import connect, request
from shared.nats.subjects import IDENTITY_API
from tests.docker.engine import PrivateDocker
from tests.fixtures.k8s.fake_apiserver import FakeApiServer, load
from tests.servicetools import eventually, service_log, start_service, stop_service, wait_healthy

pytestmark = pytest.mark.docker
NODE = "k8s-node"


async def test_docker_container_correlated_to_its_pod(dockerd: PrivateDocker, busybox_image: str,
                                                      nats_server, tmp_path: Path) -> None:
    cid = dockerd.run("k8s_web_shop-web", busybox_image, {"io.kubernetes.pod.namespace": "shop"})
    api = FakeApiServer().start()
    api.add_list("/api/v1/pods", load("pods-list.json", DOCKER_ID=cid, CRI_ID="c" * 64))
    api.add_list("/api/v1/namespaces", load("namespaces-list.json"))
    env = {"BULWARK_KUBECONFIG": str(api.kubeconfig(tmp_path / "kubeconfig")), "BULWARK_DOCKER_HOST": dockerd.host,
           "BULWARK_BACKOFF_INITIAL_SECONDS": "0.1"}
    proc = start_service("identity", nats_server.url, tmp_path, node=NODE, **env)
    nc = await connect(nats_server.url, "test")
    try:
        await wait_healthy(nc, "identity", NODE)

        async def correlated() -> dict | None:
            wl = {w["id"]: w for w in (await request(nc, IDENTITY_API, {"op": "list"}))["workloads"]}.get(cid)
            return wl if wl and wl["pod"] == "shop-web-7d9c-abcde" else None

        wl = await eventually(correlated, timeout=15)
        assert wl, service_log(tmp_path, "identity")
        assert (wl["namespace"], wl["name"], wl["source"]) == ("shop", "web", "docker")
        assert wl["labels"] == {"app": "web", "pod-template-hash": "7d9c"}
        assert wl["annotations"]["kubearmor-policy"] == "audited"
        assert wl["namespace_annotations"]["kubearmor-file-posture"] == "block"
    finally:
        await nc.close()
        api.stop()
        code = stop_service(proc)
        dockerd.cli("rm", "-f", cid, check=False)
    assert code == 0, service_log(tmp_path, "identity")
