"""Per event kind: what the matcher is asked, and the alert fields that depend on the kind.

One function pair per kind of raw event; a kind missing here is not judged (counted as skipped).
Judged: exec (Process), file operations (File: opens read or write by their flags; unlink, rmdir and
chown are writes), socket creation (Network, by protocol: KubeArmor decides network rules when a
socket is created), capability checks (Capabilities) and syscalls (Syscall). fork/exit and the other
network syscalls (connect, accept, bind, listen) are raw events only: no rule is about them, and
judging them would repeat the socket's verdict or hit allow-list postures with an empty resource.
A preset's record (kind ``preset``) and an enforcer's report of one are judged as that preset
(operation ``Preset``, shared.presets) and alerted with the preset's own Operation (Process, File).
A rule's fromSource is matched against the acting executable alone (``exe``), never its arguments;
ownerOnly against the accessed file's owner: an open's (read by the kernel) or an exec'd program's
(read by the monitor, services/monitor/decode/owners.py).

The record's ``Source`` is KubeArmor's: for a Process record the executable that did the exec, for
the others the acting process's command line (:func:`source_text`).
"""
from __future__ import annotations

from shared.matcher import Access
from shared.presets import PRESET_OPERATION, alert_operation
from shared.schemas.events import EVENT_KINDS, RawEvent

__all__ = ["access_for", "kind_fields", "open_flags_text", "source_text", "MAX_ARGS_CHARS"]

_ACCMODE = {0: "O_RDONLY", 1: "O_WRONLY", 2: "O_RDWR", 3: "O_ACCMODE"}
_OPEN_FLAGS = (  # octal values from asm-generic/fcntl.h (x86_64)
    (0o100, "O_CREAT"), (0o200, "O_EXCL"), (0o400, "O_NOCTTY"), (0o1000, "O_TRUNC"),
    (0o2000, "O_APPEND"), (0o4000, "O_NONBLOCK"), (0o4010000, "O_SYNC"), (0o10000, "O_DSYNC"),
    (0o20000, "O_ASYNC"), (0o40000, "O_DIRECT"), (0o100000, "O_LARGEFILE"), (0o20200000, "O_TMPFILE"),
    (0o200000, "O_DIRECTORY"), (0o400000, "O_NOFOLLOW"), (0o1000000, "O_NOATIME"),
    (0o2000000, "O_CLOEXEC"), (0o10000000, "O_PATH"),
)
_WRITE_FLAGS = 0o100 | 0o1000 | 0o2000  # O_CREAT, O_TRUNC, O_APPEND
_OPENS = frozenset({"open", "openat", "openat2", "creat"})
_AT_REMOVEDIR = 0x200
MAX_ARGS_CHARS = 1024  # arguments kept in a Source (the monitor sends at most BW_ARGS_LEN bytes of argv)
# a preset record's details, in the order its Data names them (KubeArmor-style key=value)
_PRESET_DATA = (("filename", "filename"), ("memfd", "memfd"), ("target_pid", "target"), ("fd", "fd"),
                ("prot", "prot"), ("map_flags", "flags"), ("addr", "addr"), ("len", "len"),
                ("parent_pid", "ppid"), ("parent_comm", "parent"))


def open_flags_text(flags: int) -> str:
    """``O_WRONLY|O_CREAT|O_TRUNC`` for 0o1101 (KubeArmor's flags= text)."""
    names = [_ACCMODE[flags & 3]]
    rest = flags & ~3
    for bit, name in _OPEN_FLAGS:
        if rest & bit == bit:
            names.append(name)
            rest &= ~bit
    if rest:
        names.append(hex(rest))
    return "|".join(names)


def _is_write(event: RawEvent) -> bool:
    if event.syscall in _OPENS or event.kind == "open":
        return event.flags & 3 in (1, 2) or bool(event.flags & _WRITE_FLAGS)
    return True  # unlink, rmdir, chown change the file


def _owner(event: RawEvent) -> int:
    """The accessed file's owner uid (an open's or an exec'd program's), -1 when unknown."""
    if event.kind == "exec" or event.syscall in _OPENS or event.kind == "open":
        value = event.extra.get("owner_uid", -1)
        return value if isinstance(value, int) and not isinstance(value, bool) else -1
    return -1


def source_text(event: RawEvent, operation: str) -> str:
    """KubeArmor's Source: for Process records the executable that did the exec, without arguments;
    for the others the acting process's command line, its executable then its arguments (bounded)."""
    args = event.proc_args if isinstance(event.proc_args, str) else ""
    if operation == "Process" or not args:
        return event.exe
    return f"{event.exe} {args[:MAX_ARGS_CHARS]}" if event.exe else args[:MAX_ARGS_CHARS]


