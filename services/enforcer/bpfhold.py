"""Keeping a BPF enforcer's programs attached across its death: its fds go to the holder, by generation.

The kernel detaches a program when the last fd of its attachment closes, so a kill -9 of the enforcer
would end enforcement. With a holder (``HOLDER_ENV``, ``bulwark.fdholder``), once the enforcer's
programs are attached and its first rules written, ``ProgramHold.hold`` sends duplicates of the
attachment fds (perf events of tracepoints, links of LSM programs), the program fds and the report
ring buffer's map fd; the holder files them as a new generation and only then drops the older ones
(make-before-break). Rule changes need nothing more: the maps are the same kernel objects. After a
kill -9 the old programs keep acting with the last rules until the next enforcer's are armed.

bcc's own detach of a tracepoint disables the perf event (PERF_EVENT_IOC_DISABLE), which would stop the
holder's duplicate too: ``take_attachments`` moves the attachment fds out of bcc's bookkeeping, and
``unload`` only closes them (the last close detaches). ``detach`` leaves everything to the holder (a
restart or upgrade); ``release`` drops every generation of the kind (a full stop).

Reports the old programs wrote while no enforcer ran are in their ring buffer: the holder returns it
with the dropped generation, and ``ProgramHold`` drains it (libbcc) and hands the records to the
enforcer, which counts and logs those older than its own programs (``reports_orphaned``).
"""
from __future__ import annotations

import ctypes as ct
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.enforcer.holding import HOLDER_ENV, HolderError, connect, peer_alive, recv, send
from shared.lifecycle import Counters

__all__ = ["ProgramHold", "take_attachments", "unload", "drain_ring", "note_orphans"]

log = logging.getLogger("bulwark.enforcer.bpfhold")

_BCC_ATTACHMENTS = ("tracepoint_fds", "raw_tracepoint_fds", "lsm_fds")
RING_MAP = b"bw_enf_events"


def take_attachments(bpf: Any) -> list[int]:
    """The fds keeping ``bpf``'s programs attached, removed from bcc's tables (closing them detaches)."""
    fds: list[int] = []
    for name in _BCC_ATTACHMENTS:
        table = getattr(bpf, name, None) or {}
        fds.extend(int(fd) for fd in table.values())
        table.clear()
    return fds


def unload(bpf: Any, links: list[int]) -> None:
    """Close our attachment fds (a program detaches unless the holder has a duplicate), then free bcc's."""
    for fd in links:
        try:
            os.close(fd)
        except OSError:
            pass
    links.clear()
    bpf.cleanup()


def _prog_id(fd: int) -> int:
    for line in Path(f"/proc/self/fdinfo/{fd}").read_text().splitlines():
        if line.startswith("prog_id:"):
            return int(line.split()[1])
    return 0


def drain_ring(fd: int) -> list[bytes]:
    """Every record waiting in a BPF ring buffer map (by fd): what its programs wrote and nobody read."""
    from bcc.libbcc import _RINGBUF_CB_TYPE, lib

    out: list[bytes] = []

    def on_record(_ctx: Any, data: Any, size: int) -> int:
        out.append(ct.string_at(data, size))
        return 0

    callback = _RINGBUF_CB_TYPE(on_record)
    ring = lib.bpf_new_ringbuf(fd, callback, None)
    if not ring:
        raise OSError(f"cannot open ring buffer fd {fd}")
    try:
        lib.bpf_consume_ringbuf(ring)
    finally:
        lib.bpf_free_ringbuf(ring)
    return out


def note_orphans(records: list[bytes], key: Callable[[bytes], tuple[int, int]], armed_ns: int,
                 counters: Counters, logger: logging.Logger) -> None:
    """Count and log the older generation's reports older than ``armed_ns`` (when ours were armed: later
    ones our programs made too). ``key(raw)`` is (ktime, mntns)."""
    orphaned, namespaces = 0, set()
    for raw in records:
        try:
            ktime, mntns = key(raw)
        except Exception:
            counters.inc("report_errors")
            continue
        if ktime < armed_ns:
            orphaned += 1
            namespaces.add(mntns)
    if orphaned:
        counters["reports_orphaned"] = counters.get("reports_orphaned", 0) + orphaned
        logger.warning("reports made while no enforcer ran are not published",
                       extra={"reports": orphaned, "mntns": sorted(namespaces)})


