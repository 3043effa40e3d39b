"""What every client of the fd holder (``bulwark.fdholder``) shares: its socket, messages with fds.

The holder is one small process per node that keeps kernel state alive across the enforcer's crashes,
kill -9, restarts and upgrades: the fanotify group (``fanotify.hold``) and the BPF enforcers' attached
programs (``bpfhold``). Clients talk to it over a unix SEQPACKET socket, passing fds as SCM_RIGHTS.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable

__all__ = ["HOLDER_ENV", "HolderError", "MAX_FDS", "connect", "peer_alive", "recv", "send"]

HOLDER_ENV = "BULWARK_FANOTIFY_HOLDER"  # the holder's socket path (every enforcer's); unset: no holder
MAX_FDS = 64  # the most fds one message carries
_MAX_MSG = 1 << 20


class HolderError(RuntimeError):
    """The holder refused or could not be reached."""


def send(sock: socket.socket, data: bytes, fds: Iterable[int] = ()) -> None:
    """One message, with ``fds`` passed as SCM_RIGHTS."""
    fds = list(fds)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def recv(sock: socket.socket, max_fds: int = 4) -> tuple[bytes, list[int]]:
    """One message and the fds it carried (b"" when the peer is gone)."""
    data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MSG, max_fds)
    for fd in fds:
        os.set_inheritable(fd, False)
    return data, fds


def connect(path: str, hello: bytes, fds: Iterable[int] = (), max_fds: int = MAX_FDS,
            timeout: float = 5.0) -> tuple[socket.socket, bytes, list[int]]:
    """Connect (retrying until ``timeout``), send ``hello`` with ``fds``: the socket and the first reply."""
    fds = list(fds)
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.settimeout(max(0.1, deadline - time.monotonic()))
            sock.connect(path)
            send(sock, hello, fds)
            reply, got = recv(sock, max_fds)
            sock.settimeout(5.0)
            return sock, reply, got
        except OSError as exc:
            sock.close()
            if time.monotonic() >= deadline:
                raise HolderError(f"fd holder at {path} unreachable: {exc}") from exc
            time.sleep(0.1)


def peer_alive(sock: socket.socket | None) -> bool:
    """False when the holder closed the connection (it died or restarted); one non-blocking peek."""
    if sock is None:
        return False
    try:
        sock.setblocking(False)
        try:
            return sock.recv(1, socket.MSG_PEEK) != b""
        finally:
            sock.setblocking(True)
            sock.settimeout(5.0)
    except BlockingIOError:
        return True
    except OSError:
        return False
