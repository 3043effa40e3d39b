"""The session's stack for KubeArmor's own tests, and the summary table printed at the end.

One private dockerd (tests/docker's fixture), the images built or loaded once (images.py), one
``bulwark up`` watching that engine (tests/e2e/stack.py) with KubeArmor's CI settings, and a flush
container; pods are started by the cases that need them. Everything is stopped and removed at the end,
also when something failed.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.conftest import dockerd  # noqa: F401  (the session's private engine, reused)
from tests.docker.engine import PrivateDocker
from tests.e2e.stack import start_stack
from tests.kubearmor_suite import report as table
from tests.kubearmor_suite.cluster import Cluster
from tests.kubearmor_suite.images import ensure_images
from tests.kubearmor_suite.paths import CONFORMANCE, missing_reference

NODE = "kubearmor-suite-node"
# the stack's service logs and the summary table of the last session are kept here (pytest's own temporary
# directories are shared with every other pytest run on the machine, which prune them)
RESULTS = Path(os.environ.get("BULWARK_KUBEARMOR_RESULTS", "/tmp/kubearmor-suite-results"))
# KubeArmor's CI runs its suites with block default postures and full container visibility
# (pkg/KubeArmorOperator/config/samples/kubearmor-test.yaml); throttling as its throttling spec sets it.
STACK_ENV = {
    "BULWARK_DEFAULT_FILE_POSTURE": "block",
    "BULWARK_DEFAULT_NETWORK_POSTURE": "block",
    "BULWARK_DEFAULT_CAPABILITIES_POSTURE": "block",
    "BULWARK_VISIBILITY_CONTAINERS": "process,file,network,capabilities",
    "BULWARK_ALERT_THROTTLING": "true",
    "BULWARK_MAX_ALERTS_PER_SEC": "2",
    "BULWARK_THROTTLE_SEC": "60",
}


@pytest.fixture(scope="session")
def kubearmor(dockerd: PrivateDocker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:  # noqa: F811
    """The Bulwark stack on the private engine, with the images KubeArmor's pods use."""
    why = missing_reference()
    if why:
        pytest.skip(why)
    if not shutil.which("bpftool"):
        pytest.skip("bpftool missing (make setup installs it)")
    images = ensure_images(dockerd, CONFORMANCE / "tests" / "examples" / "multiubuntu" / "build")
    work = tmp_path_factory.mktemp("kubearmor-suite")
    stack = start_stack(work / "data", node=NODE, extra_env={"BULWARK_DOCKER_HOST": dockerd.host, **STACK_ENV})
    cluster = Cluster(dockerd, images, stack, work)
    code = None
    try:
        status = stack.cli("status", "--wait", "180", timeout=210)
        assert status.returncode == 0, f"stack not healthy: {status.stderr}\n{stack.logs()}"
        cluster.start_flusher()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            code = stack.stop()
            table.STACK_EXIT.append(code)
            _keep_logs(work)
    assert code == 0, f"bulwark up exited with {code}\n{stack.logs()}"


def _keep_logs(work: Path) -> None:
    shutil.rmtree(RESULTS / "logs", ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    if (work / "data" / "logs").is_dir():
        shutil.copytree(work / "data" / "logs", RESULTS / "logs")
    up = work / "data-up.log"
    if up.is_file():
        shutil.copy(up, RESULTS / "logs" / "up.log")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each phase's final report (after tests/conftest.py's no-skip rule) folds into the table."""
    table.record(report)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if table.RESULTS:
        lines = table.lines()
        for line in lines:
            terminalreporter.write_line(line)
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "table.txt").write_text("\n".join(lines) + "\n")
        terminalreporter.write_line(f"(table and the stack's logs: {RESULTS})")
