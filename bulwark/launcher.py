"""``bulwark run``: a local workload registered with identity and covered by the enforcer before it starts."""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import time

from bulwark.cgroups import create_workload_cgroup, remove_cgroup
from bulwark.sandbox import GATE_REFUSED, Sandbox, start_sandbox
from shared.config import Settings
from shared.errors import BulwarkError
from shared.nats.bus import connect, request
from shared.nats.creds import credentials_for
from shared.nats.subjects import IDENTITY_API, enforcer_await
from shared.schemas.identity import Workload

__all__ = ["run_workload", "LaunchError", "apparmor_profile"]

log = logging.getLogger("bulwark.launcher")


class LaunchError(BulwarkError):
    """The workload could not be registered or covered; its command was not started."""


def apparmor_profile(covered: dict, workload_id: str) -> str:
    """The AppArmor profile the command must start under: the workload's own when the enforcer's reply
    names AppArmor among the enforcers acting on this node ("" otherwise). The enforcer answers only
    after it applied a rule set covering the workload, and AppArmor's apply loads the profile first."""
    named = covered.get("apparmor_profile")
    if isinstance(named, str) and named:
        return named
    enforcers = covered.get("enforcers") or {}
    names = {str(v) for v in enforcers.values()} if isinstance(enforcers, dict) else set()
    if "AppArmor" not in names and covered.get("enforcer") != "AppArmor":
        return ""
    from services.enforcer.apparmor.profiles import profile_name

    return profile_name(workload_id)


def _landlock_spec(covered: dict) -> bytes:
    """The Landlock spec for the workload's compiled rules from the enforcer's await reply."""
    from services.enforcer.landlock import encode, spec_for
    from shared.schemas.rules import Rule

    rules = [Rule.from_wire(r) for r in covered.get("rules") or []]
    return encode(spec_for(rules, str(covered.get("file_posture", "audit")), bool(covered.get("audited"))))


async def _register_and_cover(settings: Settings, wl: Workload, enforce_timeout: float) -> dict:
    nc = await connect(settings.nats_url, "bulwark-run", credentials=credentials_for(settings, "launcher"))
    try:
        reply = await request(nc, IDENTITY_API, {"op": "register", "workload": wl.to_wire()})
        if not reply.get("ok"):
            raise LaunchError(f"identity refused the workload: {reply.get('error')}")
        covered = await request(nc, enforcer_await(settings.node_name),
                                {"workload_id": wl.id, "timeout": enforce_timeout}, timeout=enforce_timeout + 2)
        if not covered.get("ok"):
            raise LaunchError(f"enforcer did not confirm rules for the workload: {covered.get('reason')}")
        return covered
    finally:
        await nc.close()


async def _stop(settings: Settings, workload_id: str) -> None:
    try:
        nc = await connect(settings.nats_url, "bulwark-run", connect_timeout=2,
                           credentials=credentials_for(settings, "launcher"))
        try:
            await request(nc, IDENTITY_API, {"op": "stop", "id": workload_id}, timeout=2)
        finally:
            await nc.close()
    except Exception as exc:  # identity's reaper notices the exit anyway
        log.debug("stop not reported", extra={"error": str(exc)})


def _forward_signals(sandbox: Sandbox) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sandbox.signal(signum))


def run_workload(settings: Settings, argv: list[str], namespace: str, labels: dict[str, str],
                 name: str | None = None, image: str = "", enforce_timeout: float = 10.0) -> int:
    """Run ``argv`` as a workload; returns its exit status (GATE_REFUSED if it could not be covered)."""
    workload_id = secrets.token_hex(32)
    name = name or f"{os.path.basename(argv[0])}-{workload_id[:8]}"
    sandbox = start_sandbox(argv, hostname=name)
    cgroup_path = ""
    try:
        cgroup_path, _cgroup_id = create_workload_cgroup(workload_id, sandbox.init_pid)
        wl = Workload(
            id=workload_id, name=name, namespace=namespace, kind="container", node=settings.node_name,
            mntns=os.stat(f"/proc/{sandbox.init_pid}/ns/mnt").st_ino,
            pidns=os.stat(f"/proc/{sandbox.init_pid}/ns/pid").st_ino,
            labels=dict(labels), pod=name, image=image or "local", cgroup=cgroup_path,
            host_pid=sandbox.init_pid, source="launcher", started_ns=time.time_ns(),
        )
        covered = asyncio.run(_register_and_cover(settings, wl, enforce_timeout))
        landlock = _landlock_spec(covered)
        profile = apparmor_profile(covered, workload_id)
    except BaseException as exc:
        sandbox.refuse()
        sandbox.wait()
        remove_cgroup(cgroup_path)
        if isinstance(exc, (BulwarkError, OSError)):
            sys.stderr.write(f"bulwark run: {exc}\n")
            return GATE_REFUSED
        raise
    _forward_signals(sandbox)
    sandbox.open_gate(landlock, apparmor=profile)
    status = sandbox.wait()
    asyncio.run(_stop(settings, workload_id))
    remove_cgroup(cgroup_path)
    return status
