"""Start a command in fresh mount, PID and UTS namespaces, held at a gate until released.

Process tree (host view): launcher -> keeper (unshares, stays outside the new PID namespace)
-> init (PID 1 inside: mounts /proc, forwards signals, reaps) -> command (PID 2, waits at the gate,
then execs). Nothing here talks to the network: the launcher registers the workload in between.

Right before exec, PID 2 confines itself as the gate says: an AppArmor profile (change_onexec: the
exec enters the profile; when the kernel refuses it, e.g. the profile is not loaded, the command is
never started) and then a Landlock spec. The gate message is ``g`` + profile name + NUL + Landlock spec.
"""
from __future__ import annotations

import ctypes
import errno
import os
import re
import signal
import sys
from dataclasses import dataclass

__all__ = ["Sandbox", "start_sandbox", "exit_status", "change_onexec", "APPARMOR_REFUSED"]

CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWPID = 0x20000000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
GATE_REFUSED = 125  # exit status when the launcher did not open the gate
APPARMOR_REFUSED = 126  # exit status when the command could not be put under its AppArmor profile
_PROFILE_NAME = re.compile(r"[A-Za-z0-9._-]{1,255}")
_ONEXEC = ("/proc/self/attr/apparmor/exec", "/proc/self/attr/exec")  # per-LSM file (5.1+), then the shared one
_FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


@dataclass
class Sandbox:
    """A started sandbox: the keeper's pid, the init's host pid, and the gate to open."""

    keeper_pid: int
    init_pid: int
    gate_fd: int

    def open_gate(self, landlock: bytes = b"", apparmor: str = "") -> None:
        """Let the command exec under AppArmor profile ``apparmor`` (none when empty), after applying
        ``landlock`` (an encoded Landlock spec) to itself."""
        if apparmor and not _PROFILE_NAME.fullmatch(apparmor):
            self.refuse()
            raise ValueError(f"bad AppArmor profile name {apparmor!r}")
        os.write(self.gate_fd, b"g" + apparmor.encode() + b"\0" + landlock)
        os.close(self.gate_fd)

    def refuse(self) -> None:
        """Close the gate: the command never starts and the sandbox exits with GATE_REFUSED."""
        os.close(self.gate_fd)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the sandbox's init (which forwards it to the command)."""
        try:
            os.kill(self.init_pid, signum)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """Wait for the sandbox to end; the command's exit status (128+N when killed by signal N)."""
        while True:
            try:
                _, status = os.waitpid(self.keeper_pid, 0)
                return exit_status(status)
            except InterruptedError:
                continue


def exit_status(status: int) -> int:
    """A wait status as a shell exit code."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _read_gate(gate_r: int) -> bytes:
    data = b""
    while chunk := os.read(gate_r, 65536):
        data += chunk
    return data


def _landlock(spec: bytes) -> None:
    """Apply the launcher's Landlock spec to this process before exec (it only ever restricts)."""
    if not spec:
        return
    from services.enforcer.landlock import apply_spec, decode

    try:
        apply_spec(decode(spec) or {})
    except (OSError, ValueError, KeyError) as exc:  # fanotify still enforces the same rules
        sys.stderr.write(f"bulwark run: Landlock not applied: {exc}\n")


def change_onexec(profile: str) -> None:
    """Ask the kernel to run this process's next exec under AppArmor ``profile`` (OSError when refused:
    ENOENT when no such profile is loaded). One write() of ``exec <profile>``, as libapparmor does."""
    for path in _ONEXEC:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            os.write(fd, f"exec {profile}".encode())
        finally:
            os.close(fd)
        return
    raise OSError(errno.ENOENT, "this kernel has no /proc/self/attr/apparmor/exec nor /proc/self/attr/exec")


