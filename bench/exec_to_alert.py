"""Exec-to-alert latency: blocked execs in a workload, from the kernel event to the websocket push,
with the monitor's batches cut by the fixed window (before) and as soon as the ring buffer is drained
(now), in the same run.

Each round starts a private ``bulwark up`` per mode (free ports, temporary data dir, alert throttling
off so every alert is pushed live), applies a Block policy on /usr/bin/sleep, and runs two workloads
that try /usr/bin/sleep N times: ``burst``, a shell loop, back to back (about one a millisecond, each
try also a fork, an exit and their logs: a queue forms wherever a stage is slower than that), and
``paced``, a Python loop, ``--gap-ms`` apart (each exec on its own: the latency one alert sees).
Latency per alert is (time the alert arrives on /api/v1/stream) - (the alert's own event time,
UpdatedTime, from the kernel). NATS is watched too, which splits it: kernel -> raw batch on NATS (the
monitor), kernel -> the feeder's SIEM copy of the alert (fetch, judge, store, publish); the websocket
push comes before the SIEM copy.

Modes (each a set of settings, the rest default):
- ``window``: what the monitor did before: ``BULWARK_BATCH_FLUSH_WHEN_DRAINED=false``, polling every
  5 ms backing off to 20 ms when idle, a batch sent when full or 20 ms old.
- ``polled``: a batch sent as soon as a pass finds the ring buffer empty (or full, or
  ``BULWARK_BATCH_MAX_DELAY_MS`` old), polling every 2 ms backing off to 4 ms.
- ``drained``: the defaults: as ``polled``, but an idle pump sleeps in epoll on the ring buffer's fd
  and the kernel wakes it for the next record (``BULWARK_MONITOR_WAKE_ON_FD``).

Rounds alternate the order of the modes (the machine's load drifts); the per-round ratios
drained/window of the median and p99 give the interval. Baseline measured in each stack: a NATS
publish -> subscriber hop on the same server, the floor any event pipeline over NATS has.
Run as root: ``.venv/bin/python bench/exec_to_alert.py [--execs 100] [--gap-ms 20] [--rounds 2]
[--modes window,drained]``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.collectors import WebsocketCollector  # noqa: E402
from tests.e2e.stack import start_stack  # noqa: E402

POLICY = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "policies" / "block-sleep.yaml"
NODE = "bench-node"
MODES: dict[str, dict[str, str]] = {
    "window": {"BULWARK_BATCH_FLUSH_WHEN_DRAINED": "false", "BULWARK_MONITOR_POLL_MS": "5",
               "BULWARK_MONITOR_IDLE_POLL_MS": "20", "BULWARK_BATCH_MAX_DELAY_MS": "20",
               "BULWARK_MONITOR_WAKE_ON_FD": "false"},
    "polled": {"BULWARK_BATCH_FLUSH_WHEN_DRAINED": "true", "BULWARK_MONITOR_WAKE_ON_FD": "false"},
    "drained": {"BULWARK_BATCH_FLUSH_WHEN_DRAINED": "true"},
}


SCENARIOS = ("burst", "paced")


@dataclass
class Stage:
    """One scenario's latencies (seconds)."""

    alerts: list[float] = field(default_factory=list)    # kernel event -> websocket push
    monitor: list[float] = field(default_factory=list)   # kernel event -> raw batch on NATS
    siem: list[float] = field(default_factory=list)      # kernel event -> the feeder's SIEM copy on NATS


@dataclass
class Run:
    """One stack's measurements."""

    mode: str
    stages: dict[str, Stage] = field(default_factory=lambda: {s: Stage() for s in SCENARIOS})
    hop: list[float] = field(default_factory=list)       # NATS publish -> subscriber


def _event_time(alert: dict[str, Any]) -> float:
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


class RawWatcher:
    """Stamps, in a thread, the arrival on NATS of each failed exec of /usr/bin/sleep in a raw batch
    (``seen``), and of each alert the feeder publishes for the SIEM (``siem``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: list[float] = []
        self.siem: list[float] = []
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        import nats

        from shared.codec import unpack
        from shared.nats.subjects import raw_events

        nc = await nats.connect(self.url)

        async def on_msg(msg: Any) -> None:
            now = time.time()
            for ev in unpack(msg.data).get("events", []):
                if ev.get("kind") == "exec" and ev.get("path") == "/usr/bin/sleep" and ev.get("ret", 0) < 0:
                    self.seen.append(now - ev["ts_ns"] / 1e9)

        async def on_alert(msg: Any) -> None:
            now = time.time()
            alert = json.loads(msg.data)
            if alert.get("Type") == "MatchedPolicy":
                self.siem.append(now - _event_time(alert))

        await nc.subscribe(raw_events(NODE), cb=on_msg)
        await nc.subscribe("bulwark.alerts.>", cb=on_alert)
        await nc.flush()
        self.ready.set()
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    def start(self) -> RawWatcher:
        self._thread.start()
        if not self.ready.wait(10):
            raise TimeoutError("raw subject watch did not start")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class _Stamped(list):
    """A list that records the arrival time of each appended message."""

    def __init__(self, sink: list[tuple[float, dict[str, Any]]]) -> None:
        super().__init__()
        self.sink = sink

    def append(self, item: dict[str, Any]) -> None:
        self.sink.append((time.time(), item))
        super().append(item)


_PACED = """
import os, sys, time
n, gap = int(sys.argv[1]), float(sys.argv[2]) / 1000
time.sleep(0.5)  # the interpreter's own start-up events are through the feeder before the first try
for _ in range(n):
    pid = os.fork()
    if pid == 0:
        try:
            os.execv("/usr/bin/sleep", ["sleep", "0"])
        finally:
            os._exit(126)
    os.waitpid(pid, 0)
    time.sleep(gap)
