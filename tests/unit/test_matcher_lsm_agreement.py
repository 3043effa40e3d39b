"""The BPF-LSM tables agree with the matcher that reports (the feeder) and the simulator.

The kernel side of bpf/enforce/lsm.c is replayed here exactly over the tables
``services.enforcer.bpflsm.rules.compile_tables`` writes: the longest LPM entry that is a prefix of the
path (exact entries carry their NUL), a directory entry's class + 1 when a '/' follows the directory,
the same for the executable (source), then the verdict's slot. For generated policies (paths,
directories, recursive, readOnly, ownerOnly, fromSource, every action, postures, audited workloads)
its action must be the matcher's: Block exactly where ``decide`` says Block, a report exactly where
it says Audit or Audit (Block), nothing otherwise.
"""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.enforcer.bpflsm.rules import (
    AUDIT,
    BLOCK,
    KINDS,
    NEEDS_SOURCE,
    PATH_BYTES,
    SOURCE,
    LsmTables,
    compile_tables,
    slot,
)
from services.enforcer.signal.rules import CAPS
from services.policy.compiler import compile_rules
from services.policy.model import to_policy
from services.policy.validate import admit
from shared.bpf.names import protocol_name
from shared.matcher import Access, decide
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule, RuleSet, WorkloadRules

PATHS = ["/etc/passwd", "/etc/shadow", "/etc/ssl/certs/ca.pem", "/usr/bin/curl", "/usr/bin/apt", "/bin/sh"]
DIRS = ["/etc/", "/etc/ssl/", "/usr/bin/", "/usr/"]
SOURCES = ["/usr/bin/bash", "/usr/bin/cat", "/usr/local/bin/tool"]
PROBES = PATHS + ["/etc", "/etc/ssl", "/etc/hosts", "/etc/ssl/certs", "/etc/ssl/private/key", "/usr/bin/vim",
                  "/usr/lib/x86_64-linux-gnu/libc.so.6", "/var/log/syslog", "/usr"]
PROBE_SOURCES = SOURCES + ["/usr/bin/head", "/usr/local/bin/sub/deep", "/opt/app"]
ACTIONS = ["Allow", "Audit", "Block"]


@st.composite
def item(draw: st.DrawFn, kind: str, process: bool) -> dict:
    out: dict = {kind: draw(st.sampled_from(PATHS if kind == "path" else DIRS)),
                 "action": draw(st.sampled_from(ACTIONS))}
    if kind == "dir" and draw(st.booleans()):
        out["recursive"] = True
    if not process and draw(st.booleans()):
        out["readOnly"] = True
    if draw(st.integers(0, 3)) == 0:
        out["ownerOnly"] = True
    sources = draw(st.lists(st.sampled_from(SOURCES + ["/usr/local/bin/"]), max_size=2, unique=True))
    if sources:
        out["fromSource"] = [{"dir": s, "recursive": draw(st.booleans())} if s.endswith("/") else {"path": s}
                             for s in sources]
    return out


@st.composite
def policy(draw: st.DrawFn, index: int) -> dict:
    spec: dict = {"selector": {"matchLabels": {"app": draw(st.sampled_from(["a", "b"]))}}}
    for section, process in (("process", True), ("file", False)):
        paths = draw(st.lists(item("path", process), max_size=3))
        dirs = draw(st.lists(item("dir", process), max_size=2))
        body = {k: v for k, v in (("matchPaths", paths), ("matchDirectories", dirs)) if v}
        if body:
            spec[section] = body
    if draw(st.booleans()):
        spec["network"] = {"matchProtocols": [{"protocol": p, "action": draw(st.sampled_from(ACTIONS))}
                                              for p in draw(st.lists(st.sampled_from(["tcp", "udp", "icmp", "raw"]),
                                                                     min_size=1, max_size=2, unique=True))]}
    if draw(st.booleans()):
        spec["capabilities"] = {"matchCapabilities": [
            {"capability": c, "action": draw(st.sampled_from(ACTIONS))}
            for c in draw(st.lists(st.sampled_from(["net_raw", "mknod", "chown"]), min_size=1, max_size=2,
                                   unique=True))]}
    if not any(k in spec for k in ("process", "file", "network", "capabilities")):
        spec["file"] = {"matchPaths": [{"path": "/etc/passwd", "action": "Block"}]}
    return {"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
            "metadata": {"name": f"p{index}", "namespace": "demo"}, "spec": spec}


@st.composite
def scenario(draw: st.DrawFn) -> RuleSet:
    docs = [draw(policy(i)) for i in range(draw(st.integers(1, 3)))]
    workloads = []
    for i, app in enumerate(draw(st.lists(st.sampled_from(["a", "b"]), min_size=1, max_size=2))):
        notes = {"kubearmor-policy": "audited"} if draw(st.integers(0, 3)) == 0 else {}
        ns_notes = {f"kubearmor-{k}-posture": draw(st.sampled_from(["audit", "block"]))
                    for k in ("file", "network", "capabilities")}
        workloads.append(Workload(id=f"w{i}", name=f"w{i}", namespace="demo", kind="container", node="n",
                                  mntns=100 + i, pidns=1, labels={"app": app}, annotations=notes,
                                  namespace_annotations=ns_notes))
    return compile_rules([to_policy(admit(d).doc) for d in docs], workloads, "n")


