"""Alerts ingested per second into SQLite and PostgreSQL, through the feeder's own store path, against
the database's own bulk load of the same rows, measured in the same run.

What is timed: ``RecordStore.insert_records`` in batches (what ingest does per raw batch: one
transaction, every record's row built from the alert, known event ids skipped, the new ones returned)
on a database migrated to head (all indexes). On PostgreSQL that path is COPY (psycopg), falling back
to INSERT ... ON CONFLICT DO NOTHING RETURNING for a batch holding a known event id.

Baselines, the same rows already built (no JSON, no ORM, no duplicate check), one transaction per batch:
- PostgreSQL: a raw ``COPY alerts FROM STDIN`` of the rows through psycopg: the floor of what this
  database does here. Also shown: the insert-or-ignore path alone (``RecordStore(copy=False)``, what
  ingest did before COPY).
- SQLite: the driver's own ``executemany`` (sqlite3).

Rounds are interleaved (baseline, store path, ... each into an emptied table, ids restarted) so a drift
in the machine's load hits both; the ratio is given as the median over the rounds with the lowest and
highest round (for 5 rounds an interval holding the true median with 94% confidence).
Targets: >= 30,000 alerts/s into PostgreSQL, >= 20,000 into SQLite. PostgreSQL is a private cluster
started for the run (PostgreSQL 15 server binaries; as root the cluster runs as the ``postgres`` user).

    .venv/bin/python bench/feeder_ingest.py [--alerts 50000] [--batch 500] [--rounds 5] [--no-postgres]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Engine, text  # noqa: E402

from services.feeder.store.database import ROW_COLUMNS, RecordStore, make_engine, row_values  # noqa: E402
from services.feeder.store.models import AlertRow  # noqa: E402

NAMESPACES = [f"ns-{i}" for i in range(20)]
PG_TARGET, SQLITE_TARGET = 30_000, 20_000


def make_alerts(n: int, start: int = 0) -> list[dict[str, Any]]:
    """``n`` realistic alerts with distinct event ids."""
    now = int(time.time())
    return [{"EventID": f"ev-{start + i:09d}", "Timestamp": now + i // 1000, "UpdatedTime": f"x.{i % 1000:03d}000Z",
             "ClusterName": "default", "HostName": "node-1", "NamespaceName": NAMESPACES[i % 20],
             "PodName": f"web-{i % 200}", "ContainerName": "web", "ContainerID": f"cid-{i % 200}",
             "PolicyName": f"policy-{i % 50}", "Severity": str(1 + i % 10), "Type": "MatchedPolicy",
             "Operation": ("Process", "File", "Network")[i % 3], "Action": ("Block", "Audit")[i % 2],
             "Result": "Permission denied", "Source": "/usr/bin/bash", "Resource": f"/usr/bin/tool-{i % 997}",
             "Data": "syscall=SYS_EXECVE", "HostPID": 1000 + i % 30000, "PID": i % 3000, "UID": 0,
             "Labels": "app=web", "Tags": "MITRE", "ATags": ["MITRE"], "Message": "blocked", "Enforcer": "Fanotify"}
            for i in range(n)]


def _empty(engine: Engine) -> None:
    """No alerts, ids from 1 again."""
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE alerts RESTART IDENTITY"))
        else:  # an INTEGER PRIMARY KEY without AUTOINCREMENT starts from 1 again in an empty table
            conn.execute(text("DELETE FROM alerts"))


def _count(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM alerts")).scalar() or 0)


def time_store(engine: Engine, alerts: list[dict[str, Any]], batch: int, *, copy: bool | None = None) -> float:
    """Alerts per second through RecordStore.insert_records (every one of them new and returned)."""
    _empty(engine)
    store = RecordStore(engine, copy=copy)
    new = 0
    t0 = time.perf_counter()
    for i in range(0, len(alerts), batch):
        new += len(store.insert_records(alerts[i:i + batch], [])[0])
    elapsed = time.perf_counter() - t0
    assert new == len(alerts) == store.count(AlertRow), "the store path lost or doubled alerts"
    return len(alerts) / elapsed


def time_pg_copy(engine: Engine, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Rows per second of a raw psycopg COPY of prepared rows, one transaction per batch."""
    _empty(engine)
    sql = f"COPY alerts ({', '.join(ROW_COLUMNS)}) FROM STDIN"
    raw = engine.raw_connection()
    try:
        conn = raw.driver_connection
        assert conn is not None
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            with conn.cursor() as cur, cur.copy(sql) as copy:
                for row in rows[i:i + batch]:
                    copy.write_row(row)
            conn.commit()
        elapsed = time.perf_counter() - t0
    finally:
        raw.close()
    assert _count(engine) == len(rows)
    return len(rows) / elapsed


