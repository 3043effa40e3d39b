"""Events per second from the kernel to NATS (JetStream) with zero loss, and the loss accounting
under an overload, with batches cut by the fixed window (before) and as soon as the ring buffer is
drained (now), in the same run.

1. Zero-loss throughput, per flush mode: a C generator does open+close pairs at a paced rate in its
   own mount namespace (each open = one file event; the host's own events are filtered in the kernel
   by an empty rule set). For each rate the monitor's heartbeat counters give the events it published,
   the batches, every loss counter and its CPU; the rate delivered is events / time until the last one
   was published. At the end every batch in the stream is read back and its events counted. Modes:
   ``window`` (``BULWARK_BATCH_FLUSH_WHEN_DRAINED=false``, polling every 5 ms backing off to 20 ms:
   what the monitor did before) and ``drained`` (the defaults); both with 1536-event batches at most
   and ``BULWARK_BATCH_MAX_DELAY_MS=50``. Rounds alternate the order of the modes; the ratio
   drained/window of the rate delivered is given per rate (median over the rounds, and each round).
2. Overload (default settings): a 64 KiB ring buffer and two unpaced generators. The counters must
   account for every record: kernel attempts = emitted + lost_kernel; emitted = events + lost_queue +
   process records + decode errors; events - lost_publish = events in the stream.
Run as root: ``.venv/bin/python bench/monitor_throughput.py [--seconds 4] [--rates 100000,200000]
[--rounds 2] [--modes window,drained]``.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time
from typing import Any

from monitor_common import MonitorStack, loadgen_workspace

from shared.codec import pack, unpack
from shared.nats.subjects import RAW, RULES, raw_events, rules_for_node
from shared.schemas.rules import RuleSet

LOSSES = ("lost_kernel", "lost_kernel_proc", "lost_queue", "lost_publish", "decode_errors")
BASE = {"BULWARK_BATCH_MAX_EVENTS": "1536", "BULWARK_BATCH_MAX_DELAY_MS": "50", "BULWARK_HEARTBEAT_SECONDS": "0.2"}
MODES: dict[str, dict[str, str]] = {
    "window": {"BULWARK_BATCH_FLUSH_WHEN_DRAINED": "false", "BULWARK_MONITOR_POLL_MS": "5",
               "BULWARK_MONITOR_IDLE_POLL_MS": "20", "BULWARK_MONITOR_WAKE_ON_FD": "false"},
    "drained": {"BULWARK_BATCH_FLUSH_WHEN_DRAINED": "true"},
}


async def quiet_host(stack: MonitorStack) -> None:
    """An empty rule set: host events filtered in the kernel, unknown namespaces (the generator) not."""
    empty = RuleSet(node="bench", version=1, policy_seq=1, identity_seq=1)
    await stack.nc.jetstream().publish(rules_for_node("bench"), pack(empty.to_wire()), stream=RULES.name)
    while (await stack.heartbeat()).get("rules_version") != 1:
        pass


async def watch_until_idle(stack: MonitorStack, started: float, gen: subprocess.Popen[str],
                          idle: float = 1.0, beat_s: float = 0.2) -> tuple[dict, float, float]:
    """Heartbeats until the generator ended and ``events`` stopped growing (or grows only by the
    trickle of other processes); (last beat, time of the last big growth - start, the monitor's mean
    CPU % over the beats while events grew)."""
    last, last_change, beat = -1, time.monotonic(), {}
    cpu: list[float] = []
    while gen.poll() is None or time.monotonic() - last_change < idle:
        beat = await stack.heartbeat()
        if last < 0 or beat.get("events", 0) - last > 500 or beat.get("queued"):
            last_change = time.monotonic()
            cpu.append(float(beat.get("cpu_percent", 0.0)))
        last = beat.get("events", 0)
    took = last_change - beat_s / 2 - started   # a change is seen up to one beat late
    return beat, took, statistics.mean(cpu) if cpu else 0.0


async def stream_events(stack: MonitorStack) -> tuple[int, int]:
    """(batches, events) stored in the RAW stream."""
    js = stack.nc.jetstream()
    sub = await js.pull_subscribe(raw_events("bench"), stream=RAW.name)
    batches = events = 0
    while True:
        try:
            msgs = await sub.fetch(64, timeout=1.0)
        except Exception:
            break
        for msg in msgs:
            batches += 1
            events += len(unpack(msg.data)["events"])
            await msg.ack()
    return batches, events


def start_gen(binary: str, target: str, ops: int, rate: int = 0) -> subprocess.Popen[str]:
    cmd = ["unshare", "--mount", binary, "openclose", str(ops), target] + ([str(rate)] if rate else [])
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)


async def zero_loss(binary: str, target: str, rates: list[int], seconds: float, mode: str,
                    label: str) -> tuple[dict[int, float], list[str]]:
    """Paced rates with no loss expected, batches cut the ``mode`` way: the rate delivered per paced
    rate, and the checks that failed (empty when the stream holds every event)."""
    stack = MonitorStack({**BASE, **MODES[mode]})
    delivered: dict[int, float] = {}
    try:
        await stack.start()
        await quiet_host(stack)
        prev = await stack.settle()
        print(f"{label}: paced rate   delivered/s   events    batches  events/batch  cpu%  losses   "
              "(kernel emitted, publish errors)")
        for rate in rates:
            ops = int(rate * seconds)
            started = time.monotonic()
            gen = start_gen(binary, target, ops, rate)
            beat, took, cpu = await watch_until_idle(stack, started, gen)
            gen.wait()
            got = beat["events"] - prev["events"]
            batches = beat["batches"] - prev["batches"]
            delivered[rate] = got / took
            lost = {k: beat.get(k, 0) - prev.get(k, 0) for k in LOSSES if beat.get(k, 0) - prev.get(k, 0)}
            print(f"{' ' * len(label)}  {rate:>10,}   {got / took:>11,.0f}   {got:>8,}   {batches:>6}   "
                  f"{got / max(batches, 1):>11,.0f}  {cpu:>4.0f}  {lost or 0}   "
                  f"({beat['emitted_kernel'] - prev['emitted_kernel']:,}, "
                  f"{beat.get('publish_errors', 0) - prev.get('publish_errors', 0)})", flush=True)
            prev = beat
        final = await stack.settle(limit_s=60)   # a backlog from an overloaded rate is still sent
        batches, events = await stream_events(stack)
        published = final["events"] - final.get("lost_publish", 0)
        print(f"{' ' * len(label)}  stream holds {batches} batches / {events:,} events; monitor published "
              f"{final['batches']} batches / {published:,} events (flushes: "
              + ", ".join(f"{r} {final.get(f'flush_{r}', 0)}" for r in ("full", "drained", "age", "stop")) + ")")
    finally:
        await stack.stop()
    return delivered, [] if events == published and published > 0 else [f"{label}: stream and published counts differ"]


async def overload(binary: str, target: str, ops: int) -> list[str]:
    """Overload a small ring buffer; the accounting checks that failed (empty when every record is accounted)."""
    stack = MonitorStack({"BULWARK_MONITOR_RB_PAGES": "16", "BULWARK_BATCH_MAX_EVENTS": "1536",
                          "BULWARK_HEARTBEAT_SECONDS": "0.2"})  # the default flush rule: when drained
    try:
        await stack.start()
        await quiet_host(stack)
        before = await stack.settle()
        gens = [start_gen(binary, target, ops) for _ in range(2)]
        for g in gens:
            g.wait()
        b = await stack.settle()
        batches, in_stream = await stream_events(stack)
    finally:
        await stack.stop()
    d: dict[str, Any] = {k: b.get(k, 0) - before.get(k, 0) for k in
                         ("emitted_kernel", "lost_kernel", "lost_kernel_proc", "events", "lost_queue",
                          "proc_records", "decode_errors", "lost_publish", "lost_kernel_file")}
    attempted = d["emitted_kernel"] + d["lost_kernel"] + d["lost_kernel_proc"]
    print(f"overload: 2 generators x {ops:,} opens into a 64 KiB ring buffer")
    print(f"  kernel  attempted {attempted:,} = emitted {d['emitted_kernel']:,} + lost_kernel "
          f"{d['lost_kernel']:,} (file {d['lost_kernel_file']:,}) + lost_kernel_proc {d['lost_kernel_proc']:,}")
    user = d["events"] + d["lost_queue"] + d["proc_records"] + d["decode_errors"]
    print(f"  user    emitted {d['emitted_kernel']:,} vs events {d['events']:,} + lost_queue {d['lost_queue']:,}"
          f" + process records {d['proc_records']:,} + decode errors {d['decode_errors']:,} = {user:,}"
          f"  -> {'accounted' if user == d['emitted_kernel'] else 'MISMATCH'}")
    total = b["events"] - b.get("lost_publish", 0)
    print(f"  bus     published events {total:,} (since start) vs in stream {in_stream:,}"
          f"  -> {'accounted' if total == in_stream else 'MISMATCH'}")
    print(f"  generator opens {2 * ops:,}; file records attempted >= that: "
          f"{'yes' if attempted >= 2 * ops else 'NO'} (the rest is the rest of the node)")
    failed = []
    if user != d["emitted_kernel"]:
        failed.append("user-space accounting")
    if total != in_stream:
        failed.append("bus accounting")
    if attempted < 2 * ops:
        failed.append("the generator's opens never reached the programs")
    return failed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rates", default="100000,150000,200000,250000,300000")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", default="window,drained", help="comma list of: " + ", ".join(MODES))
    parser.add_argument("--overload-ops", type=int, default=500_000)
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not modes or any(m not in MODES for m in modes):
        parser.error(f"--modes: expected a comma list of {', '.join(MODES)}")
    rates = [int(r) for r in args.rates.split(",")]
    got: dict[str, list[dict[int, float]]] = {m: [] for m in modes}
    failed: list[str] = []
    with loadgen_workspace("bw-throughput-") as (binary, target):
        for r in range(args.rounds):
            for mode in (modes if r % 2 == 0 else modes[::-1]):
                delivered, bad = asyncio.run(zero_loss(binary, target, rates, args.seconds, mode,
                                                       f"round {r + 1} {mode:7}"))
                got[mode].append(delivered)
                failed += bad
        if "window" in modes and "drained" in modes:
            print("rate delivered, drained / window (median over the rounds; each round):")
            for rate in rates:
                ratios = [d[rate] / w[rate] for w, d in zip(got["window"], got["drained"], strict=True)]
                each = ", ".join(f"{x:.2f}" for x in ratios)
                print(f"  {rate:>10,}/s paced: {statistics.median(ratios):.2f} ({each})")
        failed += asyncio.run(overload(binary, target, args.overload_ops))
    if failed:
        print(f"INVALID: {', '.join(failed)} (the measurement does not hold)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
