"""The feeder's pure views: identity map with stopped workloads and host fallback, rules, health."""
from __future__ import annotations

from services.feeder import views as state_mod
from services.feeder.http.app import health_report
from services.feeder.hub import AlertHub
from services.feeder.views import FeederState
from shared.schemas import IdentityEvent, RuleSet, Workload, WorkloadRules


def _wl(wid: str, mntns: int, kind: str = "container", node: str = "n1", started_ns: int = 0,
        stopped_ns: int = 0) -> Workload:
    return Workload(id=wid, name=wid, namespace="demo", kind=kind, node=node, mntns=mntns, pidns=mntns + 1,
                    started_ns=started_ns, stopped_ns=stopped_ns)


def test_identity_map_keeps_stopped_workloads_and_falls_back_to_host() -> None:
    s = FeederState()
    s.apply_identity(IdentityEvent("started", _wl("host", 1, kind="host"), 1))
    s.apply_identity(IdentityEvent("started", _wl("c1", 100), 2))
    stopped = _wl("c1", 100)
    stopped.stopped_ns = 3
    s.apply_identity(IdentityEvent("stopped", stopped, 3))
    assert s.workload("n1", 100).id == "c1"  # still named after it exited
    assert s.workload("n2", 100) is None
    assert s.host_workload("n1").id == "host"
    assert s.host_workload("n9").kind == "host"  # placeholder when identity never reported one
    reused = _wl("c2", 100)
    reused.started_ns = 4
    s.apply_identity(IdentityEvent("started", reused, 4))  # the kernel reused the mntns id
    assert s.workload("n1", 100).id == "c2"
    assert s.workload("n1", 100, at_ns=5).id == "c2"
    assert s.workload("n1", 100, at_ns=3).id == "c1"  # an event from before c2 started is c1's


def test_stopped_workloads_are_bounded(monkeypatch) -> None:
    monkeypatch.setattr(state_mod, "MAX_STOPPED", 2)
    s = FeederState()
    for i in range(4):
        wl = _wl(f"c{i}", 200 + i)
        wl.stopped_ns = 1
        s.apply_identity(IdentityEvent("stopped", wl, i))
    assert [s.workload("n1", 200 + i) is not None for i in range(4)] == [False, False, True, True]


def test_rules_newest_version_wins_and_unknown_workload_is_none() -> None:
    s = FeederState()
    s.apply_rules(RuleSet("n1", 2, 0, 0, {"c1": WorkloadRules("c1", 100, 101, [])}))
    s.apply_rules(RuleSet("n1", 1, 0, 0, {}))
    assert s.rules_for("n1", "c1") == []
    assert s.rules_for("n1", "c2") is None and s.rules_for("n2", "c1") is None


def test_heartbeats_feed_enforcer_names_and_health() -> None:
    s = FeederState()
    s.apply_heartbeat({"service": "enforcer", "node": "n1", "details": {"enforcer": "BPFLSM"}}, now=100.0)
    for svc in ("monitor", "identity", "policy", "feeder"):
        s.apply_heartbeat({"service": svc, "node": "n1", "status": "ok", "details": {}}, now=100.0)
    assert s.enforcer_name("n1") == "BPFLSM" and s.enforcer_name("n2") == ""
    assert health_report(s, 3.0, now=102.0)["healthy"] is True
    report = health_report(s, 3.0, now=104.0)
    assert report["healthy"] is False and report["services"]["monitor"]["age_seconds"] == 4.0


def test_heartbeats_carry_each_process_cpu_and_memory() -> None:
    from shared.resources import ResourceUse

    use = ResourceUse()
    sum(i * i for i in range(200_000))  # some CPU between the samples
    sample = use.sample()
    assert sample["cpu_percent"] > 0 and sample["rss_bytes"] > 1 << 20
    s = FeederState()
    s.apply_heartbeat({"service": "monitor", "node": "n1", "details": {"events": 3, **sample}}, now=100.0)
    s.apply_heartbeat({"service": "monitor", "node": "n2", "details": {}}, now=100.0)
    resources = health_report(s, 3.0, now=101.0)["services"]["monitor"]["resources"]
    assert resources == {"n1": sample, "n2": {}}


