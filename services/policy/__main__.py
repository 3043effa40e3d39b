"""Policy service: replay the policy log and the identity stream, serve POLICY_API, publish RuleSets."""
from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.js.api import ConsumerConfig, DeliverPolicy

from services.policy.posture import posture_from_settings
from services.policy.request_handler import PolicyApi, error_reply
from services.policy.rulesets import RulePublisher
from services.policy.schema import load_crd_schemas
from services.policy.store import PolicyStore, Workloads
from shared.codec import pack, unpack, unpack_map
from shared.config import Settings, load_settings
from shared.errors import DecodeError
from shared.lifecycle import sleep_until
from shared.nats.bus import follow, replay_stream
from shared.nats.subjects import IDENTITY, POLICIES, POLICY_API
from shared.schemas.identity import IdentityEvent
from shared.service import Service, running_service

log = logging.getLogger("bulwark.policy")


async def main() -> None:
    """Wire the policy service and run it until SIGTERM."""
    settings = load_settings()
    load_crd_schemas()  # fail early if the CRDs we ship are missing
    async with running_service("policy", settings) as svc:
        await serve(svc, settings)


async def serve(svc: Service, settings: Settings) -> None:
    """Replay the policy log and the identity stream, then serve requests and publish rules until stopped."""
    js, nc, counters, stop = svc.js, svc.nc, svc.counters, svc.stop
    store, workloads = PolicyStore(), Workloads(settings.stopped_grace_seconds)
    publisher = RulePublisher(js, store, workloads, counters, posture_from_settings(settings))

    await replay_stream(js, POLICIES, store.apply, counters)
    last_identity = await replay_stream(
        js, IDENTITY, lambda m, seq: workloads.apply(IdentityEvent.from_wire(m), seq), counters)
    log.info("state replayed", extra={"policies": len(store.items), "policy_seq": store.last_seq,
                                      "identity_seq": workloads.last_seq, "nodes": len(workloads.by_node)})
    await publisher.publish_all()
    api = PolicyApi(js, store, workloads, publisher, counters)

    async def on_identity(msg: Any) -> None:
        seq = msg.metadata.sequence.stream
        try:
            node = workloads.apply(IdentityEvent.from_wire(unpack_map(msg.data)), seq)
        except DecodeError as exc:
            counters.inc("decode_errors")
            log.warning("bad identity event", extra={"seq": seq, "error": str(exc)})
            return
        counters.inc("identity_events")
        changed.add(node)
        wake.set()

    # Identity events only mark their node; one task recompiles and publishes the marked nodes, so a
    # burst (a node's 5,000 workloads at start) costs one compile per node, not one per event (each
    # compile covers every workload of the node: per event, the burst was quadratic). The same task
    # drops stopped workloads once their grace is over, at least every ``interval`` s.
    changed: set[str] = set()
    wake = asyncio.Event()

    async def publish_changed() -> None:
        interval = max(0.2, min(5.0, settings.stopped_grace_seconds / 2))
        while not stop.is_set():
            await sleep_until(interval, stop, wake)
            changed.update(workloads.expire())
            nodes = sorted(changed)
            changed.clear()
            for node in nodes:
                try:
                    async with api.lock:
                        await publisher.publish_node(node)
                except Exception:
                    counters.inc("publish_errors")
                    log.exception("publishing rules failed", extra={"node": node})

    async def on_request(msg: Any) -> None:
        try:
            reply = await api.handle(unpack(msg.data))
        except DecodeError as exc:
            counters.inc("bad_requests")
            reply = error_reply(str(exc))
        except Exception as exc:  # keep serving whatever one request did
            counters.inc("request_errors")
            log.exception("request failed")
            reply = error_reply(f"internal error: {exc!r}")
        if msg.reply:
            await msg.respond(pack(reply))

    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last_identity + 1)
    identity_sub = await follow(js, IDENTITY.subjects[0], on_identity, config=config)
    api_sub = await nc.subscribe(POLICY_API, cb=on_request)

    svc.spawn(publish_changed(), name="publish")
    svc.heartbeat(lambda: {**counters, "policies": len(store.items), "policy_seq": store.last_seq,
                           "identity_seq": workloads.last_seq})
    log.info("policy service ready", extra={"subject": POLICY_API})
    try:
        await svc.wait_stopped()
    finally:
        await api_sub.unsubscribe()
        await identity_sub.unsubscribe()


if __name__ == "__main__":
    asyncio.run(main())
