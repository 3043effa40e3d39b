"""The peers bench/peers.py measures Bulwark against: auditd and fapolicyd, installed from Debian if
missing and started in the foreground under the bench's control (never as services), and everything
they change on the host put back afterwards (HostFiles, the kernel's audit rules and enabled flag).

Both daemons get PR_SET_PDEATHSIG (SIGTERM) and their own session: a Ctrl-C reaches only the bench,
which stops them in order, and if the bench itself is killed they stop too. They are stopped only by
the pid this module started.
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from peer_rules import AUDIT_KEY, check_audit_watches, check_fapolicyd_rules

from bulwark.procs import terminate

CLONE_NEWNS, MS_REC, MS_PRIVATE, MNT_DETACH, PR_SET_PDEATHSIG = 0x00020000, 0x4000, 1 << 18, 2, 1
WATCH_FS = ("ext2", "ext3", "ext4", "tmpfs", "xfs", "vfat", "iso9660", "btrfs")  # Debian's fapolicyd.conf
FAPOLICYD_CONF = """\
# written by bench/peers.py for the length of one phase (the original is put back afterwards)
permissive = 0
nice_val = 14
q_size = 640
uid = 0
gid = 0
do_stat_report = 1
detailed_report = 0
db_max_size = 50
subj_cache_size = 1549
obj_cache_size = 8191
watch_fs = {watch_fs}
trust = file
integrity = none
syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust
rpm_sha256_only = 0
allow_filesystem_mark = 1
"""
AUDITD_CONF = """\
local_events = yes
write_logs = yes
log_file = {log}
log_group = root
log_format = ENRICHED
flush = INCREMENTAL_ASYNC
freq = 50
max_log_file = 64
num_logs = 2
priority_boost = 4
name_format = NONE
max_log_file_action = ROTATE
space_left = 75
space_left_action = SYSLOG
admin_space_left = 50
admin_space_left_action = SUSPEND
disk_full_action = SUSPEND
disk_error_action = SUSPEND
use_libwrap = no
q_depth = 2000
overflow_action = SYSLOG
max_restarts = 10
plugin_dir = {plugins}
end_of_event_timeout = 2
"""


class PeerError(RuntimeError):
    """A peer could not be started or checked: its measurement would be invalid."""


def run(*cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing its output."""
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False)
    if check and res.returncode != 0:
        raise PeerError(f"{' '.join(cmd)}: exit {res.returncode}: {(res.stderr or res.stdout).strip()[-500:]}")
    return res


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _pdeathsig() -> None:
    """In the child before exec: SIGTERM when the bench dies."""
    _libc().prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# -- packages -----------------------------------------------------------------------------------------
def installed(package: str) -> bool:
    """Whether dpkg has ``package`` installed."""
    res = run("dpkg-query", "-W", "-f=${Status}", package, check=False)
    return res.returncode == 0 and res.stdout.strip().endswith("install ok installed")


def ensure_packages(packages: list[str]) -> list[str]:
    """Install the missing ones from Debian (their services neither started nor left enabled); which."""
    missing = [p for p in packages if not installed(p)]
    if not missing:
        return []
    guard = Path("/usr/sbin/policy-rc.d")
    ours = not guard.exists()
    if ours:  # no service may start during the installation
        guard.write_text("#!/bin/sh\nexit 101\n")
        guard.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=False)
            subprocess.run(cmd, env=env, check=True)
    finally:
        if ours:
            guard.unlink()
    for name in missing:  # the packages enable their units and init scripts: not on this host
        if shutil.which("deb-systemd-helper"):  # it acts only when called as from the package's scripts
            subprocess.run(["deb-systemd-helper", "disable", f"{name}.service"], capture_output=True, check=False,
                           env={**os.environ, "DPKG_MAINTSCRIPT_PACKAGE": name})
        if Path(f"/etc/init.d/{name}").exists() and shutil.which("update-rc.d"):
            run("update-rc.d", name, "disable", check=False)
    return missing


