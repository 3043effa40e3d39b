"""Streaming every stored record a query selects, oldest id first, in bounded memory."""
from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

__all__ = ["store_records"]


def store_records(engine: Any, table: Any, query: Any, chunk: int = 5000) -> Iterator[dict[str, Any]]:
    """Every record of ``table`` matching ``query`` (a RecordQuery; its cursor and limit ignored), oldest
    id first, read ``chunk`` rows per statement (keyset on id: no offset, bounded memory)."""
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
