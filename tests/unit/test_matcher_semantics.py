"""KubeArmor's policy semantics, end to end through admission, the compiler and the one matcher.

Most policies are KubeArmor's own examples from the conformance corpus (read from disk, unchanged);
the expected verdicts follow KubeArmor's documentation of each feature.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from services.policy.compiler import compile_rules
from services.policy.model import Policy, to_policy
from services.policy.parser import parse_documents
from services.policy.validate import admit
from shared.matcher import DEFAULT_POSTURE, Access, Decision, Posture, decide
from shared.schemas.identity import Workload

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "kubearmor" / "policies"
UBUNTU = "examples/multiubuntu/security-policies/"
needs_corpus = pytest.mark.skipif(not CORPUS.exists(), reason="conformance corpus not present")


def load(text_or_file: str) -> list[Policy]:
    text = (CORPUS / text_or_file).read_text() if text_or_file.endswith(".yaml") else text_or_file
    return [to_policy(admit(doc, label).doc) for label, doc in parse_documents(text)]


def wl(namespace: str = "multiubuntu", labels: dict[str, str] | None = None, *, kind: str = "container",
       name: str = "c", ns_notes: dict[str, str] | None = None, notes: dict[str, str] | None = None) -> Workload:
    return Workload(id="w", name=name, namespace=namespace, kind=kind, node="n1", mntns=1, pidns=1,
                    labels=labels or {}, namespace_annotations=ns_notes or {}, annotations=notes or {})


def judge(policies: list[Policy], workload: Workload, access: Access,
          posture: Posture = DEFAULT_POSTURE) -> Decision | None:
    rs = compile_rules(policies, [workload], "n1", default_posture=posture)
    return decide(rs.workloads[workload.id], access)


def action(*args, **kw) -> str | None:
    d = judge(*args, **kw)
    return None if d is None else d.action


def ubuntu(n: int, **kw) -> Workload:
    return wl(labels={"container": f"ubuntu-{n}", "group": "group-1" if n <= 2 else "group-2"}, **kw)


# -- selectors ---------------------------------------------------------------------------------------

@needs_corpus
def test_match_labels_select_in_the_policy_namespace_only() -> None:
    p = load(UBUNTU + "ksp-ubuntu-1-proc-dir-block.yaml")
    assert action(p, ubuntu(1), Access("Process", "/sbin/route")) == "Block"
    assert action(p, ubuntu(2), Access("Process", "/sbin/route")) is None
    assert action(p, wl("other", {"container": "ubuntu-1"}), Access("Process", "/sbin/route")) is None


@needs_corpus
def test_match_expressions_in_and_not_in_on_labels_are_anded_and_execname_matches_any_dir() -> None:
    p = load(UBUNTU + "ksp-match-expression-in-notin-block-process.yaml")
    assert action(p, ubuntu(1), Access("Process", "/usr/bin/apt")) == "Block"
    assert action(p, ubuntu(1), Access("Process", "/bin/apt")) == "Block"
    assert action(p, ubuntu(1), Access("Process", "/usr/bin/aptitude")) is None
    both = wl(labels={"container": "ubuntu-1", "x": "y"})
    assert action(p, both, Access("Process", "/usr/bin/apt")) == "Block"
    assert action(p, ubuntu(3), Access("Process", "/usr/bin/apt")) is None


@needs_corpus
def test_cluster_policy_not_in_namespace_and_label() -> None:
    p = load("examples/nginx-csp/cluster-security-policies/csp-matchlabels-not-in-block-process.yaml")
    apt = Access("Process", "/usr/bin/apt")
    assert action(p, wl("nginx1", {"app": "web"}), apt) == "Block"
    assert action(p, wl("nginx2", {"app": "web"}), apt) is None
    assert action(p, wl("nginx1", {"app": "nginx"}), apt) is None
    assert action(p, wl("", {}, kind="host"), apt) is None


def test_container_name_label_narrows_to_those_containers() -> None:
    p = load("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: names, namespace: shop}
spec:
  selector: {matchLabels: {app: web, kubearmor.io/container.name: "[nginx,sidecar]"}}
  process: {matchPaths: [{path: /bin/sh}]}
  action: Block
""")
    sh = Access("Process", "/bin/sh")
    assert action(p, wl("shop", {"app": "web"}, name="sidecar"), sh) == "Block"
    assert action(p, wl("shop", {"app": "web"}, name="app"), sh) is None


