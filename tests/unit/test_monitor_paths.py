"""The in-kernel path filter's entries (services.monitor.kernel_filters): which (mntns, prefix) entries
the trie gets, when a namespace falls back to every file event, and that no path a rule matches is
ever left uncovered (checked against shared.matcher itself)."""
from __future__ import annotations

from services.monitor.kernel_filters import (
    FILE_PATHS,
    PATH_KEY_LEN,
    Visibility,
    file_prefixes,
    path_entries,
    visibility_masks,
)
from shared.loaders import decide_access
from shared.matcher import Access, rule_matches_resource
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

FILE, PROCESS = 2, 1
HOST = 1


def _r(op: str, action: str = "Block", **kw: object) -> Rule:
    return Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="ns", operation=op,
                action=action, **kw)  # type: ignore[arg-type]


def _rs(*workloads: WorkloadRules) -> RuleSet:
    return RuleSet(node="n", version=1, policy_seq=1, identity_seq=1,
                   workloads={w.workload_id: w for w in workloads})


def _quiet(mntns: int) -> Workload:
    return Workload(id=f"w{mntns}", name="a", namespace="ns", kind="container", node="n", mntns=mntns,
                    pidns=mntns + 1, namespace_annotations={"kubearmor-visibility": "none"})


def _emitted(name: str, prefixes: frozenset[bytes]) -> bool:
    """What bw_path_listed decides for an open of ``name`` (the kernel's key: name, NUL, cut)."""
    raw = (name.encode() + b"\0")[:PATH_KEY_LEN]
    if not raw.startswith(b"/"):
        return True
    return any(raw.startswith(prefix) for prefix in prefixes)


def test_exact_path_includes_its_nul() -> None:
    assert file_prefixes([_r("File", path="/etc/shadow")]) == {b"/etc/shadow\0"}
    prefixes = file_prefixes([_r("File", path="/a/b")])
    assert prefixes is not None
    assert _emitted("/a/b", prefixes) and not _emitted("/a/bc", prefixes) and not _emitted("/a", prefixes)


def test_directory_is_a_prefix_and_itself() -> None:
    for recursive in (False, True):
        prefixes = file_prefixes([_r("File", dir="/srv/data/", recursive=recursive)])
        assert prefixes == {b"/srv/data/", b"/srv/data\0"}
        # every name the matcher puts in the directory is emitted (non-recursive: over-emitted below)
        for name in ("/srv/data", "/srv/data/", "/srv/data/x", "/srv/data/x/y"):
            assert _emitted(name, prefixes)
        assert not _emitted("/srv/database", prefixes) and not _emitted("/srv/dat", prefixes)
    assert file_prefixes([_r("File", dir="/")]) == {b"/"}     # the root covers every absolute name


def test_what_the_trie_cannot_hold_needs_every_file_event() -> None:
    assert file_prefixes([_r("File", pattern=r"/tmp/.*\.sh")]) is None
    assert file_prefixes([_r("File", exec_name="passwd")]) is None
    assert file_prefixes([_r("File", path="relative/name")]) is None
    assert file_prefixes([_r("File", path="/" + "x" * PATH_KEY_LEN)]) is None
    assert file_prefixes([_r("File", path="/" + "x" * (PATH_KEY_LEN - 2))]) is not None
    # an allow-list judges every other path with the posture
    assert file_prefixes([_r("File", "Allow", path="/ok"), _r("File", path="/etc/shadow")]) is None
    # one such rule decides for the namespace, whatever the others
    assert file_prefixes([_r("File", path="/etc/shadow"), _r("File", pattern="/x.*")]) is None
    assert file_prefixes([_r("Network", protocol="udp"), _r("Capabilities", capability="net_raw")]) == set()


def test_process_rules_list_their_programs() -> None:
    # ld.so PROGRAM opens PROGRAM: the loader's open is judged as an exec (shared.loaders)
    rules = [_r("Process", path="/usr/bin/sleep"), _r("Process", "Audit", dir="/opt/tools/", recursive=True),
             _r("Process", "Allow", path="/usr/bin/true")]
    assert file_prefixes(rules) == {b"/usr/bin/sleep\0", b"/opt/tools/", b"/opt/tools\0"}
    # a Process Block by pattern: every open in a workload, nothing more on the host (as before)
    assert file_prefixes([_r("Process", pattern="/usr/bin/.*")]) is None
    assert file_prefixes([_r("Process", pattern="/usr/bin/.*")], host=True) == set()
    assert file_prefixes([_r("Process", "Audit", pattern="/usr/bin/.*")]) == set()