class ProgramHold:
    """One BPF enforcer's hand-overs to the holder (nothing happens without a holder path)."""

    def __init__(self, kind: str, path: str | None, counters: Counters,
                 on_orphans: Callable[[list[bytes], int], None]) -> None:
        self.kind = kind
        self.path = path if path is not None else os.environ.get(HOLDER_ENV) or None
        self.counters = counters
        counters.setdefault("holder_errors", 0)
        counters.setdefault("reports_orphaned", 0)
        self.on_orphans = on_orphans
        self.sock: socket.socket | None = None
        self.gen = 0
        self._settled = False  # what older enforcers left was dealt with (held over, or released)

    @property
    def held(self) -> bool:
        """True while the holder has our current programs (as far as we know)."""
        return self.sock is not None

    def hold(self, bpf: Any, links: list[int], armed_ns: int, timeout: float = 5.0) -> None:
        """Hand our armed programs to the holder; it drops the older generations (their reports: drained)."""
        if not self.path:
            return
        progs = [fn.fd for fn in bpf.funcs.values()]
        ring = bpf[RING_MAP].map_fd
        meta = {"kind": self.kind, "pid": os.getpid(), "links": len(links), "nprogs": len(progs), "ring": 1,
                "progs": [_prog_id(fd) for fd in progs]}
        try:
            sock, reply, rings = connect(self.path, b"BPF HOLD " + json.dumps(meta).encode(),
                                         [*links, *progs, ring], timeout=timeout)
        except HolderError as exc:
            self.counters.inc("holder_errors")
            log.error("holder unreachable: our death would detach the programs",
                      extra={"kind": self.kind, "error": str(exc)})
            return
        info = self._reply(reply, rings, armed_ns)
        if info is None:
            sock.close()
            return
        self.close()
        self.sock, self.gen, self._settled = sock, int(info["gen"]), True
        log.info("programs held", extra={"kind": self.kind, "gen": self.gen, "progs": meta["progs"],
                                         "dropped": info["dropped"]})

    def settle(self, timeout: float = 5.0) -> None:
        """Nothing to enforce (nothing loaded): once, drop what older enforcers left with the holder."""
        if not self.path or self._settled:
            return
        self._settled = True
        self._release(None, timeout)

    def keep_held(self, bpf: Any, links: list[int], armed_ns: int) -> None:
        """Hand our programs again when the holder restarted (or was unreachable): cheap when held."""
        if not self.path or peer_alive(self.sock):
            return
        self.close()
        self.hold(bpf, links, armed_ns, timeout=1.0)

    def release(self) -> None:
        """The full stop: every generation of our kind is dropped (ours included)."""
        if self.path:
            self._release(self.sock if peer_alive(self.sock) else None, 5.0)
        self.close()

    def _release(self, sock: socket.socket | None, timeout: float) -> None:
        msg = b"BPF RELEASE " + self.kind.encode()
        try:
            if sock is None:
                sock, reply, rings = connect(self.path or "", msg, timeout=timeout)
                own = sock
            else:
                send(sock, msg)
                reply, rings = recv(sock, 64)
                own = None
        except (HolderError, OSError) as exc:
            self.counters.inc("holder_errors")
            log.error("holder unreachable: older programs may stay held", extra={"kind": self.kind,
                                                                                 "error": str(exc)})
            return
        info = self._reply(reply, rings, 1 << 63)
        if own is not None:
            own.close()
        if info is not None and info["dropped"]:
            log.info("held programs released", extra={"kind": self.kind, "dropped": info["dropped"]})

    def _reply(self, reply: bytes, rings: list[int], armed_ns: int) -> dict[str, Any] | None:
        """The holder's answer; drains (then closes) the dropped generations' ring buffers."""
        records: list[bytes] = []
        for fd in rings:
            try:
                records.extend(drain_ring(fd))
            except Exception as exc:
                self.counters.inc("errors")
                log.warning("older ring buffer not drained", extra={"kind": self.kind, "error": repr(exc)})
            finally:
                os.close(fd)
        if records:
            self.on_orphans(records, armed_ns)
        if not reply.startswith(b"OK "):
            self.counters.inc("holder_errors")
            log.error("holder refused", extra={"kind": self.kind, "reply": reply[:200].decode(errors="replace")})
            return None
        info: dict[str, Any] = json.loads(reply[3:])
        return info

    def close(self) -> None:
        """Detach from the holder: what it holds stays held (a restart or upgrade)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
