"""Cases and contact rules (#16): contact window and caps, cases opened by risk, promises."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.cases import staff, store
from collector.cases.contact_rules import check_contact
from collector.cases.settings import CaseSettings, ContactRules, ContactSettings
from collector.cases.store import (
    ActionIn,
    ActionResult,
    Actor,
    CaseClosedError,
    InvalidActionError,
    UnknownAssigneeError,
    assign_case,
    case_details,
    check_promises,
    close_case,
    close_open_case,
    handed_back,
    list_cases,
    record_action,
)
from collector.errors import ConfigError
from collector.loans.compliance import compliance_report
from collector.loans.csv_import import import_loans, parse_loans
from collector.loans.store import record_repayment
from collector.risk.assessment import reassess_loan as _reassess_loan
from collector.risk.repayments import Payment
from collector.risk.worker import RiskWorker
from collector.settings import load_settings
from collector.storage.database import create_engine, migrate
from collector.storage.people import UserRecord, add_user, set_disabled
from collector.storage.tables import AuditEntry, CaseActionRecord, CaseRecord, LoanRecord

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
SHANGHAI = ZoneInfo("Asia/Shanghai")
HOUR = 3_600_000
DAY = 24 * HOUR
NOW = 1_795_858_800_000  # 2026-11-28T09:40:00Z = 17:40 in Shanghai
AGENT = Actor("user:chen", "collections")
CONTACT = ContactSettings()
CASES = CaseSettings()

#: Cases follow the stored level whatever the model decides it; these tests pin the v1 table's
#: levels (L-1002 at 58 days past due is ``watch`` there, ``critical`` under v2's credit axis).
reassess_loan = functools.partial(_reassess_loan, model="v1")


def act(session: Session, case_id: int, action: ActionIn, at: int, contact: ContactSettings = CONTACT) -> ActionResult:
    return record_action(session, case_id, action, now_ms=at, who=AGENT, contact=contact)


def shanghai_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).timestamp() * 1000)


def iso_shanghai(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=SHANGHAI).isoformat()


# ------------------------------------------------------------------ pure contact rules


def test_a_call_at_21_30_shanghai_is_refused_until_08_00_next_morning() -> None:
    decision = check_contact(ContactRules(), "Asia/Shanghai", shanghai_ms("2026-11-28T21:30"), [])
    assert (decision.allowed, decision.reason) == (False, "quiet_hours")
    assert iso_shanghai(decision.allowed_from_ms) == "2026-11-29T08:00:00+08:00"
    assert "21:00" in decision.message
    assert "Asia/Shanghai" in decision.message


def test_quiet_hours_edges_and_zones() -> None:
    rules = ContactRules()
    assert check_contact(rules, "Asia/Shanghai", shanghai_ms("2026-11-28T20:59"), []).allowed
    assert not check_contact(rules, "Asia/Shanghai", shanghai_ms("2026-11-28T21:00"), []).allowed
    early = check_contact(rules, "Asia/Shanghai", shanghai_ms("2026-11-29T07:59"), [])
    assert iso_shanghai(early.allowed_from_ms) == "2026-11-29T08:00:00+08:00"
    assert check_contact(rules, "Asia/Shanghai", shanghai_ms("2026-11-29T08:00"), []).allowed
    # 21:30 in Shanghai is 14:30 in Berlin (winter): allowed for a Berlin borrower
    assert check_contact(rules, "Europe/Berlin", shanghai_ms("2026-11-28T21:30"), []).allowed
    # a window that does not cross midnight, and no window at all
    at_12_30_utc = shanghai_ms("2026-11-28T20:30")
    assert not check_contact(ContactRules("12:00", "13:00"), "UTC", at_12_30_utc, []).allowed
    assert check_contact(ContactRules("00:00", "00:00"), "Asia/Shanghai", shanghai_ms("2026-11-28T23:00"), []).allowed


def test_daily_cap_then_quiet_hours() -> None:
    rules = ContactRules(max_per_day=2, max_per_week=5)
    made = [shanghai_ms("2026-11-28T09:00"), shanghai_ms("2026-11-28T10:00")]
    decision = check_contact(rules, "Asia/Shanghai", shanghai_ms("2026-11-28T11:00"), made)
    assert decision.reason == "daily_cap"
    # next local midnight is inside the quiet hours: allowed from 08:00
    assert iso_shanghai(decision.allowed_from_ms) == "2026-11-29T08:00:00+08:00"
    assert check_contact(rules, "Asia/Shanghai", shanghai_ms("2026-11-29T08:00"), made).allowed


def test_weekly_cap_waits_for_the_oldest_contact_to_leave_the_week() -> None:
    rules = ContactRules(max_per_day=1, max_per_week=3)
    made = [shanghai_ms(f"2026-11-{d}T10:15") for d in (24, 25, 26)]
    decision = check_contact(rules, "Asia/Shanghai", shanghai_ms("2026-11-28T10:00"), made)
    assert decision.reason == "weekly_cap"
    assert iso_shanghai(decision.allowed_from_ms) == "2026-12-01T10:15:00+08:00"


def test_contact_rules_are_validated() -> None:
    with pytest.raises(ConfigError, match="HH:MM"):
        ContactRules(quiet_start="9pm")
    with pytest.raises(ConfigError, match="max_per_week"):
        ContactRules(max_per_day=5, max_per_week=2)
    with pytest.raises(ConfigError, match="IANA"):
        ContactSettings(default_time_zone="Mars/Olympus")


def test_jurisdictions_from_the_settings_file(tmp_path: Path) -> None:
    path = tmp_path / "collector.toml"
    path.write_text(
        '[contact]\nmax_per_day = 2\n[contact.jurisdictions.CN-GD]\nquiet_start = "20:00"\n'
        '[cases]\nsla_high_s = "12h"\n',
        encoding="utf-8",
    )
    settings = load_settings(path, environ={})
    assert settings.contact.rules_for("CN-GD") == ContactRules("20:00", "08:00", 2, 10)
    assert settings.contact.rules_for(None) == ContactRules("21:00", "08:00", 2, 10)
    assert settings.cases.sla_ms("high") == 12 * HOUR
    path.write_text("[contact.jurisdictions.X]\nquiet_stop = 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="quiet_stop"):
        load_settings(path, environ={})
    assert load_settings(None, environ={"LIENWATCH_CONTACT_MAX_PER_DAY": "4"}).contact.max_per_day == 4


# ------------------------------------------------------------------ stored cases


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as s:
        import_loans(s, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        add_user(s, username="chen", display_name="Chen", role="collections", password="p" * 12, now_ms=NOW)
        add_user(s, username="ana", display_name="Ana", role="risk_analyst", password="p" * 12, now_ms=NOW)
        s.commit()
        yield s
    engine.dispose()


def _watch_case(session: Session) -> CaseRecord:
    assessment, _ = reassess_loan(session, "L-1002", NOW)
    session.commit()
    assert assessment.level.label == "watch"
    case = session.scalar(sa.select(CaseRecord).where(CaseRecord.loan_id == "L-1002"))
    assert case is not None
    return case


def _audit_actions(session: Session) -> list[str]:
    return list(session.scalars(sa.select(AuditEntry.action).order_by(AuditEntry.id)))


def test_case_opens_at_watch_once_and_closes_on_cure(session: Session) -> None:
    reassess_loan(session, "L-1001", NOW)  # paid up: normal, no case
    case = _watch_case(session)
    assert (case.status, case.level, case.next_action) == ("open", "watch", "sms")
    assert case.sla_due_ms == NOW + 3 * DAY
    reassess_loan(session, "L-1002", NOW + HOUR)
    session.commit()
    assert session.scalar(sa.select(sa.func.count()).select_from(CaseRecord)) == 1
    # the arrears and December's instalment paid: once December counts as paid on time the
    # late streak ends and the loan is back at normal
    for month in ("09", "10", "11", "12"):
        record_repayment(session, "L-1002", Payment(f"P-{month}", date(2026, 11, 28), 350_000), now_ms=NOW)
    cured_at = NOW + 12 * DAY
    assessment, change = reassess_loan(session, "L-1002", cured_at)
    session.commit()
    assert (assessment.level.label, change is not None) == ("normal", True)
    session.refresh(case)
    assert (case.status, case.resolution, case.closed_ms) == ("closed", "cured", cured_at)
    kinds = [e["kind"] for e in case_details(session, case.id, CONTACT)["events"]]
    assert kinds == ["opened", "closed"]
    assert {"case_opened", "case_closed"} <= set(_audit_actions(session))


def test_a_settled_case_does_not_reopen_at_the_same_level(session: Session) -> None:
    case = _watch_case(session)
    closed = close_open_case(session, "L-1002", "settled", now_ms=NOW + HOUR, who=AGENT, note="paid in full")
    assert closed is not None
    assert (closed.id, closed.resolution) == (case.id, "settled")
    session.commit()
    reassess_loan(session, "L-1002", NOW + 2 * HOUR)
    session.commit()
    assert session.scalar(sa.select(sa.func.count()).select_from(CaseRecord)) == 1
    assert close_open_case(session, "L-1002", "settled", now_ms=NOW, who=AGENT) is None  # nothing open
    with pytest.raises(CaseClosedError):
        act(session, case.id, ActionIn("note", note="x"), NOW)
    with pytest.raises(InvalidActionError, match="resolution"):
        close_case(session, case.id, "forgiven", now_ms=NOW, who=AGENT)


def test_a_call_logged_at_21_30_is_refused_recorded_and_audited(session: Session) -> None:
    case = _watch_case(session)
    at = shanghai_ms("2026-11-28T21:30")
    result = act(session, case.id, ActionIn("call", "contacted"), at)
    session.commit()
    assert result.refused
    assert result.decision is not None
    assert result.action.refused_reason == "quiet_hours"
    assert iso_shanghai(result.action.allowed_from_ms or 0) == "2026-11-29T08:00:00+08:00"
    stored = case_details(session, case.id, CONTACT)["actions"]
    assert (stored[0]["status"], stored[0]["allowed_from"]) == ("refused", "2026-11-29T08:00:00+08:00")
    audit = session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "contact_refused")).one()
    assert (audit.actor, audit.subject_id, audit.detail["allowed_from"]) == (
        "user:chen", "L-1002", "2026-11-29T08:00:00+08:00")
    # a note is not a contact: allowed at any hour
    assert not act(session, case.id, ActionIn("note", note="called back later"), at).refused
    # the compliance report lists the refusal (collector.loans.compliance)
    report = compliance_report(session, at - 1000, at + 1000)
    assert report["summary"]["refused_contacts"] == 1
    assert report["refused_contacts"][0] | {"time": None} == {
        "time": None, "loan_id": "L-1002", "case_id": case.id, "actor": "user:chen", "role": result.action.role,
        "kind": "call", "reason": "quiet_hours", "allowed_from": "2026-11-29T00:00:00.000Z"}


def test_the_loans_own_zone_and_jurisdiction_decide(session: Session) -> None:
    case = _watch_case(session)
    loan = session.get(LoanRecord, "L-1002")
    assert loan is not None
    loan.time_zone = "Europe/Berlin"
    loan.jurisdiction = "DE"
    contact = ContactSettings(jurisdictions={"DE": ContactRules("20:00", "09:00", 1, 3)})
    at = shanghai_ms("2026-11-29T04:30")  # 21:30 in Berlin the day before
    refused = act(session, case.id, ActionIn("sms", "sent"), at, contact)
    assert refused.refused
    assert refused.action.refused_reason == "quiet_hours"
    assert case_details(session, case.id, contact)["actions"][0]["allowed_from"] == "2026-11-29T09:00:00+01:00"


def test_caps_per_day_and_week(session: Session) -> None:
    case = _watch_case(session)
    contact = ContactSettings(max_per_day=2, max_per_week=3)
    day1 = [shanghai_ms("2026-11-28T09:00"), shanghai_ms("2026-11-28T12:00")]
    for at in day1:
        assert not act(session, case.id, ActionIn("call", "no_answer"), at, contact).refused
    third = act(session, case.id, ActionIn("sms", "sent"), shanghai_ms("2026-11-28T15:00"), contact)
    assert third.action.refused_reason == "daily_cap"
    assert iso_shanghai(third.action.allowed_from_ms or 0) == "2026-11-29T08:00:00+08:00"
    assert not act(session, case.id, ActionIn("visit", "contacted"), shanghai_ms("2026-11-29T10:00"), contact).refused
    fourth = act(session, case.id, ActionIn("call", "contacted"), shanghai_ms("2026-11-30T10:00"), contact)
    assert fourth.action.refused_reason == "weekly_cap"
    assert iso_shanghai(fourth.action.allowed_from_ms or 0) == "2026-12-05T09:00:00+08:00"
    # refusals are not contacts: they count towards no cap
    done = session.scalar(
        sa.select(sa.func.count()).select_from(CaseActionRecord).where(CaseActionRecord.status == "done")
    )
    assert done == 3


def test_a_broken_promise_escalates_the_case(session: Session) -> None:
    case = _watch_case(session)
    promise = ActionIn("call", "promise_to_pay", promise_date=date(2026, 11, 30), promise_amount_cents=350_000)
    act(session, case.id, promise, NOW)
    session.commit()
    assert check_promises(session, shanghai_ms("2026-11-30T23:00"), CASES, CONTACT) == {
        "checked": 1, "kept": 0, "broken": 0}
    later = shanghai_ms("2026-12-01T00:30")
    assert check_promises(session, later, CASES, CONTACT)["broken"] == 1
    session.commit()
    session.refresh(case)
    assert (case.escalations, case.next_action, case.next_action_ms) == (1, "call", later)
    assert case.sla_due_ms == NOW + 3 * DAY  # sooner than later + 1 day: an escalation never relaxes the SLA
    details = case_details(session, case.id, CONTACT)
    assert details["actions"][0]["promise_status"] == "broken"
    escalated = details["events"][-1]
    assert (escalated["kind"], escalated["detail"]["reason"]) == ("escalated", "broken_promise")
    assert "case_escalated" in _audit_actions(session)
    assert check_promises(session, later + DAY, CASES, CONTACT)["checked"] == 0  # settled once


def test_a_kept_promise_does_not_escalate(session: Session) -> None:
    case = _watch_case(session)
    promise = ActionIn("call", "promise_to_pay", promise_date=date(2026, 11, 30), promise_amount_cents=350_000)
    act(session, case.id, promise, NOW)
    record_repayment(session, "L-1002", Payment("P-promise", date(2026, 11, 29), 350_000), now_ms=NOW)
    assert check_promises(session, shanghai_ms("2026-12-02T10:00"), CASES, CONTACT)["kept"] == 1
    session.refresh(case)
    assert case.escalations == 0


def test_action_validation(session: Session) -> None:
    case = _watch_case(session)
    bad = [
        ActionIn("telegram", "sent"),
        ActionIn("call", "vehicle_recovered"),
        ActionIn("call"),
        ActionIn("note", "contacted"),
        ActionIn("call", "promise_to_pay"),
        ActionIn("call", "contacted", promise_date=date(2026, 12, 1), promise_amount_cents=1),
        ActionIn("call", "promise_to_pay", promise_date=date(2026, 11, 1), promise_amount_cents=100),
        ActionIn("call", "promise_to_pay", promise_date=date(2026, 12, 1), promise_amount_cents=0),
        ActionIn("note", note="x" * 1001),
        ActionIn("note", note="ok", next_action="telegram"),
    ]
    for action in bad:
        with pytest.raises(InvalidActionError):
            act(session, case.id, action, NOW)
    assert session.scalar(sa.select(sa.func.count()).select_from(CaseActionRecord)) == 0


def test_assignment_is_recorded_and_audited(session: Session) -> None:
    case = _watch_case(session)
    for who in ("ana", "nobody", "x" * 300):
        with pytest.raises(UnknownAssigneeError):
            assign_case(session, case.id, who, NOW, AGENT)
    assign_case(session, case.id, "chen", NOW, Actor("user:lead", "admin"))
    session.commit()
    assert [c["case_id"] for c in list_cases(session, CONTACT, assignee="chen")] == [case.id]
    assert list_cases(session, CONTACT, assignee="ana") == []
    event = case_details(session, case.id, CONTACT)["events"][-1]
    assert (event["kind"], event["actor"], event["detail"]["assignee"]) == ("assigned", "user:lead", "chen")
    audit = session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "assign_case")).one()
    assert (audit.subject_type, audit.subject_id, audit.role) == ("loan", "L-1002", "admin")


def test_a_level_going_up_raises_the_open_case(session: Session) -> None:
    case = _watch_case(session)
    reassess_loan(session, "L-1002", NOW + 40 * DAY)  # days past due keep growing
    session.commit()
    session.refresh(case)
    assert case.level in ("high", "critical")
    assert case.next_action in ("call", "field_check")
    assert case_details(session, case.id, CONTACT)["events"][-1]["kind"] == "level"


def test_a_replay_that_loses_the_race_returns_the_stored_action(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = _watch_case(session)
    note = ActionIn("note", note="from the tablet", client_ref="tablet:42")
    first = act(session, case.id, note, NOW)
    session.commit()
    real_replay = store._replay
    calls: list[int] = []

    def not_yet_visible(s: Session, case_id: int, ref: str) -> ActionResult | None:
        calls.append(case_id)
        return None if len(calls) == 1 else real_replay(s, case_id, ref)  # the first look misses it

    monkeypatch.setattr(store, "_replay", not_yet_visible)
    again = act(session, case.id, note, NOW + 1000)
    assert again.replayed
    assert again.action.id == first.action.id
    assert len(calls) == 2
    session.commit()
    assert session.scalar(sa.select(sa.func.count()).select_from(CaseActionRecord)) == 1


def test_the_risk_worker_opens_cases_with_the_configured_sla(session: Session) -> None:
    engine = session.get_bind()
    assert isinstance(engine, sa.Engine)
    # v2 decides (L-1002 critical), so every level gets the same configured SLA here
    sla = CaseSettings(sla_watch_s=2 * 3600.0, sla_high_s=2 * 3600.0, sla_critical_s=2 * 3600.0)
    worker = RiskWorker(engine, cases=sla, clock_ms=lambda: NOW)
    worker.run_once()  # the first round reassesses every loan
    opened = {c["loan_id"]: c for c in list_cases(session, CONTACT)}
    assert "L-1002" in opened
    assert "L-1001" not in opened  # paid up
    case = session.scalars(sa.select(CaseRecord).where(CaseRecord.loan_id == "L-1002")).one()
    assert case.sla_due_ms == NOW + 2 * HOUR


# ------------------------------------------------------------------ a person who stops working cases

LEAD = Actor("user:lead", "admin")


def _held_by_chen(session: Session) -> CaseRecord:
    case = _watch_case(session)
    assign_case(session, case.id, "chen", NOW, LEAD)
    add_user(session, username="lee", display_name="Lee", role="collections", password="p" * 12, now_ms=NOW)
    session.commit()
    return case


def test_disabling_a_user_sends_their_open_cases_back_to_the_queue_recorded_and_audited(session: Session) -> None:
    case = _held_by_chen(session)
    handover = staff.disable_user(session, "chen", reassign_to=None, now_ms=NOW + HOUR, who=LEAD)
    session.commit()
    assert (handover.case_ids, handover.to) == ((case.id,), None)
    assert handover.audit_detail() == {"open_cases": 1, "reassigned_to": None}
    assert session.get(UserRecord, "chen").disabled
    session.refresh(case)
    assert (case.assignee, case.updated_ms) == (None, NOW + HOUR)
    event = case_details(session, case.id, CONTACT)["events"][-1]
    assert (event["kind"], event["actor"], event["detail"]) == (
        "assigned", "user:lead", {"assignee": None, "previous": "chen", "because": "user_disabled"})
    audit = session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "assign_case")
                            .order_by(AuditEntry.id.desc())).first()
    assert audit is not None
    assert (audit.actor, audit.subject_type, audit.subject_id, audit.detail["because"]) == (
        "user:lead", "loan", "L-1002", "user_disabled")
    assert handed_back(session, [case.id]) == {
        case.id: {"previous": "chen", "because": "user_disabled", "time_ms": NOW + HOUR}}
    assign_case(session, case.id, "lee", NOW + 2 * HOUR, Actor("user:lee", "collections"))  # taken from the queue
    assert handed_back(session, [case.id]) == {}
    # disabling again (already disabled, nothing held) hands nothing over
    assert staff.disable_user(session, "chen", reassign_to=None, now_ms=NOW, who=LEAD).case_ids == ()


def test_disabling_with_a_reassignee_moves_the_cases_to_them_and_a_bad_one_is_refused(session: Session) -> None:
    case = _held_by_chen(session)
    add_user(session, username="gone", display_name="Gone", role="collections", password="p" * 12, now_ms=NOW)
    staff.disable_user(session, "gone", reassign_to=None, now_ms=NOW, who=LEAD)
    session.commit()
    for bad in ("ana", "chen", "gone", "nobody"):  # an analyst, themself, a disabled user, no one
        with pytest.raises(UnknownAssigneeError):
            staff.disable_user(session, "chen", reassign_to=bad, now_ms=NOW, who=LEAD)
        session.rollback()
        assert not session.get(UserRecord, "chen").disabled  # nothing changed
    handover = staff.disable_user(session, "chen", reassign_to="lee", now_ms=NOW, who=LEAD)
    session.commit()
    assert handover.summary() == f"1 open case(s) reassigned to lee: #{case.id}"
    assert [c["case_id"] for c in list_cases(session, CONTACT, assignee="lee")] == [case.id]
    assert handed_back(session, [case.id]) == {}  # reassigned, not returned to the queue
    assert case_details(session, case.id, CONTACT)["events"][-1]["detail"] == {
        "assignee": "lee", "previous": "chen", "because": "user_disabled"}


def test_a_role_that_holds_no_cases_hands_them_over_and_one_that_does_keeps_them(session: Session) -> None:
    case = _held_by_chen(session)
    add_user(session, username="root", display_name="Root", role="admin", password="p" * 12, now_ms=NOW)
    old, kept = staff.change_role(session, "chen", "admin", reassign_to=None, now_ms=NOW, who=LEAD)
    assert (old, kept.case_ids) == ("collections", ())
    assert session.get(CaseRecord, case.id).assignee == "chen"
    old, moved = staff.change_role(session, "chen", "auditor", reassign_to="lee", now_ms=NOW, who=LEAD)
    session.commit()
    assert (old, moved.case_ids, moved.to) == ("admin", (case.id,), "lee")
    assert session.get(CaseRecord, case.id).assignee == "lee"
    assert case_details(session, case.id, CONTACT)["events"][-1]["detail"]["because"] == "role_changed"


def test_a_disabled_default_assignee_gets_no_new_case(session: Session) -> None:
    staff.disable_user(session, "chen", reassign_to=None, now_ms=NOW, who=LEAD)
    session.commit()
    _reassess_loan(session, "L-1002", NOW, model="v1", cases=CaseSettings(default_assignee="chen"))
    session.commit()
    case = session.scalar(sa.select(CaseRecord).where(CaseRecord.loan_id == "L-1002"))
    assert case is not None
    assert case.assignee is None


def _second_waits_for_the_first(engine: sa.Engine, first: Callable[[Session], object],
                                second: Callable[[], None]) -> None:
    """``first`` in an open transaction; ``second`` on a thread must wait until that commits."""
    session = Session(engine)
    try:
        first(session)
        racer = threading.Thread(target=second)
        racer.start()
        racer.join(timeout=2)
        assert racer.is_alive()  # waits for the first change instead of reading around it
        session.commit()
    finally:
        session.close()
    racer.join(timeout=30)
    assert not racer.is_alive()


def test_an_assignment_and_a_disable_of_the_same_user_run_one_after_the_other_on_postgresql(postgres_url: str) -> None:
    engine = create_engine(postgres_url)
    migrate(engine)
    with Session(engine) as s:
        import_loans(s, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        add_user(s, username="chen", display_name="Chen", role="collections", password="p" * 12, now_ms=NOW)
        reassess_loan(s, "L-1002", NOW)
        s.commit()
        case_id = s.scalars(sa.select(CaseRecord.id).where(CaseRecord.loan_id == "L-1002")).one()
    outcome: list[str] = []

    def assign_to_chen() -> None:
        with Session(engine) as s:
            try:
                assign_case(s, case_id, "chen", NOW, AGENT)
                s.commit()
                outcome.append("assigned")
            except UnknownAssigneeError:
                outcome.append("refused")

    def disable_chen() -> None:
        with Session(engine) as s:
            outcome.append(f"moved {staff.disable_user(s, 'chen', reassign_to=None, now_ms=NOW, who=LEAD).case_ids}")
            s.commit()

    # the disable first (it holds chen's row): the assignment then sees chen disabled
    _second_waits_for_the_first(
        engine, lambda first: staff.disable_user(first, "chen", reassign_to=None, now_ms=NOW, who=LEAD), assign_to_chen)
    assert outcome == ["refused"]
    with Session(engine) as s:
        assert s.get(CaseRecord, case_id).assignee is None  # a disabled user holds no open case
        set_disabled(s, "chen", False, now_ms=NOW)
        s.commit()
    # the assignment first: the disable then sees the new case and hands it over
    _second_waits_for_the_first(engine, lambda first: assign_case(first, case_id, "chen", NOW, AGENT), disable_chen)
    assert outcome[-1] == f"moved {(case_id,)}"
    with Session(engine) as s:
        assert s.get(CaseRecord, case_id).assignee is None
    engine.dispose()
