"""Retention on seeded SQLite data: fixes summarised then deleted, old loans removed, audited."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.jobs.retention import DaySummary, RetentionError, RetentionPolicy, run_retention, summarize_fixes
from collector.storage.audit import query_audit_log
from collector.storage.tables import (
    AlertRecord,
    AuditEntry,
    Base,
    BatchRecord,
    Device,
    FixDaySummary,
    FixRecord,
    InstallmentRecord,
    LoanRecord,
    RepaymentRecord,
    RiskEventRecord,
    RiskStateRecord,
)

DAY = 86_400_000
NOW = 1_795_000_000_000  # 2026-11-18T09:46:40Z
OLD_DAY_MS = NOW - 100 * DAY  # 2026-08-10


@pytest.fixture
def session() -> Iterator[Session]:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def seed(session: Session) -> None:
    session.add(Device(device_id="tbox-1", created_ms=NOW - 400 * DAY))
    session.flush()
    batch = BatchRecord(
        device_id="tbox-1", seq=1, boot_id=b"\x00" * 16, created_ms=NOW, received_ms=NOW, fix_count=0,
        sample_count=0, alert_count=0, stats_count=0, first_time_ms=None, last_time_ms=None, counters={},
        message_bytes=0,
    )
    session.add(batch)
    session.flush()

    def fix(t: int, lat: float, lon: float) -> FixRecord:
        return FixRecord(batch_id=batch.id, device_id="tbox-1", time_ms=t, lat=lat, lon=lon, mode=3)

    start = OLD_DAY_MS - OLD_DAY_MS % DAY + 3_600_000  # 01:00 UTC of an old day
    session.add_all([fix(start, 31.0, 121.0), fix(start + 60_000, 31.001, 121.0), fix(start + 120_000, 31.002, 121.0)])
    session.add(fix(NOW - 89 * DAY, 31.5, 121.5))  # inside the 90 days: kept
    session.add(fix(NOW - DAY, 31.5, 121.5))
    session.add_all(
        [
            AlertRecord(batch_id=batch.id, device_id="tbox-1", rule="towing", severity=2, state=0,
                        time_ms=NOW - 6 * 366 * DAY, episode="old", evidence={}),
            AlertRecord(batch_id=batch.id, device_id="tbox-1", rule="towing", severity=2, state=0,
                        time_ms=NOW - 10 * DAY, episode="new", evidence={}),
        ]
    )
    for loan_id, last_due in (("L-old", date(2020, 6, 1)), ("L-live", date(2027, 6, 1))):
        session.add(LoanRecord(loan_id=loan_id, device_id=f"dev-{loan_id}", vin=loan_id.ljust(17, "0"),
                               borrower_ref="B", principal_cents=100, created_ms=0))
        session.flush()
        session.add(InstallmentRecord(loan_id=loan_id, seq=1, due_date=date(2019, 6, 1), amount_cents=100))
        session.add(InstallmentRecord(loan_id=loan_id, seq=2, due_date=last_due, amount_cents=100))
        session.add(RepaymentRecord(loan_id=loan_id, payment_id="p1", paid_on=date(2019, 6, 1), amount_cents=100,
                                    recorded_ms=0))
        session.add(RiskStateRecord(loan_id=loan_id, level="watch", next_step="call", reasons=[], facts={},
                                    evaluated_ms=0, changed_ms=0))
        session.add(RiskEventRecord(event_id=f"e-{loan_id}", loan_id=loan_id, time_ms=NOW - 6 * 366 * DAY,
                                    old_level="normal", new_level="watch", next_step="call", reasons=[]))
        session.add(RiskEventRecord(event_id=f"e2-{loan_id}", loan_id=loan_id, time_ms=NOW - DAY,
                                    old_level="watch", new_level="high", next_step="call", reasons=[]))
    session.commit()


def count(session: Session, model: type) -> int:
    return int(session.scalar(sa.select(sa.func.count()).select_from(model)) or 0)


def test_summarize_fixes_is_pure_and_order_free() -> None:
    rows = [("d", 86_400_000 + 60_000, 0.001, 0.0), ("d", 86_400_000, 0.0, 0.0), ("d", 2 * 86_400_000, 1.0, 1.0)]
    assert summarize_fixes(rows) == [
        DaySummary("d", "1970-01-02", 2, 86_400_000, 86_460_000, 111.2),
        DaySummary("d", "1970-01-03", 1, 172_800_000, 172_800_000, 0.0),
    ]
    assert summarize_fixes(reversed(rows)) == summarize_fixes(rows)


def test_retention_run(session: Session) -> None:
    seed(session)
    report = run_retention(session, NOW)
    session.commit()
    assert report.fixes_deleted == 3
    assert report.day_summaries_written == 1
    assert (report.loans_deleted, report.repayments_deleted) == (1, 1)
    assert report.risk_events_deleted == 3  # both events of L-old, the old one of L-live
    assert report.alerts_deleted == 1

    summary = session.scalars(sa.select(FixDaySummary)).one()
    assert (summary.device_id, summary.day, summary.fix_count) == ("tbox-1", "2026-08-10", 3)
    assert summary.distance_m == pytest.approx(222.4, abs=0.2)
    assert count(session, FixRecord) == 2
    assert [r.loan_id for r in session.scalars(sa.select(LoanRecord))] == ["L-live"]
    assert count(session, InstallmentRecord) == 2
    assert count(session, RepaymentRecord) == 1  # the live loan keeps its whole history
    assert [e.event_id for e in session.scalars(sa.select(RiskEventRecord))] == ["e2-L-live"]
    assert [a.episode for a in session.scalars(sa.select(AlertRecord))] == ["new"]

    (entry,) = query_audit_log(session, subject_type="retention")
    assert (entry.actor, entry.role, entry.action) == ("retention", "system", "retention_run")
    assert entry.detail["fixes_deleted"] == 3
    assert entry.detail["loans"] == ["L-old"]
    assert entry.detail["policy"] == {"fix_days": 90, "fix_mode": "summarize", "record_years": 5}


def test_second_run_removes_nothing_more_but_is_audited(session: Session) -> None:
    seed(session)
    run_retention(session, NOW)
    session.commit()
    again = run_retention(session, NOW)
    session.commit()
    assert (again.fixes_deleted, again.day_summaries_written, again.loans_deleted, again.alerts_deleted) == (0, 0, 0, 0)
    assert count(session, AuditEntry) == 2
    assert session.scalars(sa.select(FixDaySummary)).one().fix_count == 3


def test_late_fixes_merge_into_an_existing_summary(session: Session) -> None:
    seed(session)
    run_retention(session, NOW)
    batch_id = session.scalar(sa.select(BatchRecord.id))
    start = OLD_DAY_MS - OLD_DAY_MS % DAY
    session.add(FixRecord(batch_id=batch_id, device_id="tbox-1", time_ms=start + 100, lat=31.0, lon=121.0, mode=3))
    session.commit()
    run_retention(session, NOW)
    summary = session.scalars(sa.select(FixDaySummary)).one()
    assert summary.fix_count == 4
    assert summary.first_ms == start + 100


def test_delete_mode_and_boundary(session: Session) -> None:
    seed(session)
    report = run_retention(session, NOW, RetentionPolicy(fix_days=89, fix_mode="delete"))
    assert report.fixes_deleted == 3  # exactly 89 days old is not older than 89 days
    assert report.day_summaries_written == 0
    assert count(session, FixDaySummary) == 0


@pytest.mark.parametrize(
    "kwargs",
    [{"fix_days": 0}, {"fix_days": True}, {"fix_mode": "shred"}, {"record_years": 0}, {"record_years": 51}],
)
def test_bad_policy(kwargs: dict[str, object]) -> None:
    with pytest.raises(RetentionError):
        RetentionPolicy(**kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the job in serve


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def migrated(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[sa.Engine]:
    from collector.storage.database import create_engine, migrate

    url = (
        f"sqlite:///{tmp_path_factory.mktemp('db') / 'c.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")
    )
    engine = create_engine(url)
    migrate(engine)
    yield engine
    engine.dispose()


def retention_runs(engine: sa.Engine) -> list[AuditEntry]:
    with Session(engine) as s:
        return list(s.scalars(sa.select(AuditEntry).where(AuditEntry.action == "retention_run")))


def test_serve_runs_retention_one_interval_after_start(migrated: sa.Engine) -> None:
    from collector.runtime import CollectorRuntime
    from collector.settings import RetentionSettings, RiskSettings, Settings

    with Session(migrated) as s:
        seed(s)
        s.commit()
    settings = Settings(retention=RetentionSettings(interval_s=0.3), risk=RiskSettings(reassess_interval_s=3600))
    runtime = CollectorRuntime(settings, migrated, ingest=False, clock_ms=lambda: NOW)
    runtime.start()
    try:
        assert retention_runs(migrated) == []  # not at start
        assert runtime.retention is not None
        assert runtime.retention.ran.wait(30)
    finally:
        runtime.stop()
    runs = retention_runs(migrated)
    assert len(runs) >= 1
    assert runs[0].detail["fixes_deleted"] == 3
    assert runtime.retention.counters["errors"] == 0
    with Session(migrated) as s:
        assert s.scalar(sa.select(sa.func.count()).select_from(FixRecord)) == 2  # the two recent ones
        assert s.scalar(sa.select(sa.func.count()).select_from(FixDaySummary)) == 1
