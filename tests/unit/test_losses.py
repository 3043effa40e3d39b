"""Loss accounting made loud: counters -> SystemEvent alerts (feeder) and degraded health (monitor)."""
from __future__ import annotations

from services.feeder.losses import LossTracker, heartbeat_losses
from services.monitor.__main__ import LossHealth


def test_a_growing_counter_is_announced_once_per_stored_state() -> None:
    t = LossTracker("default", min_interval=0)
    assert t.observe("monitor", "n1", "i1", {"lost_kernel": 0, "lost_queue": 0}) is None
    a = t.observe("monitor", "n1", "i1", {"lost_kernel": 5, "lost_queue": 0}, now_ns=2_000_000_000)
    assert a is not None and a["Type"] == "SystemEvent" and a["Operation"] == "EventsLost"
    assert a["Lost"] == 5 and a["LostCounts"] == {"lost_kernel": 5, "lost_queue": 0} and a["HostName"] == "n1"
    assert "5 kernel ring buffer full" in a["Message"] and a["Timestamp"] == 2
    # not remembered (the batch failed to store): the same announcement again, same EventID
    again = t.observe("monitor", "n1", "i1", {"lost_kernel": 5, "lost_queue": 0})
    assert again is not None and again["EventID"] == a["EventID"]
    t.remember("monitor", "n1", "i1", {"lost_kernel": 5, "lost_queue": 0})
    assert t.observe("monitor", "n1", "i1", {"lost_kernel": 5, "lost_queue": 0}) is None
    b = t.observe("monitor", "n1", "i1", {"lost_kernel": 7, "lost_queue": 3})
    assert b is not None and b["Lost"] == 5 and b["EventID"] != a["EventID"]
    # a new monitor instance counts from zero again
    c = t.observe("monitor", "n1", "i2", {"lost_kernel": 1, "lost_queue": 0})
    assert c is not None and c["Lost"] == 1


def test_a_source_is_announced_at_most_once_a_second() -> None:
    t = LossTracker("default", min_interval=1.0)
    assert t.observe("monitor", "n1", "i1", {"lost_kernel": 1}, now=10.0) is not None
    assert t.observe("monitor", "n1", "i1", {"lost_kernel": 9}, now=10.5) is None
    later = t.observe("monitor", "n1", "i1", {"lost_kernel": 9, "lost_publish": 2}, now=11.1)  # e.g. a heartbeat
    assert later is not None and later["Lost"] == 11 and later["LostCounts"]["lost_publish"] == 2


def test_heartbeat_counts_are_summed_like_the_batches() -> None:
    details = {"lost_kernel": 9, "lost_kernel_proc": 1, "lost_kernel_exec": 9, "lost_queue": 2,
               "lost_publish": 4, "events": 10, "status": "degraded"}
    assert heartbeat_losses("monitor", details) == {"lost_kernel": 10, "lost_queue": 2, "lost_publish": 4}
    assert heartbeat_losses("enforcer", {"lost_reports": 2, "denied": 1}) == {"lost_reports": 2}


def test_monitor_health_is_degraded_for_a_while_after_a_loss() -> None:
    h = LossHealth(window=300)
    assert h.status({"lost_kernel": 0}, now=0)["status"] == "ok"
    s = h.status({"lost_kernel": 3, "lost_publish": 1}, now=10)
    assert s["status"] == "degraded" and s["lost_total"] == 4
    assert h.status({"lost_kernel": 3, "lost_publish": 1}, now=200)["status"] == "degraded"
    assert h.status({"lost_kernel": 3, "lost_publish": 1}, now=311)["status"] == "ok"
    assert h.status({"lost_queue": 1, "lost_kernel": 3, "lost_publish": 1}, now=312)["status"] == "degraded"
