"""Fuzzing the REST policy and query endpoints of the real stack with Hypothesis (issue 14).

Thousands of generated inputs go over HTTP to a real feeder (SQLite, and PostgreSQL for queries),
the real policy service and nats-server (tests/integration/test_input_bounds.py starts them):
policy bodies built from policy-like values, mutated valid policies, YAML with anchors and aliases,
deep nesting and raw text; query strings with known and unknown parameters, numbers of every size,
dates, and cursors made of arbitrary JSON. No answer may be a 5xx or an "internal error", every 4xx
names what is wrong, and the services' memory stays bounded. Examples are derandomized (the same
inputs on every run) and their number fixed, so the test is deterministic and takes a minute or two.
"""
from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.integration.test_input_bounds import POLICY, RestStack, rss_bytes, seed_alerts, start_rest_stack

POLICY_EXAMPLES = int(os.environ.get("BULWARK_FUZZ_POLICY_EXAMPLES", "1500"))
QUERY_EXAMPLES = int(os.environ.get("BULWARK_FUZZ_QUERY_EXAMPLES", "750"))  # per database
RSS_LIMIT = 768 * 2**20  # generous: the services idle at about 60-120 MB
RSS_GROWTH = 256 * 2**20

FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory, pg_cluster: Any) -> Iterator[RestStack]:
    stack = start_rest_stack(tmp_path_factory.mktemp("fuzz"))
    try:
        name = f"fuzz{os.getpid()}"
        pg_cluster.createdb(name)
        stack.add_feeder("postgres", pg_cluster.url_for(name))
        for feeder in stack.feeders.values():
            seed_alerts(feeder.db_url)
        yield stack
    finally:
        stack.stop()


class Memory:
    """RSS of the stack's services when fuzzing started, and the check that it stayed bounded."""

    def __init__(self, stack: RestStack) -> None:
        self.pids = {"policy": stack.policy.pid, **{f"feeder-{k}": f.proc.pid for k, f in stack.feeders.items()}}
        self.start = {name: rss_bytes(pid) for name, pid in self.pids.items()}

    def check(self) -> dict[str, int]:
        now = {name: rss_bytes(pid) for name, pid in self.pids.items()}
        for name, rss in now.items():
            assert rss < RSS_LIMIT and rss < self.start[name] + RSS_GROWTH, (name, self.start[name], rss)
        return now


# ------------------------------------------------------------------------------------- strategies

_WORDS = ["apiVersion", "kind", "metadata", "name", "namespace", "spec", "selector", "matchLabels", "process",
          "file", "network", "capabilities", "syscalls", "matchPaths", "matchDirectories", "matchPatterns",
          "path", "dir", "pattern", "recursive", "fromSource", "action", "severity", "message", "tags",
          "matchProtocols", "protocol", "matchCapabilities", "capability", "nodeSelector", "items", "List",
          "KubeArmorPolicy", "KubeArmorHostPolicy", "KubeArmorClusterPolicy", "Block", "Audit", "Allow",
          "security.kubearmor.com/v1", "/usr/bin/sleep", "/etc/", "demo", "<<", "ownerOnly", "readOnly"]
_YAML_CHARS = "&*!|>-:{}[],#'\"\n\t %@`?~\\ab01/."

scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(_WORDS),
    st.integers(min_value=-(2**70), max_value=2**70), st.integers(min_value=-3, max_value=12),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
    st.text(alphabet=_YAML_CHARS, max_size=20))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5),
    st.dictionaries(st.one_of(st.sampled_from(_WORDS), st.text(max_size=10)), inner, max_size=6)), max_leaves=40)


@st.composite
def policy_like(draw: st.DrawFn) -> dict[str, Any]:
    """A map shaped like a policy, with any of its parts replaced by arbitrary values."""
    doc = yaml.safe_load(POLICY)
    for _ in range(draw(st.integers(0, 4))):
        where = doc
        for key in draw(st.lists(st.sampled_from(_WORDS), min_size=1, max_size=4)):
            nxt = where.get(key) if isinstance(where, dict) else None
            if not isinstance(nxt, dict):
                break
            where = nxt
        if isinstance(where, dict):
            where[draw(st.sampled_from(_WORDS))] = draw(values)
    return doc


