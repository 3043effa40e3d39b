"""The holder's side of the BPF enforcers' hand-over: generations of fds that keep programs attached.

A BPF enforcer (``services.enforcer.bpfhold``) sends ``BPF HOLD <json>`` with the fds of its attached
programs once they are armed: attachment fds (perf events, links), program fds, last its report ring
buffer's map fd. The store files them as a new generation of that kind (``signal``, ``bpflsm``), then
drops every older generation of the kind: the new programs are attached and armed already, so for a
moment both act (both block), never neither. The reply ``OK <json>`` names the new generation and the
dropped ones (detached by then), and carries each dropped generation's ring buffer fd (its last reports, for the new
enforcer to drain). ``BPF RELEASE <kind>`` drops every generation of the kind (an enforcer with nothing
to enforce, or a full stop). ``close_all`` (the holder's SIGTERM) drops everything: programs detach.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from services.enforcer.holding import send
from shared.lifecycle import Counters

__all__ = ["BpfStore", "Generation"]

log = logging.getLogger("bulwark.fdholder.bpf")


@dataclass
class Generation:
    """One enforcer's held fds: ``links + progs`` then, when ``ring``, the ring buffer map fd last."""

    gen: int
    kind: str
    meta: dict[str, Any]
    fds: list[int]
    ring: bool

    def info(self) -> dict[str, Any]:
        """What a reply says about it."""
        return {"gen": self.gen, "pid": self.meta.get("pid", 0), "progs": self.meta.get("progs", [])}

    def close(self) -> None:
        """Close every fd (the last reference to a link or perf event detaches its program)."""
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass


class BpfStore:
    """Held generations by kind (at most one per kind once a hand-over completed)."""

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        for key in ("bpf_held", "bpf_dropped", "bpf_errors"):
            counters.setdefault(key, 0)
        self.gens: dict[str, list[Generation]] = {}
        self._next = 1

    def handle(self, conn: socket.socket, msg: bytes, fds: list[int]) -> None:
        """Answer one ``BPF ...`` message (fds it carried are ours from now on)."""
        try:
            if msg.startswith(b"BPF HOLD "):
                self._hold(conn, json.loads(msg[9:]), fds)
                return
            if msg.startswith(b"BPF RELEASE "):
                for fd in fds:
                    os.close(fd)
                self._reply(conn, 0, self.gens.pop(msg[12:].decode(), []))
                return
            raise ValueError("unknown BPF message")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            self.counters.inc("bpf_errors")
            log.error("bad BPF hand-over refused", extra={"error": str(exc)})
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            _send_quiet(conn, b"BAD")

    def _hold(self, conn: socket.socket, meta: dict[str, Any], fds: list[int]) -> None:
        kind, ring = str(meta["kind"]), bool(meta.get("ring"))
        if len(fds) != int(meta["links"]) + int(meta["nprogs"]) + ring or not fds:
            raise ValueError(f"{len(fds)} fds for {meta}")
        gen = Generation(self._next, kind, meta, fds, ring)
        self._next += 1
        dropped = self.gens.pop(kind, [])  # only now: the new generation is attached and armed
        self.gens[kind] = [gen]
        self.counters.inc("bpf_held")
        log.info("BPF programs held", extra={"kind": kind, "gen": gen.gen, "pid": meta.get("pid", 0),
                                             "progs": meta.get("progs", []), "dropped": [g.gen for g in dropped]})
        self._reply(conn, gen.gen, dropped)

    def _reply(self, conn: socket.socket, gen: int, dropped: list[Generation]) -> None:
        """Detach the dropped generations (close all but their ring fds), then OK with the ring fds: the
        enforcer knows the older programs are detached when it reads the reply."""
        rings = [g.fds.pop() for g in dropped if g.ring]
        for g in dropped:
            g.close()
            self.counters.inc("bpf_dropped")
            log.info("BPF programs dropped", extra={"kind": g.kind, "gen": g.gen, "progs": g.meta.get("progs", [])})
        body = json.dumps({"gen": gen, "dropped": [g.info() for g in dropped],
                           "rings": [g.gen for g in dropped if g.ring]})
        _send_quiet(conn, b"OK " + body.encode(), rings)
        for fd in rings:
            os.close(fd)

    def close_all(self) -> None:
        """The full stop: every held program detaches."""
        for gens in self.gens.values():
            for g in gens:
                g.close()
        self.gens.clear()

    def summary(self) -> dict[str, list[int]]:
        """kind -> held generation numbers."""
        return {kind: [g.gen for g in gens] for kind, gens in self.gens.items()}


def _send_quiet(conn: socket.socket, data: bytes, fds: list[int] | None = None) -> None:
    try:
        send(conn, data, fds or ())
    except OSError as exc:
        log.warning("BPF reply not sent", extra={"error": str(exc)})