@needs_corpus
def test_host_policy_node_selector_and_process_allow_list_from_source() -> None:
    p = load("examples/host-security-policies/hsp-k8s-kubearmor-dev-proc-path-allow-fromSource.yaml")
    host = wl("", {"kubernetes.io/hostname": "kubearmor-dev"}, kind="host")
    allowed = judge(p, host, Access("Process", "/bin/date", source="/bin/bash"))
    assert allowed is not None and allowed.action == "Allow" and not allowed.alert
    assert allowed.alert_type == "MatchedHostPolicy"
    other = judge(p, host, Access("Process", "/bin/date", source="/bin/sh"))
    assert other is not None and (other.action, other.policy, other.alert_type) == \
        ("Audit", "DefaultPosture", "MatchedHostPolicy")
    assert action(p, host, Access("Process", "/bin/date", source="/bin/sh"), Posture(file="block")) == "Block"
    assert action(p, wl("", {"kubernetes.io/hostname": "elsewhere"}, kind="host"),
                  Access("Process", "/bin/date")) is None


# -- process and file resources ----------------------------------------------------------------------

@needs_corpus
def test_directories_recursive_or_not() -> None:
    flat = load(UBUNTU + "ksp-ubuntu-1-proc-dir-block.yaml")
    assert action(flat, ubuntu(1), Access("Process", "/sbin/x/deeper")) is None
    deep = load(UBUNTU + "ksp-ubuntu-2-proc-dir-recursive-block.yaml")
    assert action(deep, ubuntu(2), Access("Process", "/usr/bin/x/deeper/ls")) == "Block"
    assert action(deep, ubuntu(2), Access("Process", "/usr/sbin/useradd")) == "Block"
    assert action(deep, ubuntu(2), Access("Process", "/bin/ls")) is None


@needs_corpus
def test_from_source_path_limits_a_rule_to_that_caller() -> None:
    p = load(UBUNTU + "ksp-group-1-proc-path-block-from-source.yaml")
    assert action(p, ubuntu(1), Access("Process", "/bin/ls", source="/bin/dash")) == "Block"
    assert action(p, ubuntu(2), Access("Process", "/bin/ls", source="/bin/bash")) is None