async def test_hub_drops_and_counts_for_slow_subscribers() -> None:
    hub = AlertHub()
    with hub.subscribe("ws", maxsize=1) as slow, hub.subscribe("grpc", maxsize=5) as fast:
        for i in range(3):
            hub.publish({"i": i})
        assert slow.queue.qsize() == 1 and fast.queue.qsize() == 3
        assert hub.counters == {"dropped_ws": 2}
    assert len(hub) == 0


def test_rules_of_a_workload_that_left_the_ruleset_still_judge_its_late_events() -> None:
    from shared.schemas.rules import Rule, RuleSet, WorkloadRules

    block = Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="demo", operation="Process",
                 action="Block", path="/usr/bin/sleep")
    state = FeederState()
    state.apply_rules(RuleSet("n1", 1, 1, 1, {"w": WorkloadRules("w", 10, 11, [block])}))
    state.apply_rules(RuleSet("n1", 2, 1, 2, {}))
    assert state.rules_for("n1", "w") == [block]
    assert state.compiled_for("n1", "w").workload_id == "w"  # the whole entry, postures included
    state.apply_rules(RuleSet("n1", 3, 2, 3, {"w": WorkloadRules("w", 10, 11, [])}))
    assert state.rules_for("n1", "w") == [] and state.retired_rules == {}
    assert state.rules_for("n1", "unknown") is None


def test_an_event_after_the_owner_stopped_belongs_to_a_workload_not_yet_known() -> None:
    s = FeederState()
    s.apply_identity(IdentityEvent("started", _wl("c1", 100, started_ns=1_000_000_000), 1))
    s.apply_identity(IdentityEvent("stopped", _wl("c1", 100, started_ns=1_000_000_000, stopped_ns=2_000_000_000), 2))
    assert s.workload("n1", 100, at_ns=1_500_000_000).id == "c1"
    assert s.workload("n1", 100, at_ns=2_001_000_000).id == "c1"  # within the clock slack
    assert s.workload("n1", 100, at_ns=2_100_000_000) is None  # the kernel reused the id: wait for identity


def test_an_earlier_owners_late_stop_does_not_take_the_namespace_id_back() -> None:
    """The kernel gave a finished workload's mount namespace id to the next one, and identity's news of the
    first one's stop came after the second started: the second keeps the id (its events were judged as the
    host's before, and dropped as invisible)."""
    s = FeederState()
    s.apply_identity(IdentityEvent("started", _wl("c1", 100, started_ns=1_000_000_000), 1))
    s.apply_identity(IdentityEvent("started", _wl("c2", 100, started_ns=3_000_000_000), 2))
    s.apply_identity(IdentityEvent("stopped", _wl("c1", 100, started_ns=1_000_000_000, stopped_ns=2_000_000_000), 3))
    assert s.workload("n1", 100).id == "c2"
    assert s.workload("n1", 100, at_ns=3_500_000_000).id == "c2"
    assert s.workload("n1", 100, at_ns=1_500_000_000).id == "c1"
    # an even earlier owner's start, replayed late
    s.apply_identity(IdentityEvent("started", _wl("c0", 100, started_ns=500_000_000), 4))
    assert s.workload("n1", 100, at_ns=3_500_000_000).id == "c2"
    assert s.workload("n1", 100, at_ns=700_000_000).id == "c0"
    assert [w.id for w in s.replaced[("n1", 100)]] == ["c1", "c0"]
    # the owner's own stop still applies
    s.apply_identity(IdentityEvent("stopped", _wl("c2", 100, started_ns=3_000_000_000, stopped_ns=4_000_000_000), 5))
    assert s.workload("n1", 100).stopped_ns == 4_000_000_000
