"""Issue 14, item 4 on the real stack: events the kernel could not hand over are announced.

The monitor runs with a one-page ring buffer (``BULWARK_MONITOR_RB_PAGES=1``) so two concurrent
bursts of audited execs overflow it. Then either every alert is stored, or the loss is loud: a
``SystemEvent`` / ``EventsLost`` alert with the counts is stored and pushed (websocket and gRPC), and
the monitor's health says ``degraded``.
"""
from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.collectors import GrpcAlertCollector, WebsocketCollector
from tests.e2e.stack import BIN, Stack, alert_total, healthy_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

AUDIT = """apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: audit-loss, namespace: loss}
spec:
  severity: 2
  selector: {matchLabels: {app: loss}}
  process: {matchPaths: [{path: /usr/bin/true}]}
  action: Audit
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with healthy_stack(tmp_path_factory.mktemp("loss") / "data", extra_env={"BULWARK_MONITOR_RB_PAGES": "1"}) as s:
        yield s


def test_alerts_stored_equal_produced_or_the_loss_is_announced(stack: Stack, tmp_path: Path) -> None:
    policy = tmp_path / "audit.yaml"
    policy.write_text(AUDIT)
    assert stack.cli("apply", "-f", str(policy)).returncode == 0
    ws = WebsocketCollector(f"ws://127.0.0.1:{stack.rest_port}/api/v1/stream").start()
    grpc_feed = GrpcAlertCollector(f"127.0.0.1:{stack.grpc_port}").start()
    n, workloads = 5000, 2
    loop = f'i=0; while [ $i -lt {n} ]; do /usr/bin/true; i=$((i+1)); done'
    try:
        procs = [subprocess.Popen([str(BIN / "bulwark"), "run", "--namespace", "loss", "--label", "app=loss",
                                   "--", "/bin/sh", "-c", loop], env=stack.env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for _ in range(workloads)]
        for proc in procs:
            _out, err = proc.communicate(timeout=400)
            assert proc.returncode == 0, err
        produced = n * workloads
        stored, last, still = 0, -1, 0
        while still < 10:  # until the count stops moving for 5 s
            stored = alert_total(stack, policy="audit-loss")
            still = still + 1 if stored == last else 0
            last = stored
            if stored == produced:
                break
            time.sleep(0.5)
        losses = httpx.get(f"{stack.rest_url}/api/v1/alerts", params={"operation": "EventsLost", "limit": 100},
                           timeout=10).json()
        lost = max((a["LostCounts"].get("lost_kernel", 0) for a in losses), default=0)
        monitor = httpx.get(f"{stack.rest_url}/healthz", timeout=5).json()["services"]["monitor"]
        deadline = time.monotonic() + 10
        while losses and time.monotonic() < deadline and not (
                any(m.get("Operation") == "EventsLost" for m in ws.messages)
                and any(a.Operation == "EventsLost" for a in grpc_feed.alerts)):
            time.sleep(0.1)
    finally:
        ws.stop()
        grpc_feed.stop()
    print(f"\n{workloads} x {n} audited execs, one-page ring buffer: {stored} alerts stored of {produced}; "
          f"{len(losses)} EventsLost alerts, kernel losses announced {lost}; monitor health {monitor['status']}")
    if stored == produced:
        return
    assert losses, "alerts are missing and no loss was announced"
    assert all(a["Type"] == "SystemEvent" and a["HostName"] == stack.node and a["Lost"] > 0 for a in losses)
    assert lost > 0 and monitor["status"] == "degraded"
    assert any(m.get("Operation") == "EventsLost" for m in ws.messages)
    assert any(a.Operation == "EventsLost" for a in grpc_feed.alerts)
