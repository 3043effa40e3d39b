"""What the whole stack costs when nothing happens: CPU and resident memory of every process of `bulwark up`.

1. Loads ``--alerts`` stored alerts (default 1,000,000) into the stack's SQLite database before it starts.
2. Starts `bulwark up` (nats-server, the five services, the supervisor) on private ports and data, waits
   until `bulwark status` is healthy, then makes ``--workloads`` workloads known (default 5,000: identity
   events on the node's stream, as the identity service publishes them, for namespaces no process uses).
3. Lets it settle, then measures each process's CPU time (utime + stime from /proc, every thread) over
   ``--seconds`` and its RSS. Same run, as the baseline: the same measurement of nats-server alone (the
   floor any NATS-based design pays) is printed next to ours.

Target (issue 17): all services together under 1% of one CPU, each service's RSS reported. The script
exits 1 when its own measurement is invalid (the stack never became healthy, a service died, or the
workloads never reached the policy service).

    .venv/bin/python bench/idle.py [--alerts 1000000] [--workloads 5000] [--seconds 30]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds; -1 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return -1.0
    return (int(fields[11]) + int(fields[12])) / TICK


def name_of(pid: int) -> str:
    """The stack part a process is: a service name, nats-server or the supervisor."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    text = [c.decode(errors="replace") for c in cmd if c]
    for i, part in enumerate(text):
        if part == "-m" and i + 1 < len(text):
            module = text[i + 1]
            return module.split(".")[1] if module.startswith("services.") else module
    if any("nats-server" in part for part in text[:1]):
        return "nats-server"
    if any(part.endswith("/bulwark") for part in text[:2]) and "up" in text:
        return "supervisor"
    return Path(text[0]).name if text else "?"


async def make_workloads(nats_url: str, node: str, count: int) -> None:
    """Publish ``count`` started workloads on the node's identity stream (namespaces no process uses)."""
    from shared.codec import pack
    from shared.nats.bus import connect
    from shared.nats.subjects import identity_events
    from shared.schemas.identity import IdentityEvent, Workload

    nc = await connect(nats_url, "bench-idle")
    js = nc.jetstream()
    now = time.time_ns()
    acks = []
    for i in range(count):
        wl = Workload(id=f"{i:064x}", name=f"idle-{i}", namespace=f"ns-{i % 50}", kind="container", node=node,
                      mntns=5_000_000_000 + i, pidns=5_100_000_000 + i, labels={"app": f"a{i % 100}"},
                      started_ns=now)
        acks.append(await js.publish_async(identity_events(node), pack(IdentityEvent("started", wl, now).to_wire())))
    await asyncio.gather(*acks)
    await nc.drain()


async def policy_knows(nats_url: str, count: int, deadline_s: float = 120.0) -> bool:
    """Whether the policy service's listing shows a policy selecting all ``count`` workloads in time."""
    from shared.nats.bus import connect, request
    from shared.nats.subjects import POLICY_API

    nc = await connect(nats_url, "bench-idle")
    text = ("apiVersion: security.kubearmor.com/v1\nkind: KubeArmorClusterPolicy\nmetadata: {name: idle-all}\n"
            "spec:\n  selector: {matchExpressions: [{key: namespace, operator: NotIn, values: [none]}]}\n"
            "  process: {matchPaths: [{path: /usr/bin/idle-never-run}]}\n  action: Audit\n")
    await request(nc, POLICY_API, {"op": "apply", "text": text}, timeout=30)
    deadline = time.monotonic() + deadline_s
    try:
        while time.monotonic() < deadline:
            listing = await request(nc, POLICY_API, {"op": "list"}, timeout=30)
            chosen = [p for p in listing.get("policies", []) if p["name"] == "idle-all"]
            if chosen and sum(1 for n in chosen[0]["selects"] if n.startswith("idle-")) >= count:
                return True
            await asyncio.sleep(1)
        return False
    finally:
        await nc.drain()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--alerts", type=int, default=1_000_000)
    ap.add_argument("--workloads", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--settle", type=float, default=20.0, help="seconds after the load before measuring")
    args = ap.parse_args()
    from bench.feeder_query import load
    from tests.e2e.stack import _descendants, start_stack

    with tempfile.TemporaryDirectory(prefix="bulwark-idle-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        if args.alerts:
            secs, _first = load(data / "bulwark.db", args.alerts)
            print(f"loaded {args.alerts:,} alerts in {secs:.1f} s")
        stack = start_stack(data, node="idle-node")
        try:
            status = stack.cli("status", "--wait", "150", timeout=180)
            if status.returncode != 0:
                print(f"INVALID: the stack never became healthy\n{stack.logs()}")
                return 1
            nats_url = stack.env["BULWARK_NATS_URL"]
            if args.workloads:
                asyncio.run(make_workloads(nats_url, stack.node, args.workloads))
                if not asyncio.run(policy_knows(nats_url, args.workloads)):
                    print("INVALID: the policy service never listed every workload")
                    return 1
                print(f"{args.workloads:,} workloads known")
            time.sleep(args.settle)
            pids = {pid: name_of(pid) for pid in _descendants(stack.proc.pid)}
            before = {pid: cpu_seconds(pid) for pid in pids}
            t0 = time.monotonic()
            time.sleep(args.seconds)
            span = time.monotonic() - t0
            after = {pid: cpu_seconds(pid) for pid in pids}
            from shared.resources import resident_bytes

            rss = {pid: resident_bytes(pid) for pid in pids}
            if any(v < 0 for v in after.values()):
                print("INVALID: a process of the stack exited during the measurement")
                return 1
            print(stack.cli("status").stdout, end="")
        finally:
            stack.stop()
    rows = sorted(((name, 100 * (after[pid] - before[pid]) / span, rss[pid] / 2**20) for pid, name in pids.items()),
                  key=lambda r: r[0])
    print(f"\nidle over {span:.0f} s ({args.alerts:,} stored alerts, {args.workloads:,} workloads known):")
    print(f"  {'process':14} {'CPU % of one':>12} {'RSS MiB':>9}")
    for name, pct, mib in rows:
        print(f"  {name:14} {pct:12.2f} {mib:9.1f}")
    services = sum(p for n, p, _ in rows if n in ("monitor", "enforcer", "identity", "policy", "feeder"))
    nats = sum(p for n, p, _ in rows if n == "nats-server")
    total = sum(p for _n, p, _ in rows)
    print(f"  the five services together: {services:.2f}% of one CPU (target < 1%: "
          f"{'met' if services < 1.0 else 'NOT met'}); whole stack {total:.2f}%; "
          f"baseline nats-server alone {nats:.2f}% (services = {services / nats:.1f}x nats-server)"
          if nats > 0 else f"  the five services together: {services:.2f}% of one CPU; whole stack {total:.2f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
