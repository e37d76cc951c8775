"""``lienwatch collector loans|repayments|retention|markets`` in-process (collector.cli.commands.main)."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.cli.commands import main
from collector.storage.database import create_engine
from collector.storage.tables import AuditEntry, FixRecord, LoanRecord, PlaceRecord, WebhookDelivery

REPO = Path(__file__).parents[1]
SAMPLE = REPO / "collector" / "data" / "sample_loans.csv"
MARKETS = REPO / "edge" / "data" / "markets.sample.toml"
HEADER = "loan_id,device_id,vin,borrower_ref,principal,schedule,payments\n"


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in __import__("os").environ if n.startswith("LIENWATCH_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "collector.toml"
    path.write_text(
        'data_dir = "data"\n[webhooks]\nurls = ["http://127.0.0.1:9/hook"]\nsecret = "cli-test-secret-0123456789"\n'
    )
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def engine_of(config: Path) -> sa.Engine:
    return create_engine(f"sqlite:///{config.parent / 'data' / 'collector.db'}")


def count(config: Path, table: type) -> int:
    engine = engine_of(config)
    with Session(engine) as session:
        n = int(session.scalar(sa.select(sa.func.count()).select_from(table)) or 0)
    engine.dispose()
    return n


def test_import_the_sample_book_twice(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "loans", "import", "--sample", "--config", str(config))
    assert code == 0
    assert err.startswith("sample loan book re-dated to ")
    # v2 (docs/risk.md): L-1002 is a likely default; L-1005's partial payment stays under watch
    assert out == "imported 5, unchanged 0, errors 0; payments recorded 21; at risk: L-1002 critical, L-1003 watch\n"
    assert count(config, WebhookDelivery) == 2  # one per level change, delivered by the running collector
    code, out, _ = run(capsys, "loans", "import", "--sample", "--config", str(config))
    assert (code, out.split(";")[0]) == (0, "imported 0, unchanged 5, errors 0")
    assert count(config, WebhookDelivery) == 2  # nothing changed, nothing queued


def test_a_file_with_errors_imports_nothing_unless_told(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = SAMPLE.read_text(encoding="utf-8").splitlines()[1]
    bad_vin = good.replace("L-1001", "L-2001").replace("tbox-0001", "tbox-2001").replace("LSVAU218XN2183294",
                                                                                           "LSVAU218XN2183295")
    bad_date = good.replace("L-1001", "L-2002").replace("tbox-0001", "tbox-2002").replace(
        "LSVAU218XN2183294", "LFV2A21K2N3040001").replace("2026-06-01:3500.00;", "2026-13-01:3500.00;", 1)
    path = tmp_path / "loans.csv"
    path.write_text(HEADER + good + "\n" + bad_vin + "\n" + bad_date + "\n", encoding="utf-8")

    code, out, err = run(capsys, "loans", "import", str(path), "--config", str(config))
    assert code == 1
    assert out == "imported 0, unchanged 0, errors 2: nothing imported (--skip-bad-rows imports the good rows)\n"
    assert f"{path}: line 3, vin:" in err
    assert f"{path}: line 4, schedule:" in err
    assert count(config, LoanRecord) == 0

    code, out, err = run(capsys, "loans", "import", str(path), "--skip-bad-rows", "--config", str(config))
    assert code == 0
    assert out.startswith("imported 1, unchanged 0, errors 2 (lines 3, 4 skipped); payments recorded 6")
    assert "(skipped)" in err
    assert count(config, LoanRecord) == 1


def test_list_show_and_repayments(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "loans", "import", "--sample", "--config", str(config))
    code, out, _ = run(capsys, "loans", "list", "--level", "watch", "--config", str(config))
    assert code == 0
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(x["loan_id"], x["level"], x["next_step"]) for x in listed] == [("L-1003", "watch", "reminder")]
    code, out, _ = run(capsys, "loans", "list", "--level", "critical", "--config", str(config))
    listed = [json.loads(line) for line in out.splitlines()]
    assert [(x["loan_id"], x["level"], x["next_step"]) for x in listed] == [("L-1002", "critical", "on_site_check")]
    code, out, _ = run(capsys, "loans", "show", "L-1003", "--config", str(config))
    shown = json.loads(out)
    assert (shown["vin"], shown["repayment"]["consecutive_late"], shown["risk"]["level"]) == (
        "LGBH52E00NY000123", 1, "watch"
    )
    assert run(capsys, "loans", "show", "L-404", "--config", str(config))[0] == 1

    add = ["repayments", "add", "--loan", "L-1003", "--payment-id", "P1003-202611", "--date", "2026-11-27",
           "--amount", "3500.00", "--config", str(config)]
    code, out, _ = run(capsys, *add)
    assert (code, json.loads(out)) == (0, {"loan_id": "L-1003", "payment_id": "P1003-202611", "created": True,
                                           "paid_on": "2026-11-27", "level": "normal"})
    code, out, _ = run(capsys, *add)
    assert (code, json.loads(out)["created"]) == (0, False)  # a replay is harmless
    conflict = [*add[:-4], "--amount", "3400.00", "--config", str(config)]
    code, _, err = run(capsys, *conflict)
    assert code == 1
    assert "was recorded as 2026-11-27 3500.00" in err
    code, _, err = run(capsys, *add[:7], "2026-02-30", "--amount", "1.00", "--config", str(config))
    assert code == 2

    engine = engine_of(config)
    with Session(engine) as session:
        actions = [(a.action, a.subject_id) for a in session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id))]
    engine.dispose()
    assert ("list_loans", "*") in actions
    assert ("read_loan", "L-1003") in actions
    assert actions.count(("record_repayment", "L-1003")) == 2


def test_retention_run_and_dry_run(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "loans", "import", "--sample", "--config", str(config))
    engine = engine_of(config)
    with Session(engine) as session:
        session.execute(sa.text("INSERT INTO devices (device_id, created_ms) VALUES ('tbox-0001', 0)"))
        session.execute(sa.text(
            "INSERT INTO batches (id, device_id, seq, boot_id, created_ms, received_ms, fix_count, sample_count, "
            "alert_count, stats_count, counters, message_bytes) VALUES (1, 'tbox-0001', 1, x'00', 0, 0, 2, 0, 0, 0, "
            "'{}', 0)"
        ))
        session.add_all([FixRecord(batch_id=1, device_id="tbox-0001", time_ms=1_000 + i, lat=31.0, lon=121.0, mode=3)
                         for i in range(2)])
        session.commit()
    code, out, _ = run(capsys, "retention", "run", "--dry-run", "--config", str(config))
    report = json.loads(out)
    assert (code, report["fixes_deleted"], report["dry_run"]) == (0, 2, True)
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(FixRecord)) == 2
    code, out, _ = run(capsys, "retention", "run", "--config", str(config))
    assert (code, json.loads(out)["fixes_deleted"]) == (0, 2)
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(FixRecord)) == 0
    engine.dispose()


def test_markets_import(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "markets", "import", str(MARKETS), "--config", str(config))
    assert (code, out) == (0, "markets: 1 created, 0 changed, 0 unchanged; no [downlink] signing_key configured: "
                              "devices are not updated\n")
    code, out, _ = run(capsys, "markets", "import", str(MARKETS), "--config", str(config))
    assert out == "markets: 0 created, 0 changed, 1 unchanged; nothing changed\n"
    assert count(config, PlaceRecord) == 1
    bad = tmp_path / "bad.json"
    bad.write_text('[{"id": "x", "name": "n", "lat": 1, "lon": 2, "radius_m": 5, "datum": "osgb"}]')
    code, _, err = run(capsys, "markets", "import", str(bad), "--config", str(config))
    assert code == 1
    assert "datum" in err
    assert count(config, PlaceRecord) == 1


def test_a_long_import_shows_progress_on_stderr(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from collector.loans.csv_import import vin_check_digit

    lines = [HEADER.rstrip("\n")]
    for i in range(600):
        base = f"LSVAU218X{i:08d}"
        vin = base[:8] + vin_check_digit(base) + base[9:]
        lines.append(f"L-{i:05d},tbox-{i:05d},{vin},B-{i:05d},7000.00,2026-06-01:3500.00;2026-07-01:3500.00,")
    path = tmp_path / "book.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, out, err = run(capsys, "loans", "import", str(path), "--config", str(config))
    assert code == 0
    # 180 days past due: the v2 hard rule severely_past_due (90+ days) makes each critical
    assert out == "imported 600, unchanged 0, errors 0; payments recorded 0; at risk: 600 critical\n"
    assert "importing and assessing:" in err
    assert "0/600 [" in err  # a tqdm bar counting the 600 loans, one step each
    assert "/1200" not in err
    assert "600/600 [" in err


def test_sample_book_keeps_its_facts_on_any_day() -> None:
    """The demo's loan book is re-dated: L-1002 is three late and 88 days past due whatever the date."""
    from datetime import date

    from collector.loans.csv_import import parse_loans, sample_loan_book
    from collector.risk.repayments import repayment_facts

    for as_of in (date(2026, 11, 28), date(2027, 3, 1), date(2031, 12, 31)):
        parsed = parse_loans(sample_loan_book(as_of))
        assert not parsed.errors
        row = next(r for r in parsed.rows if r.loan_id == "L-1002")
        facts = repayment_facts(row.schedule, row.payments, as_of)
        assert (facts.consecutive_late, facts.days_past_due) == (3, 88)