def _dump(doc: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(doc, allow_nan=True)
    return yaml.safe_dump(doc, allow_unicode=True)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid policy with a few characters inserted, deleted or replaced."""
    text = POLICY
    for _ in range(draw(st.integers(1, 6))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.one_of(st.text(alphabet=_YAML_CHARS, min_size=1, max_size=6), st.text(min_size=1, max_size=6)))
        if op == "insert":
            text = text[:pos] + piece + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 10)):]
        else:
            text = text[:pos] + piece + text[pos + len(piece):]
    return text


@st.composite
def json_escapes(draw: st.DrawFn) -> str:
    """A policy as JSON with \\uXXXX escapes (lone surrogates among them) put after a quote."""
    text = json.dumps(yaml.safe_load(POLICY))
    pos = draw(st.sampled_from([i + 1 for i, ch in enumerate(text) if ch == '"']))
    escapes = "".join(f"\\u{draw(st.integers(0, 0xFFFF)):04x}" for _ in range(draw(st.integers(1, 3))))
    return text[:pos] + escapes + text[pos:]


@st.composite
def aliases(draw: st.DrawFn) -> str:
    """YAML with anchors referring to earlier ones, a few or many times (bombs among them)."""
    lines = [f"a0: &a0 [{', '.join(['x'] * draw(st.integers(1, 10)))}]"]
    for i in range(1, draw(st.integers(1, 12))):
        refs = [f"*a{draw(st.integers(0, i - 1))}" for _ in range(draw(st.integers(1, 12)))]
        style = draw(st.sampled_from(["flow", "merge", "self"]))
        if style == "flow":
            lines.append(f"a{i}: &a{i} [{', '.join(refs)}]")
        elif style == "merge":
            lines.append(f"a{i}: &a{i} {{<<: {refs[0]}, k{i}: {refs[-1]}}}")
        else:
            lines.append(f"a{i}: &a{i} [{refs[0]}, *a{i}]")  # refers to itself
    return "\n".join(lines) + "\n"


@st.composite
def deep(draw: st.DrawFn) -> str:
    depth = draw(st.integers(1, 300))
    kind = draw(st.sampled_from(["json-list", "json-map", "yaml-flow", "yaml-block"]))
    if kind == "json-list":
        return "[" * depth + "]" * depth
    if kind == "json-map":
        return '{"a": ' * depth + "1" + "}" * depth
    if kind == "yaml-flow":
        return "a: " + "[" * depth + "]" * depth + "\n"
    return "".join("  " * i + f"k{i}:\n" for i in range(depth)) + "  " * depth + "v: 1\n"


policy_bodies = st.one_of(
    st.builds(_dump, policy_like(), st.booleans()),
    st.builds(_dump, values, st.booleans()),
    mutated(), json_escapes(), aliases(), deep(),
    st.text(alphabet=_YAML_CHARS, max_size=200), st.text(max_size=200),
    st.binary(max_size=200),
    st.lists(st.builds(_dump, policy_like(), st.just(False)), min_size=2, max_size=5).map("---\n".join))


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value, allow_nan=True).encode()).decode().rstrip("=")


_PARAMS = ["namespace", "pod", "container", "host", "policy", "operation", "action", "severity", "type", "result",
           "source", "resource", "q", "since", "until", "throttled", "cursor", "limit", "by"]
numbers = st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.floats(allow_nan=True, allow_infinity=True))
param_values = st.one_of(
    st.text(max_size=30), st.sampled_from(["", "true", "false", "maybe", "0", "1", "demo", "Block,Audit", "inf",
                                           "-inf", "nan", "1e300", "9999-12-31T23:59:59Z", "0001-01-01"]),
    numbers.map(str), st.datetimes().map(lambda d: d.isoformat() + "Z"),
    st.builds(_cursor, st.one_of(st.lists(numbers, max_size=3), values)),
    st.text(alphabet="ABCDEFabcdef0123456789-_=", max_size=60))
query_params = st.lists(st.tuples(st.one_of(st.sampled_from(_PARAMS), st.text(max_size=8)), param_values),
                        max_size=6)
routes = st.sampled_from(["/api/v1/alerts", "/api/v1/logs", "/api/v1/alerts/summary", "/api/v1/logs/summary"])


# ------------------------------------------------------------------------------------------ tests


def _assert_answer(resp: httpx.Response, allowed: tuple[int, ...], what: Any) -> None:
    assert resp.status_code in allowed, (what, resp.status_code, resp.text[:500])
    assert "internal error" not in resp.text.lower(), (what, resp.text[:500])
    if resp.status_code in (413, 422) and "errors" in resp.text:
        for err in resp.json()["errors"]:
            assert isinstance(err["message"], str) and err["message"], (what, err)


def test_policy_endpoint_never_fails_with_5xx(fuzz_stack: RestStack) -> None:
    feeder = fuzz_stack.feeders["sqlite"]
    memory = Memory(fuzz_stack)
    with httpx.Client(base_url=feeder.base, timeout=30) as http:
        @settings(FUZZ, max_examples=POLICY_EXAMPLES)
        @given(body=policy_bodies)
        def one(body: str | bytes) -> None:
            resp = http.post("/api/v1/policies", content=body, headers={"Content-Type": "application/yaml"})
            _assert_answer(resp, (200, 413, 422), body if len(body) < 300 else body[:300])

        one()
        assert http.post("/api/v1/policies", content=POLICY).status_code == 200
    print("policy fuzz RSS (MB):", {k: v // 2**20 for k, v in memory.check().items()})
    assert fuzz_stack.policy.poll() is None and feeder.proc.poll() is None, fuzz_stack.logs()


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
def test_query_endpoints_never_fail_with_5xx(fuzz_stack: RestStack, db: str) -> None:
    feeder = fuzz_stack.feeders[db]
    memory = Memory(fuzz_stack)
    with httpx.Client(base_url=feeder.base, timeout=30) as http:
        @settings(FUZZ, max_examples=QUERY_EXAMPLES)
        @given(route=routes, params=query_params)
        def one(route: str, params: list[tuple[str, str]]) -> None:
            resp = http.get(route, params=params)
            _assert_answer(resp, (200, 422), (route, params))
            if resp.status_code == 422:
                detail = resp.json()["detail"]
                named = json.dumps(detail) if not isinstance(detail, str) else detail
                assert any(name[:40] in named or repr(name[:40]) in named for name, _v in params), \
                    (route, params, detail)

        one()
        assert len(http.get("/api/v1/alerts", params={"limit": 100}).json()) == 30
    print(f"query fuzz ({db}) RSS (MB):", {k: v // 2**20 for k, v in memory.check().items()})
    assert feeder.proc.poll() is None, fuzz_stack.logs()

