"""The NATS helper against a real nats-server."""
from __future__ import annotations

from shared.codec import pack, unpack
from shared.nats.bus import connect, ensure_streams, request, stream_last_seq
from shared.nats.subjects import POLICIES, POLICY_EVENTS, STREAMS


async def test_streams_are_created_once_and_request_reply_works(nats_server) -> None:
    nc = await connect(nats_server.url, "test")
    try:
        js = nc.jetstream()
        await ensure_streams(js)
        await ensure_streams(js)  # idempotent
        names = {s.config.name for s in await js.streams_info()}
        assert {s.name for s in STREAMS} <= names
        await js.publish(POLICY_EVENTS, pack({"type": "ADDED"}))
        assert await stream_last_seq(js, POLICIES) == 1

        async def echo(msg):
            await msg.respond(pack({"echo": unpack(msg.data)}))

        await nc.subscribe("t.echo", cb=echo)
        assert await request(nc, "t.echo", {"a": 1}) == {"echo": {"a": 1}}
    finally:
        await nc.close()
