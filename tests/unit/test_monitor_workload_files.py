"""WorkloadFiles on a /proc-like tree: a pid's ``ns/mnt`` (its inode is the namespace) and ``root``."""
from __future__ import annotations

import os
from pathlib import Path

from services.monitor.decode.workload_files import WorkloadFiles


def _pid(proc: Path, pid: int, files: dict[str, str] | None = None) -> int:
    """A fake /proc/<pid> whose root holds ``files`` (path -> content, or "->target" for a symlink);
    returns its namespace (the inode of its ns/mnt)."""
    (proc / str(pid) / "ns").mkdir(parents=True)
    (proc / str(pid) / "ns" / "mnt").write_text("")
    root = proc / str(pid) / "root"
    root.mkdir()
    for name, content in (files or {}).items():
        where = root / name.lstrip("/")
        where.parent.mkdir(parents=True, exist_ok=True)
        if content.startswith("->"):
            where.symlink_to(content[2:])
        else:
            where.write_text(content)
    return (proc / str(pid) / "ns" / "mnt").stat().st_ino


def test_the_owner_is_read_in_the_root_of_the_process_that_exec_d(tmp_path: Path) -> None:
    ns = _pid(tmp_path, 10, {"/home/user1/hello": "x"})
    owners = WorkloadFiles(proc=str(tmp_path))
    assert owners.owner(ns, "/home/user1/hello", (10, 1)) == os.getuid()
    assert owners.owner(ns, "/home/user1/missing", (10, 1)) == -1
    assert owners.owner(ns, "hello", (10, 1)) == -1                   # relative: the cwd is not known here


def test_symlinks_resolve_inside_the_workload_s_root(tmp_path: Path) -> None:
    target = "/usr/bin/bulwark-owner-test-target"
    assert not os.path.exists(target)
    ns = _pid(tmp_path, 10, {"/usr/bin/py": "->" + target, target: "x"})
    assert WorkloadFiles(proc=str(tmp_path)).owner(ns, "/usr/bin/py", (10,)) == os.getuid()


def test_a_process_in_another_namespace_or_gone_does_not_answer(tmp_path: Path) -> None:
    ns = _pid(tmp_path, 10, {"/bin/x": "x"})
    other = _pid(tmp_path, 20, {"/bin/x": "x"})
    owners = WorkloadFiles(proc=str(tmp_path))
    assert owners.owner(ns, "/bin/x", (30, 10)) == os.getuid()        # 30 is gone: its parent answers
    assert owners.owner(ns, "/bin/x", (20, 31)) == os.getuid()        # 20 is elsewhere: 10 again
    assert owners.owner(other, "/bin/x", (20,)) == os.getuid()
    assert (owners.unknown, owners.lookups, owners.scans) == (0, 3, 0)


def test_a_scan_finds_a_process_of_the_namespace_when_the_exec_s_are_gone(tmp_path: Path) -> None:
    ns = _pid(tmp_path, 10, {"/bin/x": "x"})
    owners = WorkloadFiles(proc=str(tmp_path))
    assert owners.owner(ns, "/bin/x", (30, 31)) == os.getuid()        # the namespace's init, say
    assert owners.owner(ns, "/bin/x", (32,)) == os.getuid() and owners.scans == 1   # remembered


def test_a_namespace_with_no_process_left_has_no_owner_and_is_not_scanned_for_again_at_once(
        tmp_path: Path) -> None:
    _pid(tmp_path, 10, {"/bin/x": "x"})
    gone = tmp_path / "gone-ns"
    gone.write_text("")
    now = [100.0]
    owners = WorkloadFiles(proc=str(tmp_path), retry=2.0, clock=lambda: now[0])
    assert owners.owner(gone.stat().st_ino, "/bin/x", (30,)) == -1
    assert owners.owner(gone.stat().st_ino, "/bin/x", (30,)) == -1 and owners.scans == 1
    now[0] += 2.5
    assert owners.owner(gone.stat().st_ino, "/bin/x", (30,)) == -1 and owners.scans == 2
    assert owners.unknown == 3


def test_the_monitor_s_own_namespace_uses_its_own_root() -> None:
    owners = WorkloadFiles()
    own = os.stat("/proc/self/ns/mnt").st_ino
    assert owners.owner(own, "/proc/self/exe", (0,)) == os.stat("/proc/self/exe").st_uid


def test_real_paths_resolve_symlinks_inside_the_workload_s_root(tmp_path: Path) -> None:
    """Relative and absolute targets, a symlinked directory on the way, `..` that cannot climb above the
    root; absolute targets are read from the workload's root, never the host's."""
    target = "/usr/bin/bulwark-real-path-test-3.6"
    assert not os.path.exists(target)
    ns = _pid(tmp_path, 10, {"/usr/bin/python3": "->bulwark-real-path-test-3.6", target: "x",
                             "/usr/bin/abs": "->" + target, "/bin": "->usr/bin",
                             "/usr/bin/up": "->../../../../usr/bin/abs", "/usr/bin/loop": "->loop",
                             "/usr/bin/dangling": "->nowhere", "/usr/bin/plain": "x"})
    files = WorkloadFiles(proc=str(tmp_path), real_path_ttl=0)                  # every call resolves
    for asked in ("/usr/bin/python3", "/usr/bin/abs", "/bin/python3", "/bin/abs", "/usr/bin/up",
                  "/usr//bin/./python3"):
        assert files.real_path(ns, asked, (10,)) == target, asked
    assert files.real_path(ns, "/usr/bin/plain", (10,)) == "/usr/bin/plain"
    assert files.real_path(ns, "/bin/plain", (10,)) == "/usr/bin/plain"
    for unknown in ("/usr/bin/loop", "/usr/bin/dangling", "/usr/bin/missing", "python3"):
        assert files.real_path(ns, unknown, (10,)) == "", unknown
    assert files.real_path(ns, "/usr/bin/python3", (30,)) == target             # 30 is gone: the last that answered
    assert files.real_path_lookups == 12 and files.lookups == 0


def test_real_paths_are_reused_for_a_while_then_read_again(tmp_path: Path) -> None:
    """A build execs the same compiler a thousand times: resolved once per ``real_path_ttl``."""
    ns = _pid(tmp_path, 10, {"/usr/bin/cc": "->gcc-12", "/usr/bin/gcc-12": "x", "/usr/bin/gcc-13": "x"})
    now = [100.0]
    files = WorkloadFiles(proc=str(tmp_path), real_path_ttl=2.0, clock=lambda: now[0])
    assert files.real_path(ns, "/usr/bin/cc", (10,)) == "/usr/bin/gcc-12"
    (tmp_path / "10/root/usr/bin/cc").unlink()
    (tmp_path / "10/root/usr/bin/cc").symlink_to("gcc-13")
    now[0] += 1.0
    assert files.real_path(ns, "/usr/bin/cc", (10,)) == "/usr/bin/gcc-12" and files.real_path_lookups == 1
    now[0] += 1.5
    assert files.real_path(ns, "/usr/bin/cc", (10,)) == "/usr/bin/gcc-13" and files.real_path_lookups == 2
    assert files.real_path(ns, "/usr/bin/missing", (10,)) == ""            # unknown: never kept
    assert files.real_path(ns, "/usr/bin/missing", (10,)) == "" and files.real_path_lookups == 4
