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
from collections.abc import Iterable

from services.enforcer.holding import HOLDER_ENV, HolderError, connect, peer_alive, recv, send

__all__ = ["HolderClient", "HolderError", "HOLDER_ENV", "recv", "send"]


class HolderClient:
    """One enforcer's connection to the holder."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None

    def attach(self, own: tuple[int, int] | None = None, timeout: float = 5.0) -> tuple[int, int] | None:
        """Connect and attach; returns the holder's (group fd, journal fd), or None when it adopted ``own``."""
        sock, reply, fds = connect(self.path, b"ATTACH", own or (), max_fds=2, timeout=timeout)
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
        return peer_alive(self.sock)

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
