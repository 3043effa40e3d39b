"""Stopping a child process politely, then firmly."""
from __future__ import annotations

import subprocess

__all__ = ["terminate"]


def terminate(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds; returns its exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
