"""The kernel's names of its numbers: socket families and types, IP protocols, capabilities, mmap bits."""
from __future__ import annotations

__all__ = ["FAMILIES", "SOCK_TYPES", "IP_PROTOCOLS", "CAPABILITIES", "protocol_name", "prot_text", "map_flags_text"]

FAMILIES = {0: "AF_UNSPEC", 1: "AF_UNIX", 2: "AF_INET", 10: "AF_INET6", 16: "AF_NETLINK",
            17: "AF_PACKET"}
SOCK_TYPES = {1: "SOCK_STREAM", 2: "SOCK_DGRAM", 3: "SOCK_RAW", 4: "SOCK_RDM", 5: "SOCK_SEQPACKET"}
IP_PROTOCOLS = {1: "ICMP", 6: "TCP", 17: "UDP", 58: "ICMPv6", 132: "SCTP", 255: "RAW"}
# capability number -> name (include/uapi/linux/capability.h, without CAP_, lower case)
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
        if protocol in IP_PROTOCOLS:
            return IP_PROTOCOLS[protocol]
        if sock_type == 1:
            return "TCP"
        if sock_type == 2:
            return "UDP"
        if sock_type == 3:
            return "RAW"
        return f"IPPROTO_{protocol}"
    return SOCK_TYPES.get(sock_type, f"type_{sock_type}").removeprefix("SOCK_").lower()


# mmap/mprotect bits (x86_64, include/uapi/asm-generic/mman*.h)
_PROT = ((1, "PROT_READ"), (2, "PROT_WRITE"), (4, "PROT_EXEC"), (0x8, "PROT_SEM"),
         (0x01000000, "PROT_GROWSDOWN"), (0x02000000, "PROT_GROWSUP"))
_MAP = ((0x01, "MAP_SHARED"), (0x02, "MAP_PRIVATE"), (0x10, "MAP_FIXED"), (0x20, "MAP_ANONYMOUS"),
        (0x100, "MAP_GROWSDOWN"), (0x800, "MAP_DENYWRITE"), (0x1000, "MAP_EXECUTABLE"), (0x2000, "MAP_LOCKED"),
        (0x4000, "MAP_NORESERVE"), (0x8000, "MAP_POPULATE"), (0x10000, "MAP_NONBLOCK"), (0x20000, "MAP_STACK"),
        (0x40000, "MAP_HUGETLB"), (0x100000, "MAP_FIXED_NOREPLACE"))


def _bits(value: int, names: tuple[tuple[int, str], ...], none: str) -> str:
    out, rest = [], value
    for bit, name in names:
        if rest & bit:
            out.append(name)
            rest &= ~bit
    if rest:
        out.append(hex(rest))
    return "|".join(out) or none


def prot_text(prot: int) -> str:
    """``PROT_READ|PROT_EXEC`` for 5."""
    return _bits(prot, _PROT, "PROT_NONE")


def map_flags_text(flags: int) -> str:
    """``MAP_PRIVATE|MAP_ANONYMOUS`` for 0x22."""
    return _bits(flags, _MAP, "0")
