"""User names per mount namespace, from the passwd file each one sees. Real files under tmp_path stand
for /proc: ``<pid>/ns/mnt`` (its inode is the namespace id) and ``<pid>/root/etc/passwd``."""
from __future__ import annotations

import os
from pathlib import Path

from services.monitor.decode.users import UserNames, parse_passwd


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _proc(tmp_path: Path, pid: int, passwd: str | None, ns_of: int | None = None) -> int:
    """A process directory; returns its mount namespace id (that of ``ns_of``'s when given)."""
    base = tmp_path / str(pid)
    (base / "root" / "etc").mkdir(parents=True, exist_ok=True)
    (base / "ns").mkdir(exist_ok=True)
    if ns_of is not None:
        os.link(tmp_path / str(ns_of) / "ns" / "mnt", base / "ns" / "mnt")
    elif not (base / "ns" / "mnt").exists():
        (base / "ns" / "mnt").write_text("")
    if passwd is not None:
        (base / "root" / "etc" / "passwd").write_text(passwd)
    return os.stat(base / "ns" / "mnt").st_ino


def test_parse_skips_what_is_not_an_entry() -> None:
    text = "root:x:0:0:root:/root:/bin/sh\n\nbroken\nnobody:x:65534:65534::/:/sbin/nologin\ndup:x:0:0::/:/bin/sh\n"
    assert parse_passwd(text) == {0: "root", 65534: "nobody"}


def test_each_namespace_names_its_own_users(tmp_path: Path) -> None:
    one = _proc(tmp_path, 10, "root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n")
    two = _proc(tmp_path, 20, "root:x:0:0::/:/bin/sh\nbob:x:1000:1000::/:/bin/sh\n")
    users = UserNames(proc=str(tmp_path))
    assert users.name(one, 7, 1000, (10,)) == "alice"
    assert users.name(two, 8, 1000, (20,)) == "bob"
    assert users.name(one, 7, 1000, (20,)) == "alice"   # the table of (mntns, cgroup) is kept
    assert users.loads == 2


def test_a_gone_process_is_read_through_its_parent_in_the_same_namespace_only(tmp_path: Path) -> None:
    ns = _proc(tmp_path, 30, "root:x:0:0::/:/bin/sh\nalice:x:1000:1000::/:/bin/sh\n")
    _proc(tmp_path, 40, "root:x:0:0::/:/bin/sh\nmallory:x:1000:1000::/:/bin/sh\n")  # another namespace
    users = UserNames(proc=str(tmp_path))
    assert users.name(ns, 7, 1000, (99, 40)) == ""       # 99 is gone; 40 runs elsewhere: not its table
    assert UserNames(proc=str(tmp_path)).name(ns, 7, 1000, (99, 30)) == "alice"


def test_a_missing_table_is_retried_later_and_a_new_user_found_after_refresh(tmp_path: Path) -> None:
    clock = Clock()
    ns = _proc(tmp_path, 10, None)
    users = UserNames(proc=str(tmp_path), clock=clock, refresh=10, retry=2)
    assert users.name(ns, 7, 0, (10,)) == ""             # no passwd yet
    _proc(tmp_path, 10, "root:x:0:0::/:/bin/sh\n")
    assert users.name(ns, 7, 0, (10,)) == ""             # not before the retry time
    clock.now += 3
    assert users.name(ns, 7, 0, (10,)) == "root"
    _proc(tmp_path, 10, "root:x:0:0::/:/bin/sh\ncarol:x:1001:1001::/:/bin/sh\n")
    assert users.name(ns, 7, 1001, (10,)) == ""          # unknown: reloaded at most every 10 s
    clock.now += 11
    assert users.name(ns, 7, 1001, (10,)) == "carol"


def test_a_fifo_in_place_of_passwd_does_not_block(tmp_path: Path) -> None:
    ns = _proc(tmp_path, 10, None)
    os.mkfifo(tmp_path / "10" / "root" / "etc" / "passwd")
    assert UserNames(proc=str(tmp_path)).name(ns, 7, 0, (10,)) == ""
