"""The hardening library and `bulwark recommend`'s pieces: rules, image file trees, policies, reports."""
from __future__ import annotations

import io
import json
import re
import tarfile

import pytest

from bulwark.recommend.build import Target, policy_name, recommend
from bulwark.recommend.files import FileTree, TooManyEntries, tree_from_dir, tree_from_tar
from bulwark.recommend.library import LIBRARY, rule_by_id, rules_for_tags
from bulwark.recommend.report import render_html, render_json, render_text, report_data
from services.policy.compiler import compile_rules
from services.policy.model import to_policy
from services.policy.validate import admit
from shared.matcher import Access, decide
from shared.schemas.identity import Workload

MITRE = re.compile(r"^T\d{4}(\.\d{3})?$")
NIST = re.compile(r"^[A-Z]{2}-\d+(\(\d+\))?$")
STIG = re.compile(r"^[A-Z]+-\d{2}-\d{6}$")


def _tree(*files: str, links: dict[str, str] | None = None) -> FileTree:
    tree = FileTree()
    for f in files:
        tree.add(f, "d" if f.endswith("/") else "f")
    for name, target in (links or {}).items():
        tree.add(name, "l", target)
    return tree


def _image_tree() -> FileTree:
    """A merged-/usr image: /bin -> usr/bin, with a package manager, cron and a shell."""
    return _tree("usr/bin/apt", "usr/bin/dpkg", "usr/bin/busybox", "etc/cron.d/", "etc/passwd", "root/",
                 "home/app/", "usr/sbin/", links={"bin": "usr/bin", "usr/bin/sh": "busybox"})


def test_every_rule_has_an_id_a_why_and_references_in_each_catalogue_format() -> None:
    ids = [r.id for r in LIBRARY]
    assert len(ids) == len(set(ids))
    for rule in LIBRARY:
        assert rule.title and rule.description and 1 <= rule.severity <= 10, rule.id
        assert rule.mitre and rule.nist, f"{rule.id}: needs MITRE ATT&CK and NIST 800-53 references"
        assert all(MITRE.match(m) for m in rule.mitre), rule.mitre
        assert all(NIST.match(n) for n in rule.nist), rule.nist
        assert all(STIG.match(s) for s in rule.stig), rule.stig
        assert rule.programs or rule.exec_names or rule.exec_dirs or rule.read_paths or rule.write_paths \
            or rule.read_dirs or rule.write_dirs or rule.protocols or rule.capabilities, rule.id


def test_the_library_covers_what_karmor_recommend_covers() -> None:
    categories = {c for r in LIBRARY for c in r.categories}
    assert {"package-manager", "system-binaries", "system-config", "certificates", "cron", "shell-history",
            "credentials", "kubernetes", "raw-socket", "remote-access", "crypto-miner", "devices"} <= categories
    assert rule_by_id("service-account-token").read_dirs[0] == "/var/run/secrets/kubernetes.io/serviceaccount/"
    assert "T1053.003" in rule_by_id("cron-jobs").mitre
    assert "T1553.004" in rule_by_id("trusted-certificates-write").mitre


def test_tags_select_by_id_category_or_reference() -> None:
    assert [r.id for r in rules_for_tags(["cron"])] == ["cron-jobs"]
    assert {r.id for r in rules_for_tags(["t1105"])} == {"package-manager-exec", "remote-file-copy"}
    assert {r.id for r in rules_for_tags(["MITRE-T1496", "raw-sockets"])} == {"crypto-miners", "raw-sockets"}
    assert rules_for_tags([]) == [r for r in LIBRARY if not r.opt_in]
    assert rules_for_tags(["no-such-tag"]) == []


def test_file_tree_follows_links_like_the_kernel() -> None:
    tree = _image_tree()
    assert tree.resolve("/bin/apt") == "/usr/bin/apt" and tree.is_file("/bin/sh")
    assert tree.is_dir("/etc/cron.d") and not tree.is_file("/etc/cron.d") and tree.kind("/nope") is None
    assert tree.homes() == ["/root", "/home/app"]
    loop = _tree(links={"a": "b", "b": "a"})
    assert loop.resolve("/a/x") is None
    rel = _tree("opt/tool/bin/run", links={"usr/local/bin/run": "../../../opt/tool/bin/run"})
    assert rel.resolve("/usr/local/bin/run") == "/opt/tool/bin/run"


def test_tar_streams_are_read_once_and_bounded() -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, kind in (("./usr/bin/apt", tarfile.REGTYPE), ("./etc/cron.d", tarfile.DIRTYPE)):
            info = tarfile.TarInfo(name)
            info.type = kind
            tar.addfile(info, io.BytesIO(b""))
        link = tarfile.TarInfo("./bin")
        link.type, link.linkname = tarfile.SYMTYPE, "usr/bin"
        tar.addfile(link)
    buf.seek(0)
    tree = tree_from_tar(buf)
    assert tree.is_file("/bin/apt") and tree.is_dir("/etc/cron.d")
    buf.seek(0)
    with pytest.raises(TooManyEntries):
        tree_from_tar(buf, max_entries=2)


def test_a_directory_rootfs_is_read_with_lstat(tmp_path) -> None:
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "apt").write_text("#!/bin/sh\n")
    (tmp_path / "bin").symlink_to("usr/bin")
    tree = tree_from_dir(tmp_path, ["/bin/apt", "/usr/bin/apt", "/etc/crontab"])
    assert tree.is_file("/bin/apt") and tree.kinds["/bin"] == "l" and tree.kind("/etc/crontab") is None


