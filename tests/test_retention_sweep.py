"""Retention over everything (issue #16): 100 days after closure, scan every table and column of the database.

The scan introspects the migrated schema (not the models), so a table added later is scanned
too, and must be in the registry (collector.jobs.data_registry) or this test fails.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.jobs.data_registry import REGISTRY, Policy, policy_of
from collector.jobs.retention import RetentionPolicy, run_retention
from collector.loans.lifecycle import change_status
from collector.storage.database import create_engine, migrate
from collector.storage.tables import (
    AccessGrant,
    AlertRecord,
    AuditEntry,
    BatchRecord,
    ConfigVersion,
    DailyStatsRecord,
    DeadLetter,
    Device,
    DeviceStatus,
    FixDaySummary,
    FixRecord,
    InstallmentRecord,
    LoanRecord,
    PlaceRecord,
    RepaymentRecord,
    RiskEventRecord,
    RiskStateRecord,
    SampleRecord,
    ScheduleVersion,
    WebhookDelivery,
)

DAY = 86_400_000
CLOSE = 1_795_858_800_000  # the settled loan closes here (2026-11-28)
LAT, LON = 31.2345678, 121.4567891  # where the settled loan's car was
LIVE_LAT, LIVE_LON = 30.5551234, 114.3337654  # the active loan's car
SETTLED = {"loan": "L-SETTLED", "device": "tbox-settled", "vin": "LSVAU218XN2183294", "borrower": "B-77aa01"}
LIVE = {"loan": "L-LIVE", "device": "tbox-live", "vin": "LFV2A21K2N3040001", "borrower": "B-91c4de"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    url = f"sqlite:///{tmp_path / 'c.db'}" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    db = create_engine(url)
    migrate(db)
    yield db
    db.dispose()


def _evidence(lat: float, lon: float) -> dict[str, Any]:
    return {"market_id": "m1", "centre_lat": lat, "centre_lon": lon, "dwell_s": 259_200,
            "track": [[lat, lon], [lat + 1e-5, lon]], "position": {"lat": lat, "lon": lon}}


def seed_vehicle(session: Session, who: dict[str, str], lat: float, lon: float, t: int, last_due: date) -> None:
    """Everything a vehicle under a loan leaves in the database, observed around ``t``."""
    device, loan = who["device"], who["loan"]
    session.add(Device(device_id=device, created_ms=t - 400 * DAY, label="box"))
    session.add(LoanRecord(loan_id=loan, device_id=device, vin=who["vin"], borrower_ref=who["borrower"],
                           principal_cents=8_000_000, created_ms=t - 400 * DAY))
    session.flush()
    batch = BatchRecord(device_id=device, seq=1, boot_id=b"\x01" * 16, created_ms=t, received_ms=t, fix_count=2,
                        sample_count=1, alert_count=1, stats_count=1, first_time_ms=t, last_time_ms=t, counters={},
                        message_bytes=300)
    session.add(batch)
    session.flush()
    for age in (30 * DAY, 5 * DAY):  # recent when the loan closed
        session.add(FixRecord(batch_id=batch.id, device_id=device, time_ms=t - age, lat=lat, lon=lon, speed_mps=3.0,
                              mode=3))
    session.add(SampleRecord(batch_id=batch.id, device_id=device, name="Vehicle.Speed", time_ms=t + 15 * DAY,
                             value=42.0))
    session.add(AlertRecord(batch_id=batch.id, device_id=device, rule="stationary_near_market", severity=2, state=0,
                            time_ms=t - 5 * DAY, episode="dwell-1", evidence=_evidence(lat, lon)))
    session.add(DailyStatsRecord(device_id=device, day="2026-11-20", batch_id=batch.id, time_ms=t - 8 * DAY,
                                 distance_m=1234.0, driving_s=600.0, harsh_accel=1, harsh_brake=0,
                                 odometer_km=12_345.0, final=True))
    session.add(FixDaySummary(device_id=device, day="2026-11-01", fix_count=10, first_ms=t - 27 * DAY,
                              last_ms=t - 27 * DAY + 3600_000, distance_m=999.0))
    session.add(DeviceStatus(device_id=device, last_fix_ms=t - 5 * DAY, last_lat=lat, last_lon=lon,
                             last_speed_mps=0.0, last_seen_ms=t + 20 * DAY, device_counters={"fixes": 9}))
    raw = b"\xd2\x84" + struct.pack(">d", lat) + struct.pack(">d", lon) + f"{lat},{lon}".encode()
    session.add(DeadLetter(received_ms=t + 20 * DAY, topic=f"lw/v1/{device}/batch", device_id=device,
                           reason="bad_signature", detail=f"refused near {lat:.7f}", payload=raw,
                           payload_bytes=len(raw), payload_sha256="0" * 64))
    session.add(InstallmentRecord(loan_id=loan, seq=1, due_date=last_due, amount_cents=100))
    session.add(RepaymentRecord(loan_id=loan, payment_id="P-1", paid_on=date(2020, 6, 1), amount_cents=100,
                                recorded_ms=t - 300 * DAY))
    session.add(ScheduleVersion(loan_id=loan, version=1, kind="original", reason="as first stored",
                                created_ms=t - 400 * DAY, created_by="import", installments=[["2020-06-01", 100]]))
    reasons = [{"code": "stationary_near_market", "evidence": {"alert": {"evidence": _evidence(lat, lon)}}}]
    session.add(RiskStateRecord(loan_id=loan, level="high", next_step="on_site_check", reasons=reasons,
                                facts={"days_past_due": 40}, evaluated_ms=t + 10 * DAY, changed_ms=t - 5 * DAY,
                                assessment={"collateral": {"reasons": reasons}}))
    for n, when in enumerate((t - 5 * DAY, t + 10 * DAY)):
        event_id = f"{loan}-event-{n}"
        session.add(RiskEventRecord(event_id=event_id, loan_id=loan, time_ms=when, old_level="watch",
                                    new_level="high", next_step="on_site_check", reasons=reasons))
        body = json.dumps({"loan_id": loan, "vin": who["vin"], "reasons": reasons}).encode()
        session.add(WebhookDelivery(event_id=event_id, url="https://lender.example/hook", body=body,
                                    status="delivered", attempts=1, next_attempt_ms=when, created_ms=when,
                                    delivered_ms=when))
    session.add(AccessGrant(loan_id=loan, requester="user:lee", requester_role="collections",
                            reason="recovery visit booked", scope="track", requested_ms=t - 3 * DAY,
                            duration_ms=3_600_000, status="approved", valid_from_ms=t - 3 * DAY,
                            valid_until_ms=t - 3 * DAY + 3_600_000, decided_by="user:ana", decided_ms=t - 3 * DAY,
                            emergency=False, review_needed=False))
    session.add(AuditEntry(time_ms=t - 3 * DAY, actor="user:lee", role="collections", action="read_track",
                           subject_type="loan", subject_id=loan, detail={"grant_id": 1, "points": 2}))
    session.add(ConfigVersion(device_id=device, version=1, issued_ms=t, payload=b"signed", published_ms=t))


def seed(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.add(PlaceRecord(place_id="m1", type="used_car_market", name="Jiading used-car market", lat=31.3,
                                lon=121.25, datum="gcj02", radius_m=400.0, updated_ms=CLOSE))
        seed_vehicle(session, SETTLED, LAT, LON, CLOSE, date(2020, 6, 1))  # matured long ago, settled now
        seed_vehicle(session, LIVE, LIVE_LAT, LIVE_LON, CLOSE + 95 * DAY, date(2027, 6, 1))
        session.flush()
        change_status(session, SETTLED["loan"], "settled", now_ms=CLOSE)
        session.commit()


def _coordinate_in(value: object, lat: float, lon: float) -> bool:
    if isinstance(value, float):
        return abs(value - lat) < 1e-6 or abs(value - lon) < 1e-6
    if isinstance(value, (bytes, memoryview)):
        raw = bytes(value)
        packed = [struct.pack(f"{order}d", v) for order in "<>" for v in (lat, lon)]
        return any(p in raw for p in packed) or _coordinate_in(raw.decode("latin-1"), lat, lon)
    if isinstance(value, (dict, list)):
        return _coordinate_in(json.dumps(value), lat, lon)
    if isinstance(value, str):
        return f"{lat:.5f}"[:-1] in value or f"{lon:.5f}"[:-1] in value
    return False


def _mentions(value: object, needles: tuple[str, ...]) -> bool:
    text = bytes(value).decode("latin-1") if isinstance(value, (bytes, memoryview)) else (
        json.dumps(value) if isinstance(value, (dict, list)) else str(value))
    return any(n in text for n in needles)


def scan(engine: sa.Engine) -> dict[str, list[tuple[str, str]]]:
    """Every table and column of the live schema: where the settled loan's coordinates or identity remain."""
    found: dict[str, list[tuple[str, str]]] = {"coordinates": [], "identity": [], "live_coordinates": []}
    inspector = sa.inspect(engine)
    identity = (SETTLED["vin"], SETTLED["borrower"], SETTLED["device"], SETTLED["loan"])
    with engine.connect() as conn:
        for table_name in inspector.get_table_names():
            if table_name == "alembic_version":
                continue
            table = sa.Table(table_name, sa.MetaData(), autoload_with=conn)
            for row in conn.execute(sa.select(table)).mappings():
                for column, value in row.items():
                    if value is None:
                        continue
                    if _coordinate_in(value, LAT, LON):
                        found["coordinates"].append((table_name, column))
                    if _coordinate_in(value, LIVE_LAT, LIVE_LON):
                        found["live_coordinates"].append((table_name, column))
                    if _mentions(value, identity):
                        found["identity"].append((table_name, column))
    return found


