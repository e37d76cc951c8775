"""The ingest core (collector.ingest.ingestor.Ingestor) on SQLite and PostgreSQL, no broker.

Every test runs twice through the ``engine`` fixture: a SQLite file and a fresh
PostgreSQL database. Times are fixed (the Ingestor gets an injected clock).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from collector.errors import DatabaseUnavailableError
from collector.ingest.ingestor import Ingestor, Outcome, StoredBatch, StoredState
from collector.ingest.registry import DeviceRegistry
from collector.settings import Limits
from collector.storage.database import compared_with_models, create_engine, migrate
from collector.storage.tables import Base
from firmware_sim.rig import free_port
from protocol import (
    Alert,
    DailyStats,
    Severity,
    SignalSample,
    decode_batch,
    encode_batch,
    seal_batch,
    state_topic,
)
from protocol.cose import ALG, ALG_EDDSA, KID, sign1
from tests.fake_devices import BOOT_B, NOW, T0, FakeDevice, count, dead_letters, register, status_row


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    db = create_engine(database_url)
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def truck() -> FakeDevice:
    return FakeDevice("truck-1")


@pytest.fixture
def ingestor(engine: sa.Engine, truck: FakeDevice) -> Ingestor:
    register(engine, truck)
    return Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)


# ------------------------------------------------------------------ schema


MY_TABLES = {"devices", "device_keys", "registry_version", "batches", "fixes", "samples", "alerts", "daily_stats",
             "device_status", "dead_letters"}  # fmt: skip


def _tables_in(diff: object) -> set[str]:
    """Table names an Alembic autogenerate diff entry talks about."""
    names: set[str] = set()
    for item in diff if isinstance(diff, list) else [diff]:
        for part in item:  # type: ignore[union-attr]
            if isinstance(part, sa.Table):
                names.add(part.name)
            elif isinstance(part, (sa.Index, sa.Column, sa.Constraint)) and part.table is not None:
                names.add(part.table.name)
            elif isinstance(part, str):
                names.add(part)
    return names


def test_migration_matches_models(engine: sa.Engine) -> None:
    def my_diffs() -> list[object]:
        with engine.connect() as conn:
            diffs = compare_metadata(
                MigrationContext.configure(conn, opts={"compare_type": True, "include_object": compared_with_models}),
                Base.metadata,
            )
        return [d for d in diffs if _tables_in(d) & MY_TABLES]

    assert my_diffs() == []
    with engine.begin() as conn:
        assert conn.execute(sa.text("SELECT version FROM registry_version WHERE id = 1")).scalar_one() == 0
        conn.execute(sa.text("DROP INDEX ix_fixes_device_time"))
    assert [d[0] for d in my_diffs()] == ["add_index"]  # type: ignore[index]  # the comparison does see drift


def test_migrate_twice_is_a_no_op(engine: sa.Engine) -> None:
    migrate(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one() >= "0001"


def test_sequence_numbers_use_the_full_unsigned_64_bit_range(ingestor: Ingestor, truck: FakeDevice) -> None:
    for seq in (1, 2**63 - 1, 2**63, 2**64 - 1):
        assert ingestor.handle(truck.topic, truck.sealed(seq)).outcome is Outcome.STORED
    assert ingestor.handle(truck.topic, truck.sealed(2**64 - 1)).outcome is Outcome.DUPLICATE
    t = Base.metadata.tables["batches"]
    with ingestor.engine.connect() as conn:
        assert sorted(conn.execute(sa.select(t.c.seq)).scalars()) == [1, 2**63 - 1, 2**63, 2**64 - 1]


# ------------------------------------------------------------------ idempotence


def test_same_batch_three_times_is_stored_once(ingestor: Ingestor, truck: FakeDevice) -> None:
    message = truck.sealed(7, fixes=600)
    outcomes = [ingestor.handle(truck.topic, message).outcome for _ in range(3)]
    assert outcomes == [Outcome.STORED, Outcome.DUPLICATE, Outcome.DUPLICATE]
    assert count(ingestor.engine, "batches") == 1
    assert count(ingestor.engine, "fixes") == 600
    status = status_row(ingestor.engine, "truck-1")
    assert (status["batches_stored"], status["fixes_stored"], status["duplicates"]) == (1, 600, 2)
    assert ingestor.counters["stored"] == 1
    assert ingestor.counters["duplicates"] == 2
    assert ingestor.metrics.registry.get_sample_value("lienwatch_ingest_duplicates_total") == 2.0
    assert ingestor.metrics.registry.get_sample_value("lienwatch_ingest_fixes_stored_total") == 600.0


def test_everything_in_a_batch_is_stored(ingestor: Ingestor, truck: FakeDevice) -> None:
    samples = (
        SignalSample("Vehicle.Speed", T0 + 10, 42.5),
        SignalSample("Vehicle.LowVoltageSystemState", T0 + 20, "ON"),
        SignalSample("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", T0 + 30, True),
        SignalSample("Vehicle.TraveledDistance", T0 + 40, 12345),
    )
    alert = Alert("stationary_near_market", Severity.HIGH, T0 + 50, "ep-1", evidence={"market": "sh-jiading-ucm",
                  "dwell_s": 259200, "track": [[31.3, 121.25]]})  # fmt: skip
    stats = DailyStats("2023-11-15", T0 + 60, 1500.0, 600.0, 1, 2, odometer_km=12345.0)
    assert (
        ingestor.handle(
            truck.topic,
            truck.sealed(1, samples=samples, alerts=(alert,), stats=(stats,), counters={"dropped_samples": 3}),
        ).outcome
        is Outcome.STORED
    )
    engine = ingestor.engine
    with engine.connect() as conn:
        s = Base.metadata.tables["samples"]
        values = dict(conn.execute(sa.select(s.c.name, s.c.value)).all())
        a = Base.metadata.tables["alerts"]
        alert_row = conn.execute(sa.select(a)).mappings().one()
        d = Base.metadata.tables["daily_stats"]
        stats_row = conn.execute(sa.select(d)).mappings().one()
        b = Base.metadata.tables["batches"]
        ledger = conn.execute(sa.select(b)).mappings().one()
    assert values == {
        "Vehicle.Speed": 42.5,
        "Vehicle.LowVoltageSystemState": "ON",
        "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen": True,
        "Vehicle.TraveledDistance": 12345,
    }
    assert (alert_row["rule"], alert_row["severity"], alert_row["state"], alert_row["episode"]) == (
        "stationary_near_market", 2, 0, "ep-1")  # fmt: skip
    assert alert_row["evidence"] == {"market": "sh-jiading-ucm", "dwell_s": 259200, "track": [[31.3, 121.25]]}
    assert (stats_row["day"], stats_row["distance_m"], stats_row["harsh_brake"], stats_row["final"]) == (
        "2023-11-15", 1500.0, 2, False)  # fmt: skip
    assert ledger["counters"] == {"dropped_samples": 3}
    assert (ledger["first_time_ms"], ledger["last_time_ms"], ledger["received_ms"]) == (T0, T0 + 2000, NOW)
    assert (ledger["fix_count"], ledger["sample_count"], ledger["alert_count"], ledger["stats_count"]) == (3, 4, 1, 1)
    status = status_row(engine, "truck-1")
    assert status["device_counters"] == {"dropped_samples": 3}
    assert (status["last_fix_ms"], status["last_lat"], status["last_lon"]) == (T0 + 2000, 31.2002, 121.4002)


# ------------------------------------------------------------------ out of order and late data


def test_late_batch_is_stored_but_latest_state_does_not_go_back(ingestor: Ingestor, truck: FakeDevice) -> None:
    week = 7 * 86_400_000
    recent = truck.sealed(20, t0=T0)
    late = truck.sealed(10, t0=T0 - week)  # a truck back from a week without coverage
    assert ingestor.handle(truck.topic, recent).outcome is Outcome.STORED
    before = status_row(ingestor.engine, "truck-1")
    assert ingestor.handle(truck.topic, late).outcome is Outcome.STORED
    after = status_row(ingestor.engine, "truck-1")
    for key in ("last_fix_ms", "last_lat", "last_lon", "last_speed_mps", "last_seen_ms", "counters_time_ms"):
        assert after[key] == before[key], key
    assert after["last_fix_ms"] == T0 + 2000
    assert after["batches_stored"] == 2
    f = Base.metadata.tables["fixes"]
    with ingestor.engine.connect() as conn:
        times = list(conn.execute(sa.select(f.c.time_ms).order_by(f.c.time_ms)).scalars())
    assert times == [T0 - week, T0 - week + 1000, T0 - week + 2000, T0, T0 + 1000, T0 + 2000]


def test_daily_stats_keep_the_newest_figures(ingestor: Ingestor, truck: FakeDevice) -> None:
    newer = DailyStats("2023-11-15", T0 + 5000, 2000.0, 700.0, 0, 0)
    older = DailyStats("2023-11-15", T0 + 1000, 900.0, 300.0, 0, 0)
    ingestor.handle(truck.topic, truck.sealed(1, stats=(newer,)))
    ingestor.handle(truck.topic, truck.sealed(2, stats=(older,)))
    d = Base.metadata.tables["daily_stats"]
    with ingestor.engine.connect() as conn:
        assert conn.execute(sa.select(d.c.distance_m, d.c.time_ms)).one() == (2000.0, T0 + 5000)


def test_state_topic_orders_online_and_offline(ingestor: Ingestor, truck: FakeDevice) -> None:
    topic = state_topic("truck-1")
    steps = [
        (truck.state(True, T0 + 100), Outcome.STATE_APPLIED, True),
        (truck.state(False, T0 + 100), Outcome.STATE_APPLIED, False),  # Last Will of the same boot
        (truck.state(True, T0 + 50), Outcome.STATE_STALE, False),  # old birth, redelivered
        (truck.state(True, T0 + 200, BOOT_B), Outcome.STATE_APPLIED, True),  # new boot
        (truck.state(False, T0 + 100), Outcome.STATE_STALE, True),  # previous boot's will, late
    ]
    for message, outcome, online in steps:
        assert ingestor.handle(topic, message).outcome is outcome
        assert status_row(ingestor.engine, "truck-1")["online"] is online
    assert status_row(ingestor.engine, "truck-1")["state_time_ms"] == T0 + 200


# ------------------------------------------------------------------ refusals


def _forged(truck: FakeDevice) -> bytes:
    other = FakeDevice("someone-else")
    return seal_batch(truck.batch(1), other.key, truck.topic)


def _tampered(truck: FakeDevice) -> bytes:
    message = bytearray(truck.sealed(1))
    message[-70] ^= 0x01  # a payload byte just before the 64-byte signature
    return bytes(message)


def _depth_bomb_envelope(_truck: FakeDevice) -> bytes:
    return b"\xd2" + b"\x81" * 10_000 + b"\x00"


def _depth_bomb_signed(truck: FakeDevice) -> bytes:
    payload = b"\x81" * 200 + b"\x00"
    return sign1(payload, truck.key, protected={ALG: ALG_EDDSA, KID: b"truck-1"}, external_aad=truck.topic.encode())


REFUSALS = [
    ("forged", lambda d: (d.topic, _forged(d)), "bad_signature"),
    ("tampered", lambda d: (d.topic, _tampered(d)), "bad_signature"),
    ("unknown_device", lambda d: ("lw/v1/ghost/batch", FakeDevice("ghost").sealed(1)), "unknown_device"),
    ("other_devices_topic", lambda d: ("lw/v1/truck-2/batch", d.sealed(1)), "device_mismatch"),
    ("bad_topic", lambda d: ("lw/v1/truck$1/batch", d.sealed(1)), "bad_topic"),
    ("foreign_topic", lambda d: ("lw/v2/truck-1/batch", d.sealed(1)), "bad_topic"),
    ("downlink_topic", lambda d: ("lw/v1/truck-1/config", d.sealed(1)), "bad_topic"),
    ("oversized", lambda d: (d.topic, b"\xd2" + b"\x00" * (1 << 20)), "oversized"),
    ("truncated", lambda d: (d.topic, d.sealed(1)[:-10]), "truncated"),
    ("empty", lambda d: (d.topic, b""), "invalid_envelope"),
    ("garbage", lambda d: (d.topic, b"GET / HTTP/1.1\r\n\r\n"), "invalid_envelope"),
    ("trailing_bytes", lambda d: (d.topic, d.sealed(1) + b"\x00"), "trailing_bytes"),
    ("depth_bomb_envelope", lambda d: (d.topic, _depth_bomb_envelope(d)), "too_deep"),
    ("depth_bomb_signed", lambda d: (d.topic, _depth_bomb_signed(d)), "too_deep"),
    ("state_on_batch_topic", lambda d: (d.topic, d.state(True, T0)), "bad_signature"),
    ("time_in_future", lambda d: (d.topic, d.sealed(1, t0=NOW + 2 * 86_400_000)), "time_in_future"),
]


@pytest.mark.parametrize(("make", "reason"), [(m, r) for _, m, r in REFUSALS], ids=[n for n, _, _ in REFUSALS])
def test_refused_message_is_dead_lettered_and_traffic_keeps_flowing(
    ingestor: Ingestor, truck: FakeDevice, make: object, reason: str
) -> None:
    register(ingestor.engine, FakeDevice("truck-2"))
    topic, message = make(truck)  # type: ignore[operator]
    assert ingestor.handle(truck.topic, truck.sealed(100)).outcome is Outcome.STORED
    result = ingestor.handle(topic, message)
    assert (result.outcome, result.reason) == (Outcome.DEAD_LETTERED, reason)
    assert ingestor.handle(truck.topic, truck.sealed(101)).outcome is Outcome.STORED
    [letter] = dead_letters(ingestor.engine)
    assert (letter["reason"], letter["topic"], letter["received_ms"]) == (reason, topic, NOW)
    assert letter["payload"] == message[: Limits().dead_letter_keep_bytes]
    assert letter["payload_bytes"] == len(message)
    assert letter["detail"] == result.detail
    assert result.detail
    assert count(ingestor.engine, "batches") == 2
    assert ingestor.counters[f"dead_letter:{reason}"] == 1
    assert ingestor.metrics.registry.get_sample_value("lienwatch_ingest_dead_letters_total", {"reason": reason}) == 1.0


def test_revoked_key_is_refused_promptly(ingestor: Ingestor, truck: FakeDevice) -> None:
    assert ingestor.handle(truck.topic, truck.sealed(1)).outcome is Outcome.STORED
    DeviceRegistry(ingestor.engine, clock_ms=lambda: T0 + 5).revoke("truck-1")
    result = ingestor.handle(truck.topic, truck.sealed(2))
    assert (result.outcome, result.reason) == (Outcome.DEAD_LETTERED, "unknown_device")
    assert result.detail == f"no active key for device 'truck-1' (its key was revoked at {T0 + 5} ms)"
    # A duplicate of a batch stored before the revoke is refused too: the key is gone.
    assert ingestor.handle(truck.topic, truck.sealed(1)).reason == "unknown_device"


def test_key_cache_honours_its_ttl(engine: sa.Engine, truck: FakeDevice) -> None:
    register(engine, truck)
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=3600), clock_ms=lambda: NOW)
    assert ingestor.handle(truck.topic, truck.sealed(1)).outcome is Outcome.STORED
    DeviceRegistry(engine).revoke("truck-1")
    # Within the TTL the cached key is still used (documented: revocation within ttl)...
    assert ingestor.handle(truck.topic, truck.sealed(2)).outcome is Outcome.STORED
    # ...while a device added after the cache was filled is found at once.
    newcomer = FakeDevice("truck-9")
    register(engine, newcomer)
    assert ingestor.handle(newcomer.topic, newcomer.sealed(1)).outcome is Outcome.STORED
    assert ingestor.handle(truck.topic, truck.sealed(3)).reason == "unknown_device"


def test_commit_hooks_see_what_was_stored(ingestor: Ingestor, truck: FakeDevice) -> None:
    events: list[StoredBatch | StoredState] = []

    def broken_hook(_event: object) -> None:
        raise RuntimeError("risk engine bug")

    ingestor.on_commit += [events.append, broken_hook]
    ingestor.handle(truck.topic, truck.sealed(5))
    ingestor.handle(truck.topic, truck.sealed(5))
    ingestor.handle(state_topic("truck-1"), truck.state(True, T0))
    ingestor.handle(truck.topic, b"junk")
    assert [(type(e).__name__, e.device_id) for e in events] == [
        ("StoredBatch", "truck-1"), ("StoredBatch", "truck-1"), ("StoredState", "truck-1")]  # fmt: skip
    first, second, state = events
    assert isinstance(first, StoredBatch)
    assert isinstance(second, StoredBatch)
    assert isinstance(state, StoredState)
    assert (first.seq, first.duplicate, first.batch.seq, second.duplicate, second.batch_id) == (5, False, 5, True, None)
    assert first.batch.to_batch() == decode_batch(encode_batch(truck.batch(5)))  # what the wire carried
    assert (state.applied, state.state.online) == (True, True)
    assert ingestor.counters["hook_errors"] == 3
    assert count(ingestor.engine, "batches") == 1


def test_unreachable_database_raises_instead_of_dead_lettering(truck: FakeDevice) -> None:
    engine = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing")
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    with pytest.raises(DatabaseUnavailableError, match="database unreachable"):
        ingestor.handle(truck.topic, truck.sealed(1))
    with pytest.raises(DatabaseUnavailableError):
        ingestor.handle(truck.topic, b"junk")  # even a dead letter needs the database
    assert ingestor.counters["dead_letters"] == 0
    engine.dispose()