# -- host files ---------------------------------------------------------------------------------------
@dataclass
class _Saved:
    kind: str  # "file", "dir", "link", "absent", or "other" (a fifo, a socket: left alone)
    copy: Path | None = None
    mode: int = 0
    uid: int = 0
    gid: int = 0
    entries: set[str] = field(default_factory=set)
    target: str = ""


class HostFiles:
    """Host files and directories a peer changes, kept before and put back after: a file's bytes, mode
    and owner; a symlink's target; a directory's existence and list of entries (new ones are removed
    afterwards); a path that did not exist is removed."""

    def __init__(self, backup: Path) -> None:
        self.backup = backup
        self.saved: dict[Path, _Saved] = {}

    def keep(self, path: Path, *, with_entries: bool = False) -> None:
        """Remember ``path`` as it is now (the first call counts); with_entries: what is in it too."""
        if path in self.saved:
            return
        if path.is_symlink():
            self.saved[path] = _Saved("link", target=os.readlink(path))
        elif path.is_file():
            st = path.stat()
            copy = self.backup / f"{len(self.saved)}-{path.name}"
            shutil.copy2(path, copy)
            self.saved[path] = _Saved("file", copy, st.st_mode & 0o7777, st.st_uid, st.st_gid)
        elif path.is_dir():
            st = path.stat()
            names = {p.name for p in path.iterdir()}
            self.saved[path] = _Saved("dir", None, st.st_mode & 0o7777, st.st_uid, st.st_gid, names)
            for name in sorted(names) if with_entries else []:
                self.keep(path / name, with_entries=True)
        elif path.exists():
            self.saved[path] = _Saved("other")
        else:
            self.saved[path] = _Saved("absent")

    def _put_back(self, path: Path, saved: _Saved) -> None:
        if saved.kind == "dir":
            if path.is_symlink() or not path.is_dir():
                if path.is_symlink() or path.exists():
                    _remove(path)
                path.mkdir(parents=True)
            st = path.stat()  # fapolicyd, for one, changes its run directory's owner and mode
            if (st.st_uid, st.st_gid, st.st_mode & 0o7777) != (saved.uid, saved.gid, saved.mode):
                os.chown(path, saved.uid, saved.gid)
                path.chmod(saved.mode)
        elif saved.kind == "file" and saved.copy is not None:
            if path.is_symlink() or path.is_dir():
                _remove(path)
            shutil.copy2(saved.copy, path)
            os.chown(path, saved.uid, saved.gid)
            path.chmod(saved.mode)
        elif saved.kind == "link" and not (path.is_symlink() and os.readlink(path) == saved.target):
            if path.is_symlink() or path.exists():
                _remove(path)
            os.symlink(saved.target, path)

    def restore(self) -> list[str]:
        """Put everything back (directories first, then what is in them; then extra entries and paths
        that were absent removed); what could not be restored."""
        problems: list[str] = []
        items = sorted(self.saved.items(), key=lambda kv: len(kv[0].parts))
        for path, saved in items:
            try:
                self._put_back(path, saved)
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        for path, saved in reversed(items):
            try:
                if saved.kind == "dir" and path.is_dir() and not path.is_symlink():
                    for extra in sorted(p.name for p in path.iterdir()):
                        if extra not in saved.entries:
                            _remove(path / extra)
                elif saved.kind == "absent" and (path.exists() or path.is_symlink()):
                    _remove(path)
            except OSError as exc:
                problems.append(f"{path}: {exc}")
        return problems


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


# -- auditd -------------------------------------------------------------------------------------------
def audit_status() -> dict[str, int]:
    """``auditctl -s`` as numbers (enabled, pid, ...)."""
    out: dict[str, int] = {}
    for line in run("auditctl", "-s").stdout.splitlines():
        name, _, value = line.partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[name] = int(value.strip())
    return out


def audit_rules() -> list[str]:
    """``auditctl -l``'s lines (none when it says "No rules")."""
    return [line for line in run("auditctl", "-l").stdout.splitlines() if line.strip() and line != "No rules"]


