"""The NATS connection every service uses: named callbacks, streams created only if missing.

:func:`connect` receives replies on the login's private inbox prefix (``_INBOX_<user>``, see
shared.nats.auth), uses TLS when ``BULWARK_NATS_TLS_*`` is set, and treats a refused login as final:
an authorization violation while connecting raises :class:`NatsAuthRefused` at once (after
``auth_grace`` seconds for a rotating token, which the auth callout may not be ready to check yet).
"""
from __future__ import annotations

import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote, urlsplit

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, StreamConfig
from nats.js.errors import NotFoundError

from shared.codec import pack, unpack, unpack_map
from shared.errors import BulwarkError, DecodeError, ServiceUnavailable
from shared.lifecycle import Counters
from shared.nats.auth import inbox_prefix
from shared.nats.creds import NatsCredentials
from shared.nats.subjects import STREAMS, StreamSpec

__all__ = ["connect", "FOLLOW_HEARTBEAT_SECONDS", "follow", "ensure_streams",
           "ensure_stream", "request", "stream_last_seq", "replay_stream",
           "NatsAuthRefused", "login_user", "is_auth_error"]

log = logging.getLogger("bulwark.bus")
# Idle heartbeat of every ordered consumer (a view following a stream): two missed heartbeats make
# nats-py re-create the consumer, so after a NATS restart a view resumes within seconds (nats-py's
# default, 5 s, left views 10-20 s behind their streams).
FOLLOW_HEARTBEAT_SECONDS = 1.0

TOKEN_AUTH_GRACE = 60.0


class NatsAuthRefused(BulwarkError):
    """NATS refused this client's credentials: retrying with the same ones cannot help."""


def is_auth_error(exc: BaseException) -> bool:
    """Whether ``exc`` is the server refusing a login (an authorization violation)."""
    return isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower()


def login_user(url: str, credentials: NatsCredentials | None = None) -> str:
    """The user a connection logs in as: the credentials' or the URL's (``nats://user:pass@host``), or ""."""
    if credentials is not None:
        return credentials.user
    first = url.split(",")[0].strip()
    try:
        return unquote(urlsplit(first).username or "")
    except ValueError:
        return ""


def _safe_url(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url.split(",")[0].strip())
    host = parts.hostname or ""
    return f"{parts.scheme}://{(parts.username + '@') if parts.username else ''}{host}:{parts.port or ''}"


async def connect(url: str, name: str, *, credentials: NatsCredentials | None = None,
                  connect_timeout: float = 5.0, tls: ssl.SSLContext | None = None,
                  auth_grace: float | None = None) -> Client:
    """Connect to NATS with logged error/disconnect/reconnect/close callbacks and endless reconnects.

    ``credentials`` (a user and password) are for URLs that carry none (see shared.nats.creds). ``tls``
    None: the context from ``BULWARK_NATS_TLS_*`` (none configured: plaintext unless the URL says tls://).
    A refused login raises NatsAuthRefused (``auth_grace`` seconds of retries first; default 0, or
    TOKEN_AUTH_GRACE for a rotating token); NATS not reachable yet is retried forever, as before.
    """
    if tls is None:
        from shared.config import load_settings

        tls = load_settings().nats_tls_context()
    user = login_user(url, credentials)
    if auth_grace is None:
        auth_grace = TOKEN_AUTH_GRACE if credentials is not None and credentials.refresh is not None else 0.0
    nc = Client()
    connected = False
    deadline = time.monotonic() + auth_grace

    def refresh_password() -> None:
        """A rotating password (a token file) is read again before the client logs in again."""
        if credentials is not None and credentials.refresh is not None:
            try:
                nc.options["password"] = credentials.refresh()
            except Exception as exc:
                log.warning("nats credentials not refreshed", extra={"client": name, "error": str(exc)})

    async def error_cb(exc: Exception) -> None:
        if not connected and is_auth_error(exc) and time.monotonic() >= deadline:
            raise NatsAuthRefused(  # leaves nc.connect's retry loop: see the except below
                f"NATS at {_safe_url(url)} refused the login of {user or 'an anonymous client'!r} "
                f"(authorization violation): give this client its NATS user's credentials "
                f"(a URL with user:password, BULWARK_NATS_USER/BULWARK_NATS_PASSWORD, or the data directory "
                f"of `bulwark up --nats-auth`)")
        log.warning("nats error", extra={"client": name, "error": repr(exc)})
        refresh_password()

    async def disconnected_cb() -> None:
        log.warning("nats disconnected", extra={"client": name})
        refresh_password()

    async def reconnected_cb() -> None:
        log.info("nats reconnected", extra={"client": name})

    async def closed_cb() -> None:
        log.info("nats closed", extra={"client": name})

    options: dict[str, Any] = {"name": name, "connect_timeout": connect_timeout, "max_reconnect_attempts": -1,
                               "reconnect_time_wait": 0.5, "error_cb": error_cb, "disconnected_cb": disconnected_cb,
                               "reconnected_cb": reconnected_cb, "closed_cb": closed_cb}
    if credentials is not None:
        options.update(user=credentials.user, password=credentials.password)
    if tls is not None:
        options["tls"] = tls
    prefix = credentials.inbox_prefix if credentials is not None else (inbox_prefix(user) if user else "")
    if prefix:
        options["inbox_prefix"] = prefix
    try:
        await nc.connect(url, **options)
    except NatsAuthRefused as exc:
        log.error("nats login refused", extra={"client": name, "user": user, "error": str(exc)})
        await _close_quietly(nc)
        raise
    connected = True
    return nc


async def _close_quietly(nc: Client) -> None:
    try:
        await nc.close()
    except Exception as exc:  # a half-open client: nothing more to release
        log.debug("nats close after a refused login", extra={"error": repr(exc)})


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


async def follow(js: JetStreamContext, subject: str, cb: Callable[[Any], Awaitable[None]] | None = None,
                 **kwargs: Any) -> Any:
    """An ordered consumer on ``subject``, as every view that follows a stream uses: the short idle
    heartbeat (``FOLLOW_HEARTBEAT_SECONDS``) included. ``kwargs`` go to ``js.subscribe`` (stream,
    deliver_policy, config)."""
    return await js.subscribe(subject, cb=cb, ordered_consumer=True, idle_heartbeat=FOLLOW_HEARTBEAT_SECONDS,
                              **kwargs)


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


async def replay_stream(js: JetStreamContext, spec: StreamSpec, handle: Callable[[dict[str, Any], int], object],
                        counters: Counters, *, timeout: float = 5.0) -> int:
    """Feed every message of ``spec``'s stream, oldest first, to ``handle(map, seq)``; returns the last seq.

    A message that does not decode (or that ``handle`` refuses with DecodeError) is counted and skipped.
    """
    info = await js.stream_info(spec.name)
    last = int(info.state.last_seq or 0)
    if not last or not info.state.messages:
        return last
    sub = await follow(js, spec.subjects[0], deliver_policy=DeliverPolicy.ALL)
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
