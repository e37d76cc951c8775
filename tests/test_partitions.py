"""Day partitions of fixes and samples on PostgreSQL (migration 0007, collector.storage.partitions)."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.orm import Session

from collector.ingest.ingestor import Ingestor
from collector.jobs.retention import RetentionPolicy, run_retention
from collector.runtime import PARTITION_DAYS_AHEAD, CollectorRuntime
from collector.settings import Limits, RiskSettings, Settings
from collector.storage.database import alembic_config, create_engine, migrate
from collector.storage.partitions import (
    DAY_MS,
    day_partitions,
    drop_partitions_before,
    ensure_partitions,
    is_partitioned,
    partition_name,
)
from protocol import SignalSample
from tests.fake_devices import NOW, T0, FakeDevice, count, register

DAY0 = T0 - T0 % DAY_MS  # 2023-11-14T00:00Z


def rows_in(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f'SELECT count(*) FROM "{table}"')).scalar_one())


def store_days(engine: sa.Engine, truck: FakeDevice, days: range) -> Ingestor:
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW + 10 * DAY_MS)
    for seq, day in enumerate(days, start=1):
        t0 = T0 + day * DAY_MS
        sample = (SignalSample("ignition", t0, True),)
        ingest.handle(truck.topic, truck.sealed(seq, t0=t0, fixes=5, samples=sample))
    return ingest


def test_sqlite_keeps_plain_tables_and_the_functions_do_nothing(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with engine.begin() as conn:
        assert not is_partitioned(conn, "fixes")
        assert ensure_partitions(conn, "fixes", DAY0, DAY0 + 3 * DAY_MS) == []
        assert drop_partitions_before(conn, "fixes", NOW) == ([], 0)
    engine.dispose()


def test_rows_land_in_day_partitions_and_a_late_day_is_moved_out_of_the_default(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    truck = FakeDevice("truck-1")
    register(engine, truck)
    with engine.begin() as conn:
        assert is_partitioned(conn, "fixes")
        assert is_partitioned(conn, "samples")
        created = ensure_partitions(conn, "fixes", DAY0, DAY0 + 2 * DAY_MS)
        assert created == ["fixes_p20231114", "fixes_p20231115"]
        assert ensure_partitions(conn, "fixes", DAY0, DAY0 + 2 * DAY_MS) == []  # idempotent
    store_days(engine, truck, range(4))  # days 0-1 have partitions, days 2-3 land in the default
    assert (rows_in(engine, "fixes_p20231114"), rows_in(engine, "fixes_p20231115")) == (5, 5)
    assert rows_in(engine, "fixes_default") == 10
    assert rows_in(engine, "samples_default") == 4
    with engine.begin() as conn:
        assert ensure_partitions(conn, "fixes", DAY0 + 2 * DAY_MS, DAY0 + 3 * DAY_MS) == ["fixes_p20231116"]
        bounds = day_partitions(conn, "fixes")
    assert rows_in(engine, "fixes_p20231116") == 5  # moved out of the default partition
    assert rows_in(engine, "fixes_default") == 5
    assert bounds["fixes_p20231116"] == (DAY0 + 2 * DAY_MS, DAY0 + 3 * DAY_MS)
    assert count(engine, "fixes") == 20
    # the one-day track of one vehicle reads one partition through (device_id, time_ms)
    with engine.connect() as conn:
        plan = "\n".join(
            conn.execute(
                sa.text(
                    "EXPLAIN SELECT time_ms, lat, lon FROM fixes WHERE device_id = 'truck-1' "
                    f"AND time_ms >= {DAY0 + DAY_MS} AND time_ms < {DAY0 + 2 * DAY_MS} ORDER BY time_ms"
                )
            ).scalars()
        )
    assert "fixes_p20231115" in plan
    assert "fixes_p20231114" not in plan
    assert "fixes_default" not in plan
    engine.dispose()


def test_retention_drops_whole_partitions_and_deletes_only_the_rest(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    truck = FakeDevice("truck-1")
    register(engine, truck)
    with engine.begin() as conn:
        ensure_partitions(conn, "fixes", DAY0, DAY0 + 3 * DAY_MS)
    store_days(engine, truck, range(5))  # days 3 and 4 in the default partition
    now = DAY0 + 2 * DAY_MS + 23 * 3_600_000 + 90 * DAY_MS  # cut-off: day 2, 23:00 (its fixes are at 22:13)
    with Session(engine) as session:
        report = run_retention(session, now, RetentionPolicy(fix_days=90))
        session.commit()
    assert report.fixes_deleted == 10 + 5  # days 0-1 dropped; day 2 (a partial day) deleted
    assert report.day_summaries_written == 3
    with engine.connect() as conn:
        assert sorted(day_partitions(conn, "fixes")) == ["fixes_p20231116"]
    assert count(engine, "fixes") == 10
    assert rows_in(engine, "fixes_default") == 10
    engine.dispose()


def test_migration_keeps_existing_rows_both_ways(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine, "0006")
    truck = FakeDevice("truck-1")
    register(engine, truck)
    store_days(engine, truck, range(3))
    migrate(engine, "0007")
    with engine.connect() as conn:
        assert sorted(day_partitions(conn, "fixes")) == [partition_name("fixes", DAY0 + d * DAY_MS) for d in range(3)]
    assert count(engine, "fixes") == 15
    assert count(engine, "samples") == 3
    assert rows_in(engine, "fixes_p20231115") == 5
    Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW).handle(
        truck.topic, truck.sealed(10, t0=T0, fixes=5)
    )  # the id sequence carried over: no key clash with the copied rows
    assert count(engine, "fixes") == 20
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0006")
    with engine.connect() as conn:
        assert not is_partitioned(conn, "fixes")
    assert count(engine, "fixes") == 20
    engine.dispose()


def test_the_runtime_creates_the_day_partitions_ahead_at_start(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    runtime = CollectorRuntime(
        Settings(risk=RiskSettings(reassess_interval_s=3600)), engine, ingest=False, clock_ms=lambda: T0
    )
    runtime.start()
    try:
        assert runtime.partitions is not None
        with engine.connect() as conn:
            days = sorted(day_partitions(conn, "fixes"))
            assert sorted(day_partitions(conn, "samples")) == [d.replace("fixes", "samples") for d in days]
        assert days == [partition_name("fixes", DAY0 + d * DAY_MS) for d in range(-1, PARTITION_DAYS_AHEAD + 1)]
        assert runtime.ensure_partitions() == {"fixes": [], "samples": []}  # the hourly run: nothing new
    finally:
        runtime.stop()
    engine.dispose()


def _refused(engine: sa.Engine, statement: str) -> str:
    """The foreign_key_violation message ``statement`` is refused with (the transaction rolls back)."""
    with pytest.raises(sa.exc.IntegrityError) as refused, engine.begin() as conn:
        conn.execute(sa.text(statement))
    assert getattr(refused.value.orig, "sqlstate", None) == "23503"
    return str(refused.value.orig)


def test_batch_references_are_checked_per_statement_and_the_downgrade_restores_the_keys(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    truck = FakeDevice("truck-1")
    register(engine, truck)
    store_days(engine, truck, range(2))  # two batches, 10 fixes, 2 samples
    with engine.connect() as conn:
        ids = sorted(conn.execute(sa.text("SELECT id FROM batches")).scalars())
        constraints = set(conn.execute(sa.text("SELECT conname FROM pg_constraint WHERE contype = 'f'")).scalars())
    assert not constraints & {"fk_fixes_batch_id_batches", "fk_samples_batch_id_batches"}
    dangling = ids[-1] + 1000
    columns = "INSERT INTO fixes (batch_id, device_id, time_ms, lat, lon, mode) SELECT {} FROM fixes"
    copy = columns.format("batch_id, device_id, time_ms + 1, lat, lon, mode")
    copy_dangling = columns.format(f"{dangling}, device_id, time_ms + 1, lat, lon, mode")
    message = _refused(engine, copy_dangling)
    assert "violates the batch reference" in message
    assert f"({dangling})" in message
    sample = f"({dangling}, 'truck-1', 'ignition', {T0}, 'true')"
    _refused(engine, f"INSERT INTO samples (batch_id, device_id, name, time_ms, value) VALUES {sample}")
    _refused(engine, f"UPDATE fixes SET batch_id = {dangling} WHERE batch_id = {ids[0]}")
    assert "still referenced" in _refused(engine, f"DELETE FROM batches WHERE id = {ids[0]}")
    _refused(engine, f"UPDATE batches SET id = {dangling} WHERE id = {ids[1]}")
    _refused(engine, "TRUNCATE batches CASCADE")
    with engine.begin() as conn:  # rows naming existing batches go in: one statement, many rows, both batches
        conn.execute(sa.text(copy))
        conn.execute(sa.text("DELETE FROM fixes WHERE batch_id = :b"), {"b": ids[1]})
        conn.execute(sa.text("DELETE FROM samples WHERE batch_id = :b"), {"b": ids[1]})
        conn.execute(sa.text("DELETE FROM batches WHERE id = :b"), {"b": ids[1]})  # no longer referenced
    assert count(engine, "fixes") == 10
    assert count(engine, "batches") == 1
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, "0015")
    with engine.connect() as conn:
        constraints = set(conn.execute(sa.text("SELECT conname FROM pg_constraint WHERE contype = 'f'")).scalars())
    assert {"fk_fixes_batch_id_batches", "fk_samples_batch_id_batches"} <= constraints
    assert "is not present" in _refused(engine, copy_dangling)
    migrate(engine)
    engine.dispose()
