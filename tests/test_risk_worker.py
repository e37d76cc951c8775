"""collector.risk.worker: ingest commits -> reassessment, failures that never touch the ingest,
idempotent (compare-and-set) risk state writes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session

import collector.risk.assessment as assessment_module
from collector.ingest.ingestor import Ingestor, Outcome
from collector.loans.csv_import import import_loans, parse_loans
from collector.risk.assessment import reassess_loan
from collector.risk.engine import RiskAssessment, RiskConfig, RiskInput, assess
from collector.risk.worker import RiskWorker
from collector.storage.database import create_engine, migrate
from collector.storage.tables import RiskEventRecord, RiskStateRecord
from protocol import Alert, Batch, Fix, Severity
from tests.fake_devices import BOOT_A, FakeDevice, register

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000  # 2026-11-28T09:00:00Z
DAY = 86_400_000
WAIT_S = 30.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(db)
    with Session(db) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        session.commit()
    yield db
    db.dispose()


def power_cut_batch(device: FakeDevice, seq: int = 1) -> bytes:
    """A box unplugged a day ago: on an overdue loan the v2 hard rule ``power_cut_while_overdue``
    puts the collateral axis, and so the loan, at critical (docs/risk.md)."""
    alert = Alert("power_cut", Severity.PANIC, NOW - DAY, "power-1", evidence={"lat": 31.302, "lon": 121.2456})
    batch = Batch(device.device_id, BOOT_A, seq, NOW - 1000, fixes=(Fix(NOW - 2000, 31.302, 121.2456, speed_mps=0.0),),
                  alerts=(alert,))
    from protocol import seal_batch

    return seal_batch(batch, device.key, device.topic)


def levels(engine: sa.Engine) -> dict[str, str]:
    with Session(engine) as session:
        return {s.loan_id: s.level for s in session.scalars(sa.select(RiskStateRecord))}


def events(engine: sa.Engine, loan_id: str) -> list[tuple[str, str]]:
    with Session(engine) as session:
        rows = session.scalars(
            sa.select(RiskEventRecord).where(RiskEventRecord.loan_id == loan_id).order_by(RiskEventRecord.id)
        )
        return [(e.old_level, e.new_level) for e in rows]


def test_stored_batches_queue_their_device_and_duplicates_do_not(engine: sa.Engine) -> None:
    device = FakeDevice("tbox-0003")
    register(engine, device)
    registry = CollectorRegistry()
    worker = RiskWorker(engine, clock_ms=lambda: NOW, registry=registry)
    ingestor = Ingestor(engine, on_commit=[worker.on_commit], clock_ms=lambda: NOW)

    # The first round is a full run: L-1002 (88 days past due, 3 lates) critical on the credit
    # axis, L-1003 (one late, 27 days) watch; L-1005's partial payment stays just under watch.
    assert worker.run_once() != []
    assert {k: v for k, v in levels(engine).items() if v != "normal"} == {"L-1002": "critical", "L-1003": "watch"}

    message = power_cut_batch(device)
    assert ingestor.handle(device.topic, message).outcome is Outcome.STORED
    assert ingestor.handle(device.topic, message).outcome is Outcome.DUPLICATE
    assert registry.get_sample_value("lienwatch_risk_pending_devices") == 1.0  # queued once, not waited for
    changes = worker.run_once()
    assert [(c.loan_id, c.old_level.label, c.new_level.label) for c in changes] == [("L-1003", "watch", "critical")]
    assert worker.run_once() == []  # nothing pending, no full run due
    assert worker.counters["loans_ingest"] == 1
    assert registry.get_sample_value("lienwatch_risk_level_changes_total") == 3.0
    assert registry.get_sample_value("lienwatch_risk_reassessments_total", {"trigger": "ingest"}) == 1.0
    assert events(engine, "L-1003") == [("normal", "watch"), ("watch", "critical")]


def database_down_while(down: threading.Event) -> Callable[..., None]:
    """An engine hook that fails every statement while ``down`` is set, as an unreachable database would."""

    def refuse(*_: object) -> None:
        if down.is_set():
            raise sa.exc.OperationalError("risk worker query", None, ConnectionRefusedError("database is down"))

    return refuse


def test_a_failing_round_keeps_its_devices_and_never_reaches_the_ingest(engine: sa.Engine) -> None:
    device = FakeDevice("tbox-0003")
    register(engine, device)
    down = threading.Event()
    worker_db = create_engine(engine.url.render_as_string(hide_password=False))  # the same database, own pool
    sa.event.listen(worker_db, "before_cursor_execute", database_down_while(down))
    worker = RiskWorker(worker_db, clock_ms=lambda: NOW, retry_s=0.01)
    ingestor = Ingestor(engine, on_commit=[worker.on_commit], clock_ms=lambda: NOW)
    assert worker.run_once() != []  # the start-up full run: L-1002 critical, L-1003 watch

    down.set()
    assert ingestor.handle(device.topic, power_cut_batch(device)).outcome is Outcome.STORED
    assert ingestor.counters["hook_errors"] == 0
    with pytest.raises(sa.exc.OperationalError):
        worker.run_once()
    worker.start()  # on the thread: counted, logged, retried, the thread lives on
    try:
        deadline = time.monotonic() + WAIT_S
        while worker.counters["errors"] < 3:
            assert time.monotonic() < deadline, "no retries counted"
            worker.round_done.wait(0.05)
    finally:
        worker.stop()

    down.clear()  # the database is back: the device queued before the failures is reassessed
    changes = worker.run_once()
    assert [(c.loan_id, c.old_level.label, c.new_level.label) for c in changes] == [("L-1003", "watch", "critical")]
    assert worker.counters["loans_ingest"] == 1
    assert worker.counters["rounds_periodic"] == 1  # the start-up run only

    # A failed full run is held too: the next round after the outage reassesses every loan.
    fresh = RiskWorker(worker_db, clock_ms=lambda: NOW)
    down.set()
    with pytest.raises(sa.exc.OperationalError):
        fresh.run_once()
    down.clear()
    fresh.run_once()
    assert fresh.counters["rounds_periodic"] == 1
    assert fresh.counters["loans_periodic"] == worker.counters["loans_periodic"] > 0
    worker_db.dispose()


def test_the_thread_reassesses_soon_after_a_commit(engine: sa.Engine) -> None:
    device = FakeDevice("tbox-0003")
    register(engine, device)
    seen: list[str] = []
    worker = RiskWorker(engine, interval_s=3600, clock_ms=lambda: NOW,
                        on_change=lambda changes: seen.extend(c.loan_id for c in changes))
    ingestor = Ingestor(engine, on_commit=[worker.on_commit], clock_ms=lambda: NOW)
    worker.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while levels(engine).get("L-1003") != "watch":
            assert time.monotonic() < deadline, "the start-up full run did not happen"
            time.sleep(0.02)
        ingestor.handle(device.topic, power_cut_batch(device))
        while levels(engine).get("L-1003") != "critical":
            assert time.monotonic() < deadline, "the commit did not trigger a reassessment"
            time.sleep(0.02)
    finally:
        worker.stop()
    assert seen.count("L-1003") == 2


def test_a_concurrent_writer_never_doubles_an_event(engine: sa.Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    interfered: list[bool] = []

    def assess_with_a_rival(inp: RiskInput, config: RiskConfig | None = None) -> RiskAssessment:
        result = assess(inp, config)
        if not interfered:  # another process writes the same change between our read and our write
            interfered.append(True)
            with Session(engine) as rival:
                reassess_loan(rival, "L-1003", NOW)
                rival.commit()
        return result

    monkeypatch.setattr(assessment_module, "assess", assess_with_a_rival)
    with Session(engine) as session:
        assessment, change = reassess_loan(session, "L-1003", NOW)
        session.commit()
    assert assessment.level.label == "watch"
    assert change is None  # the rival recorded normal -> watch; we saw it on the second look
    assert events(engine, "L-1003") == [("normal", "watch")]


def test_an_older_evaluation_does_not_overwrite_a_newer_one(engine: sa.Engine) -> None:
    # The v1 table (the [risk] model fallback) tells the two times apart by level: v2 has
    # L-1002 critical at both (88 days past due is already a likely default).
    with Session(engine) as session:
        reassess_loan(session, "L-1002", NOW + 2 * DAY, model="v1")  # 90 days past due: high
        session.commit()
        assessment, change = reassess_loan(session, "L-1002", NOW, model="v1")  # a late round: watch by its clock
        session.commit()
        assert (assessment.level.label, change) == ("watch", None)
        state = session.get(RiskStateRecord, "L-1002")
        assert state is not None
        assert (state.level, state.evaluated_ms) == ("high", NOW + 2 * DAY)
        assert state.assessment is not None
        assert state.assessment["evaluated_ms"] == NOW + 2 * DAY
    assert events(engine, "L-1002") == [("normal", "high")]


def test_the_configured_model_sets_level_reasons_and_events(engine: sa.Engine) -> None:
    device = FakeDevice("tbox-0003")
    register(engine, device)
    Ingestor(engine, clock_ms=lambda: NOW).handle(device.topic, power_cut_batch(device))
    with Session(engine) as session:
        v2, change = reassess_loan(session, "L-1003", NOW)
        session.commit()
        state = session.get(RiskStateRecord, "L-1003")
        assert state is not None
        assert change is not None
        assert (v2.level.label, v2.next_step.label) == ("critical", "recovery")
        assert (state.level, state.next_step) == ("critical", "recovery")
        assert (state.collateral_level, state.collateral_next_step) == ("critical", "notify_recovery_and_insurer")
        first = state.reasons[0]
        assert (first["code"], first["alert_episode"]) == ("power_cut_while_overdue", "power-1")
        assert first["explanation"]["axis"] == "collateral"
        assert first["explanation"]["kind"] == "rule"
        # every reason is explained; the features' contributions are positive log-odds on their axis
        features = [r for r in state.reasons if r["explanation"]["kind"] == "feature"]
        assert features
        assert all(r["explanation"]["log_odds"] > 0 for r in features)
        assert "power_cut" in {r["code"] for r in features}
    with Session(engine) as session:
        v1, change = reassess_loan(session, "L-1003", NOW + 1000, model="v1")
        session.commit()
        state = session.get(RiskStateRecord, "L-1003")
        assert state is not None
        assert (v1.level.label, v1.next_step.label, change) == ("critical", "recovery", None)
        assert state.reasons[0]["code"] == "power_cut_while_overdue"
        assert "explanation" not in state.reasons[0]
        assert state.collateral_level == "critical"  # the v2 axes are kept under v1 too
    assert events(engine, "L-1003")[-1] == ("normal", "critical")
