"""Exec-to-alert latency: 100 blocked execs in a workload, from the kernel event to the websocket push.

Starts a private ``bulwark up`` (free ports, temporary data dir, alert throttling off so every alert
is pushed live), applies a Block policy on
/usr/bin/sleep, and runs one workload whose shell tries /usr/bin/sleep N times. Latency per alert is
(time the alert arrives on /api/v1/stream) - (the alert's own event time, UpdatedTime, from the
kernel). Baseline measured in the same run: a NATS publish -> subscriber hop on the same server, the
floor any event pipeline over NATS has. Prints median and p99, and their ratio to the baseline.
Run as root: ``.venv/bin/python bench/exec_to_alert.py [--execs 100]``.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.collectors import WebsocketCollector  # noqa: E402
from tests.e2e.stack import start_stack  # noqa: E402

POLICY = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "policies" / "block-sleep.yaml"


def _event_time(alert: dict) -> float:
    stamp = alert["UpdatedTime"].rstrip("Z")
    whole, _, frac = stamp.partition(".")
    return datetime.fromisoformat(whole + "+00:00").timestamp() + float("0." + (frac or "0"))


async def _nats_hop(url: str, count: int = 200) -> list[float]:
    import nats

    nc = await nats.connect(url)
    got: asyncio.Queue[float] = asyncio.Queue()

    async def on_msg(_msg: object) -> None:
        got.put_nowait(time.time())

    await nc.subscribe("bench.hop", cb=on_msg)
    out = []
    for _ in range(count):
        t0 = time.time()
        await nc.publish("bench.hop", b"x" * 256)
        out.append(await got.get() - t0)
    await nc.close()
    return out


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bulwark-bench-") as tmp:
        stack = start_stack(Path(tmp) / "data", node="bench-node",
                            extra_env={"BULWARK_ALERT_THROTTLING": "false"})  # every alert pushed live
        try:
            if stack.cli("status", "--wait", "120", timeout=150).returncode != 0:
                print("stack did not become healthy\n" + stack.logs(), file=sys.stderr)
                return 1
            assert stack.cli("apply", "-f", str(POLICY)).returncode == 0
            ws = WebsocketCollector(f"ws://127.0.0.1:{stack.rest_port}/api/v1/stream")
            arrivals: list[tuple[float, dict]] = []
            ws.messages = _Stamped(arrivals)  # type: ignore[assignment]
            ws.start()
            script = f"i=0; while [ $i -lt {args.execs} ]; do /usr/bin/sleep 0 2>/dev/null; i=$((i+1)); done"
            ran = stack.cli("run", "--namespace", "demo", "--label", "app=demo", "--", "/bin/sh", "-c", script,
                            timeout=300)
            deadline = time.monotonic() + 10
            while len(arrivals) < args.execs and time.monotonic() < deadline:
                time.sleep(0.05)
            ws.stop()
            hop = asyncio.run(_nats_hop(f"nats://127.0.0.1:{stack.nats_port}"))
        finally:
            stack.stop()
    lat = [arrived - _event_time(alert) for arrived, alert in arrivals]
    if len(lat) < args.execs or ran.returncode != 0:
        print(f"only {len(lat)} of {args.execs} alerts arrived (workload exit {ran.returncode})", file=sys.stderr)
        return 1
    base = statistics.median(hop)
    med, p99 = statistics.median(lat), _pct(lat, 99)
    print(f"exec-to-alert over {len(lat)} blocked execs: median {med * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms")
    print(f"baseline NATS publish->subscriber hop: median {base * 1000:.3f} ms")
    print(f"ratio to baseline: median {med / base:.0f}x, p99 {p99 / base:.0f}x")
    return 0


class _Stamped(list):
    """A list that records the arrival time of each appended message."""

    def __init__(self, sink: list[tuple[float, dict]]) -> None:
        super().__init__()
        self.sink = sink

    def append(self, item: dict) -> None:  # type: ignore[override]
        self.sink.append((time.time(), item))
        super().append(item)


if __name__ == "__main__":
    sys.exit(main())
