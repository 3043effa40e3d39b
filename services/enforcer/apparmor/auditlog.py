"""AppArmor's audit records, read as they happen: parsed to fields, handed to a callback by a thread.

Where from: the audit netlink multicast group AUDIT_NLGRP_READLOG (needs CAP_AUDIT_READ; every
record goes to it whether or not auditd runs, and reading it takes nothing away from auditd), else
``/dev/kmsg`` (where the kernel prints audit records when no auditd listens; rate-limited).

A record looks like ``audit(1796561118.212:3): apparmor="DENIED" operation="open" profile="bulwark-x"
name="/etc/hosts" pid=119 comm="python" requested_mask="w" denied_mask="w" fsuid=0 ouid=0``. Names the
process controls (``name``, ``comm``, ...) are quoted, or hex-encoded when they hold spaces or quotes.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Protocol

from shared.lifecycle import Counters

__all__ = ["AuditRecord", "parse_record", "open_source", "AuditSource", "NetlinkSource", "KmsgSource",
           "AuditReader"]

log = logging.getLogger("bulwark.enforcer.apparmor.audit")

AuditRecord = dict[str, str]
NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1
_NLMSG = struct.Struct("=IHHII")
_MAX_RECORD = 8970  # MAX_AUDIT_MESSAGE_LENGTH
_MAX_FIELDS = 64
_STAMP = re.compile(r"audit\((\d{1,12})\.(\d{3}):(\d{1,20})\):")
_FIELD = re.compile(r'([a-z_]{1,32})=("[^"]*"|\S*)')
_HEX = re.compile(r"(?:[0-9A-F]{2})+")
_UNTRUSTED = frozenset({"name", "comm", "profile", "label", "target", "peer", "peer_label", "exe",
                        "info", "addr", "laddr", "faddr", "namespace"})


def parse_record(text: str) -> AuditRecord | None:
    """The fields of one AppArmor audit record (plus ``_ts_ns`` and ``_serial``), or None when the text
    is not one. Hex-encoded names are decoded; at most the first 8970 characters are read."""
    text = text[:_MAX_RECORD]
    stamp = _STAMP.search(text)
    if stamp is None or 'apparmor="' not in text:
        return None
    fields: AuditRecord = {"_ts_ns": str(int(stamp.group(1)) * 10**9 + int(stamp.group(2)) * 10**6),
                           "_serial": stamp.group(3)}
    for n, m in enumerate(_FIELD.finditer(text, stamp.end())):
        if n >= _MAX_FIELDS:
            break
        key, value = m.group(1), m.group(2)
        if value.startswith('"'):
            value = value[1:-1]
        elif key in _UNTRUSTED and _HEX.fullmatch(value):
            value = bytes.fromhex(value).decode("utf-8", "backslashreplace")
        fields.setdefault(key, value)
    return fields if "apparmor" in fields else None


class AuditSource(Protocol):
    """Somewhere audit record texts can be read from without blocking."""

    name: str

    def fileno(self) -> int:
        """For select()."""
        ...

    def read(self) -> list[str]:
        """The record texts available now (maybe none)."""
        ...

    def close(self) -> None:
        """Release the descriptor."""
        ...


class NetlinkSource:
    """The audit netlink multicast group AUDIT_NLGRP_READLOG."""

    name = "netlink"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_AUDIT)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            self.sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
        except OSError:
            self.sock.close()
            raise

    def fileno(self) -> int:
        """The socket's descriptor."""
        return self.sock.fileno()

    def read(self) -> list[str]:
        """Every complete message in the socket's queue."""
        out: list[str] = []
        while True:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the queue overflowed: records were dropped
                    self.counters.inc("audit_lost")
                    continue
                raise
            at = 0
            while at + _NLMSG.size <= len(data):
                length = _NLMSG.unpack_from(data, at)[0]
                if length < _NLMSG.size:
                    break
                out.append(data[at + _NLMSG.size:at + length].rstrip(b"\0").decode("utf-8", "replace"))
                at += (length + 3) & ~3

    def close(self) -> None:
        """Leave the group."""
        self.sock.close()


class KmsgSource:
    """The kernel log (/dev/kmsg), from its end: the records printed from now on."""

    name = "kmsg"

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        os.lseek(self.fd, 0, os.SEEK_END)

    def fileno(self) -> int:
        """The descriptor."""
        return self.fd

    def read(self) -> list[str]:
        """The log lines available now, only those of audit records."""
        out: list[str] = []
        while True:
            try:
                line = os.read(self.fd, _MAX_RECORD + 256)
            except BlockingIOError:
                return out
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # overwritten before we read it
                    self.counters.inc("audit_lost")
                    continue
                raise
            if not line:
                return out
            text = line.decode("utf-8", "replace").split(";", 1)[-1]
            if "audit(" in text:
                out.append(text.split("\n", 1)[0])

    def close(self) -> None:
        """Close /dev/kmsg."""
        os.close(self.fd)


def open_source(counters: Counters) -> AuditSource:
    """The netlink multicast group, or /dev/kmsg when it cannot be joined (the reason is logged)."""
    try:
        return NetlinkSource(counters)
    except OSError as exc:
        log.warning("audit multicast unavailable, reading /dev/kmsg", extra={"error": str(exc)})
    return KmsgSource(counters)


class AuditReader:
    """A thread handing every AppArmor record to ``on_record`` until ``close()``."""

    def __init__(self, on_record: Callable[[AuditRecord], None], counters: Counters,
                 source: AuditSource | None = None) -> None:
        self.on_record = on_record
        self.counters = counters
        self.source = source or open_source(counters)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="apparmor-audit", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([self.source.fileno()], [], [], 0.2)
                if ready:
                    self.drain()
            except Exception as exc:  # one bad read must not end the reader
                self.counters.inc("audit_errors")
                log.error("audit read failed", extra={"error": repr(exc)})
                self._stop.wait(0.2)

    def drain(self) -> None:
        """Hand over every record available now."""
        for text in self.source.read():
            record = parse_record(text)
            if record is None:
                continue
            try:
                self.on_record(record)
            except Exception as exc:
                self.counters.inc("audit_errors")
                log.warning("audit record not handled", extra={"error": repr(exc)})

    def close(self) -> None:
        """Stop the thread, then release the source."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.source.close()
