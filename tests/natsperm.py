"""A real nats-server with a given configuration, and probes of what a NATS user may do on it."""
from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client

from bulwark.natsserver.process import nats_server_binary, wait_for_port
from bulwark.procs import terminate
from shared.codec import pack
from shared.nats.auth import inbox_prefix
from shared.nats.bus import connect, login_user
from shared.nats.creds import NatsCredentials


async def publish_ok(url: str, subject: str, creds: NatsCredentials | None = None) -> bool:
    """Whether a JetStream publish to ``subject`` as ``creds`` is stored (acked) within a second."""
    nc = await connect(url, "t", credentials=creds)
    try:
        await nc.jetstream().publish(subject, pack({"x": 1}), timeout=1.0)
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def login_refused(url: str, user: str | None = None, password: str | None = None) -> bool:
    """Whether a client logging in as ``user`` (none: anonymous) is turned away."""
    try:
        nc = await nats.connect(url, user=user, password=password, connect_timeout=3.0, allow_reconnect=False,
                                max_reconnect_attempts=0)
    except Exception:
        return True
    await nc.close()
    return False


async def anonymous_refused(url: str) -> bool:
    """Whether a client without credentials is turned away."""
    return await login_refused(url)


def env_file_credentials(path: Path) -> NatsCredentials:
    """The NATS user and password in a Compose env file (``bulwark nats-auth compose``)."""
    env = dict(line.split("=", 1) for line in path.read_text().splitlines() if line)
    return NatsCredentials(env["BULWARK_NATS_USER"], env["BULWARK_NATS_PASSWORD"])


def start_nats(args: list[str], port: int, log: Path) -> subprocess.Popen[bytes]:
    """nats-server with ``args`` (which make it listen on ``port``), logging to ``log``; ready when it returns."""
    proc = subprocess.Popen([nats_server_binary(), *args], stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        wait_for_port(port)
    except TimeoutError:
        terminate(proc, grace=2)
        raise AssertionError(f"nats-server did not start: {log.read_text()[-2000:]}") from None
    return proc


PROBE_NAME = "probe"  # the client name nats-server's log shows for a Probe's refusals


class Probe:
    """A raw nats-py client logged in as one user, recording the errors the server sends it.

    A refused publish or subscription does not fail the call: the server answers with an asynchronous
    ``-ERR 'Permissions Violation ...'``. :meth:`violation` waits for the one naming a subject.
    """

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._changed = asyncio.Event()
        self.nc: Client | None = None

    async def open(self, url: str, *, creds: NatsCredentials | None = None, inbox: str | None = None) -> Client:
        """Log in at ``url`` (or as ``creds``) with that login's private inbox prefix unless ``inbox`` is given."""
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
            self._changed.set()

        user = login_user(url, creds)
        login = {"user": creds.user, "password": creds.password} if creds else {}
        prefix = inbox or (creds.inbox_prefix if creds else inbox_prefix(user) if user else "_INBOX")
        self.nc = await nats.connect(url, name=PROBE_NAME, error_cb=on_error, allow_reconnect=False,
                                     max_reconnect_attempts=0, inbox_prefix=prefix, **login)
        return self.nc

    async def violation(self, subject: str, timeout: float = 10.0) -> str:
        """The permissions violation the server reported for ``subject`` (AssertionError if none came)."""
        want = f'"{subject}"'.lower()

        async def found() -> str:
            while True:
                for err in self.errors:
                    if "permissions violation" in err.lower() and want in err.lower():
                        return err
                self._changed.clear()
                await self._changed.wait()
        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            raise AssertionError(f"no permissions violation for {subject}; errors: {self.errors}") from None

    async def close(self) -> None:
        """Close the connection."""
        if self.nc is not None and not self.nc.is_closed:
            await self.nc.close()


async def probe(url: str, **kw: Any) -> Probe:
    """An opened :class:`Probe`."""
    p = Probe()
    await p.open(url, **kw)
    return p
