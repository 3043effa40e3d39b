"""The ingestor's wait for identity: a namespace found unknown is not waited for again, except by newer records.

``bulwark run`` makes records in the workload's namespace (its setup) before the workload is registered. The
negative cache those records leave must not let the workload's first records skip the wait: judged as the
host's, they are invisible and would be dropped unseen.
"""
from __future__ import annotations

import asyncio
import time
from typing import Any

from services.feeder.ingest import Ingestor
from services.feeder.views import FeederState
from shared.lifecycle import Counters
from shared.schemas import IdentityEvent, RuleSet, Workload, WorkloadRules
from shared.schemas.events import RawEvent

NODE, MNTNS = "n1", 4026532900


class _Follower:
    """Stands in for the NATS-fed follower: catching up applies the identity news that has "arrived"."""

    def __init__(self, state: FeederState) -> None:
        self.state, self.waits = state, 0
        self.arriving: list[IdentityEvent] = []

    async def wait_caught_up(self, timeout: float) -> bool:
        self.waits += 1
        for news in self.arriving:
            self.state.apply_identity(news)
        self.arriving.clear()
        return True


def _workload(wid: str, mntns: int, kind: str, started_ns: int = 0) -> Workload:
    return Workload(id=wid, name=wid, namespace="demo", kind=kind, node=NODE, mntns=mntns, pidns=mntns + 1,
                    started_ns=started_ns)


def _exec(ts_ns: int) -> RawEvent:
    return RawEvent(kind="exec", ts_ns=ts_ns, node=NODE, pid=50, tid=50, ppid=1, ns_pid=5, ns_ppid=1, uid=0,
                    gid=0, mntns=MNTNS, pidns=MNTNS + 1, cgroup_id=1, comm="sh", exe="/usr/bin/sh",
                    path="/usr/bin/true", ret=0, syscall="execve")


def _ingestor() -> tuple[Ingestor, _Follower]:
    state = FeederState()
    state.apply_identity(IdentityEvent("started", _workload("host", 1, "host"), 1))
    state.apply_rules(RuleSet(NODE, 1, 0, 0, {
        "host": WorkloadRules("host", 1, 2), "c1": WorkloadRules("c1", MNTNS, MNTNS + 1)}))
    follower = _Follower(state)
    none: Any = None  # enrich() touches neither NATS nor the store
    return Ingestor(none, none, follower, none, none, Counters(), cluster="c"), follower  # type: ignore[arg-type]


def test_setup_records_before_registration_do_not_hide_the_workloads_first_records() -> None:
    async def scenario() -> None:
        ingest, follower = _ingestor()
        setup_ns = time.time_ns()
        alerts, logs = await ingest.enrich([_exec(setup_ns)])
        assert follower.waits == 1 and not logs and ingest.counters["not_visible"] == 1  # the host's, unseen

        await ingest.enrich([_exec(setup_ns)])            # as old as the check: the cache spares the wait
        assert follower.waits == 1

        started_ns = time.time_ns()
        follower.arriving.append(IdentityEvent("started", _workload("c1", MNTNS, "container", started_ns), 2))
        alerts, logs = await ingest.enrich([_exec(started_ns + 1)])
        assert follower.waits == 2                        # newer than the check: waited, and found
        assert [entry["ContainerName"] for entry in logs] == ["c1"] and not alerts

    asyncio.run(scenario())
