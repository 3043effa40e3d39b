"""Rehearsal on history: replay stored logs and alerts through a candidate policy set, report what changes.

Records are streamed (from the store in id order, ``chunk`` rows at a time, or from the REST API page
by page), each turned back into the access the feeder judged (:func:`record_access`) and its workload
(:func:`record_workload`), then judged by the same compiler and matcher as the services
(``compile_rules`` + ``shared.loaders.decide_access``) against the candidate policies plus the
applied ones the candidate does not replace (same kind, namespace and name). What the record says
happened (its Action for an alert, nothing for a log) is compared with the new verdict:

* ``blocked``: newly Block (the operation would now fail);
* ``audited``: newly reported (Audit, or ``Audit (Block)`` for audited workloads);
* ``unblocked`` / ``silenced``: a Block, or an alert, that would no longer happen.

Memory is bounded: compiled rules per distinct workload, a verdict cache that is cleared when full,
and at most ``max_groups`` distinct (workload, change, operation, resource, source, policy) groups per
workload (more are counted in ``other``). :func:`rehearse` is what a REST endpoint calls.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from services.policy.compiler import compile_rules
from services.policy.model import Policy
from shared.loaders import decide_access, is_program_loader
from shared.matcher import DEFAULT_POSTURE, Access, Posture, decide
from shared.schemas.identity import Workload
from shared.schemas.rules import Rule

__all__ = ["record_access", "record_workload", "workload_key", "store_records", "rest_records", "parse_window",
           "merge_policies", "Rehearsal", "rehearse", "run_rehearse", "applied_policies", "rehearse_request"]

_PROTOCOL = re.compile(r"(?:^|\s)protocol=(\S+)")
_SYSCALL = re.compile(r"syscall=(?:SYS_)?(\w+)")
_WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
CHANGES = ("blocked", "audited", "unblocked", "silenced")


# -- records -> what was judged ---------------------------------------------------------------------
def _file_access(data: str) -> str:
    """``read`` or ``write`` from a File record's Data (``syscall=SYS_OPENAT fd=-100 flags=O_RDONLY``)."""
    call = data[8:].split(" ", 1)[0] if data.startswith("syscall=") else ""
    if call and not call.startswith("SYS_OPEN") and call != "SYS_CREAT":
        return "write"  # unlink, rmdir, chown change the file
    flags = data.partition("flags=")[2].split(" ", 1)[0]
    return "write" if any(f in flags for f in _WRITE_FLAGS) else "read"


def record_access(r: dict[str, Any]) -> Access | None:
    """The access a stored record stands for (as services/feeder/kinds.py built it); None if not judged."""
    op, resource, source = str(r.get("Operation", "")), str(r.get("Resource", "")), str(r.get("Source", ""))
    uid = r.get("UID", -1)
    uid = uid if isinstance(uid, int) and not isinstance(uid, bool) else -1
    data = str(r.get("Data", ""))
    if op == "Process":
        return Access("Process", resource, source=source, access="exec", uid=uid)
    if op == "File":
        return Access("File", resource, source=source, access=_file_access(data), uid=uid)
    if op == "Network":
        found = _PROTOCOL.search(resource)
        protocol = (found.group(1) if found else resource).lower()
        return Access("Network", protocol, source=source, uid=uid, protocol=protocol) if protocol else None
    if op == "Capabilities":
        return Access("Capabilities", resource, source=source, uid=uid, capability=resource) if resource else None
    if op == "Syscall":
        call = _SYSCALL.search(data)
        return Access("Syscall", resource, source=source, uid=uid, syscall=call.group(1).lower() if call else "")
    return None


def _labels(text: str) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)


def workload_key(r: dict[str, Any]) -> str:
    """``namespace/pod/container`` of a container record, ``host:NODE`` of a host one."""
    if r.get("ContainerName") or r.get("PodName") or r.get("ContainerID"):
        return f"{r.get('NamespaceName', '')}/{r.get('PodName', '')}/{r.get('ContainerName', '')}"
    return f"host:{r.get('HostName', '')}"


def record_workload(r: dict[str, Any]) -> Workload:
    """The workload a record names (namespace, labels, container name; or the host with its labels)."""
    host = not (r.get("ContainerName") or r.get("PodName") or r.get("ContainerID"))
    labels = _labels(str(r.get("Labels", "")))
    return Workload(id=workload_key(r), name=str(r.get("ContainerName") or r.get("HostName") or ""),
                    namespace="" if host else str(r.get("NamespaceName", "")), kind="host" if host else "container",
                    node=str(r.get("HostName", "")), mntns=0, pidns=0, labels=labels,
                    pod=str(r.get("PodName", "")), image=str(r.get("ContainerImage", "")))


