"""Fanotify enforcer: inline EPERM for exec and file opens that Block rules name, per mount namespace.

Marks (see ``fanplan``): FAN_OPEN_EXEC_PERM for Process rules, FAN_OPEN_PERM for File rules, on the
named files, or on named directories with FAN_EVENT_ON_CHILD (each subdirectory too when recursive).
Every access to a marked inode, by any process on the host, waits for our reader thread. It denies
only when the accessing thread's mount namespace belongs to a workload whose rules, run through
``shared.matcher.decide``, say Block; everything else, including any error, is allowed at once.

The group outlives the process when a holder is configured (``BULWARK_FANOTIFY_HOLDER``, see
``fanhold`` and ``bulwark.fdholder``): the group fd comes from the holder, a journal says what was
read and not answered yet, and on our death (kill -9 included) the holder answers in our place,
denying in selected namespaces, until the next enforcer takes the group and its marks back
(``faninherit``). ``detach()`` (SIGTERM) leaves the group to the holder; ``close()`` drops it.
Without a holder, closing the fanotify fd or our death makes the kernel allow every pending waiter.

A refused open that created its file (O_CREAT) has that file removed before the verdict where a
directory rule marks its directory (``fancreates``). The container runtime entering a workload
(``docker exec``: runc joining it, reading /etc/passwd and exec'ing the command) is judged like any
process of the workload: under an allow-list its reads must be allowed too. It is not waived: what
would mark it (a parent outside the PID namespace, an executable that is a memfd or a deleted file) a
container's first process or an exec'd session can copy by exec'ing a memfd.

The matcher gets what fanotify alone does not say (``fanaccess``): read or write (from the waiting
thread's open flags in /proc/<tid>/syscall: readOnly rules), the thread's fs uid and the file's owner
(ownerOnly), the thread's executable (fromSource).
"""
from __future__ import annotations

import logging
import os
import select
import struct
import tempfile
import threading
import time

from services.enforcer.base import ProbeResult
from services.enforcer.fanotify import syscalls as fs
from services.enforcer.fanotify.access import exe_of, exec_target, fs_uid, is_elf_interpreter, open_access
from services.enforcer.fanotify.creates import CreateWatch
from services.enforcer.fanotify.hold import HOLDER_ENV, HolderClient, HolderError
from services.enforcer.fanotify.inherit import Inherited, open_inode, open_mount, read_marks
from services.enforcer.fanotify.journal import Journal
from services.enforcer.fanotify.marks import MOUNT_KEY, Tables, resolve_plans
from services.enforcer.fanotify.plan import OPERATIONS, plan
from shared.lifecycle import Counters
from shared.loaders import decide_access
from shared.matcher import Access, Decision
from shared.schemas.rules import RuleSet

__all__ = ["FanotifyEnforcer"]

_DECISIONS_KEPT = 4096  # memo entries per rule set before it starts over


def _decide(tables: Tables, mntns: int, asked: Access) -> Decision | None:
    """The matcher's decision for ``asked`` in ``mntns`` with these tables, remembered: a decision
    depends only on the access and the rules (the same file read by the same program again and
    again costs the matcher once per rule set)."""
    key = (mntns, asked)
    try:
        return tables.decisions[key]
    except KeyError:
        pass
    if len(tables.decisions) >= _DECISIONS_KEPT:
        tables.decisions.clear()
    decision = decide_access(tables.rules[mntns], asked, tables.posture.get(mntns))  # ld.so FILE: an exec too
    tables.decisions[key] = decision
    return decision

log = logging.getLogger("bulwark.enforcer.fanotify")


