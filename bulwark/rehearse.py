"""Rehearsal on history (``bulwark policy simulate --history``): replay stored logs and alerts through a
candidate policy set plus the applied policies it does not replace, and report what changes.

The engine is :mod:`shared.rehearsal` (the feeder's ``POST /api/v1/policies/rehearse`` uses it too);
here are the command's parts: records streamed from the store (``--db-url``, in id order) or from the
REST API page by page, the applied policies read over REST, and the policies compiled locally with the
policy service's compiler.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from services.feeder.store.scan import store_records
from services.policy.compiler import compile_rules
from services.policy.model import Policy
from shared.matcher import DEFAULT_POSTURE, Posture
from shared.rehearsal import (
    CHANGES,
    Replay,
    RulesFor,
    record_access,
    record_workload,
    selected,
    workload_key,
)
from shared.schemas.identity import Workload
from shared.schemas.rules import WorkloadRules

__all__ = ["CHANGES", "record_access", "record_workload", "workload_key", "selected", "store_records",
           "rest_records", "parse_window", "merge_policies", "compiler_for", "Rehearsal", "rehearse",
           "run_rehearse", "applied_policies"]

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_window(text: str, now: float | None = None) -> int:
    """``24h``/``30m``/``7d`` before now, epoch seconds or RFC3339 -> ns; ValueError otherwise."""
    from services.feeder.store.query import parse_since

    found = _DURATION.match(text.strip())
    if found:
        now = time.time() if now is None else now
        return int((now - float(found.group(1)) * _UNITS[found.group(2)]) * 1e9)
    return parse_since(text)


# -- sources --------------------------------------------------------------------------------------
def rest_records(http: Any, path: str, params: dict[str, Any], page: int = 5000) -> Iterator[dict[str, Any]]:
    """Every record a REST listing (``/api/v1/logs`` or ``/api/v1/alerts``) returns, page by page (newest first)."""
    params = {**params, "limit": page}
    while True:
        resp = http.get(path, params=params)
        if resp.status_code >= 400:
            raise RuntimeError(f"GET {path}: HTTP {resp.status_code}: {resp.text[:200]}")
        rows = resp.json()
        yield from rows
        cursor = resp.headers.get("x-next-cursor")
        if not cursor or not rows:
            return
        params = {**params, "cursor": cursor}


# -- policies -------------------------------------------------------------------------------------
def merge_policies(applied: list[Policy], candidate: list[Policy]) -> list[Policy]:
    """The applied policies the candidate does not replace (same key), then the candidate's."""
    keys = {p.key for p in candidate}
    return [p for p in applied if p.key not in keys] + list(candidate)


def applied_policies(listing: list[dict[str, Any]]) -> list[Policy]:
    """The applied policies of a ``GET /api/v1/policies`` listing (invalid ones skipped)."""
    from services.policy.model import to_policy
    from services.policy.validate import admit

    out = []
    for p in listing:
        if p.get("status") != "applied":
            continue
        meta = {"name": p["name"], **({"namespace": p["namespace"]} if p.get("namespace") else {})}
        doc = {"apiVersion": "security.kubearmor.com/v1", "kind": p["kind"], "metadata": meta,
               "spec": p.get("spec", {})}
        out.append(to_policy(admit(doc, f"applied {p['kind']}/{p['name']}").doc))
    return out


# -- the replay, compiled here ---------------------------------------------------------------------
def compiler_for(policies: list[Policy], posture: Posture = DEFAULT_POSTURE) -> RulesFor:
    """Compiles a workload's rules from ``policies`` with the policy service's compiler."""
    def rules_for(wl: Workload) -> WorkloadRules:
        return compile_rules(policies, [wl], "rehearse", default_posture=posture).workloads[wl.id]
    return rules_for


class Rehearsal(Replay):
    """A :class:`shared.rehearsal.Replay` judging against ``policies`` compiled here."""

    def __init__(self, policies: list[Policy], posture: Posture = DEFAULT_POSTURE, max_groups: int = 1000,
                 cache_size: int = 200_000) -> None:
        super().__init__(compiler_for(policies, posture), max_groups=max_groups, cache_size=cache_size)


def rehearse(records: Iterable[dict[str, Any]], policies: list[Policy], posture: Posture = DEFAULT_POSTURE,
             max_groups: int = 1000) -> dict[str, Any]:
    """Replay ``records`` through ``policies``; the report (see :meth:`shared.rehearsal.Replay.report`)."""
    reh = Rehearsal(policies, posture, max_groups=max_groups)
    for r in records:
        reh.feed(r)
    return reh.report()