"""


def _script(execs: int, gap_ms: float) -> list[str]:
    """The workload: ``execs`` tries of /usr/bin/sleep, back to back from a shell loop, or ``gap_ms``
    apart from a Python loop (started once; each try is then a fork and a refused exec, as in the shell)."""
    if not gap_ms:
        return ["/bin/sh", "-c", f"i=0; while [ $i -lt {execs} ]; do /usr/bin/sleep 0 2>/dev/null; i=$((i+1)); done"]
    return ["/usr/bin/python3", "-c", _PACED, str(execs), str(gap_ms)]


def measure(mode: str, execs: int, gap_ms: float) -> Run | str:
    """One stack in ``mode``, both scenarios: the run, or why it failed."""
    run = Run(mode)
    with tempfile.TemporaryDirectory(prefix="bulwark-bench-") as tmp:
        stack = start_stack(Path(tmp) / "data", node=NODE,
                            extra_env={"BULWARK_ALERT_THROTTLING": "false", **MODES[mode]})
        try:
            if stack.cli("status", "--wait", "120", timeout=150).returncode != 0:
                return "stack did not become healthy\n" + stack.logs()
            if stack.cli("apply", "-f", str(POLICY)).returncode != 0:
                return "policy not applied\n" + stack.logs()
            url = f"nats://127.0.0.1:{stack.nats_port}"
            ws = WebsocketCollector(f"ws://127.0.0.1:{stack.rest_port}/api/v1/stream")
            arrivals: list[tuple[float, dict[str, Any]]] = []
            ws.messages = _Stamped(arrivals)
            ws.start()
            raw = RawWatcher(url).start()
            try:
                for scenario, gap in (("burst", 0.0), ("paced", gap_ms)):
                    time.sleep(0.5)  # the node idle again before the first exec
                    marks = len(arrivals), len(raw.seen), len(raw.siem)
                    ran = stack.cli("run", "--namespace", "demo", "--label", "app=demo", "--",
                                    *_script(execs, gap), timeout=300)
                    deadline = time.monotonic() + 10
                    while len(arrivals) < marks[0] + execs and time.monotonic() < deadline:
                        time.sleep(0.05)
                    got = [arrived - _event_time(alert) for arrived, alert in arrivals[marks[0]:]]
                    if len(got) < execs or ran.returncode != 0:
                        return (f"{mode}/{scenario}: only {len(got)} of {execs} alerts arrived (workload exit "
                                f"{ran.returncode}: {ran.stderr.strip()[-500:]})")
                    run.stages[scenario] = Stage(got, raw.seen[marks[1]:], raw.siem[marks[2]:])
            finally:
                ws.stop()
                raw.stop()
            run.hop = asyncio.run(_nats_hop(url))
        finally:
            stack.stop()
    return run


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def _ms(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"median {statistics.median(values) * 1000:6.1f} ms  p99 {_pct(values, 99) * 1000:6.1f} ms"


def _stat(name: str) -> Any:
    return statistics.median if name == "median" else (lambda v: _pct(v, 99))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--execs", type=int, default=100)
    parser.add_argument("--gap-ms", type=float, default=20.0, help="between the paced execs")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="window,drained", help="comma list of: " + ", ".join(MODES))
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: expected a comma list of {', '.join(MODES)}")
    runs: list[Run] = []
    for r in range(args.rounds):
        for mode in (modes if r % 2 == 0 else modes[::-1]):
            got = measure(mode, args.execs, args.gap_ms)
            if isinstance(got, str):
                print(got, file=sys.stderr)
                return 1
            runs.append(got)
            for scenario, st in got.stages.items():
                print(f"round {r + 1} {mode:8} {scenario}  alert {_ms(st.alerts)}   kernel->raw batch {_ms(st.monitor)}"
                      f"   kernel->SIEM copy {_ms(st.siem)}", flush=True)
            print(f"round {r + 1} {mode:8} NATS hop median {statistics.median(got.hop) * 1000:.3f} ms", flush=True)
    print(f"\nexec-to-alert, {args.rounds} round(s) x {args.execs} blocked execs per mode and scenario "
          f"(burst: back to back; paced: {args.gap_ms:g} ms apart):")
    for scenario in SCENARIOS:
        for mode in modes:
            mine = [x for run in runs if run.mode == mode for x in run.stages[scenario].alerts]
            mon = [x for run in runs if run.mode == mode for x in run.stages[scenario].monitor]
            hop = statistics.median([x for run in runs if run.mode == mode for x in run.hop])
            print(f"  {scenario:5} {mode:8} alert {_ms(mine)}   kernel->raw batch {_ms(mon)}   ratio to NATS hop: "
                  f"median {statistics.median(mine) / hop:.0f}x, p99 {_pct(mine, 99) / hop:.0f}x")
        if "window" in modes and "drained" in modes:
            pairs = list(zip([x for x in runs if x.mode == "window"], [x for x in runs if x.mode == "drained"],
                             strict=True))
            for name in ("median", "p99"):
                stat = _stat(name)
                ratios = [stat(d.stages[scenario].alerts) / stat(w.stages[scenario].alerts) for w, d in pairs]
                print(f"  {scenario:5} drained/window alert {name}: {statistics.median(ratios):.2f} "
                      f"(rounds {', '.join(f'{x:.2f}' for x in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
