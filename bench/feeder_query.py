"""REST query latency over 1,000,000 stored alerts, and websocket fan-out to 100 clients.

1. Loads N alerts (default 1,000,000) into a SQLite database migrated to head, with the driver's
   bulk ``executemany`` (time reported).
2. Serves the feeder's real FastAPI app (uvicorn, separate process) on that database and times
   filtered ``GET /api/v1/alerts`` queries (median, p99); baseline in the same run: ``GET /healthz``,
   the floor of one HTTP round trip through the same server. Target: p99 of a filtered query < 50 ms.
3. Connects 100 websocket clients to ``/api/v1/stream`` and pushes alerts through the hub: delivery
   latency (median, p99) and deliveries per second, against the same push to 1 client.

    .venv/bin/python bench/feeder_query.py [--rows 1000000] [--requests 1000] [--clients 100]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUERIES: list[tuple[str, dict[str, Any]]] = [
    ("namespace", {"namespace": "ns-7"}),
    ("namespace+policy", {"namespace": "ns-7", "policy": "policy-17"}),
    ("pod+action", {"pod": "web-42", "action": "Block"}),
    ("operation+severity", {"operation": "File", "severity": "5"}),
    ("time range", {"since": "SINCE", "until": "UNTIL"}),
    ("namespace+time", {"namespace": "ns-3", "since": "SINCE"}),
    ("free text q", {"q": "tool-99"}),
    ("page 2 (cursor)", {"namespace": "ns-11", "cursor": "CURSOR"}),
]


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def load(path: Path, rows: int) -> tuple[float, int]:
    """Migrate, then bulk-insert ``rows`` alerts; returns (seconds, first timestamp)."""
    from bench.feeder_ingest import make_alerts
    from services.feeder.store.database import make_engine, to_row

    make_engine(f"sqlite:///{path}").dispose()
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous=OFF")
    first = make_alerts(1)[0]
    cols = list(to_row(first))
    sql = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    t0 = time.perf_counter()
    chunk = 50_000
    for start in range(0, rows, chunk):
        batch = make_alerts(min(chunk, rows - start), start)
        for a in batch:
            a["Timestamp"] = int(first["Timestamp"]) + (start + int(a["EventID"][3:]) - start) // 100
        conn.executemany(sql, [tuple(row[c] for c in cols) for row in map(to_row, batch)])
        conn.commit()
    conn.execute("ANALYZE")
    conn.commit()
    conn.close()
    return time.perf_counter() - t0, int(first["Timestamp"])


def serve(db: str, port: int) -> None:
    """The feeder app on ``db`` plus a bench-only route pushing synthetic alerts through the hub."""
    import uvicorn

    from services.feeder.http.app import FeederDeps, create_app
    from services.feeder.hub import AlertHub
    from services.feeder.store.database import RecordStore, make_engine
    from services.feeder.views import FeederState

    hub = AlertHub()
    app = create_app(FeederDeps(FeederState(), RecordStore(make_engine(db)), hub, None, ws_queue=4096))

    @app.post("/bench/push")
    async def push(n: int = 100, gap_ms: float = 2.0) -> dict[str, int]:
        for i in range(n):
            hub.publish({"EventID": f"push-{i}", "NamespaceName": "demo", "SentNs": time.time_ns(),
                         "Resource": "/x" * 100})
            await asyncio.sleep(gap_ms / 1000)
        return {"pushed": n, "subscribers": len(hub)}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def time_queries(base: str, requests: int, first_ts: int, rows: int) -> None:
    import httpx

    with httpx.Client(base_url=base, timeout=30) as http:
        cursor = http.get("/api/v1/alerts", params={"namespace": "ns-11"}).headers["x-next-cursor"]
        span = rows // 100
        subst = {"SINCE": str(first_ts + span // 2), "UNTIL": str(first_ts + span // 2 + 60), "CURSOR": cursor}
        for _ in range(20):  # warm up
            http.get("/healthz")
        base_lat = []
        for _ in range(requests):
            t0 = time.perf_counter()
            http.get("/healthz")
            base_lat.append((time.perf_counter() - t0) * 1000)
        all_lat: list[float] = []
        per = max(1, requests // len(QUERIES))
        print(f"{'query':22} {'median ms':>10} {'p99 ms':>8} {'rows':>5}")
        for name, params in QUERIES:
            params = {k: subst.get(v, v) for k, v in params.items()}
            lat = []
            for _ in range(per):
                t0 = time.perf_counter()
                resp = http.get("/api/v1/alerts", params=params)
                lat.append((time.perf_counter() - t0) * 1000)
                assert resp.status_code == 200, resp.text
            all_lat += lat
            print(f"{name:22} {statistics.median(lat):10.2f} {_pct(lat, 99):8.2f} {len(resp.json()):5}")
        t0 = time.perf_counter()
        summary = http.get("/api/v1/alerts/summary", params={"by": "namespace"}).json()
        print(f"{'summary by namespace':22} {(time.perf_counter() - t0) * 1000:10.2f} "
              f"(one call, total {summary['total']:,})")
    med, p99 = statistics.median(all_lat), _pct(all_lat, 99)
    bmed, bp99 = statistics.median(base_lat), _pct(base_lat, 99)
    print(f"filtered queries ({len(all_lat)}): median {med:.2f} ms, p99 {p99:.2f} ms; "
          f"baseline GET /healthz: median {bmed:.2f} ms, p99 {bp99:.2f} ms; "
          f"ratio median {med / bmed:.1f}x, p99 {p99 / bp99:.1f}x")
    print(f"target p99 < 50 ms: {'met' if p99 < 50 else 'NOT met'}")


async def fan_out(port: int, clients: int, pushes: int) -> tuple[float, float, float]:
    """(median ms, p99 ms, deliveries/s) of pushing ``pushes`` alerts to ``clients`` websocket clients."""
    import httpx
    from websockets.asyncio.client import connect

    conns = [await connect(f"ws://127.0.0.1:{port}/api/v1/stream", max_size=None) for _ in range(clients)]
    lat: list[float] = []

    async def read(ws: Any) -> None:
        for _ in range(pushes):
            msg = json.loads(await ws.recv())
            lat.append((time.time_ns() - msg["SentNs"]) / 1e6)

    readers = [asyncio.create_task(read(ws)) for ws in conns]
    await asyncio.sleep(0.2)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as http:
        await http.post("/bench/push", params={"n": pushes})
    await asyncio.wait_for(asyncio.gather(*readers), 120)
    elapsed = time.perf_counter() - t0
    for ws in conns:
        await ws.close()
    return statistics.median(lat), _pct(lat, 99), len(lat) / elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--pushes", type=int, default=200)
    ap.add_argument("--serve", nargs=2, metavar=("DB_URL", "PORT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    from bulwark.natsserver.process import free_port, wait_for_port

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "alerts.db"
        secs, first_ts = load(db, args.rows)
        print(f"loaded {args.rows:,} alerts in {secs:.1f} s ({args.rows / secs:,.0f} rows/s, bulk executemany)")
        port = free_port()
        server = subprocess.Popen([sys.executable, __file__, "--serve", f"sqlite:///{db}", str(port)], cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT)})
        try:
            wait_for_port(port, 60)
            time_queries(f"http://127.0.0.1:{port}", args.requests, first_ts, args.rows)
            one = asyncio.run(fan_out(port, 1, args.pushes))
            many = asyncio.run(fan_out(port, args.clients, args.pushes))
            print(f"websocket fan-out, {args.pushes} alerts: 1 client median {one[0]:.2f} ms p99 {one[1]:.2f} ms; "
                  f"{args.clients} clients median {many[0]:.2f} ms p99 {many[1]:.2f} ms, {many[2]:,.0f} deliveries/s; "
                  f"ratio median {many[0] / one[0]:.1f}x, p99 {many[1] / one[1]:.1f}x")
        finally:
            server.terminate()
            server.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
