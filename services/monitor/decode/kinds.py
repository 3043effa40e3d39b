"""What each kind of kernel record means: its RawEvent kind, resource (``path``) and ``extra`` fields.

Pure functions over the numbers the programs send (see the args table in bpf/include/events.h).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Any

__all__ = ["KIND_OF_OP", "describe", "sockaddr", "protocol_name", "CAPABILITIES", "FAMILIES",
           "SOCK_TYPES"]

OP_FORK, OP_EXIT, OP_FILE, OP_NET, OP_CAP, OP_SYSCALL = 3, 4, 5, 6, 7, 8
KIND_OF_OP = {OP_FORK: "fork", OP_EXIT: "exit", OP_FILE: "file", OP_NET: "network",
              OP_CAP: "capability", OP_SYSCALL: "syscall"}
AT_FDCWD = -100
_OPEN_SYSCALLS = {"open", "openat", "openat2", "creat"}

FAMILIES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK",
            17: "AF_PACKET"}
SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET"}
_IP_PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP", 255: "RAW"}
CAPABILITIES = (
    "chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap linux_immutable "
    "net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module sys_rawio "
    "sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time "
    "sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog "
    "wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore").split()


def protocol_name(family: int, sock_type: int, protocol: int) -> str:
    """TCP, UDP, ICMP, ICMPv6, SCTP, RAW for IP sockets; the socket type's name otherwise."""
    sock_type &= 0xF
    if family in (2, 10):
        if protocol in _IP_PROTOCOLS:
            return _IP_PROTOCOLS[protocol]
        if sock_type == 1:
            return "TCP"
        if sock_type == 2:
            return "UDP"
        if sock_type == 3:
            return "RAW"
        return f"IPPROTO_{protocol}"
    return SOCK_TYPES.get(sock_type, f"type_{sock_type}").removeprefix("SOCK_").lower()


def sockaddr(raw: bytes) -> dict[str, Any]:
    """A struct sockaddr_{in,in6,un} from user memory as fields (family, addr, port / path)."""
    if len(raw) < 2:
        return {}
    family = struct.unpack_from("<H", raw)[0]
    out: dict[str, Any] = {"sa_family": FAMILIES.get(family, str(family))}
    if family == 2 and len(raw) >= 8:
        out["port"] = struct.unpack_from(">H", raw, 2)[0]
        out["addr"] = str(ipaddress.IPv4Address(raw[4:8]))
    elif family == 10 and len(raw) >= 24:
        out["port"] = struct.unpack_from(">H", raw, 2)[0]
        out["addr"] = str(ipaddress.IPv6Address(raw[8:24]))
    elif family == 1:
        body = raw[2:]
        if body[:1] == b"\0":
            out["addr"] = "@" + body[1:].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        else:
            out["addr"] = body.split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
    return out


def _network(nr_name: str, flags: int, args: tuple[int, ...], ret: int, aux: bytes,
             extra: dict[str, Any]) -> str:
    fd, addrlen, third, family, sock_type, protocol = args
    if nr_name == "socket":
        extra["fd"] = ret
    else:
        extra["fd"] = fd
    if flags & 32:                                   # BW_SYS_F_SOCK
        extra["family"] = FAMILIES.get(family, str(family))
        extra["type"] = SOCK_TYPES.get(sock_type & 0xF, str(sock_type & 0xF))
        extra["protocol"] = protocol_name(family, sock_type, protocol)
        extra["protocol_nr"] = protocol
    if nr_name == "listen":
        extra["backlog"] = third
    elif nr_name == "accept4":
        extra["accept_flags"] = third
    if aux:
        extra.update(sockaddr(aux))
        extra["addrlen"] = addrlen
    addr = extra.get("addr")
    if addr is None:
        return ""
    if "port" in extra:
        return f"[{addr}]:{extra['port']}" if ":" in addr else f"{addr}:{extra['port']}"
    return str(addr)


def describe(op: int, nr_name: str, flags: int, args: tuple[int, ...], ret: int, path: str,
             aux: bytes, exe: str, extra: dict[str, Any]) -> tuple[str, int]:
    """(resource path, flags field) of a record; kind-specific details go into ``extra``."""
    if op == OP_FILE:
        if args[0] != AT_FDCWD:
            extra["dirfd"] = args[0]
        if nr_name in _OPEN_SYSCALLS:
            extra["mode"] = args[2]
            if nr_name == "openat2":
                extra["resolve"] = args[3]
            if flags & 256:                              # BW_SYS_F_OWNER
                extra["owner_uid"] = args[4]
            return path, args[1] & 0xFFFFFFFF
        if "chown" in nr_name:
            extra["owner_uid"] = args[1] if args[1] != 0xFFFFFFFF else -1
            extra["owner_gid"] = args[2] if args[2] != 0xFFFFFFFF else -1
            return path, args[3]
        return path, args[1]                            # unlinkat's flag (AT_REMOVEDIR)
    if op == OP_NET:
        return _network(nr_name, flags, args, ret, aux, extra), 0
    if op == OP_CAP:
        cap = args[0]
        extra["cap"] = cap
        extra["capability"] = CAPABILITIES[cap] if 0 <= cap < len(CAPABILITIES) else f"cap_{cap}"
        return "CAP_" + extra["capability"].upper(), 0
    if op == OP_FORK:
        extra["child_pid"] = args[0]
        extra["child_ns_pid"] = args[1]
        return exe, 0
    if op == OP_EXIT:
        code = args[0]
        extra["exit_code"] = (code >> 8) & 0xFF
        extra["signal"] = code & 0x7F
        return exe, 0
    # OP_SYSCALL
    if nr_name == "mount":
        extra["source"] = aux[:96].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        extra["fstype"] = aux[96:128].split(b"\0", 1)[0].decode("utf-8", "backslashreplace")
        return path, args[3]
    if nr_name == "umount2":
        return path, args[1]
    if nr_name == "ptrace":
        extra["request"] = args[0]
        extra["target_pid"] = args[1]
        return str(args[1]), 0
    if nr_name.startswith("set") and nr_name.endswith(("uid", "gid")):
        count = 3 if nr_name.startswith("setres") else 2 if nr_name.startswith("setre") else 1
        extra["ids"] = [a if a != 0xFFFFFFFF else -1 for a in (x & 0xFFFFFFFF for x in args[:count])]
        return "", 0
    extra["args"] = list(args)
    return path, 0
