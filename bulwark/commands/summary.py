"""``bulwark summary``: what each workload did, from the stored logs and alerts (REST).

Per workload (namespace/pod/container, or the host): the processes it ran with their parents, the
files it touched, its network peers, and its alerts by policy and action. Reads up to ``--max``
records of each kind, newest first, through the cursor-paged API.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

__all__ = ["add_summary_parser", "run_summary", "summarise"]


def add_summary_parser(sub: Any) -> argparse.ArgumentParser:
    """Register ``summary`` on the CLI's subparsers."""
    p = sub.add_parser("summary", help="what each workload did: processes, files, network peers, alerts")
    p.add_argument("--rest-port", type=int, help="REST port (env BULWARK_REST_PORT, default 8080)")
    p.add_argument("--rest-host", help="REST address (env BULWARK_REST_HOST, default 127.0.0.1)")
    p.add_argument("--token", default=os.environ.get("BULWARK_API_TOKEN"), help="bearer token (env BULWARK_API_TOKEN)")
    p.add_argument("-n", "--namespace", default="")
    p.add_argument("--pod", default="")
    p.add_argument("--since", default="", help="epoch seconds or RFC3339")
    p.add_argument("--max", type=int, default=20000, help="records of each kind to read at most")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run_summary)
    return p


def _workload(r: dict[str, Any]) -> str:
    if r.get("PodName") or r.get("ContainerName"):
        return f"{r.get('NamespaceName', '')}/{r.get('PodName', '')}/{r.get('ContainerName', '')}"
    return f"host:{r.get('HostName', '')}"


def summarise(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Group records per workload into processes (parent -> process), files, network peers, alerts."""
    acc: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: defaultdict(Counter))
    for r in records:
        w = acc[_workload(r)]
        op, resource = str(r.get("Operation", "")), str(r.get("Resource", ""))
        if op == "Process":
            w["processes"][f"{r.get('ParentProcessName', '') or '?'} -> {r.get('ProcessName', '') or resource}"] += 1
        elif op == "File":
            w["files"][resource] += 1
        elif op == "Network":
            w["network"][resource or str(r.get("Data", ""))] += 1
        elif op:
            w[op.lower()][resource] += 1
        if r.get("PolicyName") or str(r.get("Type", "")).startswith("Matched"):
            w["alerts"][f"{r.get('PolicyName', '')} ({r.get('Action', '')})"] += 1
    return {wl: {k: dict(c.most_common()) for k, c in kinds.items()} for wl, kinds in sorted(acc.items())}


def _pages(http: Any, path: str, params: dict[str, Any], most: int) -> Iterator[dict[str, Any]]:
    got = 0
    while got < most:
        resp = http.get(path, params={**params, "limit": min(1000, most - got)})
        if resp.status_code >= 400:
            raise RuntimeError(f"GET {path}: HTTP {resp.status_code}: {resp.text[:200]}")
        page = resp.json()
        yield from page
        got += len(page)
        cursor = resp.headers.get("x-next-cursor")
        if not cursor or not page:
            return
        params = {**params, "cursor": cursor}


def run_summary(args: argparse.Namespace) -> int:
    """Entry point of ``bulwark summary``."""
    import httpx

    from shared.config import load_settings

    settings = load_settings(rest_port=args.rest_port, rest_host=args.rest_host)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    params = {k: v for k, v in {"namespace": args.namespace, "pod": args.pod, "since": args.since}.items() if v}
    try:
        with httpx.Client(base_url=settings.rest_url, headers=headers, timeout=30) as http:
            records = [*_pages(http, "/api/v1/logs", params, args.max),
                       *_pages(http, "/api/v1/alerts", params, args.max)]
    except (httpx.HTTPError, RuntimeError) as exc:
        print(f"bulwark summary: {exc}", file=sys.stderr)
        return 1
    result = summarise(records)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for wl, kinds in result.items():
        print(wl)
        for kind, counts in kinds.items():
            print(f"  {kind}:")
            for key, n in counts.items():
                print(f"    {n:6}  {key}")
    return 0
