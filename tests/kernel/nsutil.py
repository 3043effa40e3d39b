"""Test helpers: shells in private mount namespaces, exec probes with timeouts, private binaries.

Never exec a fanotify-marked file straight from the test process: CPython 3.11's subprocess uses
vfork() while holding the GIL, so the enforcer's reader thread (same process) could never answer and
the exec would wait until the process died. Every exec here goes through ``sh``.
"""
from __future__ import annotations

import os
import select
import shutil
import subprocess
import time
from pathlib import Path

from shared.schemas.rules import Rule, RuleSet, WorkloadRules


def bound(seconds: float) -> float:
    """An upper bound on a wait, stretched by ``BULWARK_TIMEOUT_SCALE`` where everything is slower
    (the kernel lab's emulated guests set it): it only stops a hang, it never judges speed."""
    return seconds * float(os.environ.get("BULWARK_TIMEOUT_SCALE", "1"))


_SCRIPT = 'stat -L -c %i /proc/self/ns/mnt; while IFS= read -r cmd; do eval "$cmd"; echo "rc=$?"; done'


class NsShell:
    """``sh`` in a new mount namespace running one command per stdin line, reporting ``rc=N``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(["unshare", "--mount", "--fork", "--kill-child", "sh", "-c", _SCRIPT],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._buf = b""
        self.mntns = int(self._readline(10))

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + bound(timeout)
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no line from the namespace shell in time")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise EOFError("namespace shell exited")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    def send(self, cmd: str) -> None:
        """Start ``cmd`` without waiting for it."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(cmd.encode() + b"\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 10) -> tuple[int, str]:
        """(rc, output) of the command sent last; TimeoutError if it does not finish in time."""
        out: list[str] = []
        while True:
            line = self._readline(timeout)
            if line.startswith("rc="):
                return int(line[3:]), "\n".join(out)
            out.append(line)

    def run(self, cmd: str, timeout: float = 10) -> tuple[int, str]:
        """Run ``cmd`` in the namespace and wait for it."""
        self.send(cmd)
        return self.result(timeout)

    def close(self) -> None:
        """Stop the shell (only processes this helper started)."""
        if self.proc.stdin:
            self.proc.stdin.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()


def host_run(cmd: str, timeout: float = 10) -> tuple[int, str]:
    """Run ``cmd`` through sh in the host mount namespace: (rc, combined output)."""
    res = subprocess.run(["sh", "-c", f"{cmd}\necho rc=$?"], capture_output=True, text=True,
                         timeout=bound(timeout))
    lines = (res.stdout + res.stderr).strip().splitlines()
    rc_line = next(line for line in res.stdout.splitlines() if line.startswith("rc="))
    return int(rc_line[3:]), "\n".join(line for line in lines if not line.startswith("rc="))


def private_copy(src: str, dest_dir: Path, name: str | None = None) -> str:
    """Copy a system binary into a private directory; tests only ever mark such copies."""
    dest = dest_dir / (name or Path(src).name)
    shutil.copy2(src, dest)
    return str(dest)


def block_exec(path: str, policy: str = "block-exec", action: str = "Block") -> Rule:
    """A compiled Process rule for one exact path."""
    return Rule(policy=policy, policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation="Process", action=action, severity=5, path=path)


def file_rule(action: str = "Block", policy: str = "file-pol", **kw: object) -> Rule:
    """A compiled File rule (``path=``, ``dir=``, ``read_only=``... as keywords)."""
    return Rule(policy=policy, policy_kind="KubeArmorPolicy", policy_namespace="default",
                operation="File", action=action, severity=5, **kw)  # type: ignore[arg-type]


def ruleset(version: int, **workloads: tuple[int, list[Rule]]) -> RuleSet:
    """A RuleSet: workload id -> (mntns, rules)."""
    return RuleSet(node="test-node", version=version, policy_seq=version, identity_seq=version,
                   workloads={w: WorkloadRules(w, mntns, 0, rules) for w, (mntns, rules) in workloads.items()})
