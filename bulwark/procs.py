"""Stopping a child process politely, then firmly."""
from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["terminate"]


def terminate(proc: subprocess.Popen[bytes], grace: float = 10.0, *, group: bool = False) -> int:
    """SIGTERM ``proc``, SIGKILL it after ``grace`` seconds; returns its exit status.

    With ``group``, the SIGKILL goes to the process group ``proc`` leads (it was started with
    ``start_new_session=True``), so children it left behind die with it.
    """
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
        finally:  # also when the wait was interrupted (a test's timeout): never leave it running
            if proc.poll() is None:
                if group:
                    os.killpg(proc.pid, signal.SIGKILL)
                else:
                    proc.kill()
                proc.wait()
    return proc.returncode
