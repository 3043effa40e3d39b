"""The whole stack with one NATS user per service (``bulwark up --nats-auth``): everything still works,
and no service ever needed a subject it was not granted (the server logs every violation)."""
from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import require_root
from tests.e2e.stack import Stack, start_stack

POLICIES = Path(__file__).parent / "policies"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def secured_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_root()
    if not shutil.which("bpftool"):
        pytest.skip("bpftool missing (make setup installs it)")
    s = start_stack(tmp_path_factory.mktemp("auth") / "data", node="auth-node",
                    extra_env={"BULWARK_NATS_AUTH": "true"})
    s.env.pop("BULWARK_NATS_URL")  # the CLI finds the launcher's user in the data directory
    try:
        status = s.cli("status", "--wait", "120", timeout=150)
        assert status.returncode == 0, f"stack not healthy: {status.stderr}\n{s.logs()}"
        yield s
    finally:
        assert s.stop() == 0, s.logs()


def test_block_and_alert_with_per_service_users(secured_stack: Stack) -> None:
    s = secured_stack
    assert (s.data_dir / "nats-auth" / "passwords.json").stat().st_mode & 0o077 == 0
    assert s.cli("apply", "-f", str(POLICIES / "block-sleep.yaml")).returncode == 0
    blocked = s.cli("run", "--namespace", "demo", "--label", "app=demo", "--", "/usr/bin/sleep", "0.1")
    assert blocked.returncode != 0 and "Operation not permitted" in blocked.stderr, blocked.stderr
    deadline, alerts = time.monotonic() + 3, []
    while time.monotonic() < deadline and not alerts:
        alerts = httpx.get(f"{s.rest_url}/api/v1/alerts", params={"policy": "block-sleep"}, timeout=5).json()
        time.sleep(0.05)
    assert len(alerts) == 1 and alerts[0]["Action"] == "Block", s.logs()
    nats_log = (s.data_dir / "logs" / "nats.log").read_text()
    assert "Violation" not in nats_log, [line for line in nats_log.splitlines() if "Violation" in line][:10]
