"""The fd holder: keeps the enforcer's kernel state alive across its crashes, kill -9 and restarts.

Two kinds of state: the fanotify group (below) and the BPF enforcers' attached programs, by generation
(``bulwark.bpfstore``: a new enforcer's programs are attached and armed before the holder drops the
older generation's, so a blocked operation is blocked throughout; SIGTERM drops every generation).

``python -m bulwark.fdholder SOCKET``. While an enforcer is attached (``services.enforcer.fanotify.hold``)
the holder only keeps a duplicate of the group fd and the journal. When the enforcer's connection
closes (crash, kill -9, restart, upgrade), the holder:

1. answers the permission events the enforcer had read and not answered (its journal): deny when the
   waiting thread's mount namespace has rules, allow elsewhere; if the enforcer died inside a read,
   every event fd number up to its fd limit is answered with a deny (only its events can be pending);
2. reads and answers new events itself the same way (deny in selected namespaces, allow elsewhere),
   until the next enforcer attaches and takes the group back.

So a blocked operation never succeeds while no enforcer runs (a selected workload is refused every
marked access), and the rest of the host is never held up. On SIGTERM the holder closes the group:
that is the full stop, the kernel then removes every mark and allows whatever waits.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
from pathlib import Path

from bulwark.bpfstore import BpfStore
from services.enforcer.fanotify import syscalls as fs
from services.enforcer.fanotify.journal import READING, Journal
from services.enforcer.holding import MAX_FDS, recv, send
from shared.lifecycle import Counters
from shared.logs import setup_logging

__all__ = ["Holder", "main"]

log = logging.getLogger("bulwark.fdholder")


class Holder:
    """The group, the journal, the attached enforcer (if any) and the namespaces to deny in."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fan = -1
        self.journal: Journal | None = None
        self.client: socket.socket | None = None
        self.selected: frozenset[int] = frozenset()
        self.counters = Counters(attaches=0, orphans_allowed=0, orphans_denied=0, orphans_unknown=0,
                                 gap_allowed=0, gap_denied=0, errors=0)
        self.bpf = BpfStore(self.counters)
        self.bpf_clients: list[socket.socket] = []  # BPF enforcers' connections: their end says nothing
        self.stopping = False
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)

    def listen(self) -> None:
        """Bind the socket (root only) and listen."""
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        old = os.umask(0o077)
        try:
            self.listener.bind(self.path)
        finally:
            os.umask(old)
        self.listener.listen(4)

    # -- the enforcer's connection --------------------------------------------------------------
    def _client_gone(self) -> bool:
        """True when the attached enforcer's connection is closed (read what it still sent first)."""
        assert self.client is not None
        while True:
            try:
                self.client.setblocking(False)
                try:
                    peek = self.client.recv(1, socket.MSG_PEEK)
                finally:
                    self.client.settimeout(5.0)
            except BlockingIOError:
                return False
            except OSError:
                peek = b""
            if peek:
                self._from_client()  # a message still queued (NS, RELEASE)
                if self.client is None:
                    return True
                continue
            self._from_client()  # the end of the connection: detach and answer the orphans
            return True

    def _accept(self) -> None:
        if self.client is not None:
            self._client_gone()
        conn, _ = self.listener.accept()
        conn.settimeout(5.0)
        if _peer_uid(conn) != 0:  # the socket is root's (0600) already: defence in depth
            conn.close()
            self.counters.inc("errors")
            log.error("attach refused: the peer is not root")
            return
        try:
            msg, fds = recv(conn, MAX_FDS)
        except OSError as exc:
            log.warning("attach failed", extra={"error": str(exc)})
            conn.close()
            return
        if msg.startswith(b"BPF "):
            self.bpf.handle(conn, msg, fds)
            self.bpf_clients.append(conn)  # kept open: the enforcer sees our death (a restart) as its end
            return
        if msg != b"ATTACH" or self.client is not None or (fds and self.fan >= 0):
            reason = b"BUSY" if self.client is not None else b"CONFLICT" if fds and self.fan >= 0 else b"BAD"
            for fd in fds:
                os.close(fd)
            send(conn, reason)
            conn.close()
            log.error("attach refused", extra={"reason": reason.decode()})
            return
        if fds:
            if len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                send(conn, b"BAD")
                conn.close()
                return
            self.fan, self.journal = fds[0], Journal(fds[1])
            send(conn, b"OK")
            log.info("adopted the enforcer's fanotify group")
        else:
            if self.fan < 0:
                self.fan, self.journal = fs.fan_init(), Journal.create()
                log.info("created a fanotify group")
            assert self.journal is not None
            send(conn, b"OK", [self.fan, self.journal.fd])
        self.client = conn
        self.counters.inc("attaches")
        log.info("enforcer attached", extra={"pid": _peer_pid(conn), **self.counters})

    def _from_client(self) -> None:
        assert self.client is not None
        try:
            msg, fds = recv(self.client, 0)
        except OSError:
            msg, fds = b"", []
        for fd in fds:
            os.close(fd)
        if msg.startswith(b"NS "):
            try:
                self.selected = frozenset(int(x) for x in json.loads(msg[3:]))
            except (ValueError, TypeError):
                self.counters.inc("errors")
            return
        if msg == b"RELEASE":
            self._drop_group()
            try:
                send(self.client, b"OK")
            except OSError:
                pass
            log.info("group released by the enforcer")
            return
        if msg:
            self.counters.inc("errors")
            return
        self.client.close()
        self.client = None
        log.warning("enforcer detached: answering in its place", extra={"selected": len(self.selected)})
        self._answer_orphans()

    def _from_bpf_client(self, conn: socket.socket) -> None:
        """A BPF enforcer's message (``BPF RELEASE``), or its end: what it handed over stays held."""
        try:
            msg, fds = recv(conn, MAX_FDS)
        except OSError:
            msg, fds = b"", []
        if msg:
            self.bpf.handle(conn, msg, fds)
            return
        for fd in fds:
            os.close(fd)
        conn.close()
        self.bpf_clients.remove(conn)
        log.info("BPF enforcer detached", extra={"held": self.bpf.summary()})

    # -- answering ------------------------------------------------------------------------------
    def _deny(self, tid: int) -> bool:
        """Deny when the waiting thread's mount namespace has rules (a gone thread: deny, harmless)."""
        if not self.selected or tid == os.getpid():
            return False
        try:
            return os.stat(f"/proc/{tid}/ns/mnt").st_ino in self.selected
        except OSError:
            return True

    def _respond(self, efd: int, allow: bool) -> bool:
        try:
            os.write(self.fan, fs.response(efd, allow))
            return True
        except OSError:
            return False

    def _answer_orphans(self) -> None:
        """Answer what the dead enforcer read and did not answer."""
        if self.fan < 0 or self.journal is None:
            return
        state, nofile = self.journal.state()
        for _mask, efd, tid in list(self.journal.unanswered()):
            allow = not self._deny(tid)
            if self._respond(efd, allow):
                self.counters.inc("orphans_allowed" if allow else "orphans_denied")
        if state == READING:  # it died inside a read: which fds it got is unknown, only it had any
            for efd in range(nofile):
                if self._respond(efd, False):
                    self.counters.inc("orphans_unknown")
        self.journal.idle()
        log.info("orphaned events answered", extra=dict(self.counters))

    def _read_events(self) -> None:
        try:
            buf = os.read(self.fan, 64 * 1024)
        except BlockingIOError:
            return
        except OSError as exc:
            self.counters.inc("errors")
            log.error("fanotify read failed", extra={"error": str(exc)})
            return
        off = 0
        while off + fs.EVENT_SIZE <= len(buf):
            ev_len, vers, _, _, mask, efd, tid = struct.unpack_from(fs.EVENT_FMT, buf, off)
            if vers != fs.METADATA_VERSION or ev_len < fs.EVENT_SIZE:
                self.counters.inc("errors")
                return
            off += ev_len
            if efd < 0:
                continue
            try:
                if mask & fs.PERM_EVENTS:
                    allow = not self._deny(tid)
                    self._respond(efd, allow)
                    self.counters.inc("gap_allowed" if allow else "gap_denied")
            finally:
                os.close(efd)

    def _drop_group(self) -> None:
        if self.fan >= 0:
            os.close(self.fan)  # the kernel removes the marks and allows what waits
            self.fan = -1
        if self.journal is not None:
            self.journal.close()
            self.journal = None
        self.selected = frozenset()

    # -- loop -----------------------------------------------------------------------------------
    def run(self) -> None:
        """Serve until SIGTERM/SIGINT."""
        wake_r, wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        signal.set_wakeup_fd(wake_w)

        def on_signal(_signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        log.info("fd holder listening", extra={"socket": self.path})
        while not self.stopping:
            fds = [wake_r, self.listener.fileno()]
            if self.client is not None:
                fds.append(self.client.fileno())
            elif self.fan >= 0:
                fds.append(self.fan)
            fds.extend(c.fileno() for c in self.bpf_clients)
            try:
                ready, _, _ = select.select(fds, [], [])
            except InterruptedError:
                continue
            if wake_r in ready:
                try:
                    os.read(wake_r, 64)
                except BlockingIOError:
                    pass
            if self.client is not None and self.client.fileno() in ready:
                self._from_client()
            elif self.client is None and self.fan >= 0 and self.fan in ready:
                self._read_events()
            for conn in [c for c in self.bpf_clients if c.fileno() in ready]:
                self._from_bpf_client(conn)
            if self.listener.fileno() in ready and not self.stopping:
                self._accept()
        self.close()

    def close(self) -> None:
        """Drop the group and every BPF generation (full stop), the connections and the socket file."""
        self._drop_group()
        self.bpf.close_all()
        for conn in self.bpf_clients:
            conn.close()
        if self.client is not None:
            self.client.close()
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
        log.info("fd holder stopped", extra=dict(self.counters))


def _peer_creds(conn: socket.socket) -> tuple[int, int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", creds)
    return int(pid), int(uid), int(gid)


def _peer_pid(conn: socket.socket) -> int:
    return _peer_creds(conn)[0]


def _peer_uid(conn: socket.socket) -> int:
    return _peer_creds(conn)[1]


def main(argv: list[str] | None = None) -> None:
    """Run the holder on the socket path given."""
    parser = argparse.ArgumentParser(prog="python -m bulwark.fdholder", description=__doc__.splitlines()[0])
    parser.add_argument("socket", help="unix socket path the enforcer attaches to")
    args = parser.parse_args(argv)
    setup_logging("fdholder", os.environ.get("BULWARK_LOG_LEVEL", "INFO"))
    holder = Holder(args.socket)
    holder.listen()
    print("ready", flush=True)
    holder.run()
    sys.exit(0)


if __name__ == "__main__":
    main()
