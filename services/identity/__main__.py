"""Identity service: launcher registrations, this host, Docker containers and Kubernetes pods, as an
event stream; Kubernetes policy resources are forwarded to the policy service."""
from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client
from nats.aio.msg import Msg

from services.identity.composer import Composer
from services.identity.host import host_workload
from services.identity.kube.policies import PolicySink
from services.identity.kube.provider import kube_configured
from services.identity.providers import Providers
from services.identity.reaper import is_gone
from services.identity.registry import Registry
from services.identity.request_handler import IdentityApi
from services.identity.settings import IdentitySettings, load_identity_settings
from shared.codec import pack, unpack
from shared.errors import DecodeError
from shared.lifecycle import Counters
from shared.nats.bus import replay_stream
from shared.nats.subjects import IDENTITY, IDENTITY_API
from shared.schemas.identity import IdentityEvent
from shared.service import Service, running_service

log = logging.getLogger("bulwark.identity")


async def reap_loop(api: IdentityApi, node: str, stop: asyncio.Event) -> None:
    """Every second, mark this node's launched workloads stopped once their process is gone."""
    while not stop.is_set():
        for wl in api.registry.running(node):
            if is_gone(wl):
                await api.handle({"op": "stop", "id": wl.id})
        try:
            await asyncio.wait_for(stop.wait(), timeout=1.0)
        except TimeoutError:
            pass


async def start_callout(nc: Client, settings: IdentitySettings, counters: Counters) -> None:
    """Answer NATS logins of node agents, which present a Kubernetes ServiceAccount token."""
    from services.identity.kube.callout import AuthCallout
    from services.identity.kube.provider import kube_api_client
    from services.identity.kube.tokenreview import TokenReviewVerifier

    verifier = TokenReviewVerifier(kube_api_client(settings.kubeconfig), settings.nats_callout_audience,
                                   settings.nats_callout_service_account)
    seed = settings.nats_callout_seed.get_secret_value() if settings.nats_callout_seed else ""
    await AuthCallout(seed, verifier, counters, ttl_seconds=settings.nats_callout_ttl_seconds).start(nc)
    log.info("nats auth callout serving node agents", extra={"audience": settings.nats_callout_audience})


async def main() -> None:
    """Wire the identity service and run it until SIGTERM."""
    settings = load_identity_settings()
    async with running_service("identity", settings) as svc:
        await serve(svc, settings)


async def serve(svc: Service, settings: IdentitySettings) -> None:
    """Replay the identity stream, publish this host, serve registrations and run the providers."""
    nc, counters = svc.nc, svc.counters
    registry = Registry()
    await replay_stream(svc.js, IDENTITY, lambda m, seq: registry.apply(IdentityEvent.from_wire(m), seq), counters)
    api = IdentityApi(svc.js, registry, counters)

    host = host_workload(settings.node_name)
    known = registry.get(host.id)
    if known is None or known.stopped_ns or (known.mntns, known.pidns) != (host.mntns, host.pidns):
        await api.publish("started", host)

    async def on_request(msg: Msg) -> None:
        try:
            reply = await api.handle(unpack(msg.data))
        except DecodeError as exc:
            counters.inc("bad_requests")
            reply = {"ok": False, "error": str(exc)}
        except Exception as exc:  # keep serving whatever one request did
            log.exception("identity request failed")
            reply = {"ok": False, "error": f"internal error: {exc}"}
        await msg.respond(pack(reply))

    await nc.subscribe(IDENTITY_API, queue="identity", cb=on_request)
    if settings.nats_callout_seed is not None:
        await start_callout(nc, settings, counters)
    composer = Composer(settings.node_name, registry, settings.docker_namespace, settings.docker_compose_namespace,
                        kube=kube_configured(settings.kubeconfig))
    sink = PolicySink(nc, counters) if kube_configured(settings.kubeconfig) else None
    providers = Providers(settings, api, composer, sink, counters)
    providers.start()
    try:
        svc.heartbeat(lambda: {**counters, **providers.details(), "workloads": len(registry.running())})
        svc.spawn(reap_loop(api, settings.node_name, svc.stop))
        svc.spawn(providers.apply_loop(svc.stop))
        svc.spawn(providers.cri_loop(svc.stop))
        if sink is not None:
            svc.spawn(sink.run(svc.stop))
        log.info("identity ready", extra={"workloads": len(registry.running()), "docker": settings.docker_host,
                                          "kubernetes": kube_configured(settings.kubeconfig)})
        await svc.wait_stopped()
    finally:
        await asyncio.to_thread(providers.stop)


if __name__ == "__main__":
    asyncio.run(main())