# -- the command ----------------------------------------------------------------------------------
def history_records(args: argparse.Namespace) -> Iterator[dict[str, Any]]:
    """The stored logs then alerts the options select: from ``--db-url`` directly, else through REST."""
    since = parse_window(args.since) if args.since else None
    until = parse_window(args.until) if getattr(args, "until", "") else None
    labels = dict(kv.split("=", 1) for kv in args.label)
    if args.db_url:
        from services.feeder.store.database import make_engine
        from services.feeder.store.models import AlertRow, LogRow
        from services.feeder.store.query import RecordQuery

        engine = make_engine(args.db_url, migrate=False)
        q = RecordQuery(namespace=args.namespace, pod=args.pod, container=args.container, host=args.host,
                        since_ns=since, until_ns=until)
        for table in (LogRow, AlertRow):
            yield from selected(store_records(engine, table, q), labels)
        return
    import httpx

    params = {k: v for k, v in {"namespace": args.namespace, "pod": args.pod, "container": args.container,
                                "host": args.host}.items() if v}
    if since is not None:
        params["since"] = f"{since / 1e9:.6f}"
    if until is not None:
        params["until"] = f"{until / 1e9:.6f}"
    with httpx.Client(base_url=args.rest_url, headers=args.headers, timeout=60) as http:
        for path in ("/api/v1/logs", "/api/v1/alerts"):
            yield from selected(rest_records(http, path, params), labels)


def add_history_options(p: argparse.ArgumentParser) -> None:
    """The options that select stored records (shared by ``discover`` and ``simulate --history``)."""
    p.add_argument("-n", "--namespace", default="")
    p.add_argument("--pod", default="")
    p.add_argument("--container", default="", help="container (workload) name")
    p.add_argument("--host", default="", help="node name")
    p.add_argument("--label", action="append", default=[], metavar="K=V", help="only workloads with this label")
    p.add_argument("--since", default="", help="24h, 30m, 7d, epoch seconds or RFC3339")
    p.add_argument("--until", default="", help="epoch seconds or RFC3339")
    p.add_argument("--db-url", default="", help="read the store directly (e.g. sqlite:////var/lib/bulwark/feeder.db)")
    p.add_argument("--rest-port", type=int, help="REST port (env BULWARK_REST_PORT)")
    p.add_argument("--rest-host", help="REST address (env BULWARK_REST_HOST)")
    p.add_argument("--token", help="bearer token (env BULWARK_API_TOKEN)")


def resolve_history_options(args: argparse.Namespace) -> str:
    """Check the selection options and fill in the REST URL and headers; an error message, or ""."""
    import os

    from shared.config import load_settings

    for kv in args.label:
        if "=" not in kv or not kv.partition("=")[0]:
            return f"--label {kv!r}: expected KEY=VALUE"
    for name in ("since", "until"):
        value = getattr(args, name, "")
        if value:
            try:
                parse_window(value)
            except ValueError:
                return f"--{name} {value!r}: expected 24h, 30m, 7d, epoch seconds or RFC3339"
    args.rest_url = load_settings(rest_port=args.rest_port, rest_host=args.rest_host).rest_url
    token = args.token or os.environ.get("BULWARK_API_TOKEN")
    args.headers = {"Authorization": f"Bearer {token}"} if token else {}
    return ""


def _print_text(report: dict[str, Any], examples: int) -> None:
    t = report["totals"]
    print(f"records {report['records']} (judged {report['judged']}): newly blocked {t['blocked']}, "
          f"newly audited {t['audited']}, no longer blocked {t['unblocked']}, no longer alerted {t['silenced']}")
    for name, wl in report["workloads"].items():
        c = wl["changes"]
        print(f"WORKLOAD {name}: blocked {c['blocked']}, audited {c['audited']}, unblocked {c['unblocked']}, "
              f"silenced {c['silenced']}")
        for g in wl["groups"][:examples] if examples else wl["groups"]:
            print(f"  {g['change']:9} {g['count']:7}x  {g['operation']} {g['resource']}  from {g['source'] or '?'}"
                  f"  ({g['was']} -> {g['now']}{', policy ' + g['policy'] if g['policy'] else ''})")
        if wl["other"]:
            print(f"  ... {wl['other']} more records in groups not listed")


def run_rehearse(args: argparse.Namespace, candidate: list[Policy], posture: Posture) -> int:
    """``bulwark policy simulate --history``: 1 when something observed would newly be blocked, else 0."""
    applied: list[Policy] = []
    if not args.no_applied:
        import httpx

        try:
            resp = httpx.get(f"{args.rest_url}/api/v1/policies", headers=args.headers, timeout=30)
            resp.raise_for_status()
            applied = applied_policies(resp.json().get("policies", []))
        except (httpx.HTTPError, ValueError) as exc:
            print(f"bulwark policy simulate: cannot read the applied policies ({exc}); use --no-applied "
                  "to rehearse the candidate alone", file=sys.stderr)
            return 2
    try:
        report = rehearse(history_records(args), merge_policies(applied, candidate), posture)
    except Exception as exc:  # the store or the API failed mid-way: no verdict
        print(f"bulwark policy simulate: reading the history failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_text(report, args.examples)
    return 1 if report["totals"]["blocked"] else 0
