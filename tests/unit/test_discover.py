"""`bulwark discover` and the rehearsal on history, on stored-record shapes (the feeder's own builders)."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import yaml

from bulwark.discover import discover, render_policies, resolve_in, strip_comments
from bulwark.rehearse import Rehearsal, merge_policies, parse_window, record_access, rehearse, selected, store_records
from services.feeder.enrich import build_alert, build_log
from services.feeder.store.database import RecordStore, make_engine
from services.feeder.store.models import LogRow
from services.feeder.store.query import RecordQuery
from services.policy.model import to_policy
from services.policy.validate import admit
from shared.matcher import Decision, Posture
from shared.schemas.events import RawEvent
from shared.schemas.identity import Workload

WL = Workload(id="c" * 64, name="web-1", namespace="shop", kind="container", node="n1", mntns=7, pidns=8,
              labels={"app": "web"}, image="local")
_seq = iter(range(1, 10**9))


def _event(kind: str, path: str, exe: str, **kw: Any) -> RawEvent:
    n = next(_seq)
    base = dict(kind=kind, node="n1", ts_ns=1_800_000_000_000_000_000 + n, pid=100 + n, tid=100 + n, ppid=1,
                ns_pid=2, ns_ppid=1, uid=0, gid=0, mntns=7, pidns=8, cgroup_id=0, comm=exe.rsplit("/", 1)[-1],
                path=path, exe=exe, ret=0, event_id=f"e{n}")
    return RawEvent(**{**base, **kw})


def log(kind: str, path: str, exe: str, wl: Workload = WL, **kw: Any) -> dict[str, Any]:
    """A stored log, built exactly as the feeder builds it."""
    return build_log(_event(kind, path, exe, **kw), wl, cluster="c")


def history() -> list[dict[str, Any]]:
    recs = [log("exec", "/bin/sh", "/usr/bin/python3.11"), log("exec", "/usr/bin/cat", "/usr/bin/dash"),
            log("exec", "/usr/bin/cat", "/usr/bin/dash"),
            log("open", "/etc/hostname", "/usr/bin/cat", syscall="openat", flags=0),
            log("open", "/var/log/app.log", "/usr/bin/dash", syscall="openat", flags=0o1101),
            log("open", "/proc/4242/status", "/usr/bin/cat", syscall="openat", flags=0),
            log("open", "/tmp/tmp8d1x", "/usr/bin/dash", syscall="openat", flags=0o101),
            log("network", "", "/usr/bin/curl", syscall="socket", extra={"protocol": "TCP", "family": "AF_INET"}),
            log("capability", "CAP_NET_BIND_SERVICE", "/usr/bin/dash", extra={"capability": "CAP_NET_BIND_SERVICE"})]
    recs += [log("open", f"/usr/lib/x86_64-linux-gnu/lib{i}.so", f"/usr/bin/{p}", syscall="openat", flags=0o2000000)
             for i in range(4) for p in ("cat", "dash")]
    return recs


def test_discovered_policy_is_least_permissive_valid_and_commented() -> None:
    docs, disc = discover(history(), name="web-allow", resolve_root=None)
    [doc] = docs
    text = render_policies(docs)
    assert yaml.safe_load(text) == strip_comments(doc)
    admitted = admit(yaml.safe_load(text), "discovered").doc
    spec = admitted["spec"]
    assert admitted["metadata"] == {"name": "web-allow", "namespace": "shop"} and spec["action"] == "Allow"
    assert spec["selector"] == {"matchLabels": {"app": "web"}}
    assert spec["process"]["matchPaths"] == [
        {"path": "/bin/sh", "fromSource": [{"path": "/usr/bin/python3.11"}]},
        {"path": "/usr/bin/cat", "fromSource": [{"path": "/usr/bin/dash"}]}]
    files = spec["file"]
    assert {"path": "/etc/hostname", "readOnly": True, "fromSource": [{"path": "/usr/bin/cat"}]} in files["matchPaths"]
    assert {"path": "/var/log/app.log", "fromSource": [{"path": "/usr/bin/dash"}]} in files["matchPaths"]  # written
    assert {"dir": "/usr/lib/x86_64-linux-gnu/", "readOnly": True,
            "fromSource": [{"path": "/usr/bin/cat"}, {"path": "/usr/bin/dash"}]} in files["matchDirectories"]
    assert {"dir": "/tmp/", "fromSource": [{"path": "/usr/bin/dash"}]} in files["matchDirectories"]  # scratch
    assert files["matchPatterns"] == [{"pattern": "/proc/*/status", "readOnly": True}]
    assert spec["network"]["matchProtocols"] == [{"protocol": "tcp", "fromSource": [{"path": "/usr/bin/curl"}]}]
    assert spec["capabilities"]["matchCapabilities"][0]["capability"] == "net_bind_service"
    assert "# 2 exec(s)" in text and "# 8 access(es), 0 write(s)" in text
    assert disc.refused == 0


def test_discovery_is_deterministic_whatever_the_record_order() -> None:
    recs = history()
    first = render_policies(discover(recs, resolve_root=None)[0])
    random.Random(7).shuffle(recs)
    assert render_policies(discover(recs, resolve_root=None)[0]) == first


def test_refused_operations_are_left_out_and_many_sources_drop_from_source() -> None:
    blocked = build_alert(_event("exec", "/usr/bin/id", "/usr/bin/dash", ret=-1), WL,
                          Decision("Block", "DefaultPosture", "KubeArmorPolicy", 0, ""), cluster="c",
                          enforcer_name="Fanotify")
    shared = [log("open", "/etc/ld.so.cache", f"/usr/bin/p{i}", syscall="openat", flags=0) for i in range(4)]
    docs, disc = discover([*history(), blocked, *shared], resolve_root=None, max_sources=3)
    spec = strip_comments(docs[0])["spec"]
    assert "/usr/bin/id" not in {e["path"] for e in spec["process"]["matchPaths"]} and disc.refused == 1
    assert {"path": "/etc/ld.so.cache", "readOnly": True} in spec["file"]["matchPaths"]


def test_canonical_paths_are_added_for_workloads_on_the_host_filesystem(tmp_path: Path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "dash").write_bytes(b"\x7fELF")
    (tmp_path / "bin").symlink_to("usr/bin")
    (tmp_path / "usr" / "bin" / "sh").symlink_to("dash")
    assert resolve_in(str(tmp_path), "/bin/sh") == "/usr/bin/dash" and resolve_in(str(tmp_path), "/nope") is None
    recs = [log("exec", "/bin/sh", "/usr/bin/python3.11"), log("open", "/etc/x", "/usr/bin/dash", syscall="openat")]
    spec = strip_comments(discover(recs, resolve_root=str(tmp_path))[0][0])["spec"]
    assert [e["path"] for e in spec["process"]["matchPaths"]] == ["/bin/sh", "/usr/bin/dash"]
    assert {"path": "/usr/bin/dash", "readOnly": True} in spec["file"]["matchPaths"]  # opened by the exec itself


def test_host_records_give_a_host_policy() -> None:
    host = Workload(id="host", name="n1", namespace="", kind="host", node="n1", mntns=1, pidns=1,
                    labels={"kubernetes.io/hostname": "n1"})
    [doc] = discover([log("exec", "/usr/bin/top", "/bin/bash", wl=host)], resolve_root=None)[0]
    admitted = admit(strip_comments(doc), "host").doc
    assert admitted["kind"] == "KubeArmorHostPolicy"
    assert admitted["spec"]["nodeSelector"] == {"matchLabels": {"kubernetes.io/hostname": "n1"}}


def _policy(spec: dict[str, Any], name: str = "cand") -> Any:
    doc = {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
           "metadata": {"name": name, "namespace": "shop"}, "spec": {"selector": {"matchLabels": {"app": "web"}},
                                                                     **spec}}
    return to_policy(admit(doc, name).doc)


def test_rehearsal_reports_exactly_what_a_too_tight_candidate_breaks() -> None:
    allowed = _policy({"process": {"matchPaths": [{"path": "/bin/sh"}]}, "action": "Allow"})
    report = rehearse(history(), [allowed], Posture(file="block"))
    assert report["totals"] == {"blocked": 2, "audited": 0, "unblocked": 0, "silenced": 0}
    [group] = report["workloads"]["shop/web-1/web-1"]["groups"]
    assert (group["change"], group["resource"], group["source"], group["count"], group["policy"]) == (
        "blocked", "/usr/bin/cat", "/usr/bin/dash", 2, "DefaultPosture")
    audit = rehearse(history(), [allowed], Posture(file="audit"))
    assert audit["totals"] == {"blocked": 0, "audited": 2, "unblocked": 0, "silenced": 0}
    discovered = [to_policy(admit(strip_comments(d), "d").doc) for d in discover(history(), resolve_root=None)[0]]
    assert rehearse(history(), discovered, Posture(file="block", network="block", capabilities="block"))[
        "totals"] == {"blocked": 0, "audited": 0, "unblocked": 0, "silenced": 0}


def test_rehearsal_sees_alerts_that_would_go_away_and_candidates_replace_applied_policies() -> None:
    rule = Decision("Block", "old-block", "KubeArmorPolicy", 5, "")
    old = build_alert(_event("exec", "/usr/bin/cat", "/usr/bin/dash", ret=-1), WL, rule, cluster="c",
                      enforcer_name="Fanotify")
    applied = _policy({"process": {"matchPaths": [{"path": "/usr/bin/cat"}]}, "action": "Block"}, "old-block")
    relaxed = _policy({"process": {"matchPaths": [{"path": "/usr/bin/cat"}]}, "action": "Audit"}, "old-block")
    assert rehearse([old], merge_policies([applied], []))["totals"]["blocked"] == 0  # no change: still blocked
    report = rehearse([old], merge_policies([applied], [relaxed]))
    assert report["totals"] == {"blocked": 0, "audited": 0, "unblocked": 1, "silenced": 0}
    assert rehearse([old], merge_policies([applied], [_policy({"process": {"matchPaths": [{"path": "/x"}]}},
                                                               "old-block")]))["totals"]["silenced"] == 0


def test_groups_are_bounded_per_workload() -> None:
    recs = [log("exec", f"/opt/bin/tool{i}", "/bin/sh") for i in range(30)]
    reh = Rehearsal([_policy({"process": {"matchPaths": [{"path": "/bin/true"}]}, "action": "Allow"})],
                    Posture(file="block"), max_groups=10)
    for r in recs:
        reh.feed(r)
    wl = reh.report()["workloads"]["shop/web-1/web-1"]
    assert len(wl["groups"]) == 10 and wl["other"] == 20 and wl["changes"]["blocked"] == 30


def test_records_give_back_the_access_the_feeder_judged() -> None:
    write = record_access(log("open", "/etc/a", "/bin/sh", syscall="openat", flags=0o1101))
    read = record_access(log("open", "/etc/a", "/bin/sh", syscall="openat", flags=0o2000000))
    gone = record_access(log("file", "/etc/a", "/bin/rm", syscall="unlinkat"))
    sock = record_access(log("network", "", "/bin/nc", syscall="socket", extra={"protocol": "udp"}))
    assert (write.access, read.access, gone.access) == ("write", "read", "write")
    assert (sock.operation, sock.protocol) == ("Network", "udp")
    assert parse_window("2h", now=10_000.0) == int((10_000.0 - 7200) * 1e9)
    assert [r["ContainerName"] for r in selected([log("exec", "/x", "/y")], {"app": "web"})] == ["web-1"]
    assert list(selected([log("exec", "/x", "/y")], {"app": "db"})) == []


def test_store_records_streams_every_matching_row_in_chunks(tmp_path: Path) -> None:
    store = RecordStore(make_engine(f"sqlite:///{tmp_path / 'feeder.db'}"))
    other = Workload(id="d" * 64, name="db-1", namespace="data", kind="container", node="n1", mntns=9, pidns=9)
    rows = [log("exec", f"/bin/p{i}", "/bin/sh") for i in range(10)] + [log("exec", "/bin/q", "/bin/sh", wl=other)]
    store.insert_records([], rows)
    got = list(store_records(store.engine, LogRow, RecordQuery(namespace="shop"), chunk=3))
    assert [r["Resource"] for r in got] == [f"/bin/p{i}" for i in range(10)]
