"""Pure parts of the feeder: throttling, the hub's gap notices, CEF, visibility, tokens, cursors."""
from __future__ import annotations

import asyncio

import pytest

from services.feeder.auth import ApiAuth, bearer_token
from services.feeder.cef import to_cef
from services.feeder.hub import AlertHub
from services.feeder.store.query import QueryError, RecordQuery, decode_cursor, encode_cursor
from services.feeder.throttle import Throttler
from shared.schemas.identity import Workload
from shared.visibility import parse_visibility, visible

S = 1_000_000_000


def _a(cid: str = "c1") -> dict[str, object]:
    return {"ContainerID": cid, "HostName": "n", "NamespaceName": "demo", "PodName": "web"}


def test_throttler_quiet_period_and_notices() -> None:
    t = Throttler(max_per_sec=3, interval_sec=2)
    verdicts = [t.check(_a(), 10 * S + i * 1000) for i in range(5)]
    assert [v[0] for v in verdicts] == [False, False, False, True, True]
    start = verdicts[3][1][0]
    assert (start["Type"], start["Operation"], start["MaxAlertsPerSec"], start["DroppingAlertsInterval"]) == \
        ("SystemEvent", "AlertThreshold", 3, 2)
    assert start["ContainerID"] == "c1" and start["PodName"] == "web"
    assert t.check(_a("c2"), 10 * S)[0] is False  # other containers are not affected
    assert t.throttling() == 1 and t.expire(11 * S) == []
    throttled, notices = t.check(_a(), 12 * S + 5000)  # quiet period over: end notice, then counted afresh
    assert throttled is False and notices[0]["ThrottledAlerts"] == 2
    assert notices[0]["EventID"] == \
        f"throttle-end-c1-{10 * S + 3000}" and start["EventID"] == f"throttle-start-c1-{10 * S + 3000}"
    t.check(_a(), 20 * S)
    for i in range(4):
        t.check(_a(), 30 * S + i)
    [end] = t.expire(40 * S)
    assert end["ThrottledAlerts"] == 1
    assert Throttler(enabled=False).check(_a(), 1) == (False, [])


async def test_hub_tells_a_slow_subscriber_where_the_gap_is() -> None:
    hub = AlertHub()
    with hub.subscribe("ws", maxsize=3) as sub:
        for i in range(6):
            hub.publish({"i": i})
        assert hub.counters == {"dropped_ws": 3}
        got = [await sub.get() for _ in range(3)]
        assert [r["i"] for _, r in got] == [0, 1, 2]
        hub.publish({"i": 6})  # room again: the notice goes first, at the gap
        assert await sub.get() == ("dropped", {"count": 3})
        assert await sub.get() == ("alert", {"i": 6})
        for i in range(7, 12):
            hub.publish({"i": i})
        assert [(await sub.get())[1]["i"] for _ in range(3)] == [7, 8, 9]
        assert await sub.get() == ("dropped", {"count": 2})  # drained: told without waiting for more
    with hub.subscribe("grpc", kinds=frozenset({"log"}), accept=lambda r: r.get("ns") == "a") as logs:
        hub.publish({"ns": "a"}, "alert")
        hub.publish({"ns": "b"}, "log")
        hub.publish({"ns": "a"}, "log")
        assert logs.queue.qsize() == 1 and await asyncio.wait_for(logs.get(), 1) == ("log", {"ns": "a"})


def test_cef_line() -> None:
    line = to_cef({"Type": "MatchedPolicy", "Operation": "Process", "PolicyName": "block|sleep", "Severity": "5",
                   "Timestamp": 100, "HostName": "n1", "Action": "Block", "Result": "Permission denied",
                   "NamespaceName": "demo", "Resource": "/a=b\\c", "EventID": "e1", "Message": "line1\nline2"})
    head = "CEF:0|Bulwark|Bulwark|0.1.0|MatchedPolicy:Process|block\\|sleep|5|"
    assert line.startswith(head)
    ext = line[len(head):]
    assert "rt=100000" in ext and "act=Block" in ext and "outcome=Permission denied" in ext
    assert "filePath=/a\\=b\\\\c" in ext and "msg=line1\\nline2" in ext and "cs1Label=namespace cs1=demo" in ext
    assert to_cef({"Type": "ContainerLog", "Operation": "File"}).split("|")[5:7] == ["File", "0"]


class _Vis:
    visibility_containers = "process,file"
    visibility_hosts = "none"


def test_visibility() -> None:
    c = Workload(id="c", name="c", namespace="d", kind="container", node="n", mntns=1, pidns=1)
    h = Workload(id="h", name="n", namespace="", kind="host", node="n", mntns=0, pidns=0)
    assert visible(c, "Process") and visible(c, "Network") and not visible(h, "Process")
    assert visible(c, "File", _Vis()) and not visible(c, "Network", _Vis())
    c.namespace_annotations["kubearmor-visibility"] = "none"
    assert not visible(c, "Process")
    c.namespace_annotations["kubearmor-visibility"] = "network, Capabilities"
    assert visible(c, "Capabilities") and not visible(c, "Process") and not visible(c, "Syscall")
    h.annotations["kubearmor-visibility"] = "process"
    assert visible(h, "Process") and visible(h, "Syscall")      # KubeArmor logs setuid & co. under process
    assert parse_visibility("none") == frozenset() and parse_visibility("bogus,file") == {"file"}


def test_tokens_and_cursors() -> None:
    assert bearer_token("Bearer abc ") == "abc" and bearer_token("Basic abc") is None and bearer_token(None) is None
    auth = ApiAuth(frozenset({"r"}), frozenset({"w"}))
    assert auth.scopes("w") == {"read", "write"} and auth.scopes("r") == {"read"} and auth.scopes("x") == frozenset()
    assert ApiAuth().scopes(None) == {"read", "write"}
    assert decode_cursor(encode_cursor(123, 45)) == (123, 45)
    with pytest.raises(QueryError):
        decode_cursor("bm9wZQ")
    q = RecordQuery.from_params({"namespace": "demo", "action": "Block,Audit", "q": "sle", "until": "100"})
    assert q.matches({"NamespaceName": "demo", "Action": "Audit", "Resource": "/usr/bin/sleep", "Timestamp": 99})
    assert not q.matches({"NamespaceName": "demo", "Action": "Allow", "Resource": "/usr/bin/sleep"})
    assert not q.matches({"NamespaceName": "demo", "Action": "Block", "Resource": "/x", "Source": "/y"})
    assert not q.matches({"NamespaceName": "demo", "Action": "Block", "Resource": "sle", "Timestamp": 101})
    with pytest.raises(QueryError, match="since"):
        RecordQuery.from_params({"since": "soon"})
