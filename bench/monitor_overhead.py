"""What the monitor costs the processes it watches: open/close pairs and fork+exec, in the same run.

Runs a C load generator in its own mount namespace (a "container"), interleaved with baseline runs:
without the monitor; with EMPTY programs on the tracepoints the monitor uses for these calls (opens
at exit only; the floor any tracepoint-based monitor pays here); with the monitor service running
and every open emitted to NATS (default visibility, no rule set); with the monitor but file events
filtered in the kernel (visibility "none" and an empty rule set); and open/close in a workload for
which the enforcers hold 100 rules (bench/enforcer_overhead.py's), alone, next to that filtered
monitor (which holds no rules), and next to a monitor that holds the SAME 100 rules for the
workload, as in a real deployment (visibility "none": its File and Process rules then make the
kernel emit only the opens of the paths they name, the rest is dropped by the path trie).
Prints ns per operation (best of --reps runs) and ratios to the best baseline run (the same estimator
for both sides of a ratio; a ratio above 1 is a cost). Exits 1 when a measured configuration did not
run as described (the monitor exited, or emitted nothing where it should have).
Target: monitor + enforcer open/close under 1.3x.
Run as root: ``.venv/bin/python bench/monitor_overhead.py [--opens 300000] [--execs 1000]``.
"""
from __future__ import annotations

import argparse
import asyncio
import os

from monitor_common import BTF_TREE, MonitorStack, enforcers_holding_100_rules, loadgen_workspace, run_loadgen

from shared.codec import pack
from shared.nats.subjects import RULES, rules_for_node
from shared.schemas.rules import RuleSet


def measure(binary: str, target: str, opens: int, execs: int, reps: int) -> tuple[float, float]:
    """(best ns per open/close pair, best ns per fork+exec) over ``reps`` runs."""
    oc = min(run_loadgen(binary, "openclose", str(opens), target) for _ in range(reps))
    ex = min(run_loadgen(binary, "exec", str(execs)) for _ in range(reps))
    return oc, ex


def enforced(binary: str, target: str, args: argparse.Namespace) -> float:
    """Best ns per open/close pair in a workload for which the enforcers hold 100 rules."""
    with enforcers_holding_100_rules() as held:
        return held.openclose(binary, target, args.opens, args.reps)


async def _send_rules(stack: MonitorStack, ruleset: RuleSet) -> None:
    """Publish the monitor's node rule set and wait until it has applied it."""
    js = stack.nc.jetstream()
    await js.publish(rules_for_node("bench"), pack(ruleset.to_wire()), stream=RULES.name)
    while (await stack.heartbeat()).get("rules_version") != ruleset.version:
        pass


async def monitored(binary: str, target: str, args: argparse.Namespace,
                    filtered: bool) -> tuple[float, float, dict, dict]:
    """(open/close ns, exec ns, last heartbeat, extra rows). When filtered, the extra rows are the
    open/close ns with the enforcers too: "no rules" (the monitor holds an empty rule set) and
    "same rules" (the monitor holds the enforcers' 100 rules for the workload), each with the
    monitor's event count during that row."""
    stack = MonitorStack({"BULWARK_VISIBILITY_CONTAINERS": "none"} if filtered else {})
    extra: dict = {}
    try:
        await stack.start()
        if filtered:
            await _send_rules(stack, RuleSet(node="bench", version=1, policy_seq=1, identity_seq=1))
        oc, ex = measure(binary, target, args.opens, args.execs, args.reps)
        beat = await stack.settle()               # this row's counters, before the extra rows
        if filtered:
            with enforcers_holding_100_rules() as held:
                before = (await stack.heartbeat()).get("events", 0)
                extra["no rules"] = (held.openclose(binary, target, args.opens, args.reps),
                                     (await stack.settle()).get("events", 0) - before)
                await _send_rules(stack, held.ruleset("bench", 2))
                before = (await stack.settle()).get("events", 0)
                extra["same rules"] = (held.openclose(binary, target, args.opens, args.reps),
                                       (await stack.settle()).get("events", 0) - before)
    finally:
        rc = await stack.stop()
    beat["exit_code"] = rc
    return oc, ex, beat, extra


