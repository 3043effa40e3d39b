"""Fanotify File rules on the real kernel: opens denied inline (EPERM) only in the selected namespace.

Only files in private temp directories are marked; every enforcer is closed in a fixture finalizer.
The readOnly/ownerOnly tests record what the enforcer asks the real matcher (read or write, the
thread's uid, the file's owner); the matcher's own verdict is what the kernel must enforce.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import services.enforcer.fanotify.enforcer as fan_mod
from services.policy.globs import glob_to_regex
from shared.matcher import Access, Decision, Posture
from shared.schemas.rules import Rule
from tests.kernel.nsutil import file_rule, host_run, private_copy, ruleset

pytestmark = [pytest.mark.kernel, pytest.mark.usefixtures("as_root"), pytest.mark.timeout(90)]
DENIED = "Operation not permitted"


@pytest.fixture
def tree() -> Iterator[Path]:
    """A world-readable private tree: d/secret, d/sub/deep, d/bin/bwtrue."""
    root = Path(tempfile.mkdtemp(prefix="bw-fan-file-"))
    try:
        root.chmod(0o755)
        (root / "d/sub").mkdir(parents=True)
        (root / "d/bin").mkdir()
        for rel in ("d/secret", "d/sub/deep", "other"):
            (root / rel).write_text("data\n")
            (root / rel).chmod(0o666)
        private_copy("/usr/bin/true", root / "d/bin", "bwtrue")
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_file_open_denied_only_in_the_selected_namespace(enforcer, tree, shells) -> None:
    a, b = shells
    secret = tree / "d/secret"
    enforcer.apply(ruleset(1, a=(a.mntns, [file_rule(path=str(secret))]), b=(b.mntns, [])))
    rc, out = a.run(f"cat {secret}")
    assert rc != 0 and DENIED in out
    assert a.run(f"echo x >> {secret}")[0] != 0
    assert a.run(f"cat {tree / 'other'}") == (0, "data")        # not marked at all
    assert b.run(f"cat {secret}") == (0, "data")                # sibling running the same command
    assert host_run(f"cat {secret}") == (0, "data")             # the host
    assert enforcer.stats()["marks"] == 1 and enforcer.stats()["errors"] == 0


def test_directory_rules_direct_children_or_recursive(enforcer, tree, shells) -> None:
    a, _ = shells
    d = tree / "d"
    enforcer.apply(ruleset(1, a=(a.mntns, [file_rule(dir=f"{d}/")])))
    assert DENIED in a.run(f"cat {d / 'secret'}")[1]
    assert a.run(f"cat {d / 'sub/deep'}") == (0, "data")        # not recursive: grandchildren pass
    assert a.run(f"echo new > {d / 'created'}")[0] != 0         # creating a file in it is an open too
    assert host_run(f"cat {d / 'secret'}") == (0, "data")
    enforcer.apply(ruleset(2, a=(a.mntns, [file_rule(dir=f"{d}/", recursive=True)])))
    assert DENIED in a.run(f"cat {d / 'sub/deep'}")[1]
    assert host_run(f"cat {d / 'sub/deep'}") == (0, "data")
    (d / "later").mkdir()
    (d / "later/f").write_text("data\n")
    enforcer.refresh()                                          # subdirectories made after apply
    assert DENIED in a.run(f"cat {d / 'later/f'}")[1]
    enforcer.apply(ruleset(3, a=(a.mntns, [])))
    assert a.run(f"cat {d / 'sub/deep'}") == (0, "data") and enforcer.stats()["marks"] == 0


def test_process_directory_rule_blocks_exec(enforcer, tree, shells) -> None:
    a, b = shells
    binary = tree / "d/bin/bwtrue"
    rule = Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="default", operation="Process",
                action="Block", dir=f"{tree / 'd/bin'}/")
    enforcer.apply(ruleset(1, a=(a.mntns, [rule]), b=(b.mntns, [])))
    assert DENIED in a.run(str(binary))[1]
    assert a.run(f"cat {binary} >/dev/null") == (0, "")        # reading it is no exec
    assert b.run(str(binary)) == (0, "") and host_run(str(binary)) == (0, "")


def test_from_source_is_the_accessing_executable(enforcer, tree, shells) -> None:
    a, _ = shells
    cat = private_copy("/usr/bin/cat", tree, "bwcat")
    secret = tree / "d/secret"
    enforcer.apply(ruleset(1, a=(a.mntns, [file_rule(path=str(secret), from_source=[{"path": cat}])])))
    assert DENIED in a.run(f"{cat} {secret}")[1]
    assert a.run(f"cat {secret}") == (0, "data")


class Recorder:
    """Wraps the real matcher: records each Access the enforcer asks about; the verdict is the matcher's."""

    def __init__(self) -> None:
        self.seen: list[Access] = []
        self.real = fan_mod.decide_access

    def __call__(self, rules: list[Rule], access: Access, posture: Posture | None = None) -> Decision | None:
        self.seen.append(access)
        return self.real(rules, access, posture)