def test_every_table_of_the_schema_is_in_the_registry(engine: sa.Engine) -> None:
    tables = set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    assert sorted(t for t in tables if policy_of(t) is None) == []
    assert sorted({e.table for e in REGISTRY} - tables) == []
    columns = {t: {c["name"] for c in sa.inspect(engine).get_columns(t)} for t in tables}
    assert policy_of("fixes_p20261202") is policy_of("fixes")  # a day partition is its parent's
    for entry in REGISTRY:
        assert set(entry.holds) <= columns[entry.table], entry.table


def test_100_days_after_closure_nothing_but_the_essential_records_remains(engine: sa.Engine) -> None:
    seed(engine)
    before = scan(engine)
    assert {t for t, _ in before["coordinates"]} >= {"fixes", "alerts", "device_status", "dead_letters",
                                                     "risk_states", "risk_events", "webhook_deliveries"}
    with Session(engine) as session:
        report = run_retention(session, CLOSE + 100 * DAY, RetentionPolicy(fix_days=90, record_years=5))
        session.commit()
    after = scan(engine)
    assert after["coordinates"] == []
    essential = {e.table for e in REGISTRY if e.policy in (Policy.ESSENTIAL, Policy.ESSENTIAL_STRIPPED)}
    operational = {e.table for e in REGISTRY if e.policy is Policy.OPERATIONAL}
    left = {t for t, _ in after["identity"]}
    assert left - essential - operational == set()
    # operational tables name the box (device registry, ledger, config outbox), never the borrower or the car
    with engine.connect() as conn:
        for table in operational:
            text = json.dumps([list(map(str, r)) for r in conn.execute(sa.text(f"SELECT * FROM {table}"))])
            assert SETTLED["vin"] not in text, table
            assert SETTLED["borrower"] not in text, table
    # the essential records are still there: 5 years from closure, not from the last due date (2020)
    with Session(engine) as session:
        loan = session.get(LoanRecord, SETTLED["loan"])
        assert loan is not None
        assert loan.status == "settled"
        assert session.scalar(sa.select(sa.func.count()).select_from(RepaymentRecord)) == 2
        alert = session.scalars(sa.select(AlertRecord).where(AlertRecord.device_id == SETTLED["device"])).one()
        assert alert.evidence == {"market_id": "m1", "dwell_s": 259_200}
    # the active loan's recent data is untouched (its coordinates are within 90 days)
    assert {t for t, _ in after["live_coordinates"]} >= {"fixes", "alerts", "device_status", "dead_letters"}
    assert report.purged["samples"] == 1
    assert report.purged["device_status"] == 1
    assert report.stripped["alerts"] == 1
    assert report.loans_deleted == 0


