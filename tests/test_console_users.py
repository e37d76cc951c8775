"""User management in the console (``/console/users``, collector.console.user_pages) through the real
app, sessions and database (TestClient): admin only (refusals audited), create, role change,
disable/enable, password reset, the self-lockout and last-admin rules, typed errors on the form."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api.app import create_app
from collector.cases.store import Actor, assign_case
from collector.console.case_pages import router as case_router
from collector.console.user_pages import router as users_router
from collector.console.web import router as console_router
from collector.loans.csv_import import import_loans, parse_loans
from collector.risk.assessment import reassess_loan
from collector.settings import Settings, hash_api_key
from collector.storage.database import create_engine, migrate
from collector.storage.people import (
    LastAdminError,
    PeopleError,
    SelfLockoutError,
    SessionRecord,
    UserRecord,
    add_user,
    set_disabled,
    set_role,
)
from collector.storage.tables import AuditEntry, CaseRecord

NOW = 1_795_858_800_000  # 2026-11-28T09:40:00Z
PASSWORD = "correct horse battery"
NEW_PASSWORD = "a brand new password"
SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
USERS = {"root": "admin", "ana": "risk_analyst", "cole": "collections", "audrey": "auditor"}
ADMIN_KEY = "k-admin-0123456789"
World = tuple[TestClient, sa.Engine]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        for name, role in USERS.items():
            add_user(session, username=name, display_name=name.title(), role=role, password=PASSWORD, now_ms=NOW)
        session.commit()
    settings = Settings(api_keys={hash_api_key(ADMIN_KEY): "admin"})
    app = create_app(settings, engine=engine, routers=[console_router, users_router, case_router],
                     clock_ms=lambda: NOW)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, engine
    engine.dispose()


def _sign_in(client: TestClient, **fields: str) -> httpx.Response:
    form = client.get("/console/sign-in")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    done: httpx.Response = client.post("/console/sign-in", data={"login_token": token.group(1), **fields},
                                       follow_redirects=False)
    return done


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> str:
    """Sign in as ``name``; the CSRF token of the new session."""
    done = _sign_in(client, username=name, password=password)
    assert done.status_code == 303, done.text
    page = client.get(done.headers["location"])
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf is not None
    return csrf.group(1)


def can_sign_in(client: TestClient, name: str, password: str = PASSWORD) -> bool:
    fresh = TestClient(client.app, base_url="http://127.0.0.1")
    return _sign_in(fresh, username=name, password=password).status_code == 303


def audit(engine: sa.Engine, action: str) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def sessions_of(engine: sa.Engine, name: str) -> int:
    with Session(engine) as session:
        return len(list(session.scalars(sa.select(SessionRecord).where(SessionRecord.username == name))))


def stored(engine: sa.Engine, name: str) -> UserRecord | None:
    with Session(engine) as session:
        return session.get(UserRecord, name)


def row_of(page: str, name: str) -> str:
    match = re.search(rf'<tr data-user="{re.escape(name)}">(.*?)</tr>', page, re.S)
    assert match is not None, name
    return match.group(1)


@pytest.mark.parametrize("name", ["ana", "cole", "audrey"])
def test_only_admins_manage_users_and_refusals_are_audited(world: World, name: str) -> None:
    client, engine = world
    csrf = sign_in(client, name)
    assert 'href="/console/users"' not in client.get("/console/sign-in").text
    assert client.get("/console/users").status_code == 403
    form = {"csrf_token": csrf, "username": "mallory", "role": "admin", "password": NEW_PASSWORD,
            "password_again": NEW_PASSWORD}
    assert client.post("/console/users", data=form).status_code == 403
    assert client.post("/console/users/root/disabled", data={"csrf_token": csrf, "disabled": "true"}).status_code == 403
    assert client.post("/console/users/ana/role", data={"csrf_token": csrf, "role": "admin"}).status_code == 403
    assert client.post("/console/users/root/password",
                       data={"csrf_token": csrf, "password": NEW_PASSWORD,
                             "password_again": NEW_PASSWORD}).status_code == 403
    denied = audit(engine, "users_denied")
    assert [(e.actor, e.role, e.detail["attempted"]) for e in denied] == [
        (f"user:{name}", USERS[name], what)
        for what in ("view_users", "add_user", "set_user_disabled", "set_user_role", "reset_password")]
    assert stored(engine, "mallory") is None
    assert stored(engine, "root").disabled is False  # type: ignore[union-attr]
    assert can_sign_in(client, "root")


def test_the_list_shows_every_user_with_role_state_and_last_sign_in(world: World) -> None:
    client, engine = world
    sign_in(client, "ana")
    sign_in(client, "root")
    page = client.get("/console/users")
    assert page.status_code == 200
    assert 'href="/console/users"' in page.text  # in the admin's navigation
    for name, role in USERS.items():
        row = row_of(page.text, name)
        assert f'<td class="role">{role}</td>' in row
        assert "enabled" in row
    assert "2026-11-28 17:40:00 +08:00" in row_of(page.text, "ana")  # the last sign-in, in the admin's zone
    assert "never" in row_of(page.text, "cole")
    assert "(you)" in row_of(page.text, "root")
    assert "password_hash" not in page.text
    assert "scrypt$" not in page.text
    assert [e.actor for e in audit(engine, "view_users")] == ["user:root"]
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf is not None
    client.post("/console/preferences", data={"csrf_token": csrf.group(1), "locale": "zh-CN", "back": "/console/users"})
    chinese = client.get("/console/users").text
    assert "<h1>用户</h1>" in chinese
    assert "从未" in row_of(chinese, "cole")
    assert "添加用户" in chinese


def test_an_admin_creates_a_user_who_can_then_sign_in(world: World) -> None:
    client, engine = world
    csrf = sign_in(client, "root")
    done = client.post("/console/users", data={
        "csrf_token": csrf, "username": "wei", "display_name": "王伟", "role": "collections", "locale": "zh-CN",
        "time_zone": "Asia/Shanghai", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD,
    }, follow_redirects=False)
    assert done.status_code == 303
    assert done.headers["location"] == "/console/users?done=user_added"
    page = client.get(done.headers["location"])
    assert "User added." in page.text
    assert "王伟" in row_of(page.text, "wei")
    user = stored(engine, "wei")
    assert user is not None
    assert (user.role, user.locale, user.disabled) == ("collections", "zh-CN", False)
    assert NEW_PASSWORD not in page.text
    [row] = audit(engine, "add_user")
    assert (row.actor, row.role, row.subject_type, row.subject_id, row.detail) == (
        "user:root", "admin", "user", "wei", {"role": "collections"})
    assert can_sign_in(client, "wei", NEW_PASSWORD)


@pytest.mark.parametrize(("fields", "message"), [
    ({"username": "Bad Name"}, "must match"),
    ({"username": "x" * 300}, "must match"),
    ({"username": "ana"}, "already exists"),
    ({"role": "superuser"}, "is not one of"),
    ({"role": ""}, "is not one of"),
    ({"locale": "fr"}, "is not one of"),
    ({"time_zone": "Mars/Olympus"}, "not an IANA zone"),
    ({"password": "short", "password_again": "short"}, "at least 10 characters"),
    ({"password_again": "something else entirely"}, "the two passwords differ"),
    ({"password": "p" * 5000, "password_again": "p" * 5000}, "at most 1024"),
    ({"display_name": "d" * 201}, "display name"),
])
def test_bad_input_on_the_create_form_is_a_typed_error_on_the_page(world: World, fields: dict[str, str],
                                                                   message: str) -> None:
    client, engine = world
    csrf = sign_in(client, "root")
    form = {"csrf_token": csrf, "username": "wei", "role": "collections", "locale": "en", "time_zone": "Asia/Shanghai",
            "password": NEW_PASSWORD, "password_again": NEW_PASSWORD, **fields}
    refused = client.post("/console/users", data=form)
    assert refused.status_code == 422
    error = re.search(r'<div role="alert"[^>]*id="form-error"[^>]*>(.*?)</div>', refused.text, re.S)
    assert error is not None, refused.text[:2000]
    assert message in error.group(1)
    assert 'id="add-user-form"' in refused.text
    assert form["password"] not in refused.text
    with Session(engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(UserRecord)) == len(USERS)
    [row] = audit(engine, "add_user_refused")
    assert row.actor == "user:root"
    assert row.detail["error"] == "PeopleError"
    assert message in row.detail["reason"]


def test_a_role_change_ends_the_users_sessions_and_is_audited(world: World) -> None:
    client, engine = world
    other = TestClient(client.app, base_url="http://127.0.0.1")
    sign_in(other, "ana")
    assert sessions_of(engine, "ana") == 1
    csrf = sign_in(client, "root")
    done = client.post("/console/users/ana/role", data={"csrf_token": csrf, "role": "auditor"}, follow_redirects=False)
    assert done.headers["location"] == "/console/users?done=role_changed"
    assert stored(engine, "ana").role == "auditor"  # type: ignore[union-attr]
    assert sessions_of(engine, "ana") == 0
    assert other.get("/console/worklist", follow_redirects=False).headers["location"] == "/console/sign-in"
    [row] = audit(engine, "set_user_role")
    assert (row.actor, row.subject_id) == ("user:root", "ana")
    assert row.detail == {"role": "auditor", "old_role": "risk_analyst", "open_cases": 0, "reassigned_to": None}
    bad = client.post("/console/users/ana/role", data={"csrf_token": csrf, "role": "owner"})
    assert bad.status_code == 422
    assert "is not one of" in bad.text
    unknown = client.post("/console/users/nobody/role", data={"csrf_token": csrf, "role": "admin"})
    assert unknown.status_code == 422
    assert "does not exist" in unknown.text
    assert [r.subject_id for r in audit(engine, "set_user_role_refused")] == ["ana", "nobody"]


def test_disabling_ends_sessions_and_blocks_sign_in_until_enabled(world: World) -> None:
    client, engine = world
    other = TestClient(client.app, base_url="http://127.0.0.1")
    sign_in(other, "cole")
    csrf = sign_in(client, "root")
    done = client.post("/console/users/cole/disabled", data={"csrf_token": csrf, "disabled": "true"},
                       follow_redirects=False)
    assert done.headers["location"] == "/console/users?done=user_disabled"
    assert sessions_of(engine, "cole") == 0
    assert other.get("/console/worklist", follow_redirects=False).status_code == 303
    assert not can_sign_in(client, "cole")
    assert "disabled" in row_of(client.get("/console/users").text, "cole")
    client.post("/console/users/cole/disabled", data={"csrf_token": csrf, "disabled": "false"})
    assert can_sign_in(client, "cole")
    changes = audit(engine, "disable_user") + audit(engine, "enable_user")
    assert [(e.action, e.actor, e.subject_id) for e in changes] == [
        ("disable_user", "user:root", "cole"), ("enable_user", "user:root", "cole")]
    junk = client.post("/console/users/cole/disabled", data={"csrf_token": csrf, "disabled": "maybe"})
    assert junk.status_code == 422


def test_an_admin_cannot_disable_or_demote_themselves(world: World) -> None:
    client, engine = world
    with Session(engine) as session:
        add_user(session, username="boss", display_name="Boss", role="admin", password=PASSWORD, now_ms=NOW)
        session.commit()
    csrf = sign_in(client, "root")
    for path, data in (("disabled", {"disabled": "true"}), ("role", {"role": "auditor"})):
        refused = client.post(f"/console/users/root/{path}", data={"csrf_token": csrf, **data})
        assert refused.status_code == 422
        assert "cannot disable yourself" in refused.text
    user = stored(engine, "root")
    assert user is not None
    assert (user.role, user.disabled) == ("admin", False)
    assert sessions_of(engine, "root") == 1  # still signed in
    refusals = audit(engine, "disable_user_refused") + audit(engine, "set_user_role_refused")
    assert [e.detail["error"] for e in refusals] == ["SelfLockoutError", "SelfLockoutError"]
    # another admin may be disabled while one stays
    assert client.post("/console/users/boss/disabled", data={"csrf_token": csrf, "disabled": "true"},
                       follow_redirects=False).status_code == 303


def test_the_last_enabled_admin_is_kept(world: World) -> None:
    client, engine = world
    done = _sign_in(client, api_key=ADMIN_KEY)  # an admin API key has no user row of its own
    assert done.status_code == 303
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/console/users").text)
    assert csrf is not None
    for path, data in (("disabled", {"disabled": "true"}), ("role", {"role": "auditor"})):
        refused = client.post(f"/console/users/root/{path}", data={"csrf_token": csrf.group(1), **data})
        assert refused.status_code == 422
        assert "last enabled admin" in refused.text
    assert stored(engine, "root").role == "admin"  # type: ignore[union-attr]
    errors = [e.detail["error"] for e in audit(engine, "disable_user_refused") + audit(engine, "set_user_role_refused")]
    assert errors == ["LastAdminError", "LastAdminError"]


def test_the_people_store_keeps_an_admin_and_refuses_self_lockout(world: World) -> None:
    _, engine = world
    with Session(engine) as session:
        with pytest.raises(LastAdminError):
            set_role(session, "root", "auditor", now_ms=NOW)
        with pytest.raises(LastAdminError):
            set_disabled(session, "root", True, now_ms=NOW)
        with pytest.raises(SelfLockoutError):
            set_disabled(session, "root", True, now_ms=NOW, acting_username="root")
        with pytest.raises(PeopleError, match="does not exist"):
            set_disabled(session, "ghost", True, now_ms=NOW)
        assert set_role(session, "ana", "admin", now_ms=NOW) == "risk_analyst"
        assert set_role(session, "root", "auditor", now_ms=NOW) == "admin"  # ana is an admin now
        with pytest.raises(LastAdminError):
            set_disabled(session, "ana", True, now_ms=NOW)
        assert set_disabled(session, "cole", True, now_ms=NOW) is False
        assert set_disabled(session, "cole", False, now_ms=NOW) is True


def test_a_password_reset_ends_sessions_and_only_the_new_password_works(world: World) -> None:
    client, engine = world
    other = TestClient(client.app, base_url="http://127.0.0.1")
    sign_in(other, "ana")
    csrf = sign_in(client, "root")
    mismatch = client.post("/console/users/ana/password", data={"csrf_token": csrf, "password": NEW_PASSWORD,
                                                                "password_again": NEW_PASSWORD + "x"})
    assert mismatch.status_code == 422
    assert "the two passwords differ" in mismatch.text
    assert sessions_of(engine, "ana") == 1
    done = client.post("/console/users/ana/password", data={"csrf_token": csrf, "password": NEW_PASSWORD,
                                                            "password_again": NEW_PASSWORD}, follow_redirects=False)
    assert done.headers["location"] == "/console/users?done=password_reset"
    assert sessions_of(engine, "ana") == 0
    assert not can_sign_in(client, "ana")
    assert can_sign_in(client, "ana", NEW_PASSWORD)
    [row] = audit(engine, "reset_password")
    assert (row.actor, row.subject_id) == ("user:root", "ana")
    assert NEW_PASSWORD not in str(row.detail)
    assert [e.subject_id for e in audit(engine, "reset_password_refused")] == ["ana"]


def test_forged_replayed_and_hostile_requests_are_refused(world: World) -> None:
    client, engine = world
    csrf = sign_in(client, "root")
    form = {"username": "wei", "role": "admin", "password": NEW_PASSWORD, "password_again": NEW_PASSWORD}
    assert client.post("/console/users", data=form).status_code == 403  # no CSRF token
    assert client.post("/console/users", data={**form, "csrf_token": "forged"}).status_code == 403
    assert client.post("/console/users/ana/disabled", data={"disabled": "true"}).status_code == 403
    assert client.post("/console/users", content=b'{"username": "wei"}',
                       headers={"content-type": "application/json"}).status_code == 403  # not a form: no token
    oversized = client.post("/console/users", data={**form, "csrf_token": csrf, "display_name": "d" * 5_000_000})
    assert oversized.status_code == 413
    long_name = client.post("/console/users/" + "a" * 5000 + "/disabled", data={"csrf_token": csrf, "disabled": "true"})
    assert long_name.status_code == 422
    assert "does not exist" in long_name.text
    odd = client.post("/console/users/%E2%80%AEana/role", data={"csrf_token": csrf, "role": "admin"})
    assert odd.status_code == 422
    assert "does not exist" in odd.text
    truncated = client.post("/console/users/ana/role", content=b"csrf_token=" + csrf.encode()[:5],
                            headers={"content-type": "application/x-www-form-urlencoded"})
    assert truncated.status_code == 403
    # the session ends; the same form sent again is refused
    client.post("/console/sign-out", data={"csrf_token": csrf})
    replay = client.post("/console/users", data={**form, "csrf_token": csrf}, follow_redirects=False)
    assert replay.status_code == 401
    assert stored(engine, "wei") is None
    assert stored(engine, "ana").role == "risk_analyst"  # type: ignore[union-attr]
    assert audit(engine, "add_user") == []


def test_two_admins_disabling_each_other_at_once_leave_one_on_postgresql(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    with Session(engine) as session:
        for name in ("root", "boss"):
            add_user(session, username=name, display_name=name, role="admin", password=PASSWORD, now_ms=NOW)
        session.commit()
    outcome: list[str] = []

    def boss_disables_root() -> None:
        with Session(engine) as session:
            try:
                set_disabled(session, "root", True, now_ms=NOW, acting_username="boss")
                session.commit()
                outcome.append("disabled root")
            except LastAdminError:
                outcome.append("refused")

    first = Session(engine)
    try:
        set_disabled(first, "boss", True, now_ms=NOW, acting_username="root")  # holds the admin rows
        second = threading.Thread(target=boss_disables_root)
        second.start()
        second.join(timeout=2)
        assert second.is_alive()  # waits for the first change instead of reading around it
        first.commit()
    finally:
        first.close()
    second.join(timeout=30)
    assert outcome == ["refused"]
    with Session(engine) as session:
        enabled = session.scalars(sa.select(UserRecord.username).where(UserRecord.disabled.is_(False))).all()
        assert enabled == ["root"]
    engine.dispose()


def _case_held_by_cole(engine: sa.Engine) -> int:
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        add_user(session, username="lee", display_name="Lee", role="collections", password=PASSWORD, now_ms=NOW)
        reassess_loan(session, "L-1002", NOW)
        case_id = session.scalars(sa.select(CaseRecord.id).where(CaseRecord.loan_id == "L-1002")).one()
        assign_case(session, case_id, "cole", NOW, Actor("user:root", "admin"))
        session.commit()
    return case_id


def assignee_of(engine: sa.Engine, case_id: int) -> str | None:
    with Session(engine) as session:
        case = session.get(CaseRecord, case_id)
        assert case is not None
        return case.assignee


def test_disabling_a_user_with_open_cases_hands_them_over_and_the_cases_page_says_so(world: World) -> None:
    client, engine = world
    case_id = _case_held_by_cole(engine)
    csrf = sign_in(client, "root")
    row = row_of(client.get("/console/users").text, "cole")
    assert re.search(r'<td class="num open-cases"><a href="/console/cases">1</a></td>', row)
    choices = re.search(r'<select name="reassign_to" id="reassign-disable-cole">(.*?)</select>', row, re.S)
    assert choices is not None
    assert re.findall(r'<option value="([^"]*)"', choices.group(1)) == ["", "lee", "root"]  # who may hold cases
    assert 'name="reassign_to"' not in row_of(client.get("/console/users").text, "lee")  # holds nothing

    refused = client.post("/console/users/cole/disabled", data={"csrf_token": csrf, "disabled": "true",
                                                                "reassign_to": "ana"})
    assert refused.status_code == 422
    assert "must be an enabled user with role collections or admin" in refused.text
    assert not stored(engine, "cole").disabled  # nothing changed
    assert assignee_of(engine, case_id) == "cole"
    assert audit(engine, "disable_user_refused")[0].detail["error"] == "UnknownAssigneeError"

    done = client.post("/console/users/cole/disabled", data={"csrf_token": csrf, "disabled": "true",
                                                             "reassign_to": ""}, follow_redirects=False)
    assert done.headers["location"] == "/console/users?done=user_disabled&cases=1&to="
    page = client.get(done.headers["location"]).text
    assert 'id="handover-notice" data-cases="1" data-to=""' in page
    assert "the unassigned queue" in page
    assert stored(engine, "cole").disabled
    assert assignee_of(engine, case_id) is None
    (change,) = audit(engine, "disable_user")
    assert (change.actor, change.detail) == ("user:root", {"open_cases": 1, "reassigned_to": None})
    moved = [e for e in audit(engine, "assign_case") if e.detail.get("because") == "user_disabled"]
    assert [(e.actor, e.subject_id, e.detail["previous"], e.detail["assignee"]) for e in moved] == [
        ("user:root", "L-1002", "cole", None)]

    client.cookies.clear()
    lee_csrf = sign_in(client, "lee")
    cases = client.get("/console/cases").text
    notice = re.search(r'<div role="status" class="card" id="returned-cases">(.*?)</div>', cases, re.S)
    assert notice is not None
    assert f'data-case="{case_id}"' in notice.group(1)
    assert "back from cole (disabled" in notice.group(1)
    unassigned = cases.split('id="h-unassigned_cases"')[1].split("</section>")[0]
    assert 'data-returned-from="cole"' in unassigned
    client.post(f"/console/cases/{case_id}/assign", data={"csrf_token": lee_csrf})
    assert assignee_of(engine, case_id) == "lee"
    assert 'id="returned-cases"' not in client.get("/console/cases").text  # taken: no longer a notice


def test_a_role_change_that_holds_no_cases_hands_them_to_the_chosen_user(world: World) -> None:
    client, engine = world
    case_id = _case_held_by_cole(engine)
    csrf = sign_in(client, "root")
    done = client.post("/console/users/cole/role", data={"csrf_token": csrf, "role": "risk_analyst",
                                                         "reassign_to": "lee"}, follow_redirects=False)
    assert done.headers["location"] == "/console/users?done=role_changed&cases=1&to=lee"
    assert assignee_of(engine, case_id) == "lee"
    (change,) = audit(engine, "set_user_role")
    assert change.detail == {"role": "risk_analyst", "old_role": "collections", "open_cases": 1,
                             "reassigned_to": "lee"}
    with Session(engine) as session:  # lee -> admin keeps the case (admins may hold cases)
        assert session.scalar(sa.select(sa.func.count()).select_from(CaseRecord)
                              .where(CaseRecord.assignee == "lee")) == 1
    client.post("/console/users/lee/role", data={"csrf_token": csrf, "role": "admin"})
    assert assignee_of(engine, case_id) == "lee"


def test_cases_held_by_someone_who_cannot_act_are_flagged_until_handed_over(world: World) -> None:
    client, engine = world
    case_id = _case_held_by_cole(engine)
    with Session(engine) as session:  # disabled around the handover rule (before it existed, or by hand)
        set_disabled(session, "cole", True, now_ms=NOW)
        session.commit()
    csrf = sign_in(client, "root")
    cases = client.get("/console/cases").text
    flagged = re.search(r'<div role="alert" class="card refused" id="stranded-cases">(.*?)</div>', cases, re.S)
    assert flagged is not None
    assert f'data-case="{case_id}"' in flagged.group(1)
    assert 'data-stranded="true"' in cases.split('id="h-other_cases"')[1]
    row = row_of(client.get("/console/users").text, "cole")
    assert '<a href="/console/cases">1</a>' in row  # the disabled user still holds one
    assert 'id="reassign-disable-cole"' not in row  # the button enables: no choice there
    client.post("/console/users/cole/role", data={"csrf_token": csrf, "role": "auditor", "reassign_to": "lee"})
    assert assignee_of(engine, case_id) == "lee"
    assert 'id="stranded-cases"' not in client.get("/console/cases").text