def parse_window(text: str, now: float | None = None) -> int:
    """``24h``/``30m``/``7d`` before now, epoch seconds or RFC3339 -> ns; ValueError otherwise."""
    from services.feeder.store.query import parse_since

    found = _DURATION.match(text.strip())
    if found:
        now = time.time() if now is None else now
        return int((now - float(found.group(1)) * _UNITS[found.group(2)]) * 1e9)
    return parse_since(text)


# -- sources --------------------------------------------------------------------------------------
def store_records(engine: Any, table: Any, query: Any, chunk: int = 5000) -> Iterator[dict[str, Any]]:
    """Every record of ``table`` matching ``query`` (a RecordQuery; its cursor and limit ignored), oldest
    id first, read ``chunk`` rows per statement (keyset on id: no offset, bounded memory)."""
    from sqlalchemy import select

    last = 0
    conds = query.where(table)
    while True:
        stmt = select(table.id, table.body).where(*conds, table.id > last).order_by(table.id).limit(chunk)
        with engine.connect() as conn:
            rows = conn.execute(stmt).all()
        for row in rows:
            yield json.loads(row.body)
        if len(rows) < chunk:
            return
        last = rows[-1].id


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


def selected(records: Iterable[dict[str, Any]], labels: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The records whose workload carries every one of ``labels``."""
    for r in records:
        if not labels or all(_labels(str(r.get("Labels", ""))).get(k) == v for k, v in labels.items()):
            yield r


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


# -- the rehearsal --------------------------------------------------------------------------------
@lru_cache(maxsize=4096)
def _is_loader(source: str) -> bool:
    return is_program_loader(source)


def _old_action(r: dict[str, Any]) -> str:
    if str(r.get("Type", "")).startswith("Matched"):
        return str(r.get("Action", "")) or "Block"
    return "Allow"


def _change(old: str, new: str) -> str | None:
    if new == "Block" and old != "Block":
        return "blocked"
    if new in ("Audit", "Audit (Block)") and old == "Allow":
        return "audited"
    if old == "Block" and new != "Block":
        return "unblocked"
    if old != "Allow" and new == "Allow":
        return "silenced"
    return None


@dataclass
class _Group:
    count: int = 0
    example: dict[str, Any] = field(default_factory=dict)


@dataclass
class Rehearsal:
    """Judges records against ``policies`` and gathers the changes per workload."""

    policies: list[Policy]
    posture: Posture = DEFAULT_POSTURE
    max_groups: int = 1000
    cache_size: int = 200_000
    records: int = 0
    judged: int = 0
    totals: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CHANGES, 0))
    workloads: dict[str, dict[str, Any]] = field(default_factory=dict)
    _rules: dict[str, tuple[dict[str, list[Rule]], Posture]] = field(default_factory=dict)
    _verdicts: dict[tuple[Any, ...], tuple[str, str]] = field(default_factory=dict)

    def _compiled(self, r: dict[str, Any], wk: str) -> tuple[str, tuple[dict[str, list[Rule]], Posture]]:
        """The record's workload's rules per operation (File also gets Process: a loader's open is an
        exec, shared.loaders) and its posture, compiled once per distinct workload."""
        key = f"{wk}\0{r.get('Labels', '')}"
        entry = self._rules.get(key)
        if entry is None:
            if len(self._rules) >= 10_000:
                self._rules.clear()
            wl = record_workload(r)
            wr = compile_rules(self.policies, [wl], "rehearse", default_posture=self.posture).workloads[wl.id]
            by_op: dict[str, list[Rule]] = {}
            for rule in wr.rules:
                by_op.setdefault(rule.operation, []).append(rule)
            by_op["File"] = by_op.get("File", []) + by_op.get("Process", [])
            entry = self._rules[key] = (by_op, Posture.of(wr))
        return key, entry

    def verdict(self, r: dict[str, Any], access: Access, wk: str = "") -> tuple[str, str]:
        """(action, policy) the candidate set gives the record's access; ("Allow", "") when nothing decides."""
        key, (by_op, posture) = self._compiled(r, wk or workload_key(r))
        ck = (key, access)
        hit = self._verdicts.get(ck)
        if hit is None:
            rules = by_op.get(access.operation, [])
            # decide_access adds the exec a loader's open stands for; other sources need only decide()
            d = (decide_access(rules, access, posture) if _is_loader(access.source)
                 else decide(rules, access, posture))
            hit = (d.action, d.policy) if d is not None else ("Allow", "")
            if len(self._verdicts) >= self.cache_size:
                self._verdicts.clear()
            self._verdicts[ck] = hit
        return hit

    def feed(self, r: dict[str, Any]) -> None:
        """Judge one stored record and count it."""
        self.records += 1
        access = record_access(r)
        if access is None:
            return
        self.judged += 1
        wk = workload_key(r)
        new, policy = self.verdict(r, access, wk)
        old = _old_action(r)
        change = _change(old, new)
        if change is None:
            return
        self.totals[change] += 1
        wl = self.workloads.setdefault(wk, {"changes": dict.fromkeys(CHANGES, 0), "groups": {},
                                                         "other": 0})
        wl["changes"][change] += 1
        gk = (change, access.operation, access.resource, access.source, access.access, policy, old, new)
        group = wl["groups"].get(gk)
        if group is None:
            if len(wl["groups"]) >= self.max_groups:
                wl["other"] += 1
                return
            group = wl["groups"][gk] = _Group(example={k: r.get(k) for k in (
                "UpdatedTime", "HostPID", "PID", "ProcessName", "Data", "Result", "EventID") if k in r})
        group.count += 1

    def report(self) -> dict[str, Any]:
        """The result as plain data: totals, and per workload each group, biggest first."""
        out = {}
        for name, wl in sorted(self.workloads.items()):
            groups = [{"change": k[0], "operation": k[1], "resource": k[2], "source": k[3], "access": k[4],
                       "policy": k[5], "was": k[6], "now": k[7], "count": g.count, "example": g.example}
                      for k, g in wl["groups"].items()]
            groups.sort(key=lambda g: (CHANGES.index(g["change"]), -g["count"], g["operation"], g["resource"],
                                       g["source"]))
            out[name] = {"changes": wl["changes"], "groups": groups, "other": wl["other"]}
        return {"records": self.records, "judged": self.judged, "totals": self.totals, "workloads": out}


def rehearse(records: Iterable[dict[str, Any]], policies: list[Policy], posture: Posture = DEFAULT_POSTURE,
             max_groups: int = 1000) -> dict[str, Any]:
    """Replay ``records`` through ``policies``; the report (see :meth:`Rehearsal.report`)."""
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


# -- for the REST API ------------------------------------------------------------------------------
def rehearse_request(engine: Any, text: str, query: Any, *, labels: dict[str, str] | None = None,
                     posture_spec: str = "", applied: list[dict[str, Any]] | None = None,
                     max_groups: int = 200) -> tuple[int, dict[str, Any]]:
    """What ``POST /api/v1/policies/rehearse`` answers: (HTTP status, body).

    ``text``: the candidate policies (YAML or JSON); ``query``: a RecordQuery selecting the stored
    records (its cursor and limit are ignored); ``applied``: the policy service's listing (``op: list``).
    422 with ``errors`` (each naming its document and field) when the candidate or the posture is invalid;
    else 200 with the report and ``would_block`` (true when something observed would newly be blocked).
    Synchronous and streaming: call it from a thread."""
    from services.feeder.store.models import AlertRow, LogRow
    from services.policy.model import to_policy
    from services.policy.parser import parse_documents
    from services.policy.posture import parse_posture_spec
    from services.policy.validate import admit
    from shared.errors import ValidationFailed

    try:
        posture = parse_posture_spec(posture_spec)
    except ValueError as exc:
        return 422, {"ok": False, "errors": [{"document": "", "path": "default_posture", "message": str(exc)}]}
    try:
        candidate = [to_policy(admit(doc, label).doc) for label, doc in parse_documents(text, source="candidate")]
    except ValidationFailed as exc:
        return 422, {"ok": False, "errors": [{"document": e.document, "path": e.path, "message": e.message}
                                             for e in exc.errors]}
    if not candidate:
        return 422, {"ok": False, "errors": [{"document": "candidate", "path": "", "message": "no policy given"}]}
    policies = merge_policies(applied_policies(applied or []), candidate)
    records = (r for table in (LogRow, AlertRow) for r in selected(store_records(engine, table, query), labels or {}))
    report = rehearse(records, policies, posture, max_groups=max_groups)
    return 200, {"ok": True, "would_block": bool(report["totals"]["blocked"]), **report}
