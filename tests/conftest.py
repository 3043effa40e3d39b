"""Fixtures shared by every test: a real nats-server on a free port, and CI's no-skip rule.

With ``BULWARK_NO_SKIP=1`` (set by ``.ci/run``) a skipped test counts as failed: tests that need
root, BPF or Docker must run in CI.
"""
from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from bulwark.natsserver.process import free_port, start_nats_server
from bulwark.procs import terminate


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("BULWARK_NO_SKIP") == "1" and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped, but BULWARK_NO_SKIP=1 forbids skips: {report.longrepr}"


def kernel_features() -> dict[str, str]:
    """Marker -> why this kernel cannot run tests with that marker ("" when it can)."""
    from services.enforcer.bpflsm import BpfLsmEnforcer

    missing: dict[str, str] = {}
    # the enforcer's own probe: the kernel's refusal when it takes no LSM program (compiling nothing), else
    # whether Bulwark's programs load (5.10 takes a no-op LSM program, not these)
    enforcer = BpfLsmEnforcer()
    try:
        ok, reason = enforcer.probe()
    except Exception as exc:  # a probe that breaks means "cannot", with the reason
        ok, reason = False, repr(exc)
    finally:
        enforcer.close()
    missing["bpflsm"] = "" if ok else reason
    enabled = Path("/sys/module/apparmor/parameters/enabled")
    active = enabled.exists() and enabled.read_text().strip() == "Y" and Path("/sys/kernel/security/apparmor").is_dir()
    missing["apparmor"] = "" if active else "AppArmor is not active in this kernel"
    return missing


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need a kernel feature this kernel lacks are deselected, not skipped, and said so:
    the kernel lab (tests/vm) runs them inside guests whose kernels have it."""
    wanted = {m for m in ("bpflsm", "apparmor") if any(item.get_closest_marker(m) for item in items)}
    if not wanted:
        return
    missing = {m: why for m, why in kernel_features().items() if m in wanted and why}
    if not missing:
        return
    keep, drop = [], []
    for item in items:
        (drop if any(item.get_closest_marker(m) for m in missing) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        for marker, why in missing.items():
            line = (f"deselected the '{marker}' tests here ({why}); "
                    "tests/vm runs them inside kernel-lab guests")
            if reporter is not None:
                reporter.write_line(line)


class NatsServer:
    """A running nats-server the test owns."""

    def __init__(self, port: int, store: Path) -> None:
        self.port = port
        self.store = store
        self.url = f"nats://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = start_nats_server(self.port, self.store)

    def stop(self) -> None:
        if self.proc:
            terminate(self.proc, grace=5)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A real nats-server with JetStream, on a free loopback port, stopped after the test."""
    server = NatsServer(free_port(), tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A private PostgreSQL 15 cluster for the whole session (tests/pg.py), stopped at the end."""
    from tests.pg import PgUnavailable, start_cluster

    try:
        cluster = start_cluster(tmp_path_factory.mktemp("postgres"))
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty database URL: a SQLite file, or a new database in the session's PostgreSQL cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bulwark.db'}"
    cluster = request.getfixturevalue("pg_cluster")
    name = f"t{os.getpid()}_{next(_DB_NAMES)}"
    cluster.createdb(name)
    return cluster.url_for(name)


_DB_NAMES = itertools.count()


def require_root() -> None:
    """Skip unless running as root (CI turns this skip into a failure)."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
