"""Alerts ingested per second into SQLite and PostgreSQL, through the feeder's own store path.

What is timed: ``RecordStore.insert_records`` in batches (what ingest does per raw batch: one
transaction, insert-or-ignore by event id, RETURNING the new ones), on a database migrated to head
(all indexes). Baseline in the same run: the driver's own ``executemany`` of the same rows into the
same table (sqlite3 / psycopg), no ORM, no RETURNING: the floor of what that database does here.
Target: >= 20,000 alerts/s into SQLite. PostgreSQL is a private cluster started for the run (needs
the PostgreSQL 15 server binaries; as root the cluster runs as the ``postgres`` user).

    .venv/bin/python bench/feeder_ingest.py [--alerts 50000] [--batch 500] [--no-postgres]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import text  # noqa: E402

from services.feeder.store.database import RecordStore, make_engine, to_row  # noqa: E402
from services.feeder.store.models import AlertRow  # noqa: E402

NAMESPACES = [f"ns-{i}" for i in range(20)]


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


def time_store(url: str, alerts: list[dict[str, Any]], batch: int) -> float:
    """Alerts per second through RecordStore.insert_records."""
    engine = make_engine(url)
    store = RecordStore(engine)
    t0 = time.perf_counter()
    for i in range(0, len(alerts), batch):
        store.insert_records(alerts[i:i + batch], [])
    elapsed = time.perf_counter() - t0
    assert store.count(AlertRow) == len(alerts)
    engine.dispose()
    return len(alerts) / elapsed


def time_driver(url: str, alerts: list[dict[str, Any]], batch: int) -> float:
    """Alerts per second with the DB driver's executemany on the same (migrated) table."""
    engine = make_engine(url)
    rows = [to_row(a) for a in alerts]
    cols = list(rows[0])
    marks = ", ".join("%s" if "postgresql" in url else "?" for _ in cols)
    sql = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({marks})"
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        t0 = time.perf_counter()
        for i in range(0, len(rows), batch):
            cur.executemany(sql, [tuple(r[c] for c in cols) for r in rows[i:i + batch]])
            raw.commit()
        elapsed = time.perf_counter() - t0
    finally:
        raw.close()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alerts")).scalar() == len(alerts)
    engine.dispose()
    return len(alerts) / elapsed


def report(name: str, store_rate: float, base_rate: float) -> None:
    print(f"{name:10} store path {store_rate:10,.0f} alerts/s   driver executemany baseline {base_rate:10,.0f} rows/s"
          f"   ratio {store_rate / base_rate:5.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--alerts", type=int, default=50_000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--no-postgres", action="store_true")
    args = ap.parse_args()
    alerts = make_alerts(args.alerts)
    print(f"{args.alerts} alerts in batches of {args.batch}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        base = time_driver(f"sqlite:///{tmp}/base.db", alerts, args.batch)
        rate = time_store(f"sqlite:///{tmp}/store.db", alerts, args.batch)
        report("SQLite", rate, base)
        ok = rate >= 20_000
        print(f"SQLite target >= 20,000 alerts/s: {'met' if ok else 'NOT met'}")
        if not args.no_postgres:
            from tests.pg import start_cluster

            cluster = start_cluster(Path(tmp) / "pg")
            try:
                cluster.createdb("base")
                pg_base = time_driver(cluster.url_for("base"), alerts, args.batch)
                pg_rate = time_store(cluster.url, alerts, args.batch)
                report("PostgreSQL", pg_rate, pg_base)
            finally:
                cluster.stop()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
