"""Bounded input on the real stack (issue 14, items 2, 7, 8, 9 and 11b).

A real nats-server, the policy service and the feeder (SQLite, and a second feeder on the session's
PostgreSQL 15 cluster) run as processes; requests go over HTTP and NATS as a hostile client's would.
Each test names the defect it guards: a YAML alias bomb, bodies of 10 MB and 100 MB, names with a
trailing newline, duplicate keys, a policy without rules, out-of-range query parameters and cursors,
unknown parameters, a 100k-deep JSON body. ``bulwark policy validate`` must say what the service says.
"""
from __future__ import annotations

import base64
import json
import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bulwark.natsserver.process import free_port, wait_for_port
from bulwark.procs import terminate
from services.feeder.store.database import RecordStore, make_engine
from shared.nats.bus import connect, request
from shared.nats.subjects import POLICY_API
from tests.conftest import NatsServer
from tests.servicetools import service_log, start_service

NODE = "bounds-node"
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

POLICY = """\
apiVersion: security.kubearmor.com/v1
kind: KubeArmorPolicy
metadata:
  name: block-sleep
  namespace: demo
spec:
  selector:
    matchLabels: {app: demo}
  process:
    matchPaths:
    - path: /usr/bin/sleep
  action: Block
"""
# Ten anchors of ten aliases each: 10^9 values once expanded, in about 400 bytes.
BOMB = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(9))


def rss_bytes(pid: int) -> int:
    """Resident memory of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@dataclass
class Feeder:
    """One feeder process and its REST base URL."""

    proc: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    db_url: str

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class RestStack:
    """nats-server + policy service + feeders, for tests that attack the REST API."""

    root: Path
    nats: NatsServer
    policy: subprocess.Popen[bytes]
    feeders: dict[str, Feeder] = field(default_factory=dict)

    def add_feeder(self, name: str, db_url: str) -> Feeder:
        """Start a feeder on ``db_url`` and wait until its REST API reaches the policy service."""
        port, data = free_port(), self.root / f"feeder-{name}"
        proc = start_service("feeder", self.nats.url, data, node=f"{NODE}-{name}", BULWARK_REST_PORT=str(port),
                             BULWARK_GRPC_PORT=str(free_port()), BULWARK_DB_URL=db_url)
        feeder = Feeder(proc, port, data, db_url)
        self.feeders[name] = feeder
        wait_for_port(port, 60)
        for _ in range(200):
            if httpx.get(f"{feeder.base}/api/v1/policies", timeout=10).status_code == 200:
                return feeder
            assert proc.poll() is None, service_log(data, "feeder")
        raise AssertionError("the feeder never reached the policy service: " + service_log(data, "feeder"))

    def stop(self) -> None:
        for feeder in self.feeders.values():
            terminate(feeder.proc, grace=10)
        terminate(self.policy, grace=10)
        self.nats.stop()

    def logs(self) -> str:
        """The services' logs, for assertion messages."""
        parts = [service_log(self.root / "policy", "policy")]
        parts += [service_log(f.data_dir, "feeder") for f in self.feeders.values()]
        return "\n".join(parts)


def start_rest_stack(root: Path) -> RestStack:
    """nats-server, the policy service and a SQLite feeder, ready for requests."""
    nats = NatsServer(free_port(), root / "jetstream")
    nats.start()
    policy = start_service("policy", nats.url, root / "policy", node=NODE)
    stack = RestStack(root, nats, policy)
    try:
        stack.add_feeder("sqlite", f"sqlite:///{root / 'bulwark.db'}")
    except BaseException:
        stack.stop()
        raise
    return stack


