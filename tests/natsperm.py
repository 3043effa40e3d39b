"""Probing what a NATS user may do on a real server: publish into a stream, connect at all."""
from __future__ import annotations

import nats

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


async def anonymous_refused(url: str) -> bool:
    """Whether a client without credentials is turned away."""
    try:
        nc = await nats.connect(url, connect_timeout=1.0, allow_reconnect=False, max_reconnect_attempts=0)
    except Exception:
        return True
    await nc.close()
    return False
