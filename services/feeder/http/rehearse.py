"""``POST /api/v1/policies/rehearse``: replay the stored history through a candidate policy set.

The body is the candidate (YAML or JSON, as for ``POST /api/v1/policies``); query parameters select
the history (``namespace pod container host since until``, ``label=k=v,k2=v2``) and shape the answer
(``default_posture=file=block,...``, ``applied=false`` to rehearse the candidate alone,
``max_groups``). The policy service validates the candidate and compiles each distinct workload's
rules (candidate plus the applied policies it does not replace: its ``compile`` request); the records
are streamed from the store in a worker thread and judged by :mod:`shared.rehearsal`. Answers: 200
with the report and ``would_block``; 422 naming the parameter, or the candidate's document and field;
413 for a body too large; 503 when the policy service cannot answer.

(No ``from __future__ import annotations``: FastAPI reads annotations at run time.)
"""

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import HTTPException, Request
from fastapi.responses import JSONResponse

from services.feeder.store.models import AlertRow, LogRow
from services.feeder.store.query import QueryError, RecordQuery
from services.feeder.store.scan import store_records
from shared.rehearsal import Replay, selected
from shared.schemas.identity import Workload
from shared.schemas.rules import WorkloadRules

__all__ = ["PARAMS", "rehearse_params", "run_rehearsal"]

PARAMS = frozenset({"namespace", "pod", "container", "host", "since", "until", "label", "default_posture",
                    "applied", "max_groups"})
MAX_GROUPS = 1000
Ask = Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]]


def _labels(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise HTTPException(422, f"label: {item[:80]!r} is not KEY=VALUE (a comma list of them)")
        out[key] = value
    return out


def rehearse_params(request: Request) -> tuple[RecordQuery, dict[str, Any]]:
    """The history selection and options of a request; 422 naming the parameter that is wrong."""
    names = [k for k, _v in request.query_params.multi_items()]
    unknown = sorted({n for n in names if n not in PARAMS})
    if unknown:
        raise HTTPException(422, f"unknown query parameter(s) {', '.join(repr(n[:40]) for n in unknown[:10])}: "
                                 f"expected {', '.join(sorted(PARAMS))}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise HTTPException(422, f"query parameter(s) given more than once: {', '.join(repeated)}")
    p = request.query_params
    try:
        query = RecordQuery.from_params({k: p.get(k, "") for k in ("namespace", "pod", "container", "host",
                                                                  "since", "until")})
    except QueryError as exc:
        raise HTTPException(422, str(exc)) from exc
    applied = p.get("applied", "true")
    if applied not in ("true", "false"):
        raise HTTPException(422, f"applied: {applied[:40]!r} is not true or false")
    groups = p.get("max_groups", "200")
    if not groups.isdigit() or not 1 <= int(groups) <= MAX_GROUPS:
        raise HTTPException(422, f"max_groups: {groups[:40]!r} is not a whole number from 1 to {MAX_GROUPS}")
    return query, {"labels": _labels(p.get("label", "")), "default_posture": p.get("default_posture", ""),
                   "applied": applied == "true", "max_groups": int(groups)}


def _compile_request(text: str, options: dict[str, Any], workloads: list[Workload]) -> dict[str, Any]:
    return {"op": "compile", "text": text, "default_posture": options["default_posture"],
            "applied": options["applied"], "workloads": [wl.to_wire() for wl in workloads]}


def _refused(reply: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"ok": False, "errors": reply.get("errors", [])}, status_code=422)


async def run_rehearsal(engine: Any, text: str, query: RecordQuery, options: dict[str, Any], ask: Ask,
                        timeout: float) -> JSONResponse:
    """Validate the candidate (one compile request with no workload), then replay the history."""
    first = await ask(_compile_request(text, options, []))
    if not first.get("ok"):
        return _refused(first)
    loop = asyncio.get_running_loop()

    def rules_for(wl: Workload) -> WorkloadRules:
        """Asked from the worker thread: one compile request per distinct workload."""
        future = asyncio.run_coroutine_threadsafe(ask(_compile_request(text, options, [wl])), loop)
        try:
            reply = future.result(timeout)
        except TimeoutError as exc:
            future.cancel()
            raise HTTPException(503, "policy service unavailable: no compile reply in time") from exc
        compiled = reply.get("workloads", {}).get(wl.id) if reply.get("ok") else None
        if compiled is None:
            raise HTTPException(502, f"the policy service did not compile workload {wl.id!r}")
        return WorkloadRules.from_wire(compiled)

    def replay() -> dict[str, Any]:
        reh = Replay(rules_for, max_groups=options["max_groups"])
        for table in (LogRow, AlertRow):
            for r in selected(store_records(engine, table, query), options["labels"]):
                reh.feed(r)
        return reh.report()

    report = await asyncio.to_thread(replay)
    return JSONResponse({"ok": True, "would_block": bool(report["totals"]["blocked"]), **report})
