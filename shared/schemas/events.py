"""Raw kernel events as the monitor publishes them (msgpack maps, batched per node)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.schemas._wire import from_map, to_map

__all__ = ["RawEvent", "RawBatch", "EVENT_KINDS"]

# kind -> KubeArmor Operation. What each kind carries (besides the common fields):
#   exec        path = program asked for (resolved), exe/parent_exe = caller's, cwd, syscall execve(at);
#               extra owner_uid = the program file's owner when the monitor reads owners (ownerOnly rules)
#   fork, exit  path = exe; fork: ret = child pid, extra child_pid/child_ns_pid; exit: ret = wait
#               status, extra exit_code/signal
#   file        open/openat/openat2 (flags = O_* flags, extra mode, owner_uid), unlink/unlinkat/rmdir
#               (flags = AT_REMOVEDIR), (f/l)chown/fchownat (extra owner_uid/owner_gid); path resolved
#               against cwd (set) or the dirfd (extra dirfd); extra filename = the name as given
#   network     socket/connect/bind/listen/accept/accept4; extra fd, family, type, protocol (TCP,
#               UDP, ICMP, ICMPv6, SCTP, RAW; stream/dgram/... for other families), addr/port of the
#               sockaddr (peer for connect/accept, local for bind); path = "addr:port" or a unix path
#   capability  path = CAP_X, extra cap (number), capability (net_raw); ret = the check's result
#   syscall     setuid family (extra ids), ptrace (extra request, target_pid), mount (path = target,
#               extra source, fstype; flags), umount2, and syscalls a policy names (extra args, path
#               = its path argument)
#   preset      a policy preset's attack (shared.presets), seen where a rule asks for it: extra preset
#               (its name) and details (memfd, filename, target_pid, prot, map_flags, addr, len,
#               parent_pid, parent_comm); path = the memfd's name, the file's or program's path ("" for
#               a mapping); its alerts carry the preset's own Operation (Process or File)
# "open" is kept for compatibility; the monitor sends opens as kind "file".
EVENT_KINDS: dict[str, str] = {
    "exec": "Process",
    "fork": "Process",
    "exit": "Process",
    "open": "File",
    "file": "File",
    "network": "Network",
    "capability": "Capabilities",
    "syscall": "Syscall",
    "preset": "Preset",
}


@dataclass(slots=True)
class RawEvent:
    """One thing a process did, as seen in the kernel.

    ``pid``/``ppid``/``tid`` are host ids; ``ns_pid``/``ns_ppid`` are as seen inside the process's
    PID namespace. ``exe`` is the canonical executable of the acting process (for an exec: the caller,
    before the new image), ``path`` the resource (for an exec: the program asked for), ``ret`` the
    syscall's return value (negative errno on failure). ``proc_args`` are the acting process's
    arguments after argv[0], space-joined, as its command line held them (bounded by the kernel's
    BW_ARGS_LEN; "" when it had none, or for an exec, whose caller is reported without them).
    """

    kind: str
    ts_ns: int
    node: str
    pid: int
    tid: int
    ppid: int
    ns_pid: int
    ns_ppid: int
    uid: int
    gid: int
    mntns: int
    pidns: int
    cgroup_id: int
    comm: str
    exe: str
    path: str
    ret: int
    syscall: str = ""
    parent_exe: str = ""
    cwd: str = ""
    flags: int = 0
    event_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    proc_args: str = ""

    def to_wire(self) -> dict[str, Any]:
        """As a msgpack-ready map."""
        return to_map(self)

    @classmethod
    def from_wire(cls, data: Any) -> RawEvent:
        """From a bus map; DecodeError when it is not one."""
        return from_map(cls, data, "raw event")


@dataclass(slots=True)
class RawBatch:
    """What the monitor puts in one NATS message: a node's events plus its loss counters."""

    node: str
    seq: int
    events: list[dict[str, Any]]
    lost_kernel: int = 0
    lost_queue: int = 0

    def to_wire(self) -> dict[str, Any]:
        """As a msgpack-ready map."""
        return to_map(self)

    @classmethod
    def from_wire(cls, data: Any) -> RawBatch:
        """From a bus map; DecodeError when it is not one."""
        return from_map(cls, data, "raw batch")
