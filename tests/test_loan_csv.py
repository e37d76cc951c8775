"""Loan CSV: layout, every rejection with its line and reason, all-or-nothing and skip mode."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.loans import csv_import as loan_csv
from collector.loans.csv_import import LoanImportError, import_loans, parse_loans, vin_check_digit
from collector.risk.assessment import loan_facts
from collector.risk.repayments import Installment, Payment
from collector.storage.tables import Base, LoanRecord, RepaymentRecord

HEADER = "loan_id,device_id,vin,borrower_ref,principal,schedule,payments\n"
GOOD = "L-1,tbox-1,LSVAU218XN2183294,B-1,6000.00,2026-01-01:3500.00;2026-02-01:3500.00,P1:2026-01-01:3500.00\n"
GOOD2 = "L-2,tbox-2,LFV2A21K2N3040001,B-2,3000.00,2026-01-15:3500.00,\n"
SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
NOW = 1_780_000_000_000


@pytest.fixture
def session() -> Iterator[Session]:
    engine = sa.create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with Session(engine) as s:
        yield s
    engine.dispose()


def test_vin_check_digit() -> None:
    assert vin_check_digit("1M8GDM9AXKP042788") == "X"  # the textbook example
    assert vin_check_digit("11111111111111111") == "1"
    assert vin_check_digit("LSVAU218XN2183294") == "X"


def test_good_file() -> None:
    parsed = parse_loans(HEADER + GOOD + GOOD2)
    assert parsed.ok
    assert parsed.counters() == {"rows_ok": 2, "rows_bad": 0}
    first = parsed.rows[0]
    assert (first.line, first.loan_id, first.device_id, first.vin, first.borrower_ref) == (
        2, "L-1", "tbox-1", "LSVAU218XN2183294", "B-1",
    )
    assert first.principal_cents == 600_000
    assert first.schedule == (Installment(date(2026, 1, 1), 350_000), Installment(date(2026, 2, 1), 350_000))
    assert first.payments == (Payment("P1", date(2026, 1, 1), 350_000),)
    assert parsed.rows[1].payments == ()


def test_file_object_bom_crlf_blank_lines_and_column_order() -> None:
    text = (
        "\ufeffvin,loan_id,device_id,borrower_ref,principal,schedule\r\n\r\n"
        "LSVAU218XN2183294,L-1,tbox-1,B-1,1.00,2026-01-01:1.00\r\n"
    )
    parsed = parse_loans(io.StringIO(text))
    assert parsed.ok, parsed.errors
    assert parsed.rows[0].line == 3
    assert parsed.rows[0].vin == "LSVAU218XN2183294"


def test_sample_file_parses() -> None:
    parsed = parse_loans(SAMPLE.read_text(encoding="utf-8"))
    assert parsed.ok, parsed.errors
    assert [r.loan_id for r in parsed.rows] == ["L-1001", "L-1002", "L-1003", "L-1004", "L-1005"]


BAD_ROWS = [
    ("bad date", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-02-30:1.00,", "schedule", "bad_date"),
    ("bad date format", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,01/02/2026:1.00,", "schedule", "bad_date"),
    ("negative amount", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-01-01:-5.00,", "schedule", "negative_amount"),
    ("negative principal", "L-1,tbox-1,LSVAU218XN2183294,B-1,-1.00,2026-01-01:1.00,", "principal", "negative_amount"),
    ("zero payment", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-01-01:1.00,P:2026-01-01:0", "payments", "bad_amount"),
    ("3 decimals", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.005,2026-01-01:1.00,", "principal", "bad_amount"),
    ("vin checksum", "L-1,tbox-1,LSVAU2180N2183294,B-1,1.00,2026-01-01:1.00,", "vin", "bad_vin"),
    ("vin length", "L-1,tbox-1,LSVAU218XN218329,B-1,1.00,2026-01-01:1.00,", "vin", "bad_vin"),
    ("vin letter O", "L-1,tbox-1,LSVAU218XNO183294,B-1,1.00,2026-01-01:1.00,", "vin", "bad_vin"),
    ("device id", "L-1,tbox 1,LSVAU218XN2183294,B-1,1.00,2026-01-01:1.00,", "device_id", "bad_device_id"),
    ("loan id", "L/1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-01-01:1.00,", "loan_id", "bad_loan_id"),
    ("id card as ref", "L-1,tbox-1,LSVAU218XN2183294,11010519491231002X,1.00,2026-01-01:1.00,", "borrower_ref",
     "personal_identifier"),
    ("phone as ref", "L-1,tbox-1,LSVAU218XN2183294,13800138000,1.00,2026-01-01:1.00,", "borrower_ref",
     "personal_identifier"),
    ("empty schedule", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,,", "schedule", "empty_schedule"),
    ("unordered", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-02-01:1.00;2026-01-01:1.00,", "schedule",
     "unordered_schedule"),
    ("no colon", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-01-01,", "schedule", "bad_schedule"),
    ("below principal", "L-1,tbox-1,LSVAU218XN2183294,B-1,100.00,2026-01-01:1.00,", "schedule",
     "schedule_below_principal"),
    ("payment shape", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-01-01:1.00,2026-01-01:1.00", "payments",
     "bad_payment"),
    ("payment twice", "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-01-01:1.00,P:2026-01-01:1;P:2026-01-02:1", "payments",
     "duplicate_payment_id"),
    ("field count", "L-1,tbox-1,LSVAU218XN2183294", None, "wrong_field_count"),
]


@pytest.mark.parametrize(("name", "row", "column", "reason"), BAD_ROWS, ids=[r[0] for r in BAD_ROWS])
def test_bad_row(name: str, row: str, column: str | None, reason: str) -> None:
    parsed = parse_loans(HEADER + GOOD2 + row + "\n")
    assert [(e.line, e.column, e.reason) for e in parsed.errors] == [(3, column, reason)]
    assert [r.loan_id for r in parsed.rows] == ["L-2"]
    assert parsed.counters() == {"rows_ok": 1, "rows_bad": 1, reason: 1}
    assert str(parsed.errors[0]).startswith("line 3")


def test_error_messages_name_the_value() -> None:
    parsed = parse_loans(HEADER + "L-1,tbox-1,LSVAU2180N2183294,B-1,1.00,2026-02-30:1.00,\n")
    messages = [str(e) for e in parsed.errors]
    assert messages == [
        "line 2, vin: VIN 'LSVAU2180N2183294' check digit is '0', computed 'X'",
        "line 2, schedule: installment 1: date '2026-02-30' does not exist",
    ]


def test_duplicates_point_at_the_first_line() -> None:
    dup = GOOD.replace("tbox-1", "tbox-9").replace("LSVAU218XN2183294", "LGBH52E00NY000123")
    parsed = parse_loans(HEADER + GOOD + GOOD2 + dup + GOOD2.replace("L-2", "L-3"))
    assert [(e.line, e.reason, e.message) for e in parsed.errors] == [
        (4, "duplicate_loan_id", "loan_id 'L-1' already used on line 2"),
        (5, "duplicate_device_id", "device_id 'tbox-2' already used on line 3"),
        (5, "duplicate_vin", "vin 'LFV2A21K2N3040001' already used on line 3"),
    ]
    assert parsed.bad_lines == {4, 5}


def test_multiline_quoted_field_reports_its_start_line() -> None:
    bad = 'L-3,tbox-3,LSVAU218XN2183294,B-3,1.00,"2026-01-01:1.00;\n2026-13-01:1.00",\n'
    parsed = parse_loans(HEADER + GOOD2 + bad + GOOD.replace("L-1", "L-4").replace("tbox-1", "tbox-4")
                         .replace("LSVAU218XN2183294", "LGBH52E00NY000123"))
    assert [(e.line, e.reason) for e in parsed.errors] == [(3, "bad_date")]
    assert [r.line for r in parsed.rows] == [2, 5]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("loan_id,device_id\n", "bad_header"),
        (HEADER.replace("payments", "payments,notes"), "bad_header"),
        (HEADER.replace("payments", "vin"), "bad_header"),
    ],
)
def test_bad_header(text: str, reason: str) -> None:
    parsed = parse_loans(text + GOOD)
    assert [(e.line, e.reason) for e in parsed.errors] == [(1, reason)]
    assert parsed.rows == ()


def test_empty_file() -> None:
    assert [(e.line, e.reason) for e in parse_loans("").errors] == [(1, "empty_file")]


def test_malformed_csv_stops_with_a_line() -> None:
    parsed = parse_loans(HEADER + GOOD + 'L-2,"tbox-2"x,VIN,B,1,2026-01-01:1,\n')
    assert [(e.line, e.reason) for e in parsed.errors] == [(3, "malformed_csv")]


def test_oversized_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loan_csv, "LIMITS", loan_csv.ImportLimits(max_bytes=500, max_rows=2, max_field=200,
                                                                   max_installments=3, max_payments=2))
    assert [e.reason for e in parse_loans(HEADER + GOOD * 10).errors] == ["file_too_large"]
    assert [e.reason for e in parse_loans(io.StringIO(HEADER + GOOD * 10)).errors] == ["file_too_large"]
    three = HEADER + GOOD + GOOD2 + GOOD2.replace("L-2", "L-3").replace("tbox-2", "tbox-3").replace(
        "LFV2A21K2N3040001", "LGBH52E00NY000123")
    assert [(e.line, e.reason) for e in parse_loans(three).errors] == [(4, "too_many_rows")]
    long_field = HEADER + "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00," + "x" * 300 + ",\n"
    assert [e.reason for e in parse_loans(long_field).errors] == ["malformed_csv"]
    many = HEADER + "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00," + ";".join(f"2026-01-0{d}:1" for d in range(1, 5)) + ",\n"
    assert [e.reason for e in parse_loans(many).errors] == ["too_many_installments"]
    pays = HEADER + "L-1,tbox-1,LSVAU218XN2183294,B-1,1.00,2026-01-01:1,a:2026-01-01:1;b:2026-01-01:1;c:2026-01-01:1\n"
    assert [e.reason for e in parse_loans(pays).errors] == ["too_many_payments"]


def test_garbage_never_raises() -> None:
    for text in ["\x00\x01\x02", HEADER + "\x00,\x00\n", HEADER + '"unterminated', HEADER + ",,,,,,\n" * 3]:
        parsed = parse_loans(text)
        assert isinstance(parsed, loan_csv.LoanImport)


# ------------------------------------------------------------------ import into the database


def test_import_all_or_nothing(session: Session) -> None:
    parsed = parse_loans(HEADER + GOOD + "L-2,tbox-2,BADVIN,B-2,1.00,2026-01-01:1.00,\n")
    with pytest.raises(LoanImportError, match="nothing imported") as info:
        import_loans(session, parsed, now_ms=NOW)
    assert [(e.line, e.reason) for e in info.value.errors] == [(3, "bad_vin")]
    assert session.scalar(sa.select(sa.func.count()).select_from(LoanRecord)) == 0


def test_import_skip_bad_rows(session: Session) -> None:
    parsed = parse_loans(HEADER + GOOD + "L-2,tbox-2,BADVIN,B-2,1.00,2026-01-01:1.00,\n")
    report = import_loans(session, parsed, now_ms=NOW, skip_bad_rows=True)
    assert report.created == ("L-1",)
    assert report.skipped_lines == (3,)
    assert report.payments_recorded == 1
    session.commit()
    facts = loan_facts(session, "L-1", date(2026, 2, 10))
    assert (facts.total_paid_cents, facts.consecutive_late) == (350_000, 1)


def test_reimport_is_idempotent_and_conflicts_are_row_errors(session: Session) -> None:
    first = import_loans(session, parse_loans(HEADER + GOOD), now_ms=NOW)
    assert first.created == ("L-1",)
    again = import_loans(session, parse_loans(HEADER + GOOD), now_ms=NOW + 1)
    assert (again.created, again.unchanged, again.payments_recorded) == ((), ("L-1",), 0)
    assert session.scalar(sa.select(sa.func.count()).select_from(RepaymentRecord)) == 1

    changed = GOOD.replace("6000.00", "6500.00").replace("P1:2026-01-01:3500.00", "P1:2026-01-02:3500.00")
    with pytest.raises(LoanImportError) as info:
        import_loans(session, parse_loans(HEADER + changed), now_ms=NOW)
    assert [(e.line, e.reason) for e in info.value.errors] == [(2, "loan_exists"), (2, "payment_conflict")]

    other_loan_same_device = GOOD2.replace("tbox-2", "tbox-1")
    report = import_loans(session, parse_loans(HEADER + other_loan_same_device), now_ms=NOW, skip_bad_rows=True)
    assert [(e.line, e.reason) for e in report.errors] == [(2, "device_id_in_use")]
    assert report.created == ()


def test_import_sample_loan_book(session: Session) -> None:
    report = import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
    assert len(report.created) == 5
    late = loan_facts(session, "L-1002", date(2026, 11, 28))
    assert (late.consecutive_late, late.days_past_due, late.overdue) == (3, 88, True)
    good = loan_facts(session, "L-1001", date(2026, 11, 28))
    assert (good.consecutive_late, good.overdue) == (0, False)
    one = loan_facts(session, "L-1003", date(2026, 11, 28))
    assert (one.consecutive_late, one.total_overdue_cents) == (1, 350_000)
    pre = loan_facts(session, "L-1004", date(2026, 11, 28))
    assert (pre.overdue, pre.prepaid_cents, pre.next_due_date) == (False, 700_000, date(2027, 2, 1))
    partial = loan_facts(session, "L-1005", date(2026, 11, 28))
    assert (partial.total_overdue_cents, partial.consecutive_late) == (200_000, 1)


def test_the_csv_example_of_docs_risk_md_is_accepted() -> None:
    """The example a newcomer copies first must import (it once had instalments below the principal)."""
    text = (Path(__file__).parents[1] / "docs" / "risk.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in text.split("```csv\n")[1:]]
    assert blocks, "docs/risk.md has no ```csv block"
    for block in blocks:
        parsed = parse_loans(block)
        assert parsed.errors == ()
        assert len(parsed.rows) == block.count("\n") - 1
REGION_HEADER = "loan_id,device_id,vin,borrower_ref,principal,schedule,payments,region\n"


@pytest.mark.parametrize(
    ("region", "expected"),
    [("Shanghai", "Shanghai"), ("上海 浦东", "上海 浦东"), ("CN-31", "CN-31"), ("", None), ("  x.y_z  ", "x.y_z")],
)
def test_the_optional_region_column(region: str, expected: str | None) -> None:
    parsed = parse_loans(REGION_HEADER + GOOD.rstrip("\n") + f",{region}\n")
    assert parsed.ok, parsed.errors
    assert parsed.rows[0].region == expected
    assert parse_loans(HEADER + GOOD).rows[0].region is None  # the column may be left out


@pytest.mark.parametrize("region", ["-x", "x;y", "a" * 65, "x<y>", "\u0000x"])
def test_bad_regions_are_row_errors(region: str) -> None:
    parsed = parse_loans(REGION_HEADER + GOOD.rstrip("\n") + f",\"{region}\"\n")
    assert [(e.line, e.column, e.reason) for e in parsed.errors] == [(2, "region", "bad_region")]


def test_a_changed_region_on_reimport_is_a_conflict(session: Session) -> None:
    import_loans(session, parse_loans(REGION_HEADER + GOOD.rstrip("\n") + ",Shanghai\n"), now_ms=NOW)
    assert session.get(LoanRecord, "L-1").region == "Shanghai"  # type: ignore[union-attr]
    same = import_loans(session, parse_loans(REGION_HEADER + GOOD.rstrip("\n") + ",Shanghai\n"), now_ms=NOW)
    assert same.unchanged == ("L-1",)
    with pytest.raises(LoanImportError) as info:
        import_loans(session, parse_loans(REGION_HEADER + GOOD.rstrip("\n") + ",Beijing\n"), now_ms=NOW)
    assert [e.reason for e in info.value.errors] == ["loan_exists"]
