"""The NATS users rendered for Compose, against a real nats-server started the way docker-compose.yml
starts it, with credentials read the way the services read them (Kubernetes: test_nats_callout.py).

Docker Compose's own env-file handling is covered by the Compose end-to-end test in tests/compose.
"""
from __future__ import annotations

from pathlib import Path

from bulwark.natsserver.config import create_streams
from bulwark.natsserver.deploy import render_compose
from bulwark.natsserver.process import free_port
from bulwark.procs import terminate
from shared.config import Settings
from shared.nats.creds import NatsCredentials, credentials_for
from shared.nats.subjects import POLICY_EVENTS, raw_events
from tests.natsperm import anonymous_refused, env_file_credentials, probe, publish_ok, start_nats


async def test_compose_users_from_env_files(tmp_path: Path) -> None:
    auth = tmp_path / "auth"
    render_compose(auth, "compose-a")
    assert oct(auth.stat().st_mode & 0o777) == "0o700"
    assert all(oct(p.stat().st_mode & 0o777) == "0o600" for p in auth.glob("*.env"))
    port = free_port()
    url = f"nats://127.0.0.1:{port}"
    # The nats service's command in docker-compose.yml, with this test's paths and port.
    proc = start_nats(["-c", str(auth / "nats-auth.conf"), "-js", "-sd", str(tmp_path / "js"), "-a", "127.0.0.1",
                   "-p", str(port)], port, tmp_path / "nats.log")
    try:
        def creds(role: str) -> NatsCredentials | None:
            env = env_file_credentials(auth / f"{role}.env")
            settings = Settings(nats_url=url, node_name="compose-a", nats_user=env.user, nats_password=env.password)
            return credentials_for(settings, role)

        await create_streams(url, creds("admin"))
        assert await publish_ok(url, raw_events("compose-a"), creds("monitor"))
        assert await publish_ok(url, raw_events("compose-a"), creds("enforcer"))
        assert not await publish_ok(url, raw_events("compose-b"), creds("monitor"))
        assert not await publish_ok(url, raw_events("compose-a"), creds("feeder"))
        assert await publish_ok(url, POLICY_EVENTS, creds("policy"))
        assert await anonymous_refused(url)
        spy = await probe(url, creds=creds("monitor"))  # replies to others are private (issue 14 item 10)
        try:
            for inbox in ("_INBOX.>", "_INBOX_feeder.>"):
                await spy.nc.subscribe(inbox)
                await spy.violation(inbox)
        finally:
            await spy.close()
    finally:
        terminate(proc, grace=5)