def _confine(profile: str) -> None:
    """Enter ``profile`` at exec, or end here: a command meant to be confined never runs unconfined."""
    if not profile:
        return
    try:
        change_onexec(profile)
    except OSError as exc:
        sys.stderr.write(f"bulwark run: AppArmor profile {profile} not applied ({exc.strerror or exc}): "
                         "not starting the command\n")
        sys.stderr.flush()
        os._exit(APPARMOR_REFUSED)


def _run_command(argv: list[str], gate_r: int, info_w: int) -> None:
    """PID 2: say it is at the gate, wait there, enter the AppArmor profile and apply Landlock if
    asked, then exec; never returns."""
    os.write(info_w, b"ready\n")
    os.close(info_w)
    gate = _read_gate(gate_r)
    if gate[:1] != b"g" or b"\0" not in gate:
        os._exit(GATE_REFUSED)
    os.close(gate_r)
    profile, _, landlock = gate[1:].partition(b"\0")
    _confine(profile.decode(errors="replace"))
    _landlock(landlock)
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        sys.stderr.write(f"bulwark run: {argv[0]}: {exc.strerror}\n")
        sys.stderr.flush()
        os._exit(126 if exc.errno in (errno.EACCES, errno.EPERM, errno.ENOEXEC) else 127)


def _run_init(argv: list[str], gate_r: int, info_w: int) -> None:
    """PID 1 of the new namespace: mount /proc, start the command, forward signals, reap; never returns."""
    libc = _libc()
    libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    child = os.fork()
    if child == 0:
        _run_command(argv, gate_r, info_w)
    os.close(gate_r)
    os.close(info_w)
    for sig in _FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(child, signum))
    code = GATE_REFUSED
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            os._exit(code)
        except InterruptedError:
            continue
        if pid == child:
            code = exit_status(status)


def _run_keeper(argv: list[str], hostname: str, gate_r: int, gate_w: int, info_w: int) -> None:
    """Outside the new PID namespace: unshare, fork init, report its pid, wait; never returns."""
    os.close(gate_w)
    try:
        libc = _libc()
        _check(libc.unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWUTS), "unshare")
        _check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "mount --make-rprivate /")
        name = hostname.encode()[:64]
        _check(libc.sethostname(name, len(name)), "sethostname")
        init = os.fork()
    except OSError as exc:
        os.write(info_w, f"error:{exc}".encode())
        os._exit(GATE_REFUSED)
    if init == 0:
        _run_init(argv, gate_r, info_w)
    os.close(gate_r)
    os.write(info_w, f"init:{init}\n".encode())
    os.close(info_w)
    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_IGN)
    _, status = os.waitpid(init, 0)
    os._exit(exit_status(status))


def start_sandbox(argv: list[str], hostname: str) -> Sandbox:
    """Fork the sandbox for ``argv``; returns once its namespaces exist, /proc is mounted and the command
    waits at the gate (so everything the sandbox does before the command runs has happened by then)."""
    gate_r, gate_w = os.pipe()
    info_r, info_w = os.pipe()
    keeper = os.fork()
    if keeper == 0:
        os.close(info_r)
        try:
            _run_keeper(argv, hostname, gate_r, gate_w, info_w)
        finally:
            os._exit(GATE_REFUSED)
    os.close(gate_r)
    os.close(info_w)
    report = _read_all(info_r)  # the keeper's "init:<pid>" and the command's "ready", in either order
    os.close(info_r)
    lines = report.split("\n")
    init = next((line[5:] for line in lines if line.startswith("init:")), "")
    if "ready" not in lines or not init.isdigit():
        os.close(gate_w)
        os.waitpid(keeper, 0)
        error = next((line[6:] for line in lines if line.startswith("error:")), "")
        raise OSError(error or f"sandbox failed to start: {report!r}")
    return Sandbox(keeper_pid=keeper, init_pid=int(init), gate_fd=gate_w)


def _read_all(fd: int) -> str:
    """Everything written to ``fd`` until every writer closed it."""
    chunks = []
    while chunk := os.read(fd, 256):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
