"""The NATS connection every service uses: named callbacks, streams created only if missing."""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from shared.codec import pack, unpack, unpack_map
from shared.errors import DecodeError, ServiceUnavailable
from shared.lifecycle import Counters
from shared.natscreds import NatsCredentials
from shared.subjects import STREAMS, StreamSpec

__all__ = ["connect", "ensure_streams", "ensure_stream", "request", "stream_last_seq", "replay_stream"]

log = logging.getLogger("bulwark.bus")


async def connect(url: str, name: str, *, credentials: NatsCredentials | None = None,
                  connect_timeout: float = 5.0) -> Client:
    """Connect to NATS with logged error/disconnect/reconnect/close callbacks and endless reconnects.

    ``credentials`` (a user and password) are for URLs that carry none (see shared.natscreds).
    """
    nc: Client | None = None

    def refresh_password() -> None:
        """A rotating password (a token file) is read again before the client logs in again."""
        if nc is not None and credentials is not None and credentials.refresh is not None:
            try:
                nc.options["password"] = credentials.refresh()
            except Exception as exc:
                log.warning("nats credentials not refreshed", extra={"client": name, "error": str(exc)})

    async def error_cb(exc: Exception) -> None:
        log.warning("nats error", extra={"client": name, "error": repr(exc)})
        refresh_password()

    async def disconnected_cb() -> None:
        log.warning("nats disconnected", extra={"client": name})
        refresh_password()

    async def reconnected_cb() -> None:
        log.info("nats reconnected", extra={"client": name})

    async def closed_cb() -> None:
        log.info("nats closed", extra={"client": name})

    login = {"user": credentials.user, "password": credentials.password} if credentials else {}
    nc = await nats.connect(
        url, name=name, connect_timeout=connect_timeout, **login, max_reconnect_attempts=-1,
        reconnect_time_wait=0.5, error_cb=error_cb, disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb, closed_cb=closed_cb,
    )
    return nc


async def ensure_stream(js: JetStreamContext, spec: StreamSpec) -> None:
    """Create ``spec``'s stream if it does not exist yet (an existing one is left as it is)."""
    try:
        await js.stream_info(spec.name)
        return
    except NotFoundError:
        pass
    config = StreamConfig(
        name=spec.name, subjects=list(spec.subjects),
        max_msgs_per_subject=spec.max_msgs_per_subject,
        max_age=spec.max_age_seconds or None,
        **spec.extra,  # type: ignore[arg-type]
    )
    try:
        await js.add_stream(config)
    except Exception as exc:  # a racing service may have created it first
        try:
            await js.stream_info(spec.name)
        except NotFoundError:
            raise exc from None


async def ensure_streams(js: JetStreamContext, specs: tuple[StreamSpec, ...] = STREAMS) -> None:
    """Create every Bulwark stream that is missing."""
    for spec in specs:
        await ensure_stream(js, spec)


async def stream_last_seq(js: JetStreamContext, spec: StreamSpec) -> int:
    """The sequence of the newest message in a stream (0 when empty)."""
    info = await js.stream_info(spec.name)
    return int(info.state.last_seq or 0)


async def request(nc: Client, subject: str, payload: Any, timeout: float = 5.0) -> Any:
    """Send a msgpack request and decode the msgpack reply; ServiceUnavailable on timeout."""
    try:
        msg = await nc.request(subject, pack(payload), timeout=timeout)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
        raise ServiceUnavailable(f"no answer on {subject}: {type(exc).__name__}") from exc
    return unpack(msg.data)


async def replay_stream(js: JetStreamContext, spec: StreamSpec, handle: Callable[[dict[str, Any], int], None],
                        counters: Counters, *, timeout: float = 5.0) -> int:
    """Feed every message of ``spec``'s stream, oldest first, to ``handle(map, seq)``; returns the last seq.

    A message that does not decode (or that ``handle`` refuses with DecodeError) is counted and skipped.
    """
    info = await js.stream_info(spec.name)
    last = int(info.state.last_seq or 0)
    if not last or not info.state.messages:
        return last
    sub = await js.subscribe(spec.subjects[0], ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        seq = 0
        while seq < last:
            msg = await sub.next_msg(timeout=timeout)
            seq = msg.metadata.sequence.stream
            try:
                handle(unpack_map(msg.data), seq)
            except DecodeError as exc:
                counters.inc("decode_errors")
                log.warning("skipped a bad message", extra={"stream": spec.name, "seq": seq, "error": str(exc)})
    finally:
        await sub.unsubscribe()
    return last