_EMPTY = "int bw_empty(void *ctx) { return 0; }"
_FLOOR_TPS = ("syscalls:sys_exit_openat", "syscalls:sys_enter_execve", "syscalls:sys_exit_execve",
              "sched:sched_process_exec")


def floor(binary: str, target: str, args: argparse.Namespace) -> tuple[float, float]:
    """The generator with do-nothing programs on the tracepoints the monitor uses for these calls."""
    os.environ.setdefault("BCC_KERNEL_SOURCE", BTF_TREE)
    from bcc import BPF

    bpf = BPF(text=_EMPTY)
    try:
        for tp in _FLOOR_TPS:
            bpf.attach_tracepoint(tp=tp.encode(), fn_name=b"bw_empty")
        return measure(binary, target, args.opens, args.execs, args.reps)
    finally:
        bpf.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--opens", type=int, default=300_000)
    parser.add_argument("--execs", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with loadgen_workspace("bw-overhead-") as (binary, target):
        base1 = measure(binary, target, args.opens, args.execs, args.reps)
        on = asyncio.run(monitored(binary, target, args, filtered=False))   # builds the BTF tree too
        base2 = measure(binary, target, args.opens, args.execs, args.reps)
        empty = floor(binary, target, args)
        base3 = measure(binary, target, args.opens, args.execs, args.reps)
        filt = asyncio.run(monitored(binary, target, args, filtered=True))
        base4 = measure(binary, target, args.opens, args.execs, args.reps)
        enf = enforced(binary, target, args)
        base5 = measure(binary, target, args.opens, args.execs, args.reps)
    bases = [base1, base2, base3, base4, base5]
    oc_base = min(b[0] for b in bases)
    ex_base = min(b[1] for b in bases)
    print(f"baseline          open+close {oc_base:8.1f} ns   fork+exec {ex_base / 1000:8.1f} us"
          f"   (runs: {'/'.join(f'{b[0]:.0f}' for b in bases)} ns)")
    print(f"empty programs    open+close {empty[0]:8.1f} ns   fork+exec {empty[1] / 1000:8.1f} us   "
          f"ratios {empty[0] / oc_base:.2f}x / {empty[1] / ex_base:.2f}x   (the tracepoint floor)")
    for name, (oc, ex, beat, _) in (("monitor, emitted", on), ("monitor, filtered", filt)):
        losses = {k: v for k, v in beat.items() if k.startswith("lost") and v}
        print(f"{name:17s} open+close {oc:8.1f} ns   fork+exec {ex / 1000:8.1f} us   "
              f"ratios {oc / oc_base:.2f}x / {ex / ex_base:.2f}x   events={beat.get('events')} "
              f"filtered_kernel={beat.get('filtered_kernel')} losses={losses or 0} exit={beat['exit_code']}")
    print(f"enforcer holding 100 rules            open+close {enf:8.1f} ns   ratio {enf / oc_base:.2f}x")
    for label, key in (("no rules", "no rules"), ("the SAME 100 rules", "same rules")):
        both, events = filt[3][key]
        print(f"monitor + enforcer holding 100 rules  open+close {both:8.1f} ns   ratio {both / oc_base:.2f}x"
              f"   (the monitor visibility none, holding {label}; {events} events emitted during the row)")
    invalid = [name for name, (_, _, beat, _) in (("monitor, emitted", on), ("monitor, filtered", filt))
               if beat.get("exit_code") not in (0, None)]
    if not on[2].get("events"):
        invalid.append("monitor, emitted: no events")
    if invalid:
        print(f"INVALID: {', '.join(invalid)}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