def test_read_only_asks_the_matcher_read_or_write(enforcer, tree, shells, monkeypatch) -> None:
    a, _ = shells
    spy = Recorder()
    monkeypatch.setattr(fan_mod, "decide_access", spy)
    secret = tree / "d/secret"
    enforcer.apply(ruleset(1, a=(a.mntns, [file_rule(path=str(secret), read_only=True)])))
    assert a.run(f"cat {secret}") == (0, "data")
    assert DENIED in a.run(f"echo x >> {secret}")[1]
    assert DENIED in a.run(f"echo x > {secret}")[1]
    py = f"import os; os.close(os.open({str(secret)!r}, os.O_RDWR))"
    assert DENIED in a.run(f"python3 -c {py!r}")[1]
    # the shell's second write is the same access as its first: the remembered decision answers it
    assert [s.access for s in spy.seen] == ["read", "write", "write"]
    assert spy.seen[1].source != spy.seen[2].source                          # the shell, then python
    assert {s.operation for s in spy.seen} == {"File"} and enforcer.stats()["mode_unknown"] == 0
    assert DENIED in a.run(f"echo x >> {secret}")[1] and len(spy.seen) == 3
    enforcer.apply(ruleset(2, a=(a.mntns, [file_rule(path=str(secret), read_only=True)])))
    assert DENIED in a.run(f"echo x >> {secret}")[1] and len(spy.seen) == 4   # new rules: asked again
    assert secret.read_text() == "data\n"


def test_owner_only_gets_uid_and_file_owner(enforcer, tree, shells, monkeypatch) -> None:
    a, _ = shells
    spy = Recorder()
    monkeypatch.setattr(fan_mod, "decide_access", spy)
    secret = tree / "d/secret"
    os.chown(secret, 4321, 4321)
    enforcer.apply(ruleset(1, a=(a.mntns, [file_rule(path=str(secret), owner_only=True)])))
    assert DENIED in a.run(f"cat {secret}")[1]                                  # root is not the owner
    assert a.run(f"setpriv --reuid 4321 --regid 4321 --clear-groups cat {secret}") == (0, "data")
    assert [(s.uid, s.resource_owner_uid) for s in spy.seen] == [(0, 4321), (4321, 4321)]


def test_allow_list_with_block_posture_denies_everything_else(enforcer, tree, shells) -> None:
    """An exec allow-list: mount marks on the workload's own (copied) mounts; host and sibling untouched."""
    a, b = shells
    cat = private_copy("/usr/bin/cat", tree, "bwcat")
    true = tree / "d/bin/bwtrue"
    allow = Rule(policy="allow-cat", policy_kind="KubeArmorPolicy", policy_namespace="default",
                 operation="Process", action="Allow", path=cat)
    rs = ruleset(1, a=(a.mntns, [allow]), b=(b.mntns, []))
    rs.workloads["a"].file_posture = "block"
    enforcer.apply(rs)
    assert a.run(f"{cat} {tree / 'other'}") == (0, "data")
    assert DENIED in a.run(str(true))[1]
    assert DENIED in a.run("/usr/bin/true")[1]
    assert a.run("echo builtin") == (0, "builtin")              # the running shell is not touched
    assert b.run(str(true)) == (0, "") and host_run(str(true)) == (0, "")
    assert host_run("/usr/bin/true") == (0, "")
    rs.workloads["a"].file_posture = "audit"                    # posture audit: nothing denied
    enforcer.apply(rs)
    assert a.run(str(true)) == (0, "")


def test_a_file_allow_list_leaves_the_exec_of_a_program_to_process_rules(enforcer, tree, shells) -> None:
    """Under a File allow-list (block posture) the kernel's own open of a program it execs is an exec, not a
    read (BPF-LSM's file_open leaves FMODE_EXEC opens to bprm_check_security alike): a program the list
    does not name runs (it failed with EPERM before) and reads its libraries as the list allows; a file the
    list does not name is refused, one it names is read; the sibling is untouched."""
    a, b = shells
    true, secret, other = tree / "d/bin/bwtrue", tree / "d/secret", tree / "other"
    allow = [file_rule("Allow", "libs", dir="/usr/lib/", recursive=True),
             file_rule("Allow", "libs", path="/etc/ld.so.cache"), file_rule("Allow", "data", path=str(other))]
    rs = ruleset(1, a=(a.mntns, allow), b=(b.mntns, []))
    rs.workloads["a"].file_posture = "block"
    enforcer.apply(rs)
    assert a.run(str(true)) == (0, "")
    assert a.run(f"cat {other}") == (0, "data")
    rc, out = a.run(f"cat {secret}")
    assert rc != 0 and DENIED in out
    assert b.run(f"cat {secret}") == (0, "data")