def access_for(event: RawEvent) -> Access | None:
    """What the matcher judges for ``event``, or None when this kind is not judged."""
    kind = event.kind
    if kind == "exec":
        return Access("Process", event.path, source=event.exe, access="exec", uid=event.uid,
                      resource_owner_uid=_owner(event))
    if kind in ("file", "open"):
        return Access("File", event.path, source=event.exe, access="write" if _is_write(event) else "read",
                      uid=event.uid, resource_owner_uid=_owner(event))
    if kind == "network":
        if event.syscall != "socket":
            return None
        protocol = str(event.extra.get("protocol", "")).lower()
        return Access("Network", protocol, source=event.exe, uid=event.uid, protocol=protocol)
    if kind == "capability":
        capability = str(event.extra.get("capability", ""))
        return Access("Capabilities", capability, source=event.exe, uid=event.uid, capability=capability)
    if kind == "syscall":
        return Access("Syscall", event.path, source=event.exe, uid=event.uid, syscall=event.syscall)
    if kind == "preset":
        return Access(PRESET_OPERATION, event.path, source=event.exe, uid=event.uid,
                      preset=str(event.extra.get("preset", "")))
    if kind == "enforce":  # a kill by the eBPF signal enforcer (services/enforcer/reports/kernel.py)
        # (or a refusal or audit by BPF-LSM, which says the access and whether the uid owns the file)
        match = str(event.extra.get("match", ""))
        extra_access = {"access": str(event.extra["access"])} if event.extra.get("access") else {}
        owner_uid = event.uid if event.extra.get("owner") else -1
        return Access(str(event.extra.get("operation", "")), match, source=event.exe, uid=event.uid,
                      protocol=match if event.extra.get("operation") == "Network" else "",
                      capability=match if event.extra.get("operation") == "Capabilities" else "",
                      resource_owner_uid=owner_uid, preset=str(event.extra.get("preset", "")), **extra_access)
    return None


def _sys(event: RawEvent, default: str) -> str:
    name = (event.syscall or default).upper()
    return "syscall=" + (name if name.startswith("SYS_") else "SYS_" + name)


def _file_data(event: RawEvent) -> str:
    data = _sys(event, "openat")
    if event.syscall in _OPENS or event.kind == "open":
        fd = event.extra.get("dirfd", -100)
        return f"{data} fd={fd} flags={open_flags_text(event.flags)}"
    if "chown" in event.syscall:
        return f"{data} userid={event.extra.get('owner_uid', -1)} group={event.extra.get('owner_gid', -1)}"
    if event.syscall == "unlinkat":
        return f"{data} flags={'AT_REMOVEDIR' if event.flags & _AT_REMOVEDIR else ''}"
    return data


def _network_fields(event: RawEvent) -> tuple[str, str]:
    x = event.extra
    protocol = x.get("protocol", "")
    if event.syscall == "socket":
        resource = f"domain={x.get('family', '')} type={x.get('type', '')} protocol={protocol}"
    elif "addr" in x:
        side = "localip" if event.syscall == "bind" else "remoteip"
        where = f"{side}={x['addr']} port={x['port']}" if "port" in x else f"path={x['addr']}"
        resource = f"{where} protocol={protocol}"
    else:
        resource = f"protocol={protocol}"
    return resource, f"{_sys(event, 'socket')} fd={x.get('fd', -1)}"


def _preset_fields(event: RawEvent) -> tuple[str, str, str]:
    """Operation, Data and ProcessName of a preset's record or report (the program, for Process ones)."""
    name = str(event.extra.get("preset", ""))
    operation = alert_operation(name)
    details = " ".join(f"{key}={event.extra[field]}" for field, key in _PRESET_DATA if field in event.extra)
    data = f"{_sys(event, event.syscall or 'execve')} preset={name}" + (f" {details}" if details else "")
    return operation, data, event.path if operation == "Process" else event.exe


def kind_fields(event: RawEvent) -> dict[str, str]:
    """The alert fields that depend on the event's kind: Operation, Resource, Data, ProcessName."""
    operation = EVENT_KINDS.get(event.kind, event.kind)
    resource, data = event.path, _sys(event, "execve" if event.kind == "exec" else event.kind)
    if event.kind == "preset" or (event.kind == "enforce" and event.extra.get("operation") == PRESET_OPERATION):
        operation, data, process = _preset_fields(event)
        return {"Operation": operation, "Resource": resource, "Data": data, "ProcessName": process}
    if event.kind == "enforce":  # the operation the killed process attempted
        operation = str(event.extra.get("operation", operation))
    elif event.kind in ("file", "open"):
        data = _file_data(event)
    elif event.kind == "network":
        resource, data = _network_fields(event)
    elif event.kind == "capability":
        data = f"lsm=CAPABLE cap={event.path}"
    elif event.kind == "fork":
        data = f"syscall=SYS_CLONE child={event.extra.get('child_pid', event.ret)}"
    elif event.kind == "exit":
        data = f"syscall=SYS_EXIT_GROUP code={event.extra.get('exit_code', 0)} signal={event.extra.get('signal', 0)}"
    elif event.kind == "syscall" and event.extra.get("args") is not None:
        data += " " + " ".join(f"arg{i}={a}" for i, a in enumerate(event.extra["args"]))
    return {
        "Operation": operation,
        "Resource": resource,
        "Data": data,
        "ProcessName": event.path if event.kind in ("exec", "enforce") and operation == "Process" else event.exe,
    }
