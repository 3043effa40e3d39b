"""Fanotify enforcer: FAN_OPEN_EXEC_PERM marks on the exact files Process Block rules name.

Every exec of a marked file (by any process on the host) waits for our reader thread. The thread
denies only when the exec'ing process's mount namespace belongs to a workload whose rules, run through
``shared.matcher.decide``, say Block; everything else, including any error, is allowed at once
(fail-open). Closing the fanotify fd, or our death, makes the kernel allow every pending waiter.
"""
from __future__ import annotations

import logging
import os
import select
import struct
import tempfile
import threading
import time
from collections import defaultdict

from shared.lifecycle import Counters
from shared.matcher import Access, decide
from shared.schemas.rules import Rule, RuleSet

from services.enforcer import _fansys as fs
from services.enforcer.base import ProbeResult, exec_block_rules

__all__ = ["FanotifyEnforcer"]

log = logging.getLogger("bulwark.enforcer.fanotify")

# (st_dev, st_ino, mntns) -> (paths the rules name for that inode, the workload's rules)
Table = dict[tuple[int, int, int], tuple[tuple[str, ...], list[Rule]]]


def _pids_by_mntns(wanted: set[int]) -> dict[int, int]:
    """One live pid per wanted mount namespace (a single /proc scan, stops when all are found)."""
    found: dict[int, int] = {}
    own = os.stat("/proc/self/ns/mnt").st_ino
    if own in wanted:
        found[own] = os.getpid()
    with os.scandir("/proc") as it:
        for entry in it:
            if len(found) == len(wanted):
                break
            if not entry.name.isdigit():
                continue
            try:
                ns = os.stat(f"/proc/{entry.name}/ns/mnt").st_ino
            except OSError:
                continue
            if ns in wanted and ns not in found:
                found[ns] = int(entry.name)
    return found