@pytest.mark.parametrize("action", ["Audit", "Block"])
def test_every_generated_policy_is_admitted(action: str) -> None:
    target = Target("web", "shop", {"app": "web"}, "img:1")
    recs = recommend(target, _image_tree(), list(LIBRARY), action)
    applied = [r for r in recs if r.applies]
    assert {r.rule.id for r in applied} >= {"package-manager-exec", "cron-jobs", "shell-history-access",
                                            "service-account-token", "raw-sockets", "crypto-miners"}
    for rec in applied:
        doc = admit(rec.policy, rec.rule.id).doc
        assert doc["metadata"] == {"name": policy_name(target, rec.rule), "namespace": "shop"}
        assert doc["spec"]["action"] == action and doc["spec"]["selector"] == {"matchLabels": {"app": "web"}}


def test_rules_apply_only_to_what_the_image_holds() -> None:
    recs = {r.rule.id: r for r in recommend(Target("w", "ns", {}, "i"), _image_tree(), list(LIBRARY))}
    pkg = recs["package-manager-exec"]
    assert pkg.evidence == ["/bin/apt", "/bin/dpkg", "/usr/bin/apt", "/usr/bin/dpkg"]
    assert [e["path"] for e in pkg.policy["spec"]["process"]["matchPaths"]] == pkg.evidence  # as written, both ways
    assert not recs["container-admin-tools"].applies and not recs["kernel-modules"].applies
    history = recs["shell-history-access"].policy["spec"]["file"]["matchPaths"]
    assert {"path": "/root/.bash_history"} in history and {"path": "/home/app/.bash_history"} in history
    empty = {r.rule.id for r in recommend(Target("w", "ns", {}, "i"), FileTree(), list(LIBRARY)) if r.applies}
    assert empty == {r.id for r in LIBRARY if r.always}


def test_block_policies_decide_as_intended_in_the_matcher() -> None:
    recs = recommend(Target("w", "ns", {"app": "w"}, "i"), _image_tree(), list(LIBRARY), "Block")
    policies = [to_policy(admit(r.policy, r.rule.id).doc) for r in recs if r.applies]
    wl = Workload(id="c1", name="w", namespace="ns", kind="container", node="n", mntns=1, pidns=1, labels={"app": "w"})
    rules = compile_rules(policies, [wl], "n").workloads["c1"]
    verdict = {
        "apt": decide(rules, Access("Process", "/usr/bin/apt", source="/bin/sh", access="exec")),
        "cron write": decide(rules, Access("File", "/etc/cron.d/evil", source="/bin/sh", access="write")),
        "cron read": decide(rules, Access("File", "/etc/cron.d/backup", source="/bin/cat", access="read")),
        "miner": decide(rules, Access("Process", "/opt/x/xmrig", source="/bin/sh", access="exec")),
        "token": decide(rules, Access("File", "/run/secrets/kubernetes.io/serviceaccount/token", access="read")),
        "raw": decide(rules, Access("Network", "raw", protocol="raw")),
    }
    assert {k: v.action if v else None for k, v in verdict.items()} == {
        "apt": "Block", "cron write": "Block", "cron read": None, "miner": "Block", "token": "Block", "raw": "Block"}
    assert verdict["apt"].policy == "w-package-manager-exec" and "MITRE-T1105" in verdict["apt"].tags


def test_reports_carry_the_same_content_in_three_forms() -> None:
    target = Target("web<1>", "shop", {"app": "web"}, "img:1")
    recs = recommend(target, _image_tree(), rules_for_tags(["cron"]))
    recs[0].file = "out/policies/shop-web/cron-jobs.yaml"
    data = report_data([(target, recs)], "Audit", ["cron"])
    assert json.loads(render_json(data)) == data
    [wl] = data["workloads"]
    assert wl["policies"][0]["references"]["stig"] == ["RHEL-08-030400", "RHEL-09-654097"]
    assert "cron-jobs" in render_text(data) and "out/policies/shop-web/cron-jobs.yaml" in render_text(data)
    page = render_html(data)
    assert "web&lt;1&gt;" in page and "web<1>" not in page and "<script" not in page


def test_results_are_written_as_policy_files_and_three_reports(tmp_path) -> None:
    from bulwark.commands.policy import validate_paths
    from bulwark.recommend.cmd import write_results

    target = Target("web", "shop", {"app": "web"}, "img:1")
    results = [(target, recommend(target, _image_tree(), list(LIBRARY), "Block"))]
    data = write_results(results, tmp_path, "Block", [])
    lines, ok = validate_paths([str(tmp_path / "policies")])
    assert ok and len(lines) == len(data["workloads"][0]["policies"]) and all(x.startswith("OK ") for x in lines)
    assert {p.name for p in tmp_path.iterdir()} == {"policies", "report.json", "report.txt", "report.html"}
    assert data["workloads"][0]["policies"][0]["file"].endswith("policies/shop-web/package-manager-exec.yaml")


def test_the_model_sandbox_rules_are_chosen_only_when_asked_for() -> None:
    """No shell and no network at all would break an ordinary workload: never in the default set."""
    default = {r.id for r in rules_for_tags([])}
    sandbox = {r.id for r in rules_for_tags(["model-sandbox"])}
    opt_in = {"interpreter-exec", "outbound-network"}
    assert opt_in <= sandbox and not opt_in & default
    assert {"raw-sockets", "remote-file-copy"} <= sandbox <= default | opt_in
