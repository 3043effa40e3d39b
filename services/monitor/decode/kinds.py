"""What each kind of kernel record means: its RawEvent kind, resource (``path``) and ``extra`` fields.

Pure functions over the numbers the programs send (see the args table in bpf/include/events.h).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import Any

from shared.bpf.abi import (
    BW_MOUNT_SOURCE_LEN,
    BW_OP_CAP,
    BW_OP_EXIT,
    BW_OP_FILE,
    BW_OP_FORK,
    BW_OP_NET,
    BW_OP_SYSCALL,
    BW_SYS_AUX_LEN,
    BW_SYS_F_OWNER,
    BW_SYS_F_SOCK,
    c_text,
)
from shared.bpf.names import CAPABILITIES, FAMILIES, SOCK_TYPES, protocol_name

__all__ = ["KIND_OF_OP", "describe", "sockaddr"]

KIND_OF_OP = {BW_OP_FORK: "fork", BW_OP_EXIT: "exit", BW_OP_FILE: "file", BW_OP_NET: "network",
              BW_OP_CAP: "capability", BW_OP_SYSCALL: "syscall"}
AT_FDCWD = -100
_OPEN_SYSCALLS = {"open", "openat", "openat2", "creat"}


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
            out["addr"] = "@" + c_text(body[1:])
        else:
            out["addr"] = c_text(body)
    return out


def _network(nr_name: str, flags: int, args: tuple[int, ...], ret: int, aux: bytes,
             extra: dict[str, Any]) -> str:
    fd, addrlen, third, family, sock_type, protocol = args
    if nr_name == "socket":
        extra["fd"] = ret
    else:
        extra["fd"] = fd
    if flags & BW_SYS_F_SOCK:
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
    if op == BW_OP_FILE:
        if args[0] != AT_FDCWD:
            extra["dirfd"] = args[0]
        if nr_name in _OPEN_SYSCALLS:
            extra["mode"] = args[2]
            if nr_name == "openat2":
                extra["resolve"] = args[3]
            if flags & BW_SYS_F_OWNER:
                extra["owner_uid"] = args[4]
            return path, args[1] & 0xFFFFFFFF
        if "chown" in nr_name:
            extra["owner_uid"] = args[1] if args[1] != 0xFFFFFFFF else -1
            extra["owner_gid"] = args[2] if args[2] != 0xFFFFFFFF else -1
            return path, args[3]
        return path, args[1]                            # unlinkat's flag (AT_REMOVEDIR)
    if op == BW_OP_NET:
        return _network(nr_name, flags, args, ret, aux, extra), 0
    if op == BW_OP_CAP:
        cap = args[0]
        extra["cap"] = cap
        extra["capability"] = CAPABILITIES[cap] if 0 <= cap < len(CAPABILITIES) else f"cap_{cap}"
        return "CAP_" + extra["capability"].upper(), 0
    if op == BW_OP_FORK:
        extra["child_pid"] = args[0]
        extra["child_ns_pid"] = args[1]
        return exe, 0
    if op == BW_OP_EXIT:
        code = args[0]
        extra["exit_code"] = (code >> 8) & 0xFF
        extra["signal"] = code & 0x7F
        return exe, 0
    # BW_OP_SYSCALL
    if nr_name == "mount":
        extra["source"] = c_text(aux[:BW_MOUNT_SOURCE_LEN])
        extra["fstype"] = c_text(aux[BW_MOUNT_SOURCE_LEN:BW_SYS_AUX_LEN])
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
