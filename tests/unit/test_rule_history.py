"""Which rule set was in force when (services/feeder/rule_history.py), and what the enforcer reports of
it (services/enforcer/applied.py) and how fast (a heartbeat woken by a new version)."""
from __future__ import annotations

import asyncio
from typing import Any

from services.enforcer.applied import IN_FORCE_KEPT, AppliedRules
from services.feeder.rule_history import KEPT_VERSIONS, RuleHistory
from services.feeder.views import FeederState
from shared import lifecycle
from shared.schemas.rules import RuleSet, WorkloadRules


def rs(version: int, *workloads: str) -> RuleSet:
    entries = {w: WorkloadRules(workload_id=w, mntns=1, pidns=1) for w in workloads or ("w",)}
    return RuleSet(node="n", version=version, policy_seq=version, identity_seq=1, workloads=entries)


def test_the_set_in_force_at_a_time_is_the_newest_the_enforcer_had_put_in_force_by_then() -> None:
    history = RuleHistory()
    for v in (1, 2, 3):
        history.add(rs(v))
    history.note_in_force([[1, 100], [2, 200], [3, 300]])
    assert [history.at(t).version for t in (150, 200, 250, 300, 10_000)] == [1, 2, 2, 3, 3]  # type: ignore[union-attr]
    assert history.at(0) is history.newest  # no time: the newest
    assert history.at(50).version == 1  # type: ignore[union-attr]  # older than all: the oldest held


def test_a_version_whose_in_force_time_is_unknown_counts_as_in_force() -> None:
    history = RuleHistory()
    history.add(rs(1))
    history.add(rs(2))
    assert history.at(5).version == 2  # type: ignore[union-attr]  # nothing reported: what the feeder did before
    history.note_in_force([[2, 100]])
    assert history.at(5).version == 1  # type: ignore[union-attr]


def test_the_earliest_report_wins_and_bad_entries_are_skipped() -> None:
    history = RuleHistory()
    history.add(rs(1))
    history.add(rs(2))
    history.note_in_force([[2, 100], ["x", 1], [2], [1, -5], "junk"])
    history.note_in_force([[2, 900]])  # a restarted enforcer re-applied it: it was in force all along
    assert history.in_force == {2: 100}


def test_a_workload_the_set_in_force_did_not_list_is_judged_by_the_first_set_that_lists_it() -> None:
    history = RuleHistory()
    history.add(rs(1, "old"))
    history.add(rs(2, "old", "new"))
    history.note_in_force([[1, 100], [2, 200]])
    assert history.at(150, "old").version == 1  # type: ignore[union-attr]
    assert history.at(150, "new").version == 2  # type: ignore[union-attr]


def test_the_history_is_bounded_and_an_older_version_is_ignored() -> None:
    history = RuleHistory()
    for v in range(1, 3 * KEPT_VERSIONS):
        history.add(rs(v))
    assert len(history.sets) == KEPT_VERSIONS
    assert not history.add(rs(1))
    history.note_in_force([[1, 5]])  # older than anything kept
    assert 1 not in history.in_force


def test_the_feeder_state_takes_in_force_times_from_enforcer_heartbeats() -> None:
    state = FeederState()
    state.apply_rules(rs(1))
    state.apply_rules(rs(2))
    state.apply_heartbeat({"service": "enforcer", "node": "n", "details": {"enforcer": "x", "in_force": [[2, 500]]}})
    assert state.compiled_for("n", "w", at_ns=400) is state.rule_history["n"].sets[0].workloads["w"]
    assert state.compiled_for("n", "w", at_ns=600) is state.rulesets["n"].workloads["w"]
    assert state.compiled_for("n", "w") is state.rulesets["n"].workloads["w"]


async def test_applied_rules_remember_when_each_version_first_came_into_force() -> None:
    applied = AppliedRules()
    await applied.set(rs(1), at_ns=10)
    await applied.set(rs(1), at_ns=99)  # re-applied: unchanged
    await applied.set(rs(2), at_ns=20)
    assert applied.in_force_report() == [[1, 10], [2, 20]]
    for v in range(3, 3 + 2 * IN_FORCE_KEPT):
        await applied.set(rs(v), at_ns=v)
    assert len(applied.in_force_report()) == IN_FORCE_KEPT


class FakeNats:
    def __init__(self) -> None:
        self.sent = asyncio.Queue[tuple[str, bytes]]()

    async def publish(self, subject: str, payload: bytes) -> None:
        await self.sent.put((subject, payload))


async def test_a_woken_heartbeat_goes_out_at_once_not_after_its_interval() -> None:
    nc: Any = FakeNats()
    stop, wake = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(lifecycle.heartbeat_loop(nc, "enforcer", "n", 3600.0, dict, stop, wake))
    try:
        await asyncio.wait_for(nc.sent.get(), 30)  # the first beat
        wake.set()
        await asyncio.wait_for(nc.sent.get(), 30)  # the woken one (the interval is an hour)
        assert not wake.is_set()
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