def test_masks_and_entries_per_namespace() -> None:
    rs = _rs(WorkloadRules("w50", 50, 51, [_r("File", path="/etc/shadow"), _r("Network", protocol="udp")]),
             WorkloadRules("w60", 60, 61, [_r("File", pattern="/tmp/.*")]),
             WorkloadRules("w70", 70, 71, [_r("File", path="/x")]),
             WorkloadRules("host", HOST, 2, [_r("File", dir="/root/.ssh/"), _r("Process", path="/bin/su")]),
             WorkloadRules("gone", 80, 81, [_r("File", path="/y")], stopped_ns=5))
    workloads = {"w50": _quiet(50), "w60": _quiet(60)}          # w70: container default (files on)
    masks = visibility_masks(rs, workloads, host_mntns=HOST)
    assert isinstance(masks, Visibility)
    assert masks[50] == 4 | FILE_PATHS                        # only the paths its rules name
    assert masks[60] == FILE                                  # a pattern: every file event
    assert masks[70] == 15                                    # files visible anyway: no FILE_PATHS bit
    assert masks[HOST] == PROCESS | FILE_PATHS                # host default "none", its rules' paths
    assert masks[0] & FILE and not masks[0] & FILE_PATHS      # unknown namespaces: whole kinds
    assert 80 not in masks
    assert masks.paths == path_entries(rs, HOST) == {
        (50, b"/etc/shadow\0"), (70, b"/x\0"), (HOST, b"/root/.ssh/"), (HOST, b"/root/.ssh\0"),
        (HOST, b"/bin/su\0")}
    assert path_entries(None, HOST) == set()
    assert visibility_masks(None, {}, HOST) == {0: 31}


def test_visibility_equality_sees_the_paths() -> None:
    # FilterFollower applies only what changed: a rule that moves a path must count as a change
    assert Visibility({1: FILE_PATHS}, {(1, b"/a\0")}) != Visibility({1: FILE_PATHS}, {(1, b"/b\0")})
    assert Visibility({1: FILE_PATHS}, {(1, b"/a\0")}) == Visibility({1: FILE_PATHS}, {(1, b"/a\0")})
    assert Visibility({0: 31}) == {0: 31}
    before = visibility_masks(_rs(WorkloadRules("w", 50, 51, [_r("File", path="/a")])), {"w": _quiet(50)}, HOST)
    after = visibility_masks(_rs(WorkloadRules("w", 50, 51, [_r("File", path="/b")])), {"w": _quiet(50)}, HOST)
    assert dict(before) == dict(after) and before != after


def test_no_matching_access_is_ever_filtered() -> None:
    """For each rule and each candidate name: if the feeder's decision (File, or a loader's open
    judged as an exec) could alert, the kernel's filter emits the open."""
    rules = [_r("File", path="/etc/shadow"), _r("File", dir="/srv/data/"), _r("File", "Audit", dir="/var/log/",
             recursive=True), _r("File", path="/home/u/.ssh/id", read_only=True, owner_only=True),
             _r("File", path="/opt/app", from_source=[{"path": "/bin/cat"}]), _r("Process", path="/usr/bin/sleep"),
             _r("Process", "Audit", dir="/opt/tools/")]
    prefixes = file_prefixes(rules)
    assert prefixes is not None
    names = ["/etc/shadow", "/etc/shadow2", "/etc/shadowx/y", "/srv/data", "/srv/data/", "/srv/data/a",
             "/srv/data/a/b", "/srv/database", "/var/log/x/y/z", "/var/lo", "/home/u/.ssh/id", "/opt/app",
             "/opt/apps", "/usr/bin/sleep", "/usr/bin/sleeper", "/opt/tools/t", "/opt/tools", "/tmp/x",
             "/" + "v" * 400]
    for name in names:
        judged = any(rule_matches_resource(rule, name) for rule in rules)
        for source in ("/bin/cat", "/usr/lib64/ld-linux-x86-64.so.2", "/bin/sh"):
            for access in ("read", "write"):
                decision = decide_access(rules, Access("File", name, source, access, uid=5, resource_owner_uid=6))
                if decision is not None and decision.alert:
                    assert _emitted(name, prefixes), (name, source, access)
        assert _emitted(name, prefixes) or not judged, name
    # what no rule names stays in the kernel (a non-recursive directory is over-emitted below)
    assert [n for n in names if not _emitted(n, prefixes)] == [
        "/etc/shadow2", "/etc/shadowx/y", "/srv/database", "/var/lo", "/opt/apps", "/usr/bin/sleeper", "/tmp/x",
        "/" + "v" * 400]


def test_follower_applies_a_moved_path() -> None:
    from services.monitor.follow import FilterFollower
    from shared.lifecycle import Counters

    applied: list[Visibility] = []
    follower = FilterFollower("n", lambda masks, _sys, _owner, _real: applied.append(masks), Counters(),
                              containers="none", hosts="none", host_mntns=HOST)
    follower.ruleset = _rs(WorkloadRules("w", 50, 51, [_r("File", path="/a")]))
    follower.refresh()
    follower.refresh()                                         # nothing changed: not applied again
    follower.ruleset = _rs(WorkloadRules("w", 50, 51, [_r("File", path="/b")]))
    follower.refresh()
    assert [m.paths for m in applied] == [{(50, b"/a\0")}, {(50, b"/b\0")}]
    assert applied[0][50] == applied[1][50] == FILE_PATHS