def time_sqlite_executemany(engine: Engine, rows: list[tuple[Any, ...]], batch: int) -> float:
    """Rows per second of sqlite3's executemany of prepared rows, one transaction per batch."""
    _empty(engine)
    sql = f"INSERT INTO alerts ({', '.join(ROW_COLUMNS)}) VALUES ({', '.join('?' for _ in ROW_COLUMNS)})"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            cur.executemany(sql, rows[i:i + batch])
            raw.commit()
        elapsed = time.perf_counter() - t0
    finally:
        raw.close()
    assert _count(engine) == len(rows)
    return len(rows) / elapsed


def rounds(n: int, runs: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """``n`` interleaved rounds of every run (the order turned around every other round)."""
    names = list(runs)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(n):
        for name in (names if r % 2 == 0 else names[::-1]):
            out[name].append(runs[name]())
    return out


def ratio_line(label: str, mine: list[float], base: list[float]) -> str:
    """Median of the per-round ratios, with the lowest and highest round."""
    ratios = sorted(m / b for m, b in zip(mine, base, strict=True))
    return (f"  {label}: {statistics.median(ratios):.2f} (rounds {ratios[0]:.2f} .. {ratios[-1]:.2f}; "
            f"{', '.join(f'{x:.2f}' for x in (m / b for m, b in zip(mine, base, strict=True)))})")


def rate_line(label: str, rates: list[float]) -> str:
    return f"  {label:34} median {statistics.median(rates):>9,.0f}/s  (rounds {min(rates):,.0f} .. {max(rates):,.0f})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alerts", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    alerts = make_alerts(args.alerts)
    rows = [row_values(a) for a in alerts]
    print(f"{args.alerts:,} alerts in batches of {args.batch}, {args.rounds} interleaved rounds")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        lite = make_engine(f"sqlite:///{tmp}/bench.db")
        try:
            got = rounds(args.rounds, {"base": lambda: time_sqlite_executemany(lite, rows, args.batch),
                                       "store": lambda: time_store(lite, alerts, args.batch)})
        finally:
            lite.dispose()
        print("SQLite")
        print(rate_line("driver executemany (baseline)", got["base"]))
        print(rate_line("store path (insert-or-ignore)", got["store"]))
        print(ratio_line("store / executemany", got["store"], got["base"]))
        met = statistics.median(got["store"]) >= SQLITE_TARGET
        ok &= met
        print(f"  target >= {SQLITE_TARGET:,} alerts/s: {'met' if met else 'NOT met'}")
        if not args.no_postgres:
            from tests.pg import start_cluster

            cluster = start_cluster(Path(tmp) / "pg")
            pg = make_engine(cluster.url)
            try:
                got = rounds(args.rounds, {"base": lambda: time_pg_copy(pg, rows, args.batch),
                                           "store": lambda: time_store(pg, alerts, args.batch),
                                           "old": lambda: time_store(pg, alerts, args.batch, copy=False)})
            finally:
                pg.dispose()
                cluster.stop()
            print("PostgreSQL")
            print(rate_line("raw COPY of the rows (baseline)", got["base"]))
            print(rate_line("store path (COPY)", got["store"]))
            print(rate_line("insert-or-ignore path (before)", got["old"]))
            print(ratio_line("store / raw COPY", got["store"], got["base"]))
            print(ratio_line("insert-or-ignore / raw COPY", got["old"], got["base"]))
            print(ratio_line("store / insert-or-ignore", got["store"], got["old"]))
            met = statistics.median(got["store"]) >= PG_TARGET
            ok &= met
            print(f"  target >= {PG_TARGET:,} alerts/s: {'met' if met else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