@needs_corpus
def test_match_patterns_are_globs() -> None:
    p = load(UBUNTU + "ksp-ubuntu-1-file-pattern-block.yaml")
    assert p[0].doc["spec"]["file"]["matchPatterns"][0]["pattern"] == "/etc/*hado?"
    assert action(p, ubuntu(1), Access("File", "/etc/shadow")) == "Block"
    assert action(p, ubuntu(1), Access("File", "/etc/gshadow")) == "Block"
    assert action(p, ubuntu(1), Access("File", "/etc/x/shadow")) is None  # * stays in one directory
    assert action(p, ubuntu(1), Access("File", "/etc/shadow-")) is None  # the whole path must match
    conf = load("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: conf, namespace: multiubuntu}
spec:
  selector: {matchLabels: {container: ubuntu-1}}
  file: {matchPatterns: [{pattern: /**/*.conf}, {pattern: "/etc/{passwd,shadow}"}]}
  action: Audit
""")
    assert action(conf, ubuntu(1), Access("File", "/etc/nginx/nginx.conf")) == "Audit"
    assert action(conf, ubuntu(1), Access("File", "/etc/shadow")) == "Audit"
    assert action(conf, ubuntu(1), Access("File", "/etc/nginx/nginx.conf.bak")) is None


@needs_corpus
def test_owner_only_process_rule_blocks_everyone_but_the_owner() -> None:
    p = load(UBUNTU + "ksp-ubuntu-3-proc-path-owner-block.yaml")
    hello = "/home/user1/hello"
    assert action(p, ubuntu(3), Access("Process", hello, uid=1000, resource_owner_uid=1000)) is None
    assert action(p, ubuntu(3), Access("Process", hello, uid=0, resource_owner_uid=1000)) == "Block"
    assert action(p, ubuntu(3), Access("Process", hello)) == "Block"  # unknown uid: not the owner


@needs_corpus
def test_read_only_block_stops_writes_and_lets_reads_through() -> None:
    p = load(UBUNTU + "ksp-ubuntu-3-file-dir-readonly-block.yaml")
    assert action(p, ubuntu(3), Access("File", "/credentials/password", access="read")) is None
    d = judge(p, ubuntu(3), Access("File", "/credentials/password", access="write"))
    assert d is not None and (d.action, d.severity, d.tags) == ("Block", 10, ("WARNING",))


@needs_corpus
def test_owner_only_and_read_only_together() -> None:
    p = load(UBUNTU + "ksp-ubuntu-1-file-pattern-owner-readonly-block.yaml")
    f = "/home/user1/secret_data1.txt"
    assert action(p, ubuntu(1), Access("File", f, access="read", uid=1000, resource_owner_uid=1000)) is None
    assert action(p, ubuntu(1), Access("File", f, access="write", uid=1000, resource_owner_uid=1000)) == "Block"
    assert action(p, ubuntu(1), Access("File", f, access="read", uid=0, resource_owner_uid=1000)) == "Block"


@needs_corpus
def test_read_only_allow_allows_reads_and_writes_fall_to_the_posture() -> None:
    p = load(UBUNTU + "ksp-ubuntu-4-file-path-readonly-allow.yaml")
    path = p[0].doc["spec"]["file"]["matchPaths"][0]["path"]
    assert action(p, ubuntu(4), Access("File", path, access="read")) == "Allow"
    write = judge(p, ubuntu(4), Access("File", path, access="write"))
    assert write is not None and (write.action, write.policy) == ("Audit", "DefaultPosture")


# -- network, capabilities, syscalls -------------------------------------------------------------------

@needs_corpus
def test_network_protocol_allow_list_from_source() -> None:
    p = load(UBUNTU + "ksp-ubuntu-1-net-tcp-from-source-allow.yaml")
    assert action(p, ubuntu(1), Access("Network", protocol="tcp", source="/usr/bin/curl")) == "Allow"
    assert action(p, ubuntu(1), Access("Network", protocol="TCP", source="/usr/bin/curl")) == "Allow"
    udp = judge(p, ubuntu(1), Access("Network", protocol="udp", source="/usr/bin/curl"))
    assert udp is not None and (udp.action, udp.policy) == ("Audit", "DefaultPosture")
    assert action(p, ubuntu(1), Access("Network", protocol="tcp", source="/bin/bash"),
                  Posture(network="block")) == "Block"
    # the file posture does not govern network allow-lists
    assert action(p, ubuntu(1), Access("Network", protocol="udp"), Posture(file="block")) == "Audit"


@needs_corpus
def test_network_raw_icmp_and_all() -> None:
    raw = load(UBUNTU + "ksp-ubuntu-1-net-raw-block.yaml")
    assert action(raw, ubuntu(1), Access("Network", protocol="raw")) == "Block"
    assert action(raw, ubuntu(1), Access("Network", protocol="tcp")) is None
    icmp = load(UBUNTU + "ksp-ubuntu-5-net-icmp-audit.yaml")
    assert action(icmp, ubuntu(5), Access("Network", "icmp")) == "Audit"
    every = load("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: all, namespace: multiubuntu}
spec:
  selector: {matchLabels: {container: ubuntu-1}}
  network: {matchProtocols: [{protocol: all}]}
  action: Block
""")
    assert action(every, ubuntu(1), Access("Network", protocol="udp")) == "Block"


@needs_corpus
def test_capabilities() -> None:
    p = load(UBUNTU + "ksp-ubuntu-1-cap-net-raw-block.yaml")
    assert action(p, ubuntu(1), Access("Capabilities", capability="net_raw")) == "Block"
    assert action(p, ubuntu(1), Access("Capabilities", capability="CAP_NET_RAW")) == "Block"
    assert action(p, ubuntu(1), Access("Capabilities", capability="sys_admin")) is None


@needs_corpus
def test_syscalls_only_audit_and_honour_from_source_dir_and_paths() -> None:
    by_dir = load("tests/k8s_env/syscalls/manifests/matchsyscalls/unlink-fromsource-dir-recursive.yaml")
    u1 = wl("syscalls", {"container": "ubuntu-1"})
    assert action(by_dir, u1, Access("Syscall", syscall="unlink", source="/foo/bar/rm")) == "Audit"
    assert action(by_dir, u1, Access("Syscall", syscall="SYS_UNLINK", source="/foo/rm")) == "Audit"
    assert action(by_dir, u1, Access("Syscall", syscall="unlink", source="/bin/rm")) is None
    assert action(by_dir, u1, Access("Syscall", syscall="rmdir", source="/foo/rm")) is None
    by_path = load("tests/k8s_env/syscalls/manifests/matchpaths/unlink-dir-recursive-fromsource-path.yaml")
    hit = Access("Syscall", "/home/user/a/file", syscall="unlink", source="/bin/unlink")
    assert action(by_path, u1, hit) == "Audit"
    assert action(by_path, u1, Access("Syscall", "/tmp/file", syscall="unlink", source="/bin/unlink")) is None
    block = load("""\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: sys-block, namespace: syscalls}
spec:
  selector: {matchLabels: {container: ubuntu-1}}
  syscalls: {matchSyscalls: [{syscall: [chmod]}]}
  action: Block
""")
    assert action(block, u1, Access("Syscall", syscall="chmod")) == "Audit"


