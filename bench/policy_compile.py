"""Policy compile time and matcher throughput, each against a baseline measured in the same run.

1. Compile: N policies (default 1,000, over 50 namespaces, mixed process/file/network rules and
   selectors) for M workloads (default 1,000) into one node's RuleSet, with the same
   ``compile_rules`` the policy service runs. Baseline: compiling 1 policy for the same workloads
   (so the ratio says what the 999 other policies cost).
2. Matcher: ``decide`` on one workload's compiled rules for a mix of process, file and network
   accesses (hits, misses, allow-list posture fall-through). Baseline: a plain dict lookup per access
   (the floor of any per-event lookup in Python).

Run: ``.venv/bin/python bench/policy_compile.py [--policies 1000] [--workloads 1000]``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.policy.compiler import compile_rules  # noqa: E402
from services.policy.model import Policy, to_policy  # noqa: E402
from services.policy.validate import admit  # noqa: E402
from shared.matcher import Access, decide  # noqa: E402
from shared.schemas.identity import Workload  # noqa: E402

NAMESPACES = 50


def make_policy(i: int) -> Policy:
    """A valid policy; every fourth one is an allow-list, every tenth a cluster policy."""
    action = "Allow" if i % 4 == 0 else ("Audit" if i % 4 == 1 else "Block")
    spec = {"severity": 1 + i % 10, "action": action,
            "selector": {"matchLabels": {"app": f"app{i % 20}"}},
            "process": {"matchPaths": [{"path": f"/usr/bin/tool{i}"},
                                       {"path": "/bin/sh", "fromSource": [{"path": "/usr/bin/env"}]}],
                        "matchDirectories": [{"dir": f"/opt/app{i % 7}/", "recursive": True}]},
            "file": {"matchPaths": [{"path": f"/etc/app{i}.conf", "readOnly": True}],
                     "matchPatterns": [{"pattern": f"/var/lib/app{i % 13}/**/*.db"}]},
            "network": {"matchProtocols": [{"protocol": "udp" if i % 2 else "tcp"}]}}
    if i % 10 == 9:
        spec["selector"] = {"matchExpressions": [
            {"key": "namespace", "operator": "In", "values": [f"ns{i % NAMESPACES}"]},
            {"key": "label", "operator": "NotIn", "values": ["tier=db"]}]}
        doc = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorClusterPolicy",
               "metadata": {"name": f"csp-{i}"}, "spec": spec}
    else:
        doc = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
               "metadata": {"name": f"ksp-{i}", "namespace": f"ns{i % NAMESPACES}"}, "spec": spec}
    return to_policy(admit(doc).doc)


def make_workloads(n: int) -> list[Workload]:
    return [Workload(id=f"w{i}", name=f"w{i}", namespace=f"ns{i % NAMESPACES}", kind="container", node="n",
                     mntns=10_000 + i, pidns=1, labels={"app": f"app{i % 20}", "tier": "db" if i % 3 == 0 else "web"})
            for i in range(n)]


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def accesses(count: int) -> list[Access]:
    kinds = [Access("Process", "/usr/bin/tool4", source="/bin/bash", access="exec"),
             Access("Process", "/bin/sh", source="/usr/bin/env", access="exec"),
             Access("Process", "/opt/app3/bin/run", access="exec"),
             Access("Process", "/usr/bin/unknown", access="exec"),
             Access("File", "/etc/app8.conf", access="write"),
             Access("File", "/var/lib/app5/x/y/data.db", access="read"),
             Access("File", "/home/user/notes.txt", access="read"),
             Access("Network", protocol="tcp"), Access("Network", protocol="icmp")]
    return [kinds[i % len(kinds)] for i in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=50_000)
    args = parser.parse_args()

    started = time.perf_counter()
    policies = [make_policy(i) for i in range(args.policies)]
    admit_s = time.perf_counter() - started
    workloads = make_workloads(args.workloads)

    base = best_of(lambda: compile_rules(policies[:1], workloads, "n"), 5)
    full = best_of(lambda: compile_rules(policies, workloads, "n"), 3)
    rs = compile_rules(policies, workloads, "n")
    rules = sum(len(w.rules) for w in rs.workloads.values())
    print(f"admit+model of {args.policies} policies: {admit_s * 1000:.0f} ms")
    print(f"compile {args.policies} policies x {args.workloads} workloads: {full * 1000:.1f} ms "
          f"({rules} rules placed); baseline 1 policy: {base * 1000:.2f} ms; ratio {full / base:.1f}x")

    wr = max(rs.workloads.values(), key=lambda w: len(w.rules))
    batch = accesses(args.decisions)
    table = {(a.operation, a.resource or a.protocol): 1 for a in batch[:9]}

    def run_decide() -> None:
        for a in batch:
            decide(wr, a)

    def run_lookup() -> None:
        for a in batch:
            table.get((a.operation, a.resource or a.protocol))

    decide_s = statistics.median(best_of(run_decide, 1) for _ in range(3))
    lookup_s = statistics.median(best_of(run_lookup, 1) for _ in range(3))
    rate, base_rate = args.decisions / decide_s, args.decisions / lookup_s
    print(f"matcher: {rate:,.0f} decisions/s on a workload with {len(wr.rules)} rules; "
          f"baseline dict lookup: {base_rate:,.0f}/s; ratio {base_rate / rate:.1f}x slower")


if __name__ == "__main__":
    main()
