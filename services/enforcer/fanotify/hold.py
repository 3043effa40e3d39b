"""The enforcer's side of the fanotify holder (``bulwark.fdholder``): the group outlives the enforcer.

The holder is a tiny process that keeps a duplicate of the fanotify group fd and the reader's journal.
The enforcer takes both over a unix SEQPACKET socket (SCM_RIGHTS) when it starts, tells the holder
after each rule change which mount namespaces have rules, and keeps the connection open: when the
enforcer dies the connection closes, and the holder answers what the enforcer left (deny in a selected
namespace, allow elsewhere) until the next enforcer takes the group back. The kernel never sees the
group close, so it never allows a pending exec by default.

Messages: ``ATTACH`` (optionally with our group and journal, when the holder has none: it restarted)
-> ``OK`` (with the holder's group and journal, when it has them); ``NS <json list>``; ``RELEASE``
-> ``OK`` (the holder drops the group: every mark goes, the kernel allows what waits).
"""
from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable

__all__ = ["HolderClient", "HolderError", "HOLDER_ENV", "recv", "send"]

HOLDER_ENV = "BULWARK_FANOTIFY_HOLDER"  # the holder's socket path; unset: the enforcer holds alone
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


class HolderClient:
    """One enforcer's connection to the holder."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def attach(self, own: tuple[int, int] | None = None, timeout: float = 5.0) -> tuple[int, int] | None:
        """Connect and attach; returns the holder's (group fd, journal fd), or None when it adopted ``own``."""
        deadline = time.monotonic() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
            try:
                sock.settimeout(max(0.1, deadline - time.monotonic()))
                sock.connect(self.path)
                send(sock, b"ATTACH", own or ())
                reply, fds = recv(sock, 2)
                break
            except OSError as exc:
                sock.close()
                if time.monotonic() >= deadline:
                    raise HolderError(f"fanotify holder at {self.path} unreachable: {exc}") from exc
                time.sleep(0.1)
        if reply != b"OK":
            for fd in fds:
                os.close(fd)
            sock.close()
            raise HolderError(f"fanotify holder refused: {reply.decode(errors='replace')}")
        sock.settimeout(5.0)
        self.sock = sock
        if own is not None:
            for fd in fds:
                os.close(fd)
            return None
        if len(fds) != 2:
            self.close()
            raise HolderError("fanotify holder sent no group")
        return fds[0], fds[1]

    @property
    def attached(self) -> bool:
        """True while the connection is open (the holder may still have died: see ``alive``)."""
        return self.sock is not None

    def alive(self) -> bool:
        """False when the holder closed the connection (it died or restarted)."""
        if self.sock is None:
            return False
        try:
            self.sock.setblocking(False)
            try:
                return self.sock.recv(1, socket.MSG_PEEK) != b""
            finally:
                self.sock.setblocking(True)
                self.sock.settimeout(5.0)
        except BlockingIOError:
            return True
        except OSError:
            return False

    def selected(self, mntns: Iterable[int]) -> None:
        """Tell the holder which namespaces it must deny in while no enforcer reads."""
        if self.sock is None:
            return
        try:
            send(self.sock, b"NS " + json.dumps(sorted(mntns)).encode())
        except OSError:
            self.close()

    def release(self) -> None:
        """Have the holder drop the group (a full stop: marks go, waiters are allowed by the kernel)."""
        if self.sock is None:
            return
        try:
            send(self.sock, b"RELEASE")
            recv(self.sock, 0)
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        """Detach: the holder keeps the group and answers for us until the next enforcer attaches."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