def test_patterns_and_exec_names_block_in_the_workload_only(enforcer, tree, shells) -> None:
    """Issue 15: matchPatterns and execname rules name no inode. The workload's own mounts are marked and
    each open or exec judged by its path: `cat` of a file the glob names and an exec by name fail in the
    selected namespace; other files, the sibling and the host are untouched."""
    a, b = shells
    pattern = Rule(policy="pattern-block", policy_kind="KubeArmorPolicy", policy_namespace="default",
                   operation="File", action="Block", pattern=glob_to_regex(f"{tree}/d/*secret*"))
    by_name = Rule(policy="name-block", policy_kind="KubeArmorPolicy", policy_namespace="default",
                   operation="Process", action="Block", exec_name="bwtrue")
    enforcer.apply(ruleset(1, a=(a.mntns, [pattern, by_name]), b=(b.mntns, [])))
    assert DENIED in a.run(f"cat {tree / 'd/secret'}")[1]
    assert a.run(f"cat {tree / 'other'}") == (0, "data")
    assert DENIED in a.run(str(tree / "d/bin/bwtrue"))[1]
    assert a.run("/usr/bin/true") == (0, "")
    assert b.run(f"cat {tree / 'd/secret'}") == (0, "data") and b.run(str(tree / "d/bin/bwtrue")) == (0, "")
    assert host_run(f"cat {tree / 'd/secret'}") == (0, "data") and host_run(str(tree / "d/bin/bwtrue")) == (0, "")
    assert enforcer.stats()["unmarkable"] == 0
    enforcer.apply(ruleset(2, a=(a.mntns, []), b=(b.mntns, [])))
    assert a.run(f"cat {tree / 'd/secret'}") == (0, "data") and a.run(str(tree / "d/bin/bwtrue")) == (0, "")


def test_a_refused_create_leaves_no_file(enforcer, tree, shells) -> None:
    """KubeArmor smoke "can block write access and only allow read access to mounted files": `touch new` in
    a readOnly directory. The kernel creates the file before fanotify asks about the open, so the
    enforcer removes the file that refused open created: touch then fails (its utimensat fallback finds
    nothing). What fanotify cannot refuse stays possible: touch of a file already there (utimensat)."""
    a, b = shells
    d = tree / "d"
    enforcer.apply(ruleset(1, a=(a.mntns, [file_rule(dir=f"{d}/", recursive=True, read_only=True)]),
                           b=(b.mntns, [])))
    rc, out = a.run(f"touch {d / 'new'}")
    assert rc != 0 and DENIED in out and not (d / "new").exists()
    assert a.run(f"echo x > {d / 'sub/new2'}")[0] != 0 and not (d / "sub/new2").exists()
    assert a.run(f"cat {d / 'secret'}") == (0, "data")                 # reading stays allowed
    assert DENIED in a.run(f"echo x >> {d / 'secret'}")[1] and (d / "secret").read_text() == "data\n"
    assert a.run(f"touch {d / 'secret'}")[0] == 0                       # not an open: only its times change
    assert b.run(f"touch {d / 'sibling'}") == (0, "") and (d / "sibling").exists()
    assert host_run(f"touch {d / 'host'}") == (0, "") and (d / "host").exists()
    assert enforcer.stats()["creates_undone"] == 2 and enforcer.stats()["create_watch_errors"] == 0
    enforcer.apply(ruleset(2, a=(a.mntns, [])))
    assert a.run(f"touch {d / 'new'}") == (0, "") and (d / "new").exists()


def test_a_refused_create_under_a_pattern_leaves_its_empty_file(enforcer, tree, shells) -> None:
    """The limit the policy status states: patterns are judged through mount marks, which cannot watch
    creates, so the refused open's new file stays (empty)."""
    a, _ = shells
    rule = file_rule(pattern=glob_to_regex(f"{tree}/d/*.log"))
    enforcer.apply(ruleset(1, a=(a.mntns, [rule])))
    assert DENIED in a.run(f"echo x > {tree / 'd/app.log'}")[1]
    assert (tree / "d/app.log").read_text() == "" and enforcer.stats()["creates_undone"] == 0