def seed_alerts(db_url: str, count: int = 30) -> None:
    """A few stored alerts (recent: retention keeps them) so that pages and cursors have rows to walk."""
    now = int(time.time()) - count
    engine = make_engine(db_url, migrate=False)
    try:
        RecordStore(engine).insert([{
            "EventID": f"seed-{i}", "Timestamp": now + i, "UpdatedTime": "",
            "NamespaceName": "demo", "PodName": "web-0", "ContainerName": "web", "HostName": NODE,
            "PolicyName": "p1", "Operation": "Process", "Action": "Block", "Severity": "5", "Type": "MatchedPolicy",
            "Result": "Permission denied", "Source": "/usr/bin/bash", "Resource": f"/usr/bin/tool{i}"}
            for i in range(count)])
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestStack]:
    s = start_rest_stack(tmp_path_factory.mktemp("bounds"))
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def feeders(stack: RestStack, pg_cluster: Any) -> dict[str, Feeder]:
    """The SQLite feeder and a PostgreSQL one, each with seeded alerts."""
    name = f"bounds{os.getpid()}"
    pg_cluster.createdb(name)
    stack.add_feeder("postgres", pg_cluster.url_for(name))
    for feeder in stack.feeders.values():
        seed_alerts(feeder.db_url)
    return stack.feeders


def apply(feeder: Feeder, text: str | bytes) -> httpx.Response:
    return httpx.post(f"{feeder.base}/api/v1/policies", content=text, timeout=30,
                      headers={"Content-Type": "application/yaml"})


def errors_of(resp: httpx.Response) -> list[tuple[str, str]]:
    """(path, message) of each error in a 4xx policy reply."""
    return [(e["path"], e["message"]) for e in resp.json()["errors"]]


def stored_names(feeder: Feeder) -> set[str]:
    return {p["name"] for p in httpx.get(f"{feeder.base}/api/v1/policies", timeout=10).json()["policies"]}


# ------------------------------------------------------------------------------------------ item 2


async def test_yaml_alias_bomb_is_refused_without_expanding_it(stack: RestStack) -> None:
    feeder = stack.feeders["sqlite"]
    before = rss_bytes(stack.policy.pid)
    resp = apply(feeder, BOMB)
    assert resp.status_code == 422, resp.text
    (path, message), = errors_of(resp)
    assert "too many values" in message and "aliases expanded" in message, message
    assert path.startswith("f"), path  # the first anchor whose expansion passes the limit
    # the same reader answers on NATS (the policy API any client may call)
    nc = await connect(stack.nats.url, "bounds-test")
    try:
        reply = await request(nc, POLICY_API, {"op": "apply", "text": BOMB}, timeout=10)
        recursive = await request(nc, POLICY_API, {"op": "apply", "text": "a: &x [*x]\n"}, timeout=10)
    finally:
        await nc.close()
    assert not reply["ok"] and "too many values" in reply["errors"][0]["message"], reply
    assert "recursive" in recursive["errors"][0]["message"], recursive
    after = rss_bytes(stack.policy.pid)
    print(f"policy service RSS around the bomb: {before / 2**20:.0f} MB -> {after / 2**20:.0f} MB")
    assert after < before + 64 * 2**20, stack.logs()
    assert apply(feeder, POLICY).status_code == 200  # and the service still serves everyone


# ------------------------------------------------------------------------------------------ item 7


def raw_post(port: int, headers: list[str], body_chunks: Iterable[bytes] = ()) -> tuple[int, str]:
    """POST over a plain socket (so the client never insists on sending the whole body first).

    Returns (status, body text); status 0 when the server closed without an answer.
    """
    head = "POST /api/v1/policies HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/yaml\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall((head + "".join(h + "\r\n" for h in headers) + "\r\n").encode())
        for chunk in body_chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the server answered already: stop sending
            try:
                sock.sendall(chunk)
            except OSError:  # reset, broken pipe, or the server stopped reading
                break
        data = b""
        try:
            while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
                got = sock.recv(65536)
                if not got:
                    break
                data += got
        except OSError:
            pass
    if not data.startswith(b"HTTP/1.1 "):
        return 0, ""
    return int(data[9:12]), data.partition(b"\r\n\r\n")[2].decode(errors="replace")


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def test_oversized_bodies_get_413_before_they_are_read(stack: RestStack) -> None:
    feeder = stack.feeders["sqlite"]
    # 10 MB, sent whole by an ordinary client: 413, not the 500 MaxPayloadError it used to be
    resp = apply(feeder, POLICY + "#" + "x" * (10 * 2**20) + "\n")
    assert resp.status_code == 413, resp.text
    assert resp.json()["errors"][0]["path"] == "body" and "at most" in resp.json()["errors"][0]["message"]
    # 100 MB announced: answered from the headers alone, nothing of the body is waited for
    status, body = raw_post(feeder.port, ["Content-Length: 100000000"])
    assert status == 413, body
    assert "100000000 bytes" in body
    # no Content-Length (chunked): read up to the limit, then 413
    chunk = b"#" + b"x" * 65533 + b"\n"
    status, body = raw_post(feeder.port, ["Transfer-Encoding: chunked"],
                            (b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(17)))
    assert status == 413, body
    # 100 MB actually sent: the feeder refuses it without holding it
    before = rss_bytes(feeder.proc.pid)
    raw_post(feeder.port, ["Content-Length: 104857600"], (b"x" * 2**20 for _ in range(100)))
    after = rss_bytes(feeder.proc.pid)
    print(f"feeder RSS around a 100 MB body: {before / 2**20:.0f} MB -> {after / 2**20:.0f} MB")
    assert after < before + 32 * 2**20
    # just under the limit is read and judged
    padded = POLICY.replace("block-sleep", "padded") + ("#" + "x" * 1000 + "\n") * 1000
    assert 10**6 < len(padded) < 2**20 - 1024
    resp = apply(feeder, padded)
    assert resp.status_code == 200, resp.text[:2000]
    assert "padded" in stored_names(feeder)


