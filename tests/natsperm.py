"""A real nats-server with a given configuration, and probes of what a NATS user may do on it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import nats

from bulwark.natsd import nats_server_binary, wait_for_port
from bulwark.procs import terminate

from shared.bus import connect
from shared.codec import pack
from shared.natscreds import NatsCredentials


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