class FanotifyEnforcer:
    """Blocks exec and opens of named files for selected mount namespaces with fanotify permission events."""

    name = "Fanotify"
    operations = OPERATIONS

    def __init__(self, holder: str | None = None) -> None:
        self.counters = Counters(allowed=0, denied=0, errors=0, mark_errors=0, events=0, handle_ns=0,
                                 mode_unknown=0, missing_paths=0, tree_truncated=0, unmarkable=0,
                                 posture_unenforced=0, holder_errors=0, inherited_marks=0, stale_marks=0,
                                 creates_undone=0, create_watch_errors=0)
        self._holder_path = holder if holder is not None else os.environ.get(HOLDER_ENV) or None
        self._holder: HolderClient | None = None
        self._journal: Journal | None = None
        self._inherited: dict[tuple[int, int], Inherited] = {}
        self._inherited_mounts: dict[int, int] = {}
        self._lock = threading.Lock()
        self._fan_fd = -1
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._tables = Tables()
        self._creates: CreateWatch | None = None
        self._marks: dict[tuple[int, int], tuple[int, int]] = {}  # (dev, ino) -> (O_PATH fd, mask)
        self._own_mntns = os.stat("/proc/self/ns/mnt").st_ino
        self._last: RuleSet | None = None
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
        """Mark every file/directory a Block rule names; unmark what no rule names any more."""
        with self._lock:
            if self._closed:
                raise RuntimeError("fanotify enforcer is closed")
            self._open_group()
            plans = plan(ruleset, host_mntns=self._own_mntns)
            self.counters["unmarkable"] = sum(p.unmarkable for p in plans.values())
            self.counters["posture_unenforced"] = sum(p.posture_unenforced for p in plans.values())
            resolved = resolve_plans(plans, self.counters)
            # Publish the tables before adding marks: an event never finds a mark without its rules.
            self._tables = resolved.tables
            self._watch_creates()
            self._start_reader()  # only now: an inherited group's waiters are judged with these rules
            self._sync_marks(resolved.wanted)
            self._sync_creates(resolved.tables)
            if self._holder is not None:
                self._holder.selected(resolved.tables.rules)
            self._last = ruleset
            log.info("rules applied", extra={"version": ruleset.version, "marks": len(self._marks),
                                             "namespaces": len(plans)})

    def refresh(self) -> None:
        """Re-apply the last rule set: subdirectories created since under recursive rules get marked."""
        last = self._last
        if last is not None and not self._closed and self._tables.dirs:
            self.apply(last)

    def keep_held(self) -> None:
        """Give our group to a holder that restarted (or was not there when we started): until then our
        death would release the group. Cheap when the holder is there (one non-blocking peek)."""
        if not self._holder_path or self._closed:
            return
        with self._lock:
            if self._closed or self._fan_fd < 0 or self._journal is None or \
                    (self._holder is not None and self._holder.alive()):
                return
            if self._holder is not None:
                self._holder.close()
                self._holder = None
            client = HolderClient(self._holder_path or "")
            try:
                client.attach(own=(self._fan_fd, self._journal.fd), timeout=1.0)
            except HolderError as exc:
                self.counters.inc("holder_errors")
                log.error("fanotify holder unreachable: our death would release the group",
                          extra={"error": str(exc)})
                return
            self._holder = client
            client.selected(self._tables.rules)
            log.info("group handed to a new fanotify holder")

    def _sync_marks(self, wanted: dict[tuple[int, int], tuple[int, int]]) -> None:
        for key, (fd, mask) in wanted.items():
            old = self._marks.get(key)
            if old is not None:
                os.close(fd)
                fd, old_mask = old
                if old_mask == mask:
                    continue
            else:  # a mark inherited with the group: its bits not wanted any more are removed below
                old_mask = self._inherited_mask(key)
            mount = key[0] == MOUNT_KEY
            try:
                fs.fan_mark(self._fan_fd, True, mask, fd, mount)
                if old_mask & ~mask:
                    fs.fan_mark(self._fan_fd, False, old_mask & ~mask, fd, mount)
                self._marks[key] = (fd, mask)
            except OSError as exc:
                self.counters.inc("mark_errors")
                log.error("cannot mark inode", extra={"dev_ino": f"{key}", "error": str(exc)})
                if old is None:
                    os.close(fd)
        for key in [k for k in self._marks if k not in wanted]:
            fd, mask = self._marks.pop(key)
            try:
                fs.fan_mark(self._fan_fd, False, mask, fd, key[0] == MOUNT_KEY)
            except OSError as exc:  # e.g. the inode is gone: its mark went with it
                log.info("unmark failed", extra={"dev_ino": f"{key}", "error": str(exc)})
            finally:
                os.close(fd)
        self._drop_inherited()

    def _inherited_mask(self, key: tuple[int, int]) -> int:
        """The mask of the mark the group already held on ``key`` (0 if none); no longer inherited."""
        if key[0] == MOUNT_KEY:
            return self._inherited_mounts.pop(key[1], 0)
        inherited = self._inherited.pop(key, None)
        return inherited.mask if inherited is not None else 0

    def _drop_inherited(self) -> None:
        """Remove the inherited marks no rule wants (after ours are in place); count what cannot be."""
        stale = [(k, m.mask, open_inode(k[0], m)) for k, m in self._inherited.items()]
        stale += [((MOUNT_KEY, mid), mask, open_mount(mid)) for mid, mask in self._inherited_mounts.items()]
        self._inherited, self._inherited_mounts = {}, {}
        for key, mask, fd in stale:
            if fd is None:
                self.counters.inc("stale_marks")
                continue
            try:
                fs.fan_mark(self._fan_fd, False, mask, fd, key[0] == MOUNT_KEY)
            except OSError:
                self.counters.inc("stale_marks")
            finally:
                os.close(fd)

    def _watch_creates(self) -> None:
        """The FAN_CREATE group that lets a refused O_CREAT open take its new file back (``fancreates``)."""
        if self._creates is None:
            try:
                self._creates = CreateWatch()
            except OSError as exc:
                self.counters.inc("create_watch_errors")
                log.error("no create watch: a refused create leaves its empty file", extra={"error": str(exc)})

    def _sync_creates(self, tables: Tables) -> None:
        """Watch the marked directories for creates (their O_PATH fds are our marks')."""
        if self._creates is not None:
            dirs = {(d, i): self._marks[(d, i)][0] for d, i, _ns in tables.dirs if (d, i) in self._marks}
            self.counters.inc("create_watch_errors", self._creates.sync(dirs))

    # -- events --------------------------------------------------------------------------------
    def _open_group(self) -> None:
        """The holder's group (with the marks it holds), or a group of our own."""
        if self._fan_fd >= 0:
            return
        if self._holder_path:
            client = HolderClient(self._holder_path)
            try:
                self._fan_fd, jfd = client.attach() or (-1, -1)
                self._journal, self._holder = Journal(jfd), client
                self._inherited, self._inherited_mounts = read_marks(self._fan_fd)
                self.counters["inherited_marks"] = len(self._inherited) + len(self._inherited_mounts)
                log.info("fanotify group taken from the holder",
                         extra={"inherited_marks": self.counters["inherited_marks"]})
            except (HolderError, OSError) as exc:
                self.counters.inc("holder_errors")
                log.error("fanotify holder unreachable: our own group, released if we die",
                          extra={"error": str(exc)})
        if self._fan_fd < 0:
            self._fan_fd = fs.fan_init()
            if self._holder_path:
                self._journal = Journal.create()  # handed to the holder once it answers (refresh)

    def _start_reader(self) -> None:
        if self._thread is not None:
            return
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="fanotify-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = select.poll()
        poller.register(self._fan_fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        creates = self._creates
        if creates is not None:
            poller.register(creates.fd, select.POLLIN)
        journal = self._journal
        while not self._stop.is_set():
            try:
                ready = {fd for fd, _ in poller.poll()}
                if self._stop.is_set():
                    break
                if creates is not None and creates.fd in ready:
                    creates.drain()
                    if self._fan_fd not in ready:
                        continue
                if journal is not None:
                    journal.reading()
                buf = os.read(self._fan_fd, 64 * 1024)
            except BlockingIOError:
                if journal is not None:
                    journal.idle()
                continue
            except OSError as exc:
                if self._stop.is_set():
                    break
                self.counters.inc("errors")
                log.error("fanotify read failed", extra={"error": str(exc)})
                time.sleep(0.01)
                continue
            if journal is not None:
                journal.batch(buf)
            self._dispatch(buf, journal)
            if journal is not None:
                journal.idle()

    def _dispatch(self, buf: bytes, journal: Journal | None = None) -> None:
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
                allow = not self._should_deny(pid, efd, mask)
                self.counters.inc("handle_ns", time.perf_counter_ns() - t0)
            except Exception as exc:  # fail-open, always
                self.counters.inc("errors")
                log.warning("decision failed, allowing", extra={"pid": pid, "error": repr(exc)})
            try:
                if mask & fs.PERM_EVENTS:
                    os.write(self._fan_fd, fs.response(efd, allow))
                    self.counters.inc("allowed" if allow else "denied")
                    if journal is not None:
                        journal.answered(off)
            except OSError as exc:
                self.counters.inc("errors")
                log.error("fanotify response failed", extra={"pid": pid, "error": str(exc)})
            finally:
                os.close(efd)
            self.counters.inc("events")

    def _should_deny(self, tid: int, efd: int, mask: int = fs.FAN_OPEN_EXEC_PERM) -> bool:
        """True only when the matcher says Block for this thread's workload and this file."""
        tables = self._tables
        if not tables.rules:
            return False
        mntns = os.stat(f"/proc/{tid}/ns/mnt").st_ino
        rules = tables.rules.get(mntns)
        if rules is None:
            return False  # not a selected workload: the common case, decided with one stat
        if mntns == self._own_mntns and os.path.exists(f"/proc/self/task/{tid}"):
            return False  # never wait on ourselves (a host policy selects our namespace too)
        st = os.fstat(efd)
        resources = self._resources(tid, efd, st, mntns, tables)
        if not resources:
            return False
        source = exe_of(tid)
        if mask & fs.FAN_OPEN_EXEC_PERM:
            operation, access = "Process", "exec"
            target = exec_target(tid)
            if target is not None and target != (st.st_dev, st.st_ino) and is_elf_interpreter(efd):
                return False  # the ELF interpreter (ld.so) the kernel opens for the program: no exec
        else:
            operation, access = "File", open_access(tid)
            if access == "exec":  # the exec's own open: judged at FAN_OPEN_EXEC_PERM (BPF-LSM's file_open
                return False      # leaves FMODE_EXEC opens to bprm_check_security the same way)
            if not access:  # unknown flags: judged as a write (read-only rules then deny)
                self.counters.inc("mode_unknown")
                access = "write"
        uid = fs_uid(tid) if mntns in tables.owner_ns else -1
        for resource in resources:
            asked = Access(operation=operation, resource=resource, source=source, access=access, uid=uid,
                           resource_owner_uid=st.st_uid)
            decision = _decide(tables, mntns, asked)
            if decision is None or decision.action != "Block":
                continue
            log.info("access denied", extra={"tid": tid, "mntns": mntns, "operation": decision.rule.operation
                                             if decision.rule else operation, "path": resource,
                                             "access": access, "source": source, "policy": decision.policy})
            if operation == "File":
                self._undo_create(tid, efd, tables)
            return True
        return False

    def _undo_create(self, tid: int, efd: int, tables: Tables) -> None:
        """Before a refused open's verdict: remove the file that very open created, if it did (``fancreates``).
        Never raises: a failure here must not turn the refusal into an allow."""
        creates = self._creates
        if creates is None or not tables.dirs:
            return
        try:
            if creates.undo(tid, efd, {(d, i) for d, i, _ns in tables.dirs}):
                self.counters.inc("creates_undone")
                log.info("refused create undone", extra={"tid": tid})
        except Exception as exc:  # noqa: BLE001 - the refusal stands whatever happens here
            self.counters.inc("errors")
            log.warning("could not undo a refused create", extra={"tid": tid, "error": repr(exc)})

    def _resources(self, tid: int, efd: int, st: os.stat_result, mntns: int, tables: Tables) -> list[str]:
        """The names the workload's rules may know the file by: a marked file's, its marked directory's
        child, or (an allow-list's mount marks) the path we see."""
        resources = list(tables.files.get((st.st_dev, st.st_ino, mntns), ()))
        if mntns in tables.dir_ns:
            resources.extend(self._in_marked_dir(efd, tid, mntns, tables))
        if mntns in tables.mount_ns:  # an allow-list: every file is judged, by the path we see
            seen = os.readlink(f"/proc/self/fd/{efd}")
            if seen not in resources:
                resources.append(seen)
        return resources

    @staticmethod
    def _in_marked_dir(efd: int, tid: int, mntns: int, tables: Tables) -> list[str]:
        """The file's path as the workload names it, when its directory is marked for ``mntns``."""
        parent, base = os.path.split(os.readlink(f"/proc/self/fd/{efd}"))
        for candidate in (parent, f"/proc/{tid}/root{parent}"):
            try:
                pst = os.stat(candidate)
            except OSError:
                continue
            wl_dir = tables.dirs.get((pst.st_dev, pst.st_ino, mntns))
            if wl_dir is not None:
                return [f"{wl_dir.rstrip('/')}/{base}"]
        return []

    # -- teardown ------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the reader, close the group (the kernel allows pending waiters), drop every mark."""
        self._shut(release=True)

    def detach(self) -> None:
        """Stop the reader and leave the group and its marks to the holder, which answers in our
        place until the next enforcer takes them back (a restart or upgrade). Without a holder: close."""
        self._shut(release=self._holder is None)

    def _shut(self, release: bool) -> None:
        with self._lock:
            self._closed = True
            if self._fan_fd < 0:
                return
            if self._thread is not None:
                self._stop.set()
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass
                self._thread.join(timeout=5)
                if self._thread.is_alive():
                    log.error("fanotify reader did not stop within 5s")
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._thread = None
            if self._holder is not None:
                if release:
                    self._holder.release()
                else:
                    self._holder.close()
                self._holder = None
            os.close(self._fan_fd)
            self._fan_fd = -1
            if self._creates is not None:
                self._creates.close()
                self._creates = None
            if self._journal is not None:
                self._journal.close()
                self._journal = None
            for fd, _mask in self._marks.values():
                os.close(fd)
            self._marks.clear()
            self._tables = Tables()
            log.info("fanotify enforcer closed" if release else "fanotify group left to the holder")

    def stats(self) -> dict[str, int]:
        """Counters for the heartbeat."""
        return {**self.counters, "marks": len(self._marks), "held": int(self._holder is not None)}
