"""``bulwark logs`` (karmor's flags, over gRPC) and ``bulwark summary`` (REST) against a real feeder."""
from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from shared.nats.subjects import raw_events
from tests.integration.test_feeder_live import _beats, _events, _setup
from tests.integration.test_feeder_pipeline import NODE, _until

BIN = Path(sys.executable).parent / "bulwark"


async def test_logs_and_summary(nats_server: Any, make_feeder: Any) -> None:  # noqa: F811
    feeder = await make_feeder()
    nc, js = await _setup(nats_server.url)
    beats = await _beats(nc)
    cmd = [str(BIN), "logs", "--gRPC", f"127.0.0.1:{feeder.grpc_port}", "--json", "--logFilter", "all",
           "-n", "demo", "-l", "app=web", "--operation", "Process", "--limit", "3", "--timeout", "20"]
    watcher = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    text_cmd = [str(BIN), "logs", "--gRPC", f"127.0.0.1:{feeder.grpc_port}", "--logFilter", "system",
                "--resource", "/usr/bin/l", "--limit", "1", "--timeout", "20"]
    texter = subprocess.Popen(text_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    await _until(lambda: beats and beats[-1].get("watchers") == 3, 15, "three gRPC watchers")
    await js.publish(raw_events(NODE), _events(2, prefix="alert"))  # blocked: 2 alerts
    await js.publish(raw_events(NODE), _events(1, path="/usr/bin/ls", prefix="log"))  # no rule: 1 log
    out, err = await asyncio.to_thread(watcher.communicate, timeout=30)
    assert watcher.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert sorted(r["Type"] for r in lines) == ["ContainerLog", "MatchedPolicy", "MatchedPolicy"]
    assert all(r["NamespaceName"] == "demo" and r["Operation"] == "Process" for r in lines)
    policy = next(r for r in lines if r["Type"] == "MatchedPolicy")
    assert (policy["PolicyName"], policy["Action"], policy["HostPID"]) == ("block-sleep", "Block", 7000)
    out, err = await asyncio.to_thread(texter.communicate, timeout=30)
    assert texter.returncode == 0, err
    assert out.startswith("== Log / ") and "Resource: /usr/bin/ls" in out

    res = await asyncio.to_thread(subprocess.run, [str(BIN), "summary", "--rest-port", str(feeder.rest_port), "--json"],
                                  capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    web = summary["demo/web-0/web"]
    assert web["processes"] == {"/usr/bin/dash -> /usr/bin/sleep": 2, "/usr/bin/dash -> /usr/bin/ls": 1}
    assert web["alerts"] == {"block-sleep (Block)": 2}
    await nc.close()
