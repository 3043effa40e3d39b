"""Each raw event kind -> the matcher's Access and KubeArmor's Operation/Resource/Data/ProcessName."""
from __future__ import annotations

from typing import Any

from services.feeder.kinds import access_for, kind_fields, open_flags_text
from shared.matcher import decide
from shared.schemas.events import RawEvent
from shared.schemas.rules import Rule


def ev(kind: str, path: str = "", syscall: str = "", flags: int = 0, ret: int = 0, **extra: Any) -> RawEvent:
    return RawEvent(kind=kind, ts_ns=1, node="n", pid=10, tid=10, ppid=1, ns_pid=2, ns_ppid=1, uid=1000,
                    gid=1000, mntns=5, pidns=6, cgroup_id=7, comm="cat", exe="/usr/bin/cat", path=path,
                    ret=ret, syscall=syscall, flags=flags, extra=extra)


def rule(operation: str, **kw: Any) -> Rule:
    return Rule(policy="p", policy_kind="KubeArmorPolicy", policy_namespace="ns", operation=operation,
                action="Block", severity=5, **kw)


def blocked_by(rules: list[Rule], access: Any) -> str:
    """The policy whose Block the matcher decides for ``access``; "" when none blocks it."""
    decision = decide(rules, access)
    return decision.policy if decision is not None and decision.action == "Block" else ""


def test_open_flags_text() -> None:
    assert open_flags_text(0) == "O_RDONLY"
    assert open_flags_text(0o1101) == "O_WRONLY|O_CREAT|O_TRUNC"
    assert open_flags_text(0o2000000) == "O_RDONLY|O_CLOEXEC"
    assert open_flags_text(0o4010002) == "O_RDWR|O_SYNC"


def test_open_read_and_write() -> None:
    read = ev("file", "/etc/shadow", "openat", flags=0o2000000, owner_uid=0)
    acc = access_for(read)
    assert (acc.operation, acc.resource, acc.access, acc.source, acc.resource_owner_uid) == (
        "File", "/etc/shadow", "read", "/usr/bin/cat", 0)
    assert kind_fields(read) == {"Operation": "File", "Resource": "/etc/shadow",
                                 "Data": "syscall=SYS_OPENAT fd=-100 flags=O_RDONLY|O_CLOEXEC",
                                 "ProcessName": "/usr/bin/cat"}
    write = ev("file", "/etc/x", "openat", flags=0o101, dirfd=3)
    assert access_for(write).access == "write"
    assert kind_fields(write)["Data"] == "syscall=SYS_OPENAT fd=3 flags=O_WRONLY|O_CREAT"
    ro = rule("File", path="/etc/x", read_only=True)
    assert blocked_by([ro], access_for(write)) == "p" and decide([ro], access_for(read)) is None


def test_unlink_chown_are_writes() -> None:
    unlink = ev("file", "/tmp/a", "unlinkat", flags=0x200)
    assert access_for(unlink).access == "write"
    assert kind_fields(unlink)["Data"] == "syscall=SYS_UNLINKAT flags=AT_REMOVEDIR"
    chown = ev("file", "/tmp/a", "fchownat", owner_uid=0, owner_gid=5)
    assert kind_fields(chown)["Data"] == "syscall=SYS_FCHOWNAT userid=0 group=5"
    assert access_for(chown).resource_owner_uid == -1


def test_network_socket_is_judged_by_protocol() -> None:
    sock = ev("network", "", "socket", ret=3, fd=3, family="AF_INET", type="SOCK_RAW", protocol="ICMP")
    acc = access_for(sock)
    assert (acc.operation, acc.protocol) == ("Network", "icmp")
    assert blocked_by([rule("Network", protocol="icmp")], acc) == "p"
    assert decide([rule("Network", protocol="tcp")], acc) is None
    assert kind_fields(sock) == {"Operation": "Network",
                                 "Resource": "domain=AF_INET type=SOCK_RAW protocol=ICMP",
                                 "Data": "syscall=SYS_SOCKET fd=3", "ProcessName": "/usr/bin/cat"}
    conn = ev("network", "127.0.0.1:80", "connect", fd=3, protocol="TCP", addr="127.0.0.1", port=80)
    assert access_for(conn) is None
    assert kind_fields(conn)["Resource"] == "remoteip=127.0.0.1 port=80 protocol=TCP"
    unix = ev("network", "/run/x.sock", "bind", fd=4, protocol="stream", addr="/run/x.sock")
    assert kind_fields(unix)["Resource"] == "path=/run/x.sock protocol=stream"


def test_capability_and_syscall() -> None:
    cap = ev("capability", "CAP_NET_RAW", ret=-1, cap=13, capability="net_raw")
    assert blocked_by([rule("Capabilities", capability="net_raw")], access_for(cap)) == "p"
    assert kind_fields(cap)["Operation"] == "Capabilities" and kind_fields(cap)["Resource"] == "CAP_NET_RAW"
    sc = ev("syscall", "/tmp/a", "unlink", args=[1, 2, 3, 4, 5, 6])
    acc = access_for(sc)
    assert (acc.operation, acc.syscall, acc.resource) == ("Syscall", "unlink", "/tmp/a")
    assert blocked_by([rule("Syscall", syscall="unlink")], acc) == "p"
    assert kind_fields(sc)["Data"].startswith("syscall=SYS_UNLINK arg0=1")
    setuid = ev("syscall", "", "setuid", ids=[0])
    assert blocked_by([rule("Syscall", syscall="setuid")], access_for(setuid)) == "p"


def test_exec_fork_exit() -> None:
    ex = ev("exec", "/usr/bin/true", "execve")
    assert kind_fields(ex)["ProcessName"] == "/usr/bin/true" and access_for(ex).access == "exec"
    fork = ev("fork", "/usr/bin/cat", ret=11, child_pid=11, child_ns_pid=3)
    assert access_for(fork) is None and kind_fields(fork)["Operation"] == "Process"
    assert access_for(ev("exit", "/usr/bin/cat", exit_code=1, signal=0)) is None