@dataclass
class AuditEvent:
    """One audit event (records sharing a serial): time, serial, key, the names of its PATH records,
    and the text of a user message (``auditctl -m``)."""

    ts: float
    serial: int
    key: str = ""
    names: list[str] = field(default_factory=list)
    text: str = ""


_MSG = re.compile(r"msg=audit\((\d+\.\d+):(\d+)\)")
_KEY = re.compile(r'\bkey=(?:"([^"]*)"|(\S+))')
_NAME = re.compile(r'\bname=(?:"([^"]*)"|([0-9A-Fa-f]+)\b)')


def parse_audit_log(text: str) -> list[AuditEvent]:
    """The events of an audit log (raw or enriched), in order of their first record."""
    events: dict[str, AuditEvent] = {}
    for line in text.splitlines():
        m = _MSG.search(line)
        if not m:
            continue
        ev = events.setdefault(m.group(2), AuditEvent(float(m.group(1)), int(m.group(2))))
        head = line.split("\x1d", 1)[0]
        if line.startswith("type=USER "):
            ev.text = head
        elif line.startswith("type=SYSCALL"):
            k = _KEY.search(head)
            if k and (k.group(1) or k.group(2)) not in (None, "(null)"):
                ev.key = k.group(1) or k.group(2)
        elif line.startswith("type=PATH"):
            n = _NAME.search(head)
            if n:
                ev.names.append(n.group(1) if n.group(1) is not None else bytes.fromhex(n.group(2)).decode(
                    errors="replace"))
    return list(events.values())