def _class(tables: LsmTables, mntns: int, kind: int, path: str) -> int:
    """bw_lsm_path_class: the longest entry that is a prefix of path + NUL; +1 below a directory."""
    raw = path.encode() + b"\0"
    if len(raw) > PATH_BYTES + 1:
        return 0
    best = None
    for (ns, k, key), (cls, length, is_dir) in tables.paths.items():
        if ns == mntns and k == kind and raw.startswith(key) and (best is None or length > best[1]):
            best = (cls, length, is_dir)
    if best is None:
        return 0
    cls, length, is_dir = best
    return cls + 1 if is_dir and b"/" in raw[length:-1] else cls


def kernel_action(tables: LsmTables, mntns: int, kind: int, resource: int | str, source: str, slot_: int) -> int:
    """What lsm.c does: 0 allow, BLOCK, AUDIT."""
    flags = tables.namespaces.get(mntns, 0)
    if not flags & (1 << kind):
        return 0
    res = _class(tables, mntns, kind, resource) if isinstance(resource, str) else resource
    src = _class(tables, mntns, SOURCE, source) if flags & (1 << (kind + NEEDS_SOURCE)) else 0
    verdict = tables.verdicts.get((mntns, kind, res, src))
    return verdict[1][slot_] if verdict else 0


def _expected(wr: WorkloadRules, access: Access) -> int:
    decision = decide(wr, access)
    if decision is None or decision.action in ("Allow", "Audit (Allow)"):
        return 0
    return BLOCK if decision.action == "Block" else AUDIT


def _net_class(tables: LsmTables, mntns: int, fam: int, typ: int, proto: int) -> int:
    return tables.net.get((mntns, fam, typ, proto)) or tables.net.get((mntns, fam, typ, 0xFFFFFFFF)) or 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_bpflsm_refuses_exactly_what_the_matcher_blocks(rs: RuleSet) -> None:
    tables = compile_tables(rs)
    assert tables.unsupported == 0 and tables.unenforced == 0
    for wr in rs.running():
        for path in PROBES:
            for source in PROBE_SOURCES:
                for owner in (False, True):
                    uid, owner_uid = 0, 0 if owner else 1000
                    for operation, access in (("Process", "exec"), ("File", "read"), ("File", "write")):
                        asked = Access(operation, path, source=source, access=access, uid=uid,
                                       resource_owner_uid=owner_uid)
                        got = kernel_action(tables, wr.mntns, KINDS[operation], path, source, slot(access, owner))
                        assert got == _expected(wr, asked), (wr.workload_id, operation, path, source, access, owner)
        for (fam, typ, proto) in [(2, 1, 0), (2, 2, 0), (2, 3, 1), (10, 3, 58), (2, 3, 255), (10, 1, 6), (2, 5, 99)]:
            name = protocol_name(fam, typ, proto).lower()
            for source in PROBE_SOURCES[:3]:
                asked = Access("Network", name, source=source, protocol=name)
                got = kernel_action(tables, wr.mntns, KINDS["Network"], _net_class(tables, wr.mntns, fam, typ, proto),
                                    source, 0)
                assert got == _expected(wr, asked), (wr.workload_id, fam, typ, proto, source)
        for cap, number in CAPS.items():
            asked = Access("Capabilities", cap, source="/usr/bin/bash", capability=cap)
            got = kernel_action(tables, wr.mntns, KINDS["Capabilities"], number + 1, "/usr/bin/bash", 0)
            assert got == _expected(wr, asked), (wr.workload_id, cap)


def test_unsupported_rules_never_make_the_kernel_block_what_the_matcher_allows() -> None:
    """A pattern Allow rule the kernel cannot see: the posture it would lift is not enforced."""
    allow_pattern = Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="d", operation="File",
                         action="Allow", pattern=r"/tmp/.*\.log")
    allow_etc = Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="d", operation="File",
                     action="Allow", dir="/etc/", recursive=True)
    wr = WorkloadRules("w", 7, 1, [allow_pattern, allow_etc], file_posture="block")
    rs = RuleSet(node="n", version=1, policy_seq=1, identity_seq=1, workloads={"w": wr})
    tables = compile_tables(rs)
    assert tables.unsupported == 1 and tables.unenforced > 0
    assert kernel_action(tables, 7, KINDS["File"], "/tmp/x.log", "", slot("read", False)) == 0
    assert _expected(wr, Access("File", "/tmp/x.log", access="read")) == 0
    assert kernel_action(tables, 7, KINDS["File"], "/etc/hosts", "", slot("read", False)) == 0
