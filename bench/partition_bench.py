"""Fixes on PostgreSQL at fleet scale: day partitions vs one plain table.

One private PostgreSQL (firmware_sim.rig.Postgres), the collector schema migrated (``fixes``
partitioned by UTC day of ``time_ms``, migration 0007) and a plain copy ``fixes_plain``
with the same columns and indexes. Both get the same ``--rows`` fixes (default 10 million),
generated in the database with ``generate_series`` (not through MQTT): ``--vehicles``
vehicles over ``--days`` days, each vehicle's fixes evenly spread in time. Then, in the
same run:

1. the one-day track of one vehicle (``WHERE device_id = ? AND time_ms`` in one UTC day
   ``ORDER BY time_ms``), ``--queries`` times over random vehicles and days: median and
   worst milliseconds on each table;
2. retention of the oldest ``--drop-days`` days: ``DROP TABLE`` of the day partitions
   (collector.storage.partitions.drop_partitions_before, counting their rows first) vs
   ``DELETE ... WHERE time_ms < cut-off`` on the plain table: seconds and the ratio.

Rerun:

    .venv/bin/python bench/partition_bench.py [--rows 10000000] [--vehicles 1000] [--days 30] [--drop-days 7]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time

import sqlalchemy as sa

from collector.storage.database import create_engine, migrate
from collector.storage.partitions import DAY_MS, drop_partitions_before, ensure_partitions
from firmware_sim.rig import Postgres

START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def generate(conn: sa.Connection, table: str, rows: int, vehicles: int, days: int) -> None:
    per_vehicle = rows // vehicles
    step = days * DAY_MS // per_vehicle
    conn.execute(
        sa.text(
            f"INSERT INTO {table} (batch_id, device_id, time_ms, lat, lon, speed_mps, mode, hdop, sats_used) "
            "SELECT 1, 'v' || lpad((g % :v)::text, 6, '0'), :start + (g / :v) * :step + (g % :v), "
            "31.2 + (g % 1000) * 1e-4, 121.4 + (g % 997) * 1e-4, 12.5, 3, 0.9, 11 "
            "FROM generate_series(0::bigint, :n - 1) AS g"
        ),
        {"v": vehicles, "start": START_MS, "step": step, "n": per_vehicle * vehicles},
    )


def track_queries(engine: sa.Engine, *, vehicles: int, days: int, n: int, seed: int) -> dict[str, list[float]]:
    """Milliseconds per one-day track query on each table: the same (vehicle, day) pairs, the
    tables alternating (so neither has the other's warm cache), after one warm-up pass."""
    rng = random.Random(seed)
    pairs = [(f"v{rng.randrange(vehicles):06d}", START_MS + rng.randrange(days) * DAY_MS) for _ in range(n)]
    times: dict[str, list[float]] = {"fixes": [], "fixes_plain": []}
    with engine.connect() as conn:
        for measured in (False, True):
            for i, (device, day) in enumerate(pairs):
                for table in ("fixes", "fixes_plain") if i % 2 else ("fixes_plain", "fixes"):
                    query = sa.text(
                        f"SELECT time_ms, lat, lon FROM {table} WHERE device_id = :d AND time_ms >= :a "
                        "AND time_ms < :b ORDER BY time_ms"
                    )
                    started = time.perf_counter()
                    got = conn.execute(query, {"d": device, "a": day, "b": day + DAY_MS}).all()
                    if measured:
                        times[table].append((time.perf_counter() - started) * 1000)
                    assert got, f"no track for {device} on day {day} in {table}"
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="fixes in each table (default 10,000,000)")
    parser.add_argument("--vehicles", type=int, default=1000, help="vehicles (default 1000)")
    parser.add_argument("--days", type=int, default=30, help="days the fixes span (default 30)")
    parser.add_argument("--drop-days", type=int, default=7, help="oldest days removed by retention (default 7)")
    parser.add_argument("--queries", type=int, default=50, help="one-day track queries per table (default 50)")
    args = parser.parse_args()

    print(f"cores: {os.cpu_count()}; load: {os.getloadavg()[0]:.2f}", flush=True)
    with Postgres() as postgres:
        engine = create_engine(postgres.url)
        migrate(engine)
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO devices (device_id, created_ms) VALUES ('bench', 0)"))
            conn.execute(
                sa.text(
                    "INSERT INTO batches (device_id, seq, boot_id, created_ms, received_ms, fix_count, sample_count, "
                    "alert_count, stats_count, counters, message_bytes) "
                    "VALUES ('bench', 1, decode('00000000000000000000000000000000', 'hex'), 0, 0, 0, 0, 0, 0, '{}', 0)"
                )
            )
            conn.execute(sa.text("CREATE TABLE fixes_plain (LIKE fixes INCLUDING DEFAULTS)"))
            conn.execute(sa.text("ALTER TABLE fixes_plain ADD PRIMARY KEY (id)"))
            conn.execute(sa.text("ALTER TABLE fixes_plain ADD FOREIGN KEY (batch_id) REFERENCES batches (id)"))
            conn.execute(sa.text("CREATE INDEX ON fixes_plain (batch_id)"))
            conn.execute(sa.text("CREATE INDEX ON fixes_plain (device_id, time_ms)"))
            created = ensure_partitions(conn, "fixes", START_MS, START_MS + args.days * DAY_MS)
        print(f"{len(created)} day partitions; generating {args.rows:,} fixes per table ...", flush=True)
        for table in ("fixes", "fixes_plain"):
            started = time.perf_counter()
            with engine.begin() as conn:
                generate(conn, table, args.rows, args.vehicles, args.days)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(sa.text(f"VACUUM ANALYZE {table}"))
                total = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            print(f"  {table}: {total:,} rows in {time.perf_counter() - started:.1f} s", flush=True)

        tracks = track_queries(engine, vehicles=args.vehicles, days=args.days, n=args.queries, seed=7)
        with engine.connect() as conn:
            plan = conn.execute(
                sa.text(
                    "EXPLAIN SELECT time_ms, lat, lon FROM fixes WHERE device_id = 'v000042' "
                    f"AND time_ms >= {START_MS + DAY_MS} AND time_ms < {START_MS + 2 * DAY_MS} ORDER BY time_ms"
                )
            ).scalars()
            plan_text = "\n    ".join(plan)

        cutoff = START_MS + args.drop_days * DAY_MS
        with engine.connect() as conn:
            started = time.perf_counter()
            doomed = conn.execute(sa.text("SELECT count(*) FROM fixes WHERE time_ms < :c"), {"c": cutoff}).scalar_one()
            count_s = time.perf_counter() - started
        started = time.perf_counter()
        with engine.begin() as conn:
            dropped, dropped_rows = drop_partitions_before(conn, "fixes", cutoff)
            leftover = conn.execute(sa.text("DELETE FROM fixes WHERE time_ms < :c"), {"c": cutoff}).rowcount
        drop_s = time.perf_counter() - started
        started = time.perf_counter()
        with engine.begin() as conn:
            deleted = conn.execute(sa.text("DELETE FROM fixes_plain WHERE time_ms < :c"), {"c": cutoff}).rowcount
        delete_s = time.perf_counter() - started
        engine.dispose()

    print()
    per_day = args.rows // args.vehicles // args.days
    print(f"one-day track of one vehicle ({args.queries} queries, ~{per_day} fixes each)")
    print(f"{'table':<28} {'median ms':>10} {'worst ms':>10}")
    for table, label in (("fixes", "partitioned by day"), ("fixes_plain", "plain table")):
        print(f"{label:<28} {statistics.median(tracks[table]):>10.2f} {max(tracks[table]):>10.2f}")
    print(f"plan on the partitioned table (one day, one vehicle):\n    {plan_text}")
    print()
    print(f"retention of the oldest {args.drop_days} days ({doomed:,} rows; counting them alone: {count_s:.2f} s)")
    print(
        f"  drop {len(dropped)} day partitions ({dropped_rows:,} rows, counted for the report first; "
        f"{leftover} left to DELETE): {drop_s:.2f} s"
    )
    print(f"  DELETE on the plain table ({deleted:,} rows): {delete_s:.2f} s")
    print(f"  DELETE / drop = {delete_s / drop_s:.1f}")
    print()
    print(
        f"rerun: .venv/bin/python bench/partition_bench.py --rows {args.rows} --vehicles {args.vehicles} "
        f"--days {args.days} --drop-days {args.drop_days} --queries {args.queries}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
