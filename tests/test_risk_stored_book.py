"""The backtest on the collector's own database: loans read at a past date with their alerts,
fixes and device silence as they stood then (collector.risk.stored_book, ``--database``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.orm import Session

from collector.cli.risk import backtest_main
from collector.loans.csv_import import import_loans, parse_loans
from collector.risk.backtest import evaluate_book, read_outcomes, read_real_book
from collector.risk.engine import RiskLevel
from collector.risk.features import FEATURE_NAMES
from collector.risk.model import default_model
from collector.risk.score import score_matrix
from collector.risk.stored_book import device_status_at, evaluate_stored_book
from collector.risk.synthetic_book import generate_book
from collector.risk.synthetic_db import outcomes_csv, store_book
from collector.storage.database import create_engine, migrate
from collector.storage.tables import AlertRecord, BatchRecord, Device, FixRecord

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
AS_OF = 1_795_824_000_000  # 2026-11-28T00:00:00Z (the sample book's date)
DAY = 86_400_000
COL = {name: i for i, name in enumerate(FEATURE_NAMES)}
OUTCOMES = {"L-1001": ("theft", AS_OF + 20 * DAY), "L-1002": ("default", AS_OF + 40 * DAY),
            "L-1004": ("flight", AS_OF + 35 * DAY)}


def _batch(session: Session, device_id: str) -> int:
    session.add(Device(device_id=device_id, created_ms=AS_OF - 300 * DAY))
    session.flush()
    batch = BatchRecord(device_id=device_id, seq=1, boot_id=b"\x01" * 16, created_ms=AS_OF, received_ms=AS_OF,
                        fix_count=0, sample_count=0, alert_count=0, stats_count=0, first_time_ms=None,
                        last_time_ms=None, counters={}, message_bytes=0)
    session.add(batch)
    session.flush()
    return batch.id


def _alert(batch: int, device: str, rule: str, state: int, time_ms: int, episode: str) -> AlertRecord:
    return AlertRecord(batch_id=batch, device_id=device, rule=rule, severity=2, state=state, time_ms=time_ms,
                       episode=episode, evidence={})


@pytest.fixture
def url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    engine = create_engine(url)
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=AS_OF - 200 * DAY)
        one = _batch(session, "tbox-0001")
        session.add_all([
            _alert(one, "tbox-0001", "power_cut", 0, AS_OF - 2 * DAY, "pc-1"),  # open at the date
            _alert(one, "tbox-0001", "towing", 0, AS_OF + DAY, "tow-1"),  # raised after the date
            _alert(one, "tbox-0001", "night_door_openings", 0, AS_OF - 9 * DAY, "nd-1"),
            _alert(one, "tbox-0001", "night_door_openings", 1, AS_OF - 8 * DAY, "nd-1"),  # cleared before
            _alert(one, "tbox-0001", "region_exit", 0, AS_OF - 3 * DAY, "re-1"),
            _alert(one, "tbox-0001", "region_exit", 1, AS_OF + 2 * DAY, "re-1"),  # cleared after: open then
            FixRecord(batch_id=one, device_id="tbox-0001", time_ms=AS_OF - 3600_000, lat=31.2, lon=121.4,
                      speed_mps=9.0, mode=3),
        ])
        four = _batch(session, "tbox-0004")  # went silent five days before the date
        session.add(FixRecord(batch_id=four, device_id="tbox-0004", time_ms=AS_OF - 5 * DAY, lat=31.2, lon=121.4,
                              speed_mps=0.0, mode=3))
        session.add(FixRecord(batch_id=four, device_id="tbox-0004", time_ms=AS_OF + DAY, lat=31.2, lon=121.4,
                              speed_mps=0.0, mode=3))  # back after the date: not known then
        session.commit()
    engine.dispose()
    return url


def test_the_stored_book_is_read_as_it_stood_at_the_date(url: str) -> None:
    engine = create_engine(url)
    with Session(engine) as session:
        assert device_status_at(session, "tbox-0004", AS_OF).offline_ms(AS_OF) == 5 * DAY
        assert device_status_at(session, "tbox-0005", AS_OF).offline_ms(AS_OF) is None  # never heard of
        ev = evaluate_stored_book(session, AS_OF, OUTCOMES)
        repayments_only = evaluate_book(
            read_real_book(parse_loans(SAMPLE.read_text(encoding="utf-8")).rows, "loan_id,outcome,outcome_date\n")[0],
            AS_OF, OUTCOMES,
        )
    engine.dispose()
    assert ev.loan_ids == ("L-1001", "L-1002", "L-1003", "L-1004", "L-1005")
    row = dict(zip(ev.loan_ids, ev.x, strict=True))
    assert row["L-1001"][COL["power_cut"]] > 0.8  # two days old, half-life 7 days
    assert row["L-1001"][COL["region_exit"]] > 0
    assert row["L-1001"][COL["towing"]] == 0
    assert row["L-1001"][COL["night_doors"]] == 0
    assert row["L-1001"][COL["offline"]] == 0
    assert row["L-1004"][COL["offline"]] == 1  # silent for 5 days at the date
    assert row["L-1003"][COL["offline"]] == 0  # no data at all is unknown, not offline
    # the labels, and the repayment columns equal the CSV path's: only the device data differ
    assert ev.y.tolist() == [1.0, 1.0, 0.0, 1.0, 0.0]
    assert (ev.y_collateral.tolist(), ev.y_credit.tolist()) == ([1.0, 0.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0, 0.0])
    repayment = [COL[n] for n in ("dpd_1_29", "dpd_30_59", "dpd_60_89", "arrears_installments", "cured")]
    assert np.array_equal(ev.x[:, repayment], repayments_only.x[:, repayment])
    assert not np.array_equal(ev.x, repayments_only.x)
    assert ev.v1_level[0] == 1  # v1: a power cut on a paid-up loan is only watch
    scores = score_matrix(ev.x, ev.outstanding, default_model())
    assert scores.levels["collateral"][0] >= int(RiskLevel.HIGH)  # v2 reads the open power cut from the database
    repayment_scores = score_matrix(repayments_only.x, repayments_only.outstanding, default_model())
    assert repayment_scores.levels["collateral"][0] == int(RiskLevel.NORMAL)  # repayments alone see nothing


def test_backtest_cli_on_the_database(url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f'database_url = "{url}"\n')
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("loan_id,outcome,outcome_date\nL-1001,theft,2026-12-18\nL-1002,default,2027-01-07\n"
                        "L-1004,flight,2027-01-02\n")
    argv = ["--database", "--config", str(config), "--outcomes", str(outcomes), "--as-of", "2026-11-28", "--json"]
    assert backtest_main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "all"
    assert report["book"]["as_of"] == "2026-11-28"
    assert report["book"]["database"].startswith("sqlite:///")
    assert (report["v2"]["loans"], report["v2"]["bad"]) == (5, 3)
    # L-1002's default 40 days later: v2 has it high (critical credit) at the date, v1 only watch
    assert report["v2"]["flagged_ahead_30d"] > report["v1"]["flagged_ahead_30d"]


def test_backtest_cli_refuses_bad_database_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("loan_id,outcome,outcome_date\n")
    with pytest.raises(SystemExit):
        backtest_main(["--database", "--as-of", "2026-11-28"])  # no outcomes
    with pytest.raises(SystemExit):
        backtest_main(["--database", "--book", "x.csv", "--outcomes", str(outcomes), "--as-of", "2026-11-28"])
    config = tmp_path / "bad.toml"
    config.write_text("database_url = 3\n")
    argv = ["--database", "--config", str(config), "--outcomes", str(outcomes), "--as-of", "2026-11-28"]
    assert backtest_main(argv) == 2
    assert "lienwatch risk backtest:" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text(f'database_url = "sqlite:///{tmp_path / "empty.db"}"\n')
    assert backtest_main(["--database", "--config", str(good), "--outcomes", str(outcomes), "--as-of", "soon"]) == 2
    assert "--as-of 'soon' is not an ISO-8601 date" in capsys.readouterr().err


def test_the_synthetic_book_through_the_database_reads_like_the_book_itself(tmp_path: Path) -> None:
    book = generate_book(300, seed=5)
    engine = create_engine(f"sqlite:///{tmp_path / 'book.db'}")
    migrate(engine)
    with Session(engine) as session:
        assert store_book(session, book, now_ms=book.snapshot_ms) == 300
        session.commit()
        outcomes = read_outcomes(outcomes_csv(book))
        stored = evaluate_stored_book(session, book.snapshot_ms, outcomes)
    engine.dispose()
    direct = evaluate_book(book.loans, book.snapshot_ms)
    assert sorted(stored.loan_ids) == sorted(direct.loan_ids)
    order = [stored.loan_ids.index(i) for i in direct.loan_ids]
    # every feature but the vehicle value's (the loan table has none: imputed LTV) is the same
    same = [j for j, name in enumerate(FEATURE_NAMES) if name != "ltv"]
    assert np.allclose(stored.x[order][:, same], direct.x[:, same])
    assert np.array_equal(stored.v1_level[order], direct.v1_level)
    assert np.array_equal(stored.y[order], direct.y)
    assert direct.x[:, [COL[k] for k in ("power_cut", "offline", "market", "stationary")]].any()  # signals exist
