"""EV battery figures at the collector (#17): stored from signed batches, shown in the condition report.

Batches go through the real ingest path (verify, decode, store); the report is read through
collector.loans.store.vehicle_condition and the loans API's GET /v1/loans/{id}/condition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import cbor2
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.ingest.ingestor import Ingestor, Outcome
from collector.ingest.settings import Limits
from collector.loans.store import vehicle_condition
from collector.storage.database import create_engine, migrate
from collector.storage.tables import DailyStatsRecord
from protocol import Alert, AlertState, DailyStats, Severity, encode_batch
from protocol.cose import ALG, ALG_EDDSA, KID, sign1
from tests.fake_devices import FakeDevice, dead_letters, register

DAY_MS = 86_400_000
TODAY = date(2026, 11, 28)
TODAY_MS = (TODAY - date(1970, 1, 1)).days * DAY_MS


def ev_day(day: str, time_ms: int, soh: float, used: float, charged: float, sessions: int) -> DailyStats:
    return DailyStats(day, time_ms, 40_000.0, 3600.0, 0, 1, odometer_km=18_000.0, final=True, energy_used_kwh=used,
                      energy_charged_kwh=charged, charging_sessions=sessions, soh_percent=soh)


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def ev() -> FakeDevice:
    return FakeDevice("ev-1")


@pytest.fixture
def ingestor(engine: sa.Engine, ev: FakeDevice) -> Ingestor:
    register(engine, ev)
    return Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: TODAY_MS + DAY_MS // 2)


def test_ev_daily_figures_are_stored_and_the_newest_wins(ingestor: Ingestor, ev: FakeDevice) -> None:
    first = ev_day("2026-11-27", TODAY_MS - DAY_MS + 1000, 95.0, 12.5, 20.0, 1)
    assert ingestor.handle(ev.topic, ev.sealed(1, stats=(first,))).outcome is Outcome.STORED
    newer = dataclasses.replace(first, time_ms=first.time_ms + 5000, soh_percent=94.8, energy_used_kwh=13.0)
    assert ingestor.handle(ev.topic, ev.sealed(2, stats=(newer,))).outcome is Outcome.STORED
    assert ingestor.handle(ev.topic, ev.sealed(3, stats=(first,))).outcome is Outcome.STORED  # older: ignored
    with Session(ingestor.engine) as session:
        row = session.get(DailyStatsRecord, ("ev-1", "2026-11-27"))
        assert row is not None
        assert (row.soh_percent, row.energy_used_kwh, row.energy_charged_kwh, row.charging_sessions) == (
            94.8, 13.0, 20.0, 1)


def test_a_car_without_a_traction_battery_stores_none_and_has_no_battery_section(
    ingestor: Ingestor, ev: FakeDevice
) -> None:
    plain = DailyStats("2026-11-27", TODAY_MS - DAY_MS, 1000.0, 60.0, 0, 0)
    ingestor.handle(ev.topic, ev.sealed(1, stats=(plain,)))
    with Session(ingestor.engine) as session:
        report = vehicle_condition(session, "ev-1", TODAY)
    assert report["days"][0]["soh_percent"] is None
    assert report["days"][0]["energy_used_kwh"] is None
    assert report["battery"] is None


def test_the_condition_report_shows_battery_health_and_hv_disconnects(ingestor: Ingestor, ev: FakeDevice) -> None:
    days = [ev_day("2026-11-20", TODAY_MS - 8 * DAY_MS, 96.0, 10.0, 15.0, 1),
            ev_day("2026-11-27", TODAY_MS - DAY_MS, 91.5, 12.25, 0.0, 0)]
    raised = Alert("hv_disconnect", Severity.HIGH, TODAY_MS - 2 * DAY_MS, "hv-1", evidence={"parked": True})
    cleared = Alert("hv_disconnect", Severity.HIGH, TODAY_MS - 2 * DAY_MS + 60_000, "hv-1", state=AlertState.CLEARED)
    soh = Alert("soh_drop", Severity.WARNING, TODAY_MS - DAY_MS, "soh-1", evidence={"drop_points": 4.5})
    old = Alert("hv_disconnect", Severity.HIGH, TODAY_MS - 40 * DAY_MS, "hv-0")  # outside the 30 days
    ingestor.handle(ev.topic, ev.sealed(1, stats=tuple(days), alerts=(old, raised, cleared, soh)))
    with Session(ingestor.engine) as session:
        battery = vehicle_condition(session, "ev-1", TODAY)["battery"]
    assert battery == {
        "soh_percent": 91.5, "soh_day": "2026-11-27", "soh_change": -4.5, "energy_used_kwh": 22.25,
        "energy_charged_kwh": 15.0, "charging_sessions": 1, "hv_disconnects": 1,
        "last_hv_disconnect_ms": TODAY_MS - 2 * DAY_MS, "soh_drop_alerts": 1,
    }


def test_a_hostile_soh_on_the_wire_is_dead_lettered_not_stored(ingestor: Ingestor, ev: FakeDevice) -> None:
    batch = ev.batch(1, stats=(ev_day("2026-11-27", TODAY_MS, 90.0, 1.0, 1.0, 1),))
    payload = cbor2.loads(encode_batch(batch))
    payload[9][0][11] = 250.0  # soh_percent over 100
    forged = sign1(cbor2.dumps(payload), ev.key, protected={ALG: ALG_EDDSA, KID: b"ev-1"},
                   external_aad=ev.topic.encode())
    assert ingestor.handle(ev.topic, forged).outcome is Outcome.DEAD_LETTERED
    [dead] = dead_letters(ingestor.engine)
    assert dead["reason"] == "invalid_value"
    with Session(ingestor.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(DailyStatsRecord)) == 0
