"""REST routes for stored alerts and logs: filtered pages with a cursor, and grouped counts.

(No ``from __future__ import annotations``: FastAPI reads the annotations at run time.)

    GET /api/v1/alerts            filters (below), newest first; body: a JSON list of records
    GET /api/v1/logs              the same for logs (Type ContainerLog / HostLog)
    GET /api/v1/alerts/summary    ?by=namespace,policy,... + filters -> {"total", "by", "groups": [{..., "count"}]}
    GET /api/v1/logs/summary      the same for logs

Filters: namespace pod container host policy operation action severity type result source resource
(exact; operation/action/severity/type take comma lists), q (substring of Resource or Source),
since/until (epoch seconds or RFC3339, inclusive), throttled (true/false), limit, cursor. When more
records follow, the response carries ``X-Next-Cursor: <cursor>`` and ``Link: <url>; rel="next"``; the
cursor is opaque and stable under inserts (it names a position in (time, id) order).

A parameter this API does not know, one given twice, or a value out of range (query.py) is a 422
naming it: nothing is silently ignored.
"""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Response

from services.feeder.store.models import AlertRow, LogRow
from services.feeder.store.query import GROUPABLE, QueryError, RecordQuery

__all__ = ["add_record_routes", "query_params", "check_names"]

_FILTERS = ("namespace", "pod", "container", "host", "policy", "operation", "action", "severity", "type",
            "result", "source", "resource", "q", "since", "until", "throttled", "cursor")
_PAGE_PARAMS = frozenset(_FILTERS) | {"limit"}
_SUMMARY_PARAMS = _PAGE_PARAMS | {"by"}


def check_names(request: Request) -> None:
    """422 naming every query parameter the route does not take, or takes once but was given twice."""
    allowed = _SUMMARY_PARAMS if request.url.path.endswith("/summary") else _PAGE_PARAMS
    names = [k for k, _v in request.query_params.multi_items()]
    unknown = sorted({n for n in names if n not in allowed})
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:10])
        raise HTTPException(422, f"unknown query parameter(s) {shown}: expected {', '.join(sorted(allowed))}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise HTTPException(422, f"query parameter(s) given more than once: {', '.join(repeated)} "
                                 "(use a comma list for operation, action, severity, type)")


def query_params(request: Request, namespace: str = "", pod: str = "", container: str = "", host: str = "",
                 policy: str = "",
                 operation: Annotated[str, Query(description="exact; comma list allowed")] = "",
                 action: Annotated[str, Query(description="exact; comma list allowed")] = "",
                 severity: Annotated[str, Query(description="exact; comma list allowed")] = "",
                 type: Annotated[str, Query(description="exact; comma list allowed")] = "",
                 result: str = "", source: str = "", resource: str = "",
                 q: Annotated[str, Query(description="substring of Resource or Source")] = "",
                 since: Annotated[str, Query(description="epoch seconds or RFC3339")] = "",
                 until: Annotated[str, Query(description="epoch seconds or RFC3339")] = "",
                 throttled: Annotated[str, Query(description="true or false")] = "",
                 cursor: Annotated[str, Query(description="X-Next-Cursor of the previous page")] = "",
                 limit: Annotated[int, Query(ge=1, le=10000)] = 100) -> RecordQuery:
    """The filters of a request (FastAPI dependency); 422 naming the bad parameter."""
    check_names(request)
    values = dict(namespace=namespace, pod=pod, container=container, host=host, policy=policy,
                  operation=operation, action=action, severity=severity, type=type, result=result,
                  source=source, resource=resource, q=q, since=since, until=until, throttled=throttled,
                  cursor=cursor)
    try:
        return RecordQuery.from_params(values, limit=limit)
    except QueryError as exc:
        raise HTTPException(422, str(exc)) from exc


def add_record_routes(app: FastAPI, deps: Callable[[], Any], read: Callable[..., None]) -> None:
    """Register the alert and log routes; ``deps`` gives the store, ``read`` guards access."""
    Q = Annotated[RecordQuery, Depends(query_params)]

    def page(table: Any, request: Request, response: Response, q: RecordQuery) -> list[dict[str, Any]]:
        result = deps().store.page(table, q)
        if result.next_cursor:
            response.headers["X-Next-Cursor"] = result.next_cursor
            url = request.url.include_query_params(cursor=result.next_cursor)
            response.headers["Link"] = f'<{url}>; rel="next"'
        return list(result)

    def summary(table: Any, q: RecordQuery, by: str) -> dict[str, Any]:
        try:
            return deps().store.summary(table, q, [b.strip() for b in by.split(",") if b.strip()])
        except QueryError as exc:
            raise HTTPException(422, str(exc)) from exc

    by_doc = f"comma list of {', '.join(GROUPABLE)}"

    @app.get("/api/v1/alerts/summary", dependencies=[Depends(read)], tags=["alerts"])
    def alerts_summary(q: Q, by: Annotated[str, Query(description=by_doc)] = "namespace,policy,action"
                       ) -> dict[str, Any]:
        """Alert counts grouped by the ``by`` fields, biggest group first (``limit`` groups)."""
        return summary(AlertRow, q, by)

    @app.get("/api/v1/logs/summary", dependencies=[Depends(read)], tags=["logs"])
    def logs_summary(q: Q, by: Annotated[str, Query(description=by_doc)] = "namespace,operation"
                     ) -> dict[str, Any]:
        """Log counts grouped by the ``by`` fields, biggest group first (``limit`` groups)."""
        return summary(LogRow, q, by)

    @app.get("/api/v1/alerts", dependencies=[Depends(read)], tags=["alerts"])
    def alerts(request: Request, response: Response, q: Q) -> list[dict[str, Any]]:
        """Stored alerts, newest first, KubeArmor field names (plus EventID, Throttled when set)."""
        return page(AlertRow, request, response, q)

    @app.get("/api/v1/logs", dependencies=[Depends(read)], tags=["logs"])
    def logs(request: Request, response: Response, q: Q) -> list[dict[str, Any]]:
        """Stored logs, newest first, KubeArmor field names (plus EventID)."""
        return page(LogRow, request, response, q)
