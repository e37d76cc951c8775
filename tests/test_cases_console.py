"""The console's case pages through the real app, sessions and database (TestClient)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api.app import create_app
from collector.console.case_pages import router as case_router
from collector.console.web import router as console_router
from collector.loans.csv_import import import_loans, parse_loans
from collector.risk.assessment import reassess_loan
from collector.settings import Settings
from collector.storage.database import create_engine, migrate
from collector.storage.people import add_user
from collector.storage.tables import AuditEntry, CaseActionRecord, CaseRecord

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000  # 2026-11-28T17:40+08:00
PASSWORD = "correct horse battery"
USERS = {"cole": "collections", "ana": "risk_analyst", "audrey": "auditor"}


def shanghai_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo("Asia/Shanghai")).timestamp() * 1000)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, sa.Engine, list[int], int]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        for name, role in USERS.items():
            add_user(session, username=name, display_name=name.title(), role=role, password=PASSWORD, now_ms=NOW)
        reassess_loan(session, "L-1002", NOW)
        session.commit()
        case_id = session.scalars(sa.select(CaseRecord.id).where(CaseRecord.loan_id == "L-1002")).one()
    clock = [NOW]
    app = create_app(Settings(), engine=engine, routers=[console_router, case_router], clock_ms=lambda: clock[0])
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, engine, clock, case_id
    engine.dispose()


def sign_in(client: TestClient, name: str) -> str:
    form = client.get("/console/sign-in")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    done = client.post("/console/sign-in", data={"login_token": token.group(1), "username": name,
                                                 "password": PASSWORD}, follow_redirects=False)
    assert done.status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get(done.headers["location"]).text)
    assert csrf is not None
    return csrf.group(1)


def test_case_list_page_and_form(world: tuple) -> None:
    client, engine, clock, case_id = world
    csrf = sign_in(client, "cole")
    listing = client.get("/console/cases")
    assert listing.status_code == 200
    unassigned = listing.text.split('id="h-unassigned_cases"')[1].split("</section>")[0]
    assert f"/console/cases/{case_id}" in unassigned
    assert "L-1002" in unassigned
    assert 'href="/console/cases"' in listing.text  # in the navigation

    assert f'href="/console/cases/{case_id}" id="case-link"' in client.get("/console/loans/L-1002").text
    page = client.get(f"/console/cases/{case_id}")
    assert 'id="action-form"' in page.text
    assert "Asia/Shanghai" in page.text
    assert client.post(f"/console/cases/{case_id}/assign", data={}).status_code == 403  # no CSRF token
    assert client.post(f"/console/cases/{case_id}/assign", data={"csrf_token": csrf},
                       follow_redirects=False).status_code == 303
    mine = client.get("/console/cases").text.split('id="h-my_cases"')[1].split("</section>")[0]
    assert f"/console/cases/{case_id}" in mine

    clock[0] = shanghai_ms("2026-11-28T21:30")
    csrf = sign_in(client, "cole")  # the session went idle while the clock moved on
    refused = client.post(f"/console/cases/{case_id}/actions",
                          data={"csrf_token": csrf, "kind": "call", "outcome": "contacted"}, follow_redirects=False)
    assert refused.status_code == 303
    assert "refused=" in refused.headers["location"]
    shown = client.get(refused.headers["location"]).text
    banner = shown.split('id="contact-refused"')[1].split("</div>")[0]
    assert "quiet_hours" in banner
    assert 'datetime="2026-11-29T08:00:00+08:00"' in banner
    assert "2026-11-29 08:00 +08:00" in banner

    promise = {"csrf_token": csrf, "kind": "note", "note": "borrower asked for a callback",
               "next_action": "call", "next_action_at": "2026-11-29T10:00"}
    assert client.post(f"/console/cases/{case_id}/actions", data=promise,
                       follow_redirects=False).status_code == 303
    page = client.get(f"/console/cases/{case_id}").text
    assert "borrower asked for a callback" in page
    assert "call · 2026-11-29 10:00 +08:00" in page
    bad = client.post(f"/console/cases/{case_id}/actions",
                      data={"csrf_token": csrf, "kind": "call", "outcome": "promise_to_pay"})
    assert bad.status_code == 422
    assert 'id="form-error"' in bad.text
    bad_date = client.post(f"/console/cases/{case_id}/actions",
                           data={"csrf_token": csrf, "kind": "call", "outcome": "promise_to_pay",
                                 "promise_date": "soon", "promise_amount": "1"})
    assert bad_date.status_code == 422
    assert client.get("/console/cases/99999").status_code == 404
    assert client.get("/console/cases/x1").status_code == 404
    closed = client.post(f"/console/cases/{case_id}/close", data={"csrf_token": csrf, "resolution": "recovered"},
                         follow_redirects=False)
    assert closed.status_code == 303
    assert 'id="action-form"' not in client.get(f"/console/cases/{case_id}").text
    with Session(engine) as session:
        kinds = [r.status for r in session.scalars(sa.select(CaseActionRecord).order_by(CaseActionRecord.id))]
        actions = set(session.scalars(sa.select(AuditEntry.action)))
    assert kinds == ["refused", "done"]
    assert {"view_cases", "view_case", "assign_case", "contact_refused", "case_action", "case_closed"} <= actions


def test_who_may_open_the_case_pages(world: tuple) -> None:
    client, _, _, case_id = world
    csrf = sign_in(client, "ana")
    page = client.get(f"/console/cases/{case_id}")
    assert page.status_code == 200
    assert 'id="action-form"' not in page.text  # an analyst reads cases, does not act on them
    note = {"csrf_token": csrf, "kind": "note", "note": "x"}
    assert client.post(f"/console/cases/{case_id}/actions", data=note).status_code == 403
    sign_in(client, "audrey")
    assert client.get("/console/cases").status_code == 403
    assert client.get(f"/console/cases/{case_id}").status_code == 403


def test_a_form_sent_twice_records_one_action(world: tuple) -> None:
    client, engine, _, case_id = world
    csrf = sign_in(client, "cole")
    page = client.get(f"/console/cases/{case_id}").text
    ref = re.search(r'name="client_ref" value="([^"]+)"', page)
    assert ref is not None
    form = {"csrf_token": csrf, "client_ref": ref.group(1), "kind": "note", "note": "sent twice"}
    for _ in range(2):
        assert client.post(f"/console/cases/{case_id}/actions", data=form, follow_redirects=False).status_code == 303
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(CaseActionRecord)) == 1
    assert ref.group(1) not in client.get(f"/console/cases/{case_id}").text  # a new form gets a new key
