"""The repayment feed (issue #16): bulk and file import, idempotent re-posts, reversals, schedule versions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from collector.cli.commands import main
from collector.loans.csv_import import import_loans, parse_loans
from collector.loans.feed import FeedEntryError, apply_feed, parse_feed_csv
from collector.storage.database import create_engine, migrate
from tests.loan_api_app import NOW, SAMPLE, Api, cli_book, open_loan_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_loan_api(tmp_path) as running:
        yield running


def days_past_due(api: Api, loan_id: str) -> int:
    return int(api.call("GET", f"/v1/loans/{loan_id}", "collections").json()["repayment"]["days_past_due"])


def feed(api: Api, *entries: dict[str, str]) -> dict:
    answer = api.call("POST", "/v1/repayments/feed", "collections", json={"entries": list(entries)})
    assert answer.status_code == 200, answer.text
    return answer.json()


NOVEMBER = {"kind": "payment", "loan_id": "L-1001", "txn_id": "BANK-7781", "paid_on": "2026-11-01", "amount": "3500.00"}


def test_a_reversal_flips_days_past_due_back(api: Api) -> None:
    assert days_past_due(api, "L-1001") == 0  # paid up through November
    bounced = feed(api, {"kind": "reversal", "loan_id": "L-1001", "txn_id": "REV-1", "reverses": "P1001-202611"})
    assert bounced["counts"] == {"created": 1}
    assert days_past_due(api, "L-1001") == 27  # 2026-11-01 is unpaid again on 2026-11-28
    cured = feed(api, NOVEMBER)
    assert cured["counts"] == {"created": 1}
    assert days_past_due(api, "L-1001") == 0


def test_re_posting_the_same_feed_is_idempotent(api: Api) -> None:
    entries = [NOVEMBER | {"loan_id": "L-1003", "txn_id": "BANK-1", "paid_on": "2026-11-03"},
               {"kind": "reversal", "loan_id": "L-1003", "txn_id": "REV-9", "reverses": "P1003-202610"}]
    first = feed(api, *entries)
    assert first["counts"] == {"created": 2}
    again = feed(api, *entries)
    assert again["counts"] == {"duplicate": 2}
    assert again["loans"] == {}  # nothing changed, nothing reassessed
    conflicting = feed(api, entries[0] | {"amount": "3400.00"},
                       {"kind": "reversal", "loan_id": "L-1003", "txn_id": "REV-10", "reverses": "P1003-202610"})
    assert [e["outcome"] for e in conflicting["entries"]] == ["conflict", "conflict"]


def test_bad_entries_are_reported_one_by_one(api: Api) -> None:
    bad = [
        "not an object",
        {"kind": "refund", "loan_id": "L-1001", "txn_id": "x"},
        NOVEMBER | {"txn_id": "bad id!"},
        NOVEMBER | {"paid_on": "2026-02-30"},
        NOVEMBER | {"amount": "-5"},
        NOVEMBER | {"amount": 35},
        NOVEMBER | {"loan_id": "L-404"},
        NOVEMBER | {"extra": "1"},
        {"kind": "reversal", "loan_id": "L-1001", "txn_id": "R", "reverses": "NO-SUCH"},
        NOVEMBER | {"reverses": "P1"},
    ]
    answer = api.call("POST", "/v1/repayments/feed", "collections", json={"entries": [*bad, NOVEMBER]})
    assert answer.status_code == 422  # a non-object entry fails the request schema
    answer = feed(api, *bad[1:], NOVEMBER)
    reasons = [e.get("reason") for e in answer["entries"]]
    assert reasons == ["bad_kind", "bad_txn_id", "bad_paid_on", "bad_amount", "bad_amount", "unknown_loan",
                       "unknown_field", "unknown_payment", "bad_reverses", None]
    assert answer["counts"] == {"error": 9, "created": 1}
    assert api.call("POST", "/v1/repayments/feed", "collections", json={"entries": []}).status_code == 422
    too_many = {"entries": [NOVEMBER | {"txn_id": f"T{i}"} for i in range(10_001)]}
    assert api.call("POST", "/v1/repayments/feed", "collections", json=too_many).status_code == 422
    assert api.call("POST", "/v1/repayments/feed", "risk_analyst", json={"entries": [NOVEMBER]}).status_code == 403


def test_feed_file_parsing_refuses_malformed_files() -> None:
    good = b"kind,loan_id,txn_id,paid_on,amount,reverses\npayment,L-1,T1,2026-11-01,10.00,\nreversal,L-1,R1,,,T1\n"
    rows = parse_feed_csv(good)
    assert rows == [{"kind": "payment", "loan_id": "L-1", "txn_id": "T1", "paid_on": "2026-11-01", "amount": "10.00"},
                    {"kind": "reversal", "loan_id": "L-1", "txn_id": "R1", "reverses": "T1"}]
    short = parse_feed_csv(b"kind,loan_id,txn_id,paid_on,amount,reverses\npayment,L-1\n")
    assert isinstance(short[0], FeedEntryError)
    for data, reason in ((b"loan,amount\n", "bad_header"), (b"\xff\xfe", "not_utf8"), (b"", "bad_header"),
                         (b"x" * (4 * 1024 * 1024 + 1), "too_large")):
        with pytest.raises(FeedEntryError) as caught:
            parse_feed_csv(data)
        assert caught.value.reason == reason
    header = b"kind,loan_id,txn_id,paid_on,amount,reverses\n"
    with pytest.raises(FeedEntryError, match="at most"):
        parse_feed_csv(header + b"payment,L,T,2026-01-01,1.00,\n" * 10_001)


def test_repayments_import_file_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    config = cli_book(tmp_path, monkeypatch)
    capsys.readouterr()
    path = tmp_path / "feed.csv"
    path.write_text("kind,loan_id,txn_id,paid_on,amount,reverses\nreversal,L-1001,REV-1,,,P1001-202611\n"
                    "payment,L-1001,BANK-2,2026-11-20,3500.00,\n")
    argv = ["repayments", "import", "--config", str(config), str(path)]
    assert main(argv) == 0
    assert '"created": 2' in capsys.readouterr().out
    assert main(argv) == 0  # re-importing the same file changes nothing
    assert '"duplicate": 2' in capsys.readouterr().out
    path.write_text("kind,loan_id,txn_id,paid_on,amount,reverses\npayment,L-404,B,2026-11-20,1.00,\n")
    assert main(argv) == 1
    assert "unknown_loan" in capsys.readouterr().err
    path.write_text("not,a,feed\n")
    assert main(argv) == 1
    assert "header" in capsys.readouterr().err


def test_apply_feed_in_a_session(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        report = apply_feed(session, [NOVEMBER | {"loan_id": "L-1002", "txn_id": "T-9"}], now_ms=NOW)
        assert (report.counts(), report.touched_loans) == ({"created": 1}, ("L-1002",))
    engine.dispose()


def test_a_changed_schedule_is_a_new_version_not_loan_exists(api: Api, tmp_path: Path) -> None:
    assert days_past_due(api, "L-1002") == 88
    loan = api.call("GET", "/v1/loans/L-1002", "admin").json()
    schedule = [{"due_date": i["due_date"], "amount": i["amount"]} for i in loan["repayment"]["installments"]]
    deferred = schedule[:3]  # June..August paid; September..December deferred into 2027
    later = [{"due_date": f"2027-{m:02d}-01", "amount": "3500.00"} for m in range(1, 13)]
    body = {"kind": "deferral", "reason": "hardship: three months deferred", "schedule": [*deferred, *later]}
    made = api.call("POST", "/v1/loans/L-1002/schedule", "admin", json=body)
    assert made.status_code == 201, made.text
    assert (made.json()["version"], made.json()["created"]) == (2, True)
    assert days_past_due(api, "L-1002") == 0  # the deferred instalments are no longer due
    assert api.call("POST", "/v1/loans/L-1002/schedule", "admin", json=body).status_code == 200  # idempotent
    versions = api.call("GET", "/v1/loans/L-1002/schedule-versions", "collections").json()
    assert [(v["version"], v["kind"]) for v in versions] == [(1, "original"), (2, "deferral")]
    assert len(versions[0]["installments"]) == 24
    bad = body | {"schedule": [{"due_date": "2027-02-01", "amount": "1.00"}, {"due_date": "2027-01-01",
                                                                             "amount": "1.00"}]}
    assert api.call("POST", "/v1/loans/L-1002/schedule", "admin", json=bad).status_code == 422
    assert api.call("POST", "/v1/loans/L-1002/schedule", "admin", json=body | {"kind": "x"}).status_code == 422
    assert api.call("POST", "/v1/loans/L-1002/schedule", "collections", json=body).status_code == 403
    # The loan book import: a changed schedule of a stored loan is a new version too.
    text = SAMPLE.read_text(encoding="utf-8").replace("2028-05-01:3500.00,P1004", "2028-05-01:3000.00,P1004")
    with Session(api.engine) as session:
        report = import_loans(session, parse_loans(text), now_ms=NOW)
        session.commit()
    assert report.rescheduled == ("L-1002", "L-1004")  # L-1002 back to the file's schedule: version 3
    assert report.errors == ()
