"""The cases API through the real app, auth and database: roles, actions, refusals, audit."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api import cases, loans
from collector.api.app import create_app
from collector.loans.csv_import import import_loans, parse_loans
from collector.risk.assessment import reassess_loan as _reassess_loan
from collector.settings import ContactSettings, Settings, hash_api_key
from collector.storage.database import create_engine, migrate
from collector.storage.people import add_user
from collector.storage.tables import AuditEntry, CaseActionRecord, CaseRecord, LoanRecord

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
KEYS = {"admin": "k-admin-0123456789", "risk_analyst": "k-analyst-0123456789",
        "collections": "k-collections-0123456789", "auditor": "k-auditor-0123456789"}
NOW = 1_795_858_800_000  # 2026-11-28T17:40+08:00

#: Cases follow the stored level whatever the model decides it; these tests pin the v1 table's
#: levels (L-1002 at 58 days past due is ``watch`` there, ``critical`` under v2's credit axis).
reassess_loan = functools.partial(_reassess_loan, model="v1")


def shanghai_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)


class CasesApi:
    def __init__(self, client: TestClient, engine: sa.Engine, clock: list[int], case_id: int) -> None:
        self.client, self.engine, self.clock, self.case_id = client, engine, clock, case_id

    def call(self, method: str, path: str, role: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, headers={"Authorization": f"Bearer {KEYS[role]}"}, **kwargs)

    def audit(self, action: str) -> list[AuditEntry]:
        with Session(self.engine) as session:
            return list(session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action)))


@pytest.fixture
def api(tmp_path: Path) -> Iterator[CasesApi]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        add_user(session, username="chen", display_name="Chen", role="collections", password="p" * 12, now_ms=NOW)
        reassess_loan(session, "L-1002", NOW)
        session.commit()
        case_id = session.scalars(sa.select(CaseRecord.id)).one()
    settings = Settings(api_keys={hash_api_key(k): role for role, k in KEYS.items()},
                        contact=ContactSettings(max_per_day=2))
    clock = [NOW]
    app = create_app(settings, engine=engine, routers=[loans.router, cases.router], clock_ms=lambda: clock[0])
    with TestClient(app) as client:
        yield CasesApi(client, engine, clock, case_id)
    engine.dispose()


def test_roles(api: CasesApi) -> None:
    path = f"/v1/cases/{api.case_id}"
    for role in ("admin", "risk_analyst", "collections"):
        assert api.call("GET", "/v1/cases", role).status_code == 200
        assert api.call("GET", path, role).status_code == 200
    assert api.call("GET", "/v1/cases", "auditor").status_code == 403
    assert api.call("GET", path, "auditor").status_code == 403
    note = {"kind": "note", "note": "borrower moved"}
    assert api.call("POST", f"{path}/actions", "risk_analyst", json=note).status_code == 403
    assert api.call("POST", f"{path}/assign", "auditor", json={"assignee": "chen"}).status_code == 403
    assert api.call("POST", f"{path}/close", "risk_analyst", json={"resolution": "settled"}).status_code == 403
    assert api.client.get("/v1/cases").status_code == 401
    assert api.call("POST", f"{path}/actions", "collections", json=note).status_code == 201
    assert api.call("POST", f"{path}/actions", "admin", json=note).status_code == 201
    denied = api.audit("access_denied")
    assert {d.role for d in denied} == {"auditor", "risk_analyst"}
    # the auditor reads the log of what was done to the case
    log = api.call("GET", "/v1/audit", "auditor", params={"subject_type": "loan", "subject_id": "L-1002"}).json()
    assert {"case_opened", "case_action", "read_case"} <= {row["action"] for row in log}


def test_the_case_as_the_api_shows_it(api: CasesApi) -> None:
    listed = api.call("GET", "/v1/cases", "collections").json()
    assert [(c["loan_id"], c["level"], c["next_action"]) for c in listed] == [("L-1002", "watch", "sms")]
    case = listed[0]
    assert case["opened_at"] == "2026-11-28T17:40:00+08:00"
    assert case["time_zone"] == "Asia/Shanghai"
    assert case["sla_due_at"] == "2026-12-01T17:40:00+08:00"
    assert api.call("GET", "/v1/cases", "collections", params={"status": "closed"}).json() == []
    by_loan = api.call("GET", "/v1/cases", "risk_analyst", params={"loan_id": "L-1002", "status": "all"}).json()
    assert [c["case_id"] for c in by_loan] == [case["case_id"]]
    assert api.call("GET", "/v1/cases", "risk_analyst", params={"loan_id": "L-1001"}).json() == []
    assert api.call("GET", "/v1/cases/999", "collections").status_code == 404
    assert api.call("GET", "/v1/cases/0", "collections").status_code == 422
    assert api.call("GET", f"/v1/cases/{2**64}", "collections").status_code == 422
    assert api.call("GET", "/v1/cases", "collections", params={"status": "any"}).status_code == 422


def test_a_call_at_21_30_gets_409_with_the_next_allowed_time_and_is_recorded(api: CasesApi) -> None:
    api.clock[0] = shanghai_ms("2026-11-28T21:30")
    answer = api.call("POST", f"/v1/cases/{api.case_id}/actions", "collections",
                      json={"kind": "call", "outcome": "contacted"})
    assert answer.status_code == 409
    detail = answer.json()["detail"]
    assert (detail["error"], detail["reason"], detail["allowed_from"]) == (
        "contact_refused", "quiet_hours", "2026-11-29T08:00:00+08:00")
    case = api.call("GET", f"/v1/cases/{api.case_id}", "risk_analyst").json()
    assert [(a["kind"], a["status"], a["refused_reason"]) for a in case["actions"]] == [
        ("call", "refused", "quiet_hours")]
    (refusal,) = api.audit("contact_refused")
    assert refusal.actor == hash_api_key(KEYS["collections"])[:12]


def test_the_daily_cap_over_http(api: CasesApi) -> None:
    path = f"/v1/cases/{api.case_id}/actions"
    api.clock[0] = shanghai_ms("2026-11-28T10:00")
    for outcome in ("no_answer", "no_answer"):
        assert api.call("POST", path, "collections", json={"kind": "call", "outcome": outcome}).status_code == 201
    third = api.call("POST", path, "collections", json={"kind": "sms", "outcome": "sent"})
    assert third.status_code == 409
    assert third.json()["detail"]["reason"] == "daily_cap"
    assert third.json()["detail"]["allowed_from"] == "2026-11-29T08:00:00+08:00"


def test_promise_assign_and_close(api: CasesApi) -> None:
    path = f"/v1/cases/{api.case_id}"
    promise = {"kind": "call", "outcome": "promise_to_pay", "promise_date": "2026-11-30", "promise_amount": "3500.00",
               "next_action": "call", "next_action_at": "2026-12-01T10:00"}
    assert api.call("POST", f"{path}/actions", "collections", json=promise).status_code == 201
    case = api.call("GET", path, "collections").json()
    assert case["next_action_at"] == "2026-12-01T10:00:00+08:00"
    assert case["actions"][0]["promise_amount_cents"] == 350_000
    for bad in ({"kind": "call", "outcome": "promise_to_pay"}, {"kind": "fax", "outcome": "sent"},
                {"kind": "note", "note": "x", "next_action_at": "tomorrow"},
                {"kind": "call", "outcome": "promise_to_pay", "promise_date": "2026-11-30", "promise_amount": "-1"}):
        assert api.call("POST", f"{path}/actions", "collections", json=bad).status_code == 422
    assert api.call("POST", f"{path}/assign", "collections", json={"assignee": "nobody"}).status_code == 422
    assert api.call("POST", f"{path}/assign", "admin", json={"assignee": "chen"}).json()["assignee"] == "chen"
    mine = api.call("GET", "/v1/cases", "collections", params={"assignee": "chen"}).json()
    assert [c["case_id"] for c in mine] == [api.case_id]
    assert api.call("GET", "/v1/cases", "admin", params={"assignee": "me"}).json() == []  # a key is nobody
    closed = api.call("POST", f"{path}/close", "collections", json={"resolution": "settled"}).json()
    assert (closed["status"], closed["resolution"], closed["actions"][0]["promise_status"]) == (
        "closed", "settled", "void")
    assert api.call("POST", f"{path}/close", "collections", json={"resolution": "settled"}).status_code == 409
    note = {"kind": "note", "note": "late"}
    assert api.call("POST", f"{path}/actions", "collections", json=note).status_code == 409
    with Session(api.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CaseActionRecord)) == 1
    assert len(api.audit("assign_case")) == 1


def test_a_loan_created_with_its_zone(api: CasesApi) -> None:
    body = {"loan_id": "L-9", "device_id": "tbox-9", "vin": "1M8GDM9AXKP042788", "borrower_ref": "B-9",
            "principal": "1000.00", "schedule": [{"due_date": "2027-01-01", "amount": "1000.00"}],
            "time_zone": "Mars/Base"}
    refused = api.call("POST", "/v1/loans", "admin", json=body)
    assert refused.status_code == 422
    assert "time_zone" in refused.json()["detail"]
    body |= {"time_zone": "Europe/Berlin", "jurisdiction": "DE"}
    assert api.call("POST", "/v1/loans", "admin", json=body).status_code == 201
    with Session(api.engine) as session:
        loan = session.get(LoanRecord, "L-9")
        assert loan is not None
        assert (loan.time_zone, loan.jurisdiction) == ("Europe/Berlin", "DE")


def test_a_replayed_action_is_recorded_once(api: CasesApi) -> None:
    path = f"/v1/cases/{api.case_id}/actions"
    note = {"kind": "note", "note": "called the branch", "client_ref": "tablet-1:0001"}
    first = api.call("POST", path, "collections", json=note)
    again = api.call("POST", path, "collections", json=note)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["action_id"] == first.json()["action_id"]
    assert again.json()["replayed"] is True
    api.clock[0] = shanghai_ms("2026-11-28T22:00")
    call = {"kind": "call", "outcome": "contacted", "client_ref": "tablet-1:0002"}
    refused = [api.call("POST", path, "collections", json=call) for _ in range(2)]
    assert [r.status_code for r in refused] == [409, 409]
    assert refused[0].json()["detail"]["allowed_from"] == refused[1].json()["detail"]["allowed_from"]
    assert refused[1].json()["detail"]["replayed"] is True
    with Session(api.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CaseActionRecord)) == 2
    assert len(api.audit("contact_refused")) == 1


def test_hostile_action_bodies_are_refused_and_record_nothing(api: CasesApi) -> None:
    path = f"/v1/cases/{api.case_id}/actions"
    headers = {"Authorization": f"Bearer {KEYS['collections']}", "Content-Type": "application/json"}
    bodies: list[bytes] = [
        b"",  # empty
        b'{"kind": "note", "note": "trunc',  # truncated
        b"\xff\xfe not json",  # malformed
        b'{"kind": ["note"]}',  # wrong type
        b'{"kind": "note", "note": "' + b"x" * 1001 + b'"}',  # oversized note
        b'{"kind": "' + b"n" * 25 + b'"}',  # oversized kind
        b'{"kind": "note", "note": "x", "client_ref": "has space"}',  # bad idempotency key
        b'{"kind": "call", "outcome": "promise_to_pay", "promise_date": "2026-11-30", "promise_amount": "1e9"}',
        b'{"kind": "note", "note": "x", "next_action_at": "2026-13-45T99:00"}',
    ]
    for body in bodies:
        answer = api.client.post(path, content=body, headers=headers)
        # undecodable bytes are FastAPI's 400, everything that decodes but breaks a rule 422
        expected = 400 if body.startswith(b"\xff") else 422
        assert answer.status_code == expected, (body[:40], answer.status_code)
    huge = api.client.post(path, content=b'{"note": "' + b"x" * (2 << 20) + b'"}', headers=headers)
    assert huge.status_code == 413
    forged = api.client.post(path, json={"kind": "note", "note": "x"},
                             headers={"Authorization": "Bearer forged-key-0123456789"})
    assert forged.status_code == 401
    with Session(api.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CaseActionRecord)) == 0