def test_import_needs_a_file_or_sample(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    code, _, err = run(capsys, "loans", "import", "--config", str(config))
    assert code == 2
    assert "give a FILE or --sample" in err


def test_repayments_add_speaks_like_the_api(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--paid-on`` (the API's ``paid_on``; ``--date`` still works), a clear date message, no future."""
    run(capsys, "loans", "import", "--sample", "--config", str(config))
    base = ["repayments", "add", "--loan", "L-1003", "--payment-id", "P-x", "--amount", "3500.00"]
    base += ["--config", str(config)]
    code, out, _ = run(capsys, *base, "--paid-on", "2026-11-27")
    assert (code, json.loads(out)["paid_on"]) == (0, "2026-11-27")
    code, out, _ = run(capsys, *base, "--date", "2026-11-27")
    assert (code, json.loads(out)["created"]) == (0, False)
    code, out, err = run(capsys, *base[:5], "P-y", *base[6:], "--paid-on", "27/11/2026")
    assert (code, out) == (2, "")
    assert "--paid-on '27/11/2026' is not a date; write it as YYYY-MM-DD (ISO-8601), e.g. 2026-11-27" in err
    assert "isoformat" not in err
    next_year = (datetime.now(UTC).date() + timedelta(days=365)).isoformat()
    code, out, err = run(capsys, *base[:5], "P-z", *base[6:], "--paid-on", next_year)
    assert (code, out) == (2, "")
    assert f"paid_on {next_year} is in the future" in err
    tomorrow = (datetime.now(UTC).date() + timedelta(days=1)).isoformat()  # east of UTC it may be today
    assert run(capsys, *base[:5], "P-t", *base[6:], "--paid-on", tomorrow)[0] == 0


def test_loans_list_prints_what_get_v1_loans_answers(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Same lines, same fields, same order (most severe first; ``--order expected_loss`` as the API's)."""
    from fastapi.testclient import TestClient

    from collector.api.app import create_app
    from collector.api.loans import router as loans_router
    from collector.settings import hash_api_key, load_settings

    run(capsys, "loans", "import", "--sample", "--config", str(config))
    settings = load_settings(config, environ={})
    settings = dataclasses.replace(settings, api_keys={hash_api_key("cli-vs-api-admin-key"): "admin"})
    engine = engine_of(config)
    headers = {"Authorization": "Bearer cli-vs-api-admin-key"}
    with TestClient(create_app(settings, engine=engine, routers=[loans_router])) as client:
        for order in ("severity", "expected_loss"):
            code, out, _ = run(capsys, "loans", "list", "--order", order, "--config", str(config))
            assert code == 0
            listed = [json.loads(line) for line in out.splitlines()]
            answered = client.get("/v1/loans", params={"order": order}, headers=headers).json()
            assert listed == answered
            levels = [x["level"] for x in listed]
            assert levels[0] == "critical"  # v2: L-1002, 88 days past due with three lates
            if order == "severity":  # most severe first
                rank = {"critical": 3, "high": 2, "watch": 1, "normal": 0}
                assert [rank[v] for v in levels] == sorted((rank[v] for v in levels), reverse=True)
            assert set(listed[0]) >= {"score", "expected_loss", "credit", "collateral", "tier", "facts"}
        code, out, _ = run(capsys, "loans", "list", "--limit", "2", "--offset", "1", "--config", str(config))
        assert [json.loads(line) for line in out.splitlines()] == client.get(
            "/v1/loans", params={"limit": 2, "offset": 1}, headers=headers
        ).json()
    engine.dispose()
