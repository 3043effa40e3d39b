"""Issue 5 end to end: a policy selecting Docker containers by label blocks an exec in one container and
not in another running the same binary, and the alert names the container.

Everything is real: a private dockerd, a locally built busybox image, `bulwark up` (nats-server, the
five services, bcc, fanotify), `docker exec`, the REST API.
"""
from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.engine import PrivateDocker
from tests.e2e.stack import Stack, start_stack, wait_for_alerts

pytestmark = [pytest.mark.e2e, pytest.mark.docker]
NS = "docker"
POLICY = {
    "apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
    "metadata": {"name": "block-sleep-guarded", "namespace": NS},
    "spec": {"severity": 7, "selector": {"matchLabels": {"app": "guarded"}},
             "process": {"matchPaths": [{"path": "/bin/sleep"}]}, "action": "Block"},
}


@pytest.fixture(scope="module")
def docker_stack(dockerd: PrivateDocker, busybox_image: str,
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, dict[str, str]]]:
    if not shutil.which("bpftool"):
        pytest.skip("bpftool missing (make setup installs it)")
    # Started before Bulwark: identity must find them at start.
    ids = {"guarded": dockerd.run("web-guarded", busybox_image, {"app": "guarded", "tier": "web"}),
           "free": dockerd.run("web-free", busybox_image, {"app": "free", "tier": "web"})}
    stack = start_stack(tmp_path_factory.mktemp("docker-e2e") / "data", node="docker-node",
                        extra_env={"BULWARK_DOCKER_HOST": dockerd.host})
    try:
        status = stack.cli("status", "--wait", "120", timeout=150)
        assert status.returncode == 0, f"stack not healthy: {status.stderr}\n{stack.logs()}"
        yield stack, ids
    finally:
        code = stack.stop()
        for name in ("web-guarded", "web-free", "web-late"):
            dockerd.cli("rm", "-f", name, check=False)
        assert code == 0, f"bulwark up exited with {code}\n{stack.logs()}"






def test_label_policy_blocks_exec_in_one_docker_container_not_the_other(
        docker_stack: tuple[Stack, dict[str, str]], dockerd: PrivateDocker, busybox_image: str,
        tmp_path: Path) -> None:
    stack, ids = docker_stack
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(POLICY))
    applied = stack.cli("apply", "-f", str(path))
    assert applied.returncode == 0, applied.stderr

    blocked = dockerd.exec_until_refused("web-guarded")
    assert blocked.returncode != 0, f"exec was never refused\n{stack.logs()}"
    assert "operation not permitted" in (blocked.stderr + blocked.stdout).lower(), blocked
    free = dockerd.cli("exec", "web-free", "/bin/sleep", "0", check=False)
    assert free.returncode == 0, free.stderr
    assert dockerd.cli("exec", "web-guarded", "/bin/true", check=False).returncode == 0  # only /bin/sleep

    alerts = wait_for_alerts(stack.rest_url, 1, namespace=NS, policy="block-sleep-guarded")
    if not alerts:  # the monitor's kernel filter may trail the enforcer by a moment: refuse once more
        assert dockerd.cli("exec", "web-guarded", "/bin/sleep", "0", check=False).returncode != 0
        alerts = wait_for_alerts(stack.rest_url, 1, namespace=NS, policy="block-sleep-guarded")
    assert alerts, f"no alert\n{stack.logs()}"
    alert = alerts[0]
    assert alert["ContainerID"] == ids["guarded"] and len(alert["ContainerID"]) == 64
    assert alert["ContainerName"] == "web-guarded"
    assert alert["ContainerImage"] == busybox_image
    assert alert["Labels"] == "app=guarded,tier=web"
    assert alert["NamespaceName"] == NS
    assert (alert["Action"], alert["Result"], alert["Resource"]) == ("Block", "Operation not permitted", "/bin/sleep")
    assert alert["Enforcer"] == "Fanotify"
    seen = wait_for_alerts(stack.rest_url, 1, timeout=0.5, namespace=NS)
    assert not [a for a in seen if a["ContainerName"] == "web-free"]

    # A container started while Bulwark runs is covered too (docker events).
    late = dockerd.run("web-late", busybox_image, {"app": "guarded"})
    refused = dockerd.exec_until_refused("web-late")
    assert refused.returncode != 0, f"late container not covered\n{stack.logs()}"
    deadline, late_alerts = time.monotonic() + 10, []
    while not late_alerts and time.monotonic() < deadline:
        found = wait_for_alerts(stack.rest_url, 1, timeout=1, namespace=NS, policy="block-sleep-guarded")
        late_alerts = [a for a in found if a["ContainerID"] == late]
        if not late_alerts:
            dockerd.cli("exec", "web-late", "/bin/sleep", "0", check=False)
    assert late_alerts and late_alerts[0]["ContainerName"] == "web-late"