class Auditd:
    """auditd (``-n``, a private config directory and log) with the watches, for one phase."""

    def __init__(self, work: Path, watches: list[list[str]], root: str) -> None:
        check_audit_watches(watches, root)
        self.work, self.watches = work, watches
        self.log = work / "audit.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.added: list[list[str]] = []
        self.rules_before: list[str] = []
        self.enabled_before = 0
        self.touched = False  # set once the kernel's audit state is ours to put back

    def start(self, files: HostFiles) -> None:
        """Start it, wait until the kernel knows it, add the watches and check they are listed."""
        status = audit_status()
        if status.get("pid"):
            raise PeerError(f"an audit daemon (pid {status['pid']}) already runs: not touching it")
        if status.get("enabled") == 2:
            raise PeerError("the audit configuration is locked (enabled 2)")
        self.enabled_before, self.rules_before = status.get("enabled", 0), audit_rules()
        self.touched = True
        conf = self.work / "auditd-conf"
        (conf / "plugins.d").mkdir(parents=True)
        (conf / "auditd.conf").write_text(AUDITD_CONF.format(log=self.log, plugins=conf / "plugins.d"))
        (conf / "auditd.conf").chmod(0o640)
        for path in ("/run/auditd.pid", "/run/auditd.state"):
            files.keep(Path(path))
        out = open(self.work / "auditd.out", "wb")
        self.proc = subprocess.Popen(["auditd", "-n", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_pdeathsig)
        deadline = time.monotonic() + 15
        while audit_status().get("pid") != self.proc.pid:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise PeerError(f"auditd did not register (exit {self.proc.poll()}): "
                                f"{(self.work / 'auditd.out').read_text(errors='replace')[-500:]}")
            time.sleep(0.1)
        for args in self.watches:
            run("auditctl", *args)
            self.added.append(args)
        listed = sum(AUDIT_KEY in line for line in audit_rules())
        if listed != len(self.watches):
            raise PeerError(f"auditctl -l lists {listed} of our {len(self.watches)} watches")

    def events(self) -> list[AuditEvent]:
        """The events in the log so far."""
        return parse_audit_log(self.log.read_text(errors="replace") if self.log.exists() else "")

    def mark(self, label: str) -> int:
        """Log a user message (``auditctl -m``) and wait for it: its serial. Events are ordered by
        serial, not by their coarse time stamps."""
        text = f"{AUDIT_KEY}-{label}-{time.monotonic_ns()}"
        run("auditctl", "-m", text)
        deadline = time.monotonic() + 10
        while True:
            found = [ev.serial for ev in self.events() if text in ev.text]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise PeerError(f"auditd did not log the marker {text}")
            time.sleep(0.05)

    def cpu_pids(self) -> list[int]:
        """Its process (the kernel's kauditd thread is not counted)."""
        return [self.proc.pid] if self.proc else []

    def stop(self) -> list[str]:
        """Delete exactly our watches, stop it, restore the enabled flag; what is not as before."""
        problems: list[str] = []
        if not self.touched:
            return problems
        for args in reversed(self.added):
            if run("auditctl", "-W", *args[1:], check=False).returncode != 0:
                problems.append(f"auditctl -W {' '.join(args[1:])} failed")
        self.added = []
        if audit_rules() != self.rules_before and not self.rules_before:
            run("auditctl", "-D", check=False)  # there were none before: delete what is left
        if audit_rules() != self.rules_before:
            problems.append(f"audit rules differ from before: {audit_rules()} vs {self.rules_before}")
        if self.proc is not None:
            terminate(self.proc, grace=15)
        status = audit_status()
        if status.get("enabled") != self.enabled_before and self.enabled_before in (0, 1):
            run("auditctl", "-e", str(self.enabled_before), check=False)
            status = audit_status()
        if status.get("enabled") != self.enabled_before or status.get("pid"):
            problems.append(f"audit status after: enabled {status.get('enabled')} (before {self.enabled_before}), "
                            f"pid {status.get('pid')}")
        return problems


# -- fapolicyd ----------------------------------------------------------------------------------------
ETC = Path("/etc/fapolicyd")
REPORT = Path("/var/log/fapolicyd-access.log")  # its shutdown report (do_stat_report)
_READY = "Starting to listen for events"


def _mounts() -> list[tuple[str, str, int]]:
    """(mount point, fs type, device) of each mount of this process's namespace."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        parts, fstype = left.split(), right.split()[0]
        major, minor = (int(x) for x in parts[2].split(":"))
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), parts[4])
        out.append((point, fstype, os.makedev(major, minor)))
    return out


def others(keep_devs: set[int]) -> list[str]:
    """Mount points of the watched file system types whose device is not in ``keep_devs``."""
    return [point for point, fstype, dev in _mounts() if fstype in WATCH_FS and dev not in keep_devs]


def _private_view(keep_devs: set[int]) -> Callable[[], None]:
    """In the child before exec: a private mount namespace with only the watched file systems in
    ``keep_devs`` left, so that fapolicyd marks nothing else; then PR_SET_PDEATHSIG."""

    def prepare() -> None:
        libc = _libc()
        if libc.unshare(CLONE_NEWNS) != 0 or libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            raise OSError(ctypes.get_errno(), "private mount namespace for fapolicyd")
        for _ in range(4):
            for point in reversed(others(keep_devs)):
                libc.umount2(point.encode(), MNT_DETACH)
        if others(keep_devs):
            raise OSError(f"could not hide {others(keep_devs)} from fapolicyd")
        _pdeathsig()

    return prepare


def _kept_paths() -> list[tuple[Path, bool]]:
    """What a fapolicyd run changes on the host (path, with its files)."""
    return [(ETC / "fapolicyd.conf", False), (ETC / "compiled.rules", False), (ETC / "fapolicyd.rules", False),
            (ETC / "rules.d", True), (Path("/run/fapolicyd"), True), (Path("/run/fapolicyd.pid"), False),
            (Path("/run/fapolicyd.state"), False), (Path("/var/lib/fapolicyd"), True),
            (REPORT, False)]


class Fapolicyd:
    """fapolicyd in the foreground (``--debug-deny``: each denial on stderr) with generated rules only."""

    def __init__(self, work: Path, rules: str, root: str, keep_devs: set[int]) -> None:
        check_fapolicyd_rules(rules, root)
        self.work, self.rules, self.keep_devs = work, rules, keep_devs
        self.err = work / "fapolicyd.err"
        self.proc: subprocess.Popen[bytes] | None = None
        self.report = ""

    def start(self, files: HostFiles, denied_probe: str) -> None:
        """Write the rules (replacing rules.d's), start it, check that normal execs and python still
        work (stop it at once otherwise) and that ``denied_probe`` is refused."""
        for path, entries in _kept_paths():
            files.keep(path, with_entries=entries)
        for stale in (REPORT, Path("/run/fapolicyd.state")):  # put back afterwards; any new one is ours
            if stale.is_file():
                stale.unlink()
        (ETC / "rules.d").mkdir(exist_ok=True)
        for old in (ETC / "rules.d").iterdir():
            _remove(old)
        if (ETC / "fapolicyd.rules").exists():
            (ETC / "fapolicyd.rules").unlink()  # it would win over compiled.rules
        (ETC / "rules.d" / "50-bw-peers.rules").write_text(self.rules)
        (ETC / "compiled.rules").write_text(self.rules)
        (ETC / "fapolicyd.conf").write_text(FAPOLICYD_CONF.format(watch_fs=",".join(WATCH_FS)))
        Path("/run/fapolicyd").mkdir(mode=0o755, exist_ok=True)
        out = open(self.err, "wb")
        self.proc = subprocess.Popen(["fapolicyd", "--debug-deny"], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=_private_view(self.keep_devs))
        deadline = time.monotonic() + 60
        while _READY not in self.err.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise PeerError(f"fapolicyd did not start: {self.err.read_text(errors='replace')[-800:]}")
            time.sleep(0.1)
        try:
            for cmd in (["/bin/true"], [sys.executable, "-c", "pass"], ["/usr/bin/python3", "-c", "pass"]):
                if subprocess.run(cmd, timeout=15, check=False).returncode != 0:
                    raise PeerError(f"{cmd} failed with fapolicyd running")
            if subprocess.run(["cat", denied_probe], capture_output=True, timeout=15, check=False).returncode == 0:
                raise PeerError(f"fapolicyd did not deny {denied_probe}")
        except (PeerError, subprocess.TimeoutExpired) as exc:
            self.kill()
            raise PeerError(f"fapolicyd stopped at once: {exc}") from exc

    def offset(self) -> int:
        """Where its stderr ends now."""
        return self.err.stat().st_size

    def denials(self, since: int, until: int | None = None) -> list[str]:
        """Its denial lines written between the two offsets."""
        with open(self.err, "rb") as f:
            f.seek(since)
            data = f.read() if until is None else f.read(until - since)
        return [line for line in data.decode(errors="replace").splitlines() if "dec=deny" in line]

    def cpu_pids(self) -> list[int]:
        """Its process (every thread)."""
        return [self.proc.pid] if self.proc else []

    def kill(self) -> None:
        """Stop it now (SIGTERM, then SIGKILL) and check that the process, and with it its fanotify
        group and marks, is gone."""
        if self.proc is None:
            return
        terminate(self.proc, grace=20)
        if Path(f"/proc/{self.proc.pid}").exists() and self.proc.poll() is None:
            raise PeerError(f"fapolicyd (pid {self.proc.pid}) is still there")

    def stop(self) -> list[str]:
        """Stop it; its shutdown report is kept in ``report``. Problems (none expected)."""
        self.kill()
        self.report = (REPORT if REPORT.is_file() else self.err).read_text(errors="replace")
        rc = self.proc.returncode if self.proc else 0
        return [] if rc in (0, -signal.SIGTERM) else [f"fapolicyd exited with {rc}"]

    def report_count(self, name: str) -> int | None:
        """A number from its shutdown report (``Allowed accesses``, ``Denied accesses``), if there."""
        m = re.search(rf"{name}:\s*(\d+)", self.report)
        return int(m.group(1)) if m else None