class FanotifyEnforcer:
    """Blocks exec of named files for selected mount namespaces with fanotify permission events."""

    name = "Fanotify"

    def __init__(self) -> None:
        self.counters = Counters(allowed=0, denied=0, errors=0, mark_errors=0, events=0, handle_ns=0)
        self._lock = threading.Lock()
        self._fan_fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._table: Table = {}
        self._marks: dict[tuple[int, int], int] = {}  # (dev, ino) -> O_PATH fd kept for removal
        self._self_pid = os.getpid()
        self._closed = False

    # -- probe ---------------------------------------------------------------------------------
    def probe(self) -> ProbeResult:
        """Create a group and put an exec-permission mark on a private temp file, then drop both."""
        try:
            fan = fs.fan_init()
        except OSError as exc:
            return False, f"fanotify_init(FAN_CLASS_CONTENT) refused: {exc}"
        try:
            with tempfile.NamedTemporaryFile(prefix="bulwark-fanprobe-") as tmp:
                target = os.open(tmp.name, os.O_PATH | os.O_CLOEXEC)
                try:
                    fs.fan_mark(fan, True, fs.FAN_OPEN_EXEC_PERM, target)
                finally:
                    os.close(target)
        except OSError as exc:
            return False, f"FAN_OPEN_EXEC_PERM mark refused: {exc}"
        finally:
            os.close(fan)
        return True, "fanotify permission events (FAN_OPEN_EXEC_PERM) work"

    # -- rules ---------------------------------------------------------------------------------
    def apply(self, ruleset: RuleSet) -> None:
        """Mark every file a Process Block rule names; unmark files no rule names any more."""
        with self._lock:
            if self._closed:
                raise RuntimeError("fanotify enforcer is closed")
            self._start()
            all_ns: dict[int, list[Rule]] = defaultdict(list)
            for wl in ruleset.running():
                if wl.mntns:  # workloads sharing a namespace share the matcher's input
                    all_ns[wl.mntns].extend(wl.rules)
            per_ns = {ns: rules for ns, rules in all_ns.items() if exec_block_rules(rules)}
            pids = _pids_by_mntns(set(per_ns)) if per_ns else {}
            table: dict[tuple[int, int, int], list[str]] = defaultdict(list)
            wanted: dict[tuple[int, int], int] = {}
            for mntns, rules in per_ns.items():
                for path in sorted({r.path for r in exec_block_rules(rules)}):
                    key = self._resolve(path, pids.get(mntns), wanted)
                    if key is not None:
                        table[(*key, mntns)].append(path)
            # Publish the table before adding marks: an event never finds a mark without its rules.
            self._table = {k: (tuple(paths), per_ns[k[2]]) for k, paths in table.items()}
            for key, fd in wanted.items():
                if key in self._marks:
                    os.close(fd)
                    continue
                try:
                    fs.fan_mark(self._fan_fd, True, fs.FAN_OPEN_EXEC_PERM, fd)
                    self._marks[key] = fd
                except OSError as exc:
                    os.close(fd)
                    self.counters.inc("mark_errors")
                    log.error("cannot mark file", extra={"dev_ino": f"{key}", "error": str(exc)})
            for key in [k for k in self._marks if k not in wanted]:
                fd = self._marks.pop(key)
                try:
                    fs.fan_mark(self._fan_fd, False, fs.FAN_OPEN_EXEC_PERM, fd)
                except OSError as exc:  # e.g. the inode is gone: its mark went with it
                    log.info("unmark failed", extra={"dev_ino": f"{key}", "error": str(exc)})
                finally:
                    os.close(fd)
            log.info("rules applied", extra={"version": ruleset.version, "marks": len(self._marks),
                                             "namespaces": len(per_ns)})

    def _resolve(self, path: str, pid: int | None, wanted: dict[tuple[int, int], int]) -> tuple[int, int] | None:
        """Open ``path`` as the workload sees it; record its fd in ``wanted``; return (dev, ino)."""
        try:
            fd = fs.open_in_root(path, pid)
        except OSError as first:
            if not pid:
                log.warning("rule names a missing file", extra={"path": path, "error": str(first)})
                return None
            try:  # the workload's process may have just exited: fall back to our view
                fd = fs.open_in_root(path, None)
            except OSError as exc:
                log.warning("rule names a missing file", extra={"path": path, "error": str(exc)})
                return None
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in wanted:
            os.close(fd)
        else:
            wanted[key] = fd
        return key

    # -- events --------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._fan_fd >= 0:
            return
        self._fan_fd = fs.fan_init()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fanotify-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fan_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while not self._stop.is_set():
            try:
                poller.poll()
                buf = os.read(self._fan_fd, 64 * 1024)
            except BlockingIOError:
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                self.counters.inc("errors")
                log.error("fanotify read failed", extra={"error": str(exc)})
                time.sleep(0.01)
                continue
            self._dispatch(buf)

    def _dispatch(self, buf: bytes) -> None:
        off = 0
        while off + fs.EVENT_SIZE <= len(buf):
            ev_len, vers, _, _, mask, efd, pid = struct.unpack_from(fs.EVENT_FMT, buf, off)
            if vers != fs.METADATA_VERSION or ev_len < fs.EVENT_SIZE:
                self.counters.inc("errors")
                log.error("unknown fanotify metadata", extra={"vers": vers, "event_len": ev_len})
                return  # nothing after this can be parsed; the kernel allows on our close()
            off += ev_len
            if efd < 0:
                continue
            allow = True
            try:
                t0 = time.perf_counter_ns()
                allow = not self._should_deny(pid, efd)
                self.counters.inc("handle_ns", time.perf_counter_ns() - t0)
            except Exception as exc:  # fail-open, always
                self.counters.inc("errors")
                log.warning("decision failed, allowing", extra={"pid": pid, "error": repr(exc)})
            try:
                if mask & fs.PERM_EVENTS:
                    os.write(self._fan_fd, fs.response(efd, allow))
                    self.counters.inc("allowed" if allow else "denied")
            except OSError as exc:
                self.counters.inc("errors")
                log.error("fanotify response failed", extra={"pid": pid, "error": str(exc)})
            finally:
                os.close(efd)
            self.counters.inc("events")

    def _should_deny(self, pid: int, efd: int) -> bool:
        """True only when the matcher says Block for this process's workload and this file."""
        if pid == self._self_pid:
            return False
        table = self._table
        if not table:
            return False
        st = os.fstat(efd)
        mntns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
        entry = table.get((st.st_dev, st.st_ino, mntns))
        if entry is None:
            return False
        paths, rules = entry
        try:
            source = os.readlink(f"/proc/{pid}/exe")
        except OSError:
            source = ""
        for path in paths:
            decision = decide(rules, Access(operation="Process", resource=path, source=source, access="exec"))
            if decision is not None and decision.action == "Block":
                log.info("exec denied", extra={"pid": pid, "mntns": mntns, "path": path, "source": source,
                                               "policy": decision.policy})
                return True
        return False

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the reader, close the group (the kernel allows pending waiters), drop every mark."""
        with self._lock:
            self._closed = True
            if self._fan_fd < 0:
                return
            self._stop.set()
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass
            if self._thread is not None:
                self._thread.join(timeout=5)
                if self._thread.is_alive():
                    log.error("fanotify reader did not stop within 5s")
            os.close(self._fan_fd)
            self._fan_fd = -1
            for fd in self._marks.values():
                os.close(fd)
            self._marks.clear()
            self._table = {}
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._thread = None

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat."""
        return {**self.counters, "marks": len(self._marks)}
