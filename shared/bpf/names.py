"""The kernel's names of its numbers: socket families and types, IP protocols, capabilities."""
from __future__ import annotations

__all__ = ["FAMILIES", "SOCK_TYPES", "IP_PROTOCOLS", "CAPABILITIES", "protocol_name"]

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