async def test_body_limit_is_a_setting_and_never_more_than_the_bus_carries(stack: RestStack) -> None:
    from services.feeder.http.app import FeederDeps, create_app
    from services.feeder.hub import AlertHub
    from services.feeder.views import FeederState

    nc = await connect(stack.nats.url, "bounds-app")
    engine = make_engine(stack.feeders["sqlite"].db_url, migrate=False)
    try:
        assert FeederDeps(FeederState(), RecordStore(engine), AlertHub(), nc).body_limit() < nc.max_payload
        app = create_app(FeederDeps(FeederState(), RecordStore(engine), AlertHub(), nc, max_body_bytes=4096))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            too_big = await http.post("/api/v1/policies", content=POLICY + "#" * 4096)
            fits = await http.post("/api/v1/policies", content=POLICY.replace("block-sleep", "small"))
            not_utf8 = await http.post("/api/v1/policies", content=POLICY.encode() + b"# \xff\xfe\n")
    finally:
        engine.dispose()
        await nc.close()
    assert too_big.status_code == 413 and "at most 4096" in too_big.text
    assert fits.status_code == 200, fits.text
    assert not_utf8.status_code == 422 and "not UTF-8" in not_utf8.text


# ------------------------------------------------------------------------------------------ item 8


def cli_validate(tmp_path: Path, text: str) -> list[str]:
    """``bulwark policy validate`` on ``text``: its INVALID lines as 'path: message'."""
    f = tmp_path / "p.yaml"
    f.write_text(text)
    out = subprocess.run([str(BIN / "bulwark"), "policy", "validate", str(f)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    return [line.split(": ", 1)[1] for line in out.stdout.splitlines() if line.startswith("INVALID")]


@pytest.mark.parametrize("case, text, path, words", [
    ("name with a newline", POLICY.replace("name: block-sleep", 'name: "abc\\n"'), "metadata.name",
     "DNS-1123 subdomain"),
    ("namespace with a newline", POLICY.replace("namespace: demo", 'namespace: "demo\\n"'), "metadata.namespace",
     "DNS-1123 label"),
    ("duplicate action", POLICY.replace("action: Block", "action: Block\n  action: Audit"), "spec.action",
     "duplicate key 'action' (line 13; first at line 12)"),
    ("second spec", POLICY + "spec: {}\n", "spec", "duplicate key 'spec'"),
    ("duplicate JSON key", json.dumps({"apiVersion": "security.kubearmor.com/v1", "kind": "KubeArmorPolicy",
                                       "metadata": {"name": "j", "namespace": "demo"}, "spec": {}})[:-1]
     + ', "spec": {"process": {"matchPaths": [{"path": "/bin/ls"}]}}}', "spec", "duplicate key 'spec'"),
    ("empty spec", POLICY.split("spec:")[0] + "spec: {}\n", "spec", "declares no rule"),
    ("no spec", POLICY.split("spec:")[0], "spec", "declares no rule"),
])
def test_strict_names_keys_and_rules_in_the_service_and_the_cli(stack: RestStack, tmp_path: Path, case: str,
                                                                 text: str, path: str, words: str) -> None:
    feeder = stack.feeders["sqlite"]
    resp = apply(feeder, text)
    assert resp.status_code == 422, (case, resp.text)
    errors = errors_of(resp)
    assert any(p == path and words in m for p, m in errors), (case, errors)
    assert "abc\n" not in stored_names(feeder) and "j" not in stored_names(feeder)
    assert cli_validate(tmp_path, text) == [f"{p or '(document)'}: {m}" for p, m in errors], case


# ------------------------------------------------------------------------------------------ item 9

HUGE = 10 ** 30
BAD_QUERIES: list[tuple[dict[str, str], str]] = [
    *[({name: value}, name) for name in ("since", "until") for value in (
        "inf", "-inf", "nan", "1e300", "1e12", "-1e12", "-1", "9999-12-31T23:59:59Z", "0001-01-01",
        "0001-01-01T00:00:00+01:00", "yesterday")],
    *[({"cursor": base64.urlsafe_b64encode(json.dumps(c).encode()).decode().rstrip("=")}, "cursor") for c in (
        [HUGE, 1], [1, HUGE], [-HUGE, 1], [1, -1], [1.5, 2], [True, 1], [1e400, 1], [1, 2, 3], {"a": 1}, "x")],
    ({"cursor": "A" * 5000}, "cursor"),
    ({"throttled": "maybe"}, "throttled"),
    ({"nmespace": "demo"}, "nmespace"),
    ({"namespace": "demo", "token": "x"}, "token"),
    ({"limit": "0"}, "limit"),
    ({"limit": str(HUGE)}, "limit"),
    ({"namespace": "a\x00b"}, "namespace"),
    ({"q": "x" * 2000}, "q"),
    ({"severity": ",".join(["1"] * 100)}, "severity"),
]


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_query_parameters_out_of_range_are_422_naming_them(feeders: dict[str, Feeder], db: str) -> None:
    feeder = feeders[db]
    with httpx.Client(base_url=feeder.base, timeout=30) as http:
        for route in ("/api/v1/alerts", "/api/v1/logs", "/api/v1/alerts/summary"):
            for params, name in BAD_QUERIES:
                resp = http.get(route, params=params)
                assert resp.status_code == 422, (route, params, resp.status_code, resp.text)
                assert name in resp.text, (route, params, resp.text)
        repeated = http.get("/api/v1/alerts", params=[("namespace", "a"), ("namespace", "b")])
        assert repeated.status_code == 422 and "more than once" in repeated.text
        # what is in range still works: a full walk by cursor, times at both ends of the range
        seen, params = [], {"limit": "7", "since": "0", "until": "2262-04-11T23:47:16Z", "throttled": "false"}
        while True:
            resp = http.get("/api/v1/alerts", params=params)
            assert resp.status_code == 200, resp.text
            seen += [a["EventID"] for a in resp.json()]
            if "x-next-cursor" not in resp.headers:
                break
            params = {**params, "cursor": resp.headers["x-next-cursor"]}
        assert seen == [f"seed-{i}" for i in range(29, -1, -1)]
        summary = http.get("/api/v1/alerts/summary", params={"by": "namespace", "since": "1e-9"})
        assert summary.status_code == 200 and summary.json()["total"] == 30, summary.text
    assert feeder.proc.poll() is None


# ----------------------------------------------------------------------------------------- item 11b


@pytest.mark.parametrize("text, path_prefix", [
    ('{"spec": ' * 100_000 + "{}" + "}" * 100_000, "spec.spec.spec"),
    ("[" * 100_000 + "]" * 100_000, "[0][0][0]"),
    ("- " * 100 + "x\n", "[0][0][0]"),
    ("spec:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)) + "  " * 200 + "v: 1\n", "spec.k1.k2"),
])
def test_deep_documents_are_422_with_the_path_where_they_got_too_deep(stack: RestStack, text: str,
                                                                      path_prefix: str) -> None:
    resp = apply(stack.feeders["sqlite"], text)
    assert resp.status_code == 422, resp.text[:500]
    (path, message), = errors_of(resp)
    assert path.startswith(path_prefix) and "nested deeper than 64 levels" in message, (path[:80], message)
    assert "internal error" not in resp.text and "RecursionError" not in resp.text