def test_essential_records_go_five_years_after_closure(engine: sa.Engine) -> None:
    seed(engine)
    years = round(5 * 365.25 * DAY)
    with Session(engine) as session:
        run_retention(session, CLOSE + years - DAY)
        session.commit()
        assert session.get(LoanRecord, SETTLED["loan"]) is not None
        report = run_retention(session, CLOSE + years + DAY)
        session.commit()
        assert session.get(LoanRecord, SETTLED["loan"]) is None
        assert report.loans_deleted == 1  # the never-closed loan waits for five years after its last due date
        assert session.get(LoanRecord, LIVE["loan"]) is not None
        for model in (InstallmentRecord, RepaymentRecord, ScheduleVersion, AccessGrant, RiskEventRecord,
                      RiskStateRecord):
            left = session.scalar(sa.select(sa.func.count()).select_from(model).where(
                model.loan_id == SETTLED["loan"]))  # type: ignore[attr-defined]
            assert left == 0, model
    # what still names the settled loan: the box's registry, ledger and config, and the audit log
    # of the retention runs that removed it
    assert {t for t, _ in scan(engine)["identity"]} <= {"devices", "batches", "config_versions", "audit_log"}


def test_positions_sent_after_settlement_are_deleted_at_the_next_run(engine: sa.Engine) -> None:
    seed(engine)
    with Session(engine) as session:
        batch_id = session.scalar(sa.select(BatchRecord.id).where(BatchRecord.device_id == SETTLED["device"]))
        # an agent that did not apply the stop configuration kept sending
        session.add(FixRecord(batch_id=batch_id, device_id=SETTLED["device"], time_ms=CLOSE + 2 * DAY, lat=LAT,
                              lon=LON, mode=3))
        session.commit()
        report = run_retention(session, CLOSE + 3 * DAY)
        session.commit()
        times = sorted(session.scalars(sa.select(FixRecord.time_ms).where(FixRecord.device_id == SETTLED["device"])))
    assert times == [CLOSE - 30 * DAY, CLOSE - 5 * DAY]  # before the closure: kept for their 90 days
    assert report.purged["fixes_after_stop"] == 1
