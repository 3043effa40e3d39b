"""Identity lookups per second and enrichment cost per event, each as a ratio to a baseline run alongside.

- lookup: the feeder's ``FeederState.workload(node, mntns, at_ns)`` over N Docker-like workloads
  (some mount namespaces reused, so the time-aware path is exercised) vs. a plain ``dict.get`` on
  the same keys (the floor for any lookup in Python);
- enrichment: ``services.feeder.enrich.build_alert`` for an exec event of a container workload vs.
  the same plain lookup and vs. copying a ready 40-field alert dict (the floor for producing one);
- compose: the identity service's ``Composer.workload_for`` (runtime container + pod -> workload), per
  Docker event, vs. the plain lookup.
Pure CPU, no services needed: ``.venv/bin/python bench/identity_lookup.py [--workloads 5000]``.
"""
from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.feeder.enrich import build_alert  # noqa: E402
from services.feeder.views import FeederState  # noqa: E402
from services.identity.composer import Composer  # noqa: E402
from services.identity.registry import Registry  # noqa: E402
from services.identity.runtime.facts import KubeReset, RuntimeContainer  # noqa: E402
from shared.matcher import Decision  # noqa: E402
from shared.schemas.events import RawEvent  # noqa: E402
from shared.schemas.identity import IdentityEvent, Workload  # noqa: E402

NODE = "bench-node"


def _per_op_ns(fn, keys: list, rounds: int = 5) -> float:
    """Best-of-``rounds`` nanoseconds per call of ``fn(key)`` over ``keys``."""
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        for k in keys:
            fn(k)
        best = min(best, (time.perf_counter_ns() - t0) / len(keys))
    return best


def _state(n: int) -> tuple[FeederState, dict, list[int]]:
    state, plain = FeederState(), {}
    now = time.time_ns()
    for i in range(n):
        mntns = 4026532000 + i
        wl = Workload(id=f"{i:064x}", name=f"c{i}", namespace="docker", kind="container", node=NODE, mntns=mntns,
                      pidns=mntns + 10**6, labels={"app": f"a{i % 50}", "tier": "web"}, image="busybox:1",
                      source="docker", started_ns=now)
        state.apply_identity(IdentityEvent("started", wl, now))
        plain[(NODE, mntns)] = wl
    for i in range(0, n, 10):  # 10% of namespace ids reused by a newer container
        mntns = 4026532000 + i
        newer = Workload(id=f"{i + 10**6:064x}", name=f"r{i}", namespace="docker", kind="container", node=NODE,
                         mntns=mntns, pidns=1, source="docker", started_ns=now + 10**9)
        state.apply_identity(IdentityEvent("stopped", plain[(NODE, mntns)], now))
        state.apply_identity(IdentityEvent("started", newer, now + 10**9))
        plain[(NODE, mntns)] = newer
    keys = [4026532000 + random.randrange(n) for _ in range(200_000)]
    return state, plain, keys


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workloads", type=int, default=5000)
    args = ap.parse_args()
    random.seed(5)
    state, plain, keys = _state(args.workloads)
    at = time.time_ns() + 2 * 10**9

    base_ns = _per_op_ns(lambda m: plain.get((NODE, m)), keys)
    look_ns = _per_op_ns(lambda m: state.workload(NODE, m, at), keys)
    look_old_ns = _per_op_ns(lambda m: state.workload(NODE, m, at - 2 * 10**9), keys)  # before any reuse

    wl = state.workload(NODE, keys[0], at)
    ev = RawEvent(kind="exec", ts_ns=time.time_ns(), node=NODE, pid=4242, tid=4242, ppid=4200, ns_pid=7, ns_ppid=1,
                  uid=0, gid=0, mntns=wl.mntns, pidns=wl.pidns, cgroup_id=1, comm="sleep", exe="/bin/sh",
                  path="/bin/sleep", ret=-1, syscall="execve", cwd="/")
    decision = Decision(action="Block", policy="block-sleep", policy_kind="KubeArmorPolicy", severity=5, message="")
    template = build_alert(ev, wl, decision, cluster="default", enforcer_name="Fanotify")
    ekeys = keys[:50_000]
    copy_ns = _per_op_ns(lambda m: dict(template), ekeys)
    enrich_ns = _per_op_ns(lambda m: build_alert(ev, state.workload(NODE, m, at) or wl, decision, cluster="default",
                                                 enforcer_name="Fanotify"), ekeys)

    comp = Composer(NODE, Registry())
    cid = "e" * 64
    pod = {"metadata": {"name": "p", "namespace": "shop", "labels": {"app": "web"}},
           "status": {"containerStatuses": [{"name": "web", "image": "web:1", "containerID": f"docker://{cid}",
                                             "state": {"running": {}}}]}}
    comp.handle(KubeReset("pods", (pod,)))
    rc = RuntimeContainer(id=cid, runtime="docker", name="web", image="web:1", labels={"app": "web"}, pid=1,
                          mntns=1, pidns=2, started_ns=1)
    compose_ns = _per_op_ns(lambda m: comp.workload_for("docker", rc), ekeys[:20_000])

    print(f"identity lookup ({args.workloads} workloads, 10% mntns reused):")
    print(f"  baseline dict.get           {base_ns:8.1f} ns  {1e9 / base_ns:12,.0f} lookups/s")
    print(f"  FeederState.workload        {look_ns:8.1f} ns  {1e9 / look_ns:12,.0f} lookups/s  "
          f"ratio {look_ns / base_ns:5.2f}x")
    print(f"  ... event older than reuse  {look_old_ns:8.1f} ns  {1e9 / look_old_ns:12,.0f} lookups/s  "
          f"ratio {look_old_ns / base_ns:5.2f}x")
    print("enrichment per event (lookup + build_alert):")
    print(f"  baseline dict(alert) copy   {copy_ns:8.1f} ns")
    print(f"  lookup + build_alert        {enrich_ns:8.1f} ns  {1e9 / enrich_ns:12,.0f} events/s  "
          f"ratio {enrich_ns / base_ns:6.1f}x dict.get, {enrich_ns / copy_ns:5.1f}x dict copy")
    print(f"compose per docker event (Composer.workload_for): {compose_ns:8.1f} ns  "
          f"ratio {compose_ns / base_ns:5.1f}x dict.get")


if __name__ == "__main__":
    main()
