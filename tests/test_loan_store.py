"""Loan storage: migration 0002, idempotent repayments, reassessment from stored evidence."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.orm import Session

from collector.loans.csv_import import import_loans, parse_loans
from collector.loans.store import LoanNotFoundError, RepaymentConflictError, record_repayment, vehicle_condition
from collector.risk.assessment import load_risk_input, reassess_loan, reassess_loans, risk_commit_hook
from collector.risk.engine import RiskChange, assess
from collector.risk.repayments import Payment
from collector.risk.settings import RiskSettings
from collector.storage.database import alembic_config, create_engine, migrate
from collector.storage.tables import (
    AlertRecord,
    Base,
    BatchRecord,
    DailyStatsRecord,
    Device,
    DeviceStatus,
    FixRecord,
    RiskEventRecord,
    RiskStateRecord,
    WebhookDelivery,
)

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000  # 2026-11-28T09:00:00Z
HOUR = 3_600_000
DAY = 24 * HOUR


def _my_tables_diff(engine: sa.Engine) -> list[object]:
    mine = {"loans", "loan_devices", "installments", "repayments", "risk_states", "risk_events", "webhook_deliveries",
            "audit_log", "places", "config_versions", "fix_day_summaries", "cases", "case_actions", "case_events"}
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    return [d for d in diff if any(t in repr(d) for t in mine)]


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    assert _my_tables_diff(engine) == []
    with engine.connect() as conn:
        head = ScriptDirectory.from_config(alembic_config()).get_current_head()
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == head
    engine.dispose()


def test_migrations_on_postgres(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    assert _my_tables_diff(engine) == []
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        session.commit()
        assessment, change = reassess_loan(session, "L-1002", NOW)
        session.commit()
        # v2: 88 days past due with three lates is a likely default within 90 days (credit axis)
        assert (assessment.level.label, change is not None) == ("critical", True)
        state = session.get(RiskStateRecord, "L-1002")
        assert state is not None
        assert state.credit_level == "critical"
        assert state.reasons[0]["explanation"]
    engine.dispose()


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as s:
        import_loans(s, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        s.commit()
        yield s
    engine.dispose()


def test_record_repayment_is_idempotent(session: Session) -> None:
    payment = Payment("P-X", date(2026, 11, 20), 350_000)
    first = record_repayment(session, "L-1003", payment, now_ms=NOW)
    again = record_repayment(session, "L-1003", payment, now_ms=NOW + 5)
    assert (first.created, again.created, again.recorded_ms) == (True, False, NOW)
    with pytest.raises(RepaymentConflictError, match=r"P-X of loan L-1003 was recorded as 2026-11-20 3500\.00"):
        record_repayment(session, "L-1003", Payment("P-X", date(2026, 11, 21), 350_000), now_ms=NOW)
    with pytest.raises(LoanNotFoundError):
        record_repayment(session, "L-404", payment, now_ms=NOW)
    # The same payment id on another loan is another payment.
    assert record_repayment(session, "L-1001", payment, now_ms=NOW).created


def _device_with_evidence(session: Session, device_id: str) -> int:
    session.add(Device(device_id=device_id, created_ms=NOW - 100 * DAY))
    session.flush()
    batch = BatchRecord(device_id=device_id, seq=1, boot_id=b"\x01" * 16, created_ms=NOW, received_ms=NOW,
                        fix_count=0, sample_count=0, alert_count=0, stats_count=0, first_time_ms=None,
                        last_time_ms=None, counters={}, message_bytes=0)
    session.add(batch)
    session.flush()
    return batch.id


def test_reassess_from_stored_alerts_device_and_fixes(session: Session) -> None:
    batch_id = _device_with_evidence(session, "tbox-0002")
    evidence = {"market_id": "sh-jiading-ucm", "centre_lat": 31.301992, "centre_lon": 121.245568}
    session.add_all(
        [
            AlertRecord(batch_id=batch_id, device_id="tbox-0002", rule="stationary_near_market", severity=2, state=0,
                        time_ms=NOW - 3 * DAY, episode="dwell-1", evidence=evidence),
            AlertRecord(batch_id=batch_id, device_id="tbox-0002", rule="night_door_openings", severity=1, state=0,
                        time_ms=NOW - 5 * DAY, episode="night-1", evidence={}),
            AlertRecord(batch_id=batch_id, device_id="tbox-0002", rule="night_door_openings", severity=1, state=1,
                        time_ms=NOW - 4 * DAY, episode="night-1", evidence={}),  # cleared
            FixRecord(batch_id=batch_id, device_id="tbox-0002", time_ms=NOW - 4 * DAY, lat=31.3, lon=121.24,
                      speed_mps=12.0, mode=3),
            FixRecord(batch_id=batch_id, device_id="tbox-0002", time_ms=NOW - HOUR, lat=31.3, lon=121.24,
                      speed_mps=0.0, mode=3),
        ]
    )
    session.commit()
    urls = ["http://127.0.0.1:9/hook"]
    # The v1 table reads the same stored inputs: the open dwell, the movement from the fixes.
    v1 = assess(load_risk_input(session, "L-1002", NOW))
    assert [(r.code, r.alert_episode) for r in v1.reasons] == [
        ("late_streak_near_market", "dwell-1"), ("past_due", None)]
    assert v1.reasons[0].evidence["movement"] == {"last_moved_ms": NOW - 4 * DAY, "distance_24h_m": None}

    # v2 (authoritative): 88 days past due with three lates is critical on the credit axis; the
    # open dwell adds its explained contribution; the cleared night-door episode adds nothing.
    assessment, change = reassess_loan(session, "L-1002", NOW, webhook_urls=urls)
    session.commit()
    assert (assessment.level.label, assessment.next_step.label) == ("critical", "on_site_check")
    by_code = {r.code: r for r in assessment.reasons}
    assert {"arrears_installments", "market_while_overdue", "market"} <= set(by_code)
    assert not any(r.alert_episode == "night-1" or "night" in r.code for r in assessment.reasons)
    dwell = by_code["market_while_overdue"]
    assert dwell.alert_episode == "dwell-1"
    assert dwell.evidence["alert"]["evidence"]["market_id"] == "sh-jiading-ucm"
    assert dwell.explanation is not None
    assert dwell.explanation["axis"] == "credit"
    assert dwell.explanation["log_odds"] > 0
    assert dwell.explanation["pd_points"] > 0
    contributions = [r.explanation["log_odds"] for r in assessment.reasons if r.explanation]
    assert contributions == sorted(contributions, reverse=True)  # one axis here: largest first
    assert "stationary" not in by_code  # 4 days since it moved (vehicle time) is under 7
    assert change is not None
    assert (change.old_level.label, change.new_level.label) == ("normal", "critical")

    state = session.get(RiskStateRecord, "L-1002")
    assert state is not None
    assert (state.level, state.next_step, state.facts["consecutive_late"]) == ("critical", "on_site_check", 3)
    assert (state.credit_level, state.collateral_level) == ("critical", "normal")
    event = session.scalars(sa.select(RiskEventRecord)).one()
    delivery = session.scalars(sa.select(WebhookDelivery)).one()
    assert (delivery.event_id, delivery.url, delivery.status) == (event.event_id, urls[0], "pending")
    body = json.loads(delivery.body)["data"]
    assert body["new_level"] == "critical"
    assert event.reasons == state.reasons
    # the webhook carries the explained reasons (its evidence without coordinates)
    explained = [(r["code"], r["explanation"]) for r in event.reasons]
    assert [(r["code"], r["explanation"]) for r in body["reasons"]] == explained

    # Same evidence, later: same level, no new event, no new delivery.
    again, no_change = reassess_loan(session, "L-1002", NOW + 60_000, webhook_urls=urls)
    session.commit()
    assert (again.level.label, no_change) == ("critical", None)
    assert session.scalar(sa.select(sa.func.count()).select_from(RiskEventRecord)) == 1

    # The device goes offline for 49 h: the collateral axis rises (offline, offline_while_overdue);
    # a silent box is missing data, never a stationary car.
    session.add(DeviceStatus(device_id="tbox-0002", online=False, state_time_ms=NOW - 49 * HOUR,
                             last_seen_ms=NOW - 49 * HOUR))
    session.commit()
    offline, _ = reassess_loan(session, "L-1002", NOW + 120_000)
    collateral = [r for r in offline.reasons if r.explanation and r.explanation["axis"] == "collateral"]
    assert {"offline", "offline_while_overdue"} <= {r.code for r in collateral}
    assert "stationary" not in [r.code for r in offline.reasons]
    assert collateral[0].evidence["offline_hours"] > 48


def test_payment_brings_the_level_down(session: Session) -> None:
    assessment, change = reassess_loan(session, "L-1003", NOW)
    assert (assessment.level.label, assessment.next_step.label) == ("watch", "reminder")
    record_repayment(session, "L-1003", Payment("P1003-late", date(2026, 11, 27), 350_000), now_ms=NOW)
    after, change = reassess_loan(session, "L-1003", NOW + 1)
    session.commit()
    assert after.level.label == "normal"
    assert change is not None
    assert (change.old_level.label, change.new_level.label) == ("watch", "normal")
    events = session.scalars(sa.select(RiskEventRecord).order_by(RiskEventRecord.id))
    levels = [(e.old_level, e.new_level) for e in events]
    assert levels == [("normal", "watch"), ("watch", "normal")]


def test_vehicle_condition(session: Session) -> None:
    batch_id = _device_with_evidence(session, "tbox-0001")
    for day, km, odo in (("2026-10-01", 99.0, 1000.0), ("2026-11-26", 42.5, 1500.0), ("2026-11-27", 10.0, None)):
        session.add(DailyStatsRecord(device_id="tbox-0001", day=day, batch_id=batch_id, time_ms=NOW,
                                     distance_m=km * 1000, driving_s=3600.0, harsh_accel=2, harsh_brake=1,
                                     odometer_km=odo, final=True))
    session.commit()
    summary = vehicle_condition(session, "tbox-0001", date(2026, 11, 28))
    assert (summary["from"], summary["to"]) == ("2026-10-30", "2026-11-28")
    assert [d["day"] for d in summary["days"]] == ["2026-11-26", "2026-11-27"]
    assert summary["total_distance_km"] == 52.5
    assert (summary["total_driving_h"], summary["harsh_accel"], summary["harsh_brake"]) == (2.0, 4, 2)
    assert (summary["last_odometer_km"], summary["last_odometer_day"]) == (1500.0, "2026-11-26")


def test_reassess_loans_periodic_and_per_device(session: Session) -> None:
    changes = reassess_loans(session, NOW)
    session.commit()
    # v2: L-1005's partial payment (27 days past due, arrears under one instalment) stays
    # under the 10 % watch threshold, where the v1 table flagged every overdue loan.
    assert sorted((c.loan_id, c.new_level.label) for c in changes) == [("L-1002", "critical"), ("L-1003", "watch")]
    assert reassess_loans(session, NOW + 1) == []  # idempotent
    # Ten days later L-1003 has rolled into the 30-59 bucket with a second instalment unpaid: high,
    # by time alone.
    later = reassess_loans(session, NOW + 10 * DAY, device_ids=["tbox-0003", "tbox-9999"])
    assert [(c.loan_id, c.old_level.label, c.new_level.label) for c in later] == [("L-1003", "watch", "high")]
    assert {"arrears_installments", "rolled_forward", "dpd_30_59"} <= {r.code for r in later[0].reasons}
    # The v1 table, the configured fallback, does the same by its own rows.
    v1 = reassess_loans(session, NOW + 2 * DAY, risk=RiskSettings(model="v1"), device_ids=["tbox-0002"])
    assert [(c.loan_id, c.old_level.label, c.new_level.label) for c in v1] == [("L-1002", "critical", "high")]
    assert [r.code for r in v1[0].reasons] == ["severely_past_due", "late_streak"]


def test_risk_commit_hook(session: Session) -> None:
    from collector.ingest.ingestor import StoredState
    from protocol import DeviceState

    engine = session.get_bind()
    assert isinstance(engine, sa.Engine)
    seen: list[list[RiskChange]] = []
    hook = risk_commit_hook(engine, on_change=seen.append)
    state = DeviceState("tbox-0002", False, NOW, b"\x00" * 16)
    hook(StoredState("tbox-0002", state, applied=False, received_ms=NOW))  # changed nothing: skipped
    assert seen == []
    hook(StoredState("tbox-0002", state, applied=True, received_ms=NOW))
    assert [[c.loan_id for c in changes] for changes in seen] == [["L-1002"]]
    hook(StoredState("tbox-0002", state, applied=True, received_ms=NOW + 1))  # same level: no callback
    assert len(seen) == 1
    hook(object())  # not an ingest event: ignored