# -- allow-lists, postures, conflicts, audited --------------------------------------------------------

ALLOW_NGINX = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: only-nginx, namespace: web}
spec:
  selector: {matchLabels: {app: nginx}}
  process: {matchPaths: [{path: /usr/sbin/nginx}]}
  action: Allow
"""


def test_process_allow_list_falls_to_the_file_posture_per_namespace() -> None:
    p = load(ALLOW_NGINX)
    bash = Access("Process", "/bin/bash")
    assert action(p, wl("web", {"app": "nginx"}), bash) == "Audit"
    assert action(p, wl("web", {"app": "nginx"}), bash, Posture(file="block")) == "Block"
    assert action(p, wl("web", {"app": "nginx"}, ns_notes={"kubearmor-file-posture": "block"}), bash) == "Block"
    assert action(p, wl("web", {"app": "nginx"}, ns_notes={"kubearmor-network-posture": "block"}), bash) == "Audit"
    assert action(p, wl("web", {"app": "nginx"}, ns_notes={"kubearmor-file-posture": "audit"}), bash,
                  Posture(file="block")) == "Audit"
    invalid = wl("web", {"app": "nginx"}, ns_notes={"kubearmor-file-posture": "deny"})
    assert action(p, invalid, bash, Posture(file="block")) == "Block"  # invalid value: global default
    # a process allow-list is not a file allow-list, and workloads without Allow rules have no posture
    assert action(p, wl("web", {"app": "nginx"}), Access("File", "/etc/passwd"), Posture(file="block")) is None
    assert action(p, wl("web", {"app": "other"}), bash, Posture(file="block")) is None


@needs_corpus
def test_conflicts_lenient_allow_from_source_beats_block_which_beats_allow() -> None:
    p = load("tests/k8s_env/smoke/res/ksp-wordpress-lenient-allow-sa.yaml")
    wp = wl("wordpress-mysql", {"app": "wordpress"})
    token = "/run/secrets/kubernetes.io/serviceaccount/token"
    assert action(p, wp, Access("File", token, source="/bin/cat")) == "Allow"
    assert action(p, wp, Access("File", token, source="/usr/bin/head")) == "Block"
    assert action(p, wp, Access("File", "/etc/passwd", source="/usr/bin/head")) == "Allow"
    assert action(p, wp, Access("Process", "/usr/bin/head"), Posture(file="block")) == "Allow"


def test_audit_never_grants_block_wins_and_audit_beats_allow() -> None:
    base = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata: {name: NAME, namespace: web}
spec:
  selector: {matchLabels: {app: nginx}}
  file: {matchPaths: [{path: /etc/passwd}]}
  action: ACTION
"""
    audit, block, allow = (load(base.replace("NAME", a.lower()).replace("ACTION", a)) for a in ("Audit",
        "Block", "Allow"))
    nginx = wl("web", {"app": "nginx"})
    passwd = Access("File", "/etc/passwd")
    assert judge(audit + block, nginx, passwd).policy == "block"
    assert judge(block + allow, nginx, passwd).action == "Block"
    assert judge(allow + block, nginx, passwd).action == "Block"
    d = judge(allow + audit, nginx, passwd)
    assert (d.action, d.policy) == ("Audit", "audit")


def test_audited_workload_reports_instead_of_blocking() -> None:
    block = load(ALLOW_NGINX.replace("only-nginx", "no-sleep").replace("/usr/sbin/nginx", "/bin/sleep")
                 .replace("Allow", "Block"))
    audited = wl("web", {"app": "nginx"}, notes={"kubearmor-policy": "audited"})
    assert action(block, audited, Access("Process", "/bin/sleep")) == "Audit (Block)"
    assert action(load(ALLOW_NGINX), audited, Access("Process", "/bin/bash"), Posture(file="block")) == "Audit (Block)"
    assert action(load(ALLOW_NGINX), audited, Access("Process", "/usr/sbin/nginx")) == "Allow"
    disabled = wl("web", {"app": "nginx"}, notes={"kubearmor-policy": "disabled"})
    assert action(block, disabled, Access("Process", "/bin/sleep")) is None
