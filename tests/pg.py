"""A private PostgreSQL 15 cluster for tests: initdb in a temp dir, started on a free loopback port.

initdb refuses to run as root, so as root the cluster belongs to the ``postgres`` system user
(``runuser``); as any other user it belongs to that user. :func:`start_cluster` returns a running
:class:`PgCluster`; ``stop()`` shuts it down (fast mode) and removes nothing (the caller's temp dir).
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bulwark.natsserver.process import free_port, wait_for_port

__all__ = ["PgCluster", "start_cluster", "pg_bin_dir", "PgUnavailable"]

_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"), Path("/usr/lib/postgresql/16/bin"))


class PgUnavailable(RuntimeError):
    """PostgreSQL server binaries or a non-root user to run them are missing."""


def pg_bin_dir() -> Path:
    """Where initdb and pg_ctl live."""
    for d in _BIN_DIRS:
        if (d / "initdb").exists():
            return d
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise PgUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql-15")


@dataclass
class PgCluster:
    """A running private cluster: its data dir, port and owner."""

    data_dir: Path
    port: int
    user: str
    bin_dir: Path

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``bulwark`` database (trust auth on loopback)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/bulwark"

    def url_for(self, db: str) -> str:
        """SQLAlchemy URL of database ``db``."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{db}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)

    def createdb(self, name: str) -> None:
        """Create database ``name``."""
        res = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        if res.returncode != 0:
            raise RuntimeError(f"createdb {name}: {res.stderr.strip()}")

    def stop(self) -> None:
        """Shut the cluster down (fast: disconnect clients). When pg_ctl cannot (its owner may no longer
        reach the data directory: another pytest session resets /tmp/pytest-of-<user> to 0700), the
        postmaster this cluster started gets SIGINT, PostgreSQL's fast shutdown, from us directly."""
        res = self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "30", "stop")
        if res.returncode == 0:
            return
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return  # no postmaster.pid: it is not running
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.1)


def start_cluster(base: Path) -> PgCluster:
    """initdb a cluster under ``base`` and start it on a free 127.0.0.1 port; database ``bulwark`` exists."""
    bin_dir = pg_bin_dir()
    user = "postgres" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    if os.geteuid() == 0:
        try:
            ids = pwd.getpwnam(user)
        except KeyError as exc:
            raise PgUnavailable("running as root and there is no 'postgres' user to own the cluster") from exc
        base.mkdir(parents=True, exist_ok=True)
        os.chown(base, ids.pw_uid, ids.pw_gid)
        for parent in [base, *base.parents]:  # the owner must be able to reach the directory
            mode = parent.stat().st_mode
            if not mode & 0o001:
                os.chmod(parent, mode | 0o001)
            if parent == Path(parent.anchor):
                break
    cluster = PgCluster(base / "pgdata", free_port(), user, bin_dir)
    res = cluster._run("initdb", "-D", str(cluster.data_dir), "-U", user, "-A", "trust", "-E", "UTF8",
                       "--no-sync")
    if res.returncode != 0:
        raise RuntimeError(f"initdb failed: {res.stderr.strip()}")
    opts = (f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {base} -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=100")
    res = cluster._run("pg_ctl", "-D", str(cluster.data_dir), "-o", opts, "-l", str(base / "pg.log"),
                       "-w", "-t", "60", "start")
    if res.returncode != 0:
        log = (base / "pg.log").read_text(errors="replace")[-2000:] if (base / "pg.log").exists() else ""
        raise RuntimeError(f"pg_ctl start failed: {res.stderr.strip()} {log}")
    wait_for_port(cluster.port, 30)
    deadline = time.monotonic() + 30
    while True:
        try:
            cluster.createdb("bulwark")
            break
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    return cluster
