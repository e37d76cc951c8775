"""Cases of the collections team: opened by risk, worked with actions, closed on cure or settlement.

How this works
--------------
* :func:`sync_case_with_risk` is called by :func:`collector.risk.assessment.reassess_loan` in
  the reassessment's transaction. A loan at watch or above gets a case when its level changed
  into that range or it never had one (so a case closed as settled does not reopen at the
  same level); a level that goes up raises the open case's level, SLA and next action; a loan
  back at normal closes its case as ``cured``. The partial unique index ``uq_cases_one_open``
  keeps one open case per loan even with several collectors reassessing side by side.
* :func:`record_action` records what a person did. A contact (sms, call, visit) is first
  checked against the contact rules of the loan's jurisdiction in the borrower's time zone
  (:mod:`collector.cases.contact_rules`); a refused contact is recorded too (status
  ``refused``, the reason and when it becomes allowed) and audited as ``contact_refused``.
* :func:`check_promises` (a periodic job in ``serve``, ``lienwatch collector cases
  check-promises``) marks promises to pay as kept when the repayments from the promise's day
  to its date cover the amount, and as broken once the promised date has passed in the
  borrower's zone without that: a broken promise escalates the case (next action one step up
  the ladder sms -> call -> visit -> field check -> recovery order, due within
  ``[cases] escalation_sla_s``).

* :func:`hand_over_cases` moves a person's open cases to someone else or back to the queue
  when they are disabled or lose the role (:mod:`collector.cases.staff`); an assignment locks
  the assignee's row so it cannot slip past a disable of the same user.

Every change is a ``case_events`` row and an ``audit_log`` row (subject: the loan) in the
caller's transaction; the caller commits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import CollectorError
from ..storage.audit import SYSTEM_ROLE, record_access
from ..storage.people import UserRecord
from ..storage.tables import CaseActionRecord, CaseEventRecord, CaseRecord, LoanRecord, RepaymentRecord
from ..timefmt import iso_local, zone
from .contact_rules import CONTACT_KINDS, ContactDecision, check_contact
from .settings import LEVELS, CaseSettings, ContactSettings

__all__ = [
    "ACTION_KINDS",
    "ASSIGNABLE_ROLES",
    "HANDOVER_CAUSES",
    "LADDER",
    "OUTCOMES",
    "RESOLUTIONS",
    "ActionIn",
    "ActionResult",
    "Actor",
    "CaseClosedError",
    "CaseError",
    "CaseNotFoundError",
    "InvalidActionError",
    "UnknownAssigneeError",
    "assign_case",
    "assignees_who_cannot_act",
    "case_details",
    "case_zone",
    "check_promises",
    "close_case",
    "close_open_case",
    "escalate_case",
    "hand_over_cases",
    "handed_back",
    "list_cases",
    "loan_zone",
    "open_case_counts",
    "record_action",
    "sync_case_with_risk",
]

#: What can be done on a case and the outcomes each may record (a note has none).
OUTCOMES: dict[str, tuple[str, ...]] = {
    "sms": ("sent", "contacted", "promise_to_pay"),
    "call": ("contacted", "no_answer", "promise_to_pay", "refused", "wrong_number"),
    "visit": ("contacted", "no_answer", "promise_to_pay", "refused", "vehicle_located"),
    "field_check": ("vehicle_located", "vehicle_not_found"),
    "recovery_order": ("issued", "vehicle_recovered", "vehicle_not_found"),
    "note": (),
}
ACTION_KINDS = tuple(OUTCOMES)
#: The next actions, mildest first; an escalation moves one step up.
LADDER = ("sms", "call", "visit", "field_check", "recovery_order")
_FIRST_ACTION = {"watch": "sms", "high": "call", "critical": "field_check"}
RESOLUTIONS = ("cured", "settled", "recovered")
#: Roles whose users can be a case's assignee (docs/people.md).
ASSIGNABLE_ROLES = ("collections", "admin")
MAX_NOTE = 1000
_CLIENT_REF = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_PROMISE_DAYS = 92


class CaseError(CollectorError, ValueError):
    """A case operation was refused (the message names the input and the rule)."""


class CaseNotFoundError(CaseError):
    """No case with that id."""


class CaseClosedError(CaseError):
    """The case is closed: no more actions, assignments or closing."""


class InvalidActionError(CaseError):
    """An action with an unknown kind or outcome, or a promise without its date or amount."""


class UnknownAssigneeError(CaseError):
    """The assignee is not an enabled user with the collections or admin role."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does something to a case (the audit actor and role)."""

    actor: str
    role: str


SYSTEM = Actor("system", SYSTEM_ROLE)


@dataclass(frozen=True, slots=True)
class ActionIn:
    """An action to record.

    Attributes:
        kind: one of :data:`ACTION_KINDS`.
        outcome: one of ``OUTCOMES[kind]`` (``None`` for a note).
        note: free text (at most 1000 characters).
        promise_date: the promised payment date (``promise_to_pay`` only).
        promise_amount_cents: the promised amount (``promise_to_pay`` only).
        next_action: the next action planned (one of :data:`LADDER`), optional.
        next_action_ms: when it is due, optional.
        client_ref: the caller's idempotency key (``[A-Za-z0-9_.:-]{1,64}``): the same key on
            the same case returns the action stored the first time instead of a second one.
    """

    kind: str
    outcome: str | None = None
    note: str | None = None
    promise_date: date | None = None
    promise_amount_cents: int | None = None
    next_action: str | None = None
    next_action_ms: int | None = None
    client_ref: str | None = None

    def check(self, today: date) -> None:
        """Refuse an inconsistent action.

        Raises:
            InvalidActionError: the message names the field.
        """
        if self.kind not in OUTCOMES:
            raise InvalidActionError(f"action kind {self.kind!r:.30} is not one of {', '.join(ACTION_KINDS)}")
        allowed = OUTCOMES[self.kind]
        if (self.outcome is None) != (not allowed) or (self.outcome is not None and self.outcome not in allowed):
            wanted = ", ".join(allowed) if allowed else "none"
            raise InvalidActionError(f"outcome {self.outcome!r:.30} of a {self.kind} must be one of: {wanted}")
        if self.note is not None and len(self.note) > MAX_NOTE:
            raise InvalidActionError(f"note has {len(self.note)} characters, at most {MAX_NOTE}")
        promise = self.promise_date is not None or self.promise_amount_cents is not None
        if promise != (self.outcome == "promise_to_pay"):
            raise InvalidActionError("promise_date and promise_amount go with (and only with) promise_to_pay")
        if self.promise_date is not None:
            if self.promise_amount_cents is None or self.promise_amount_cents <= 0:
                raise InvalidActionError("promise_amount must be a positive amount")
            if not 0 <= (self.promise_date - today).days <= MAX_PROMISE_DAYS:
                raise InvalidActionError(
                    f"promise_date {self.promise_date} must be from today ({today}) to {MAX_PROMISE_DAYS} days ahead"
                )
        if self.next_action is not None and self.next_action not in LADDER:
            raise InvalidActionError(f"next_action {self.next_action!r:.30} is not one of {', '.join(LADDER)}")
        if self.client_ref is not None and not _CLIENT_REF.fullmatch(self.client_ref):
            raise InvalidActionError(f"client_ref {self.client_ref!r:.70} must match {_CLIENT_REF.pattern}")


@dataclass(frozen=True, slots=True)
class ActionResult:
    """What :func:`record_action` stored: the action, and the contact decision if it was a contact.

    ``replayed`` is True when the action's ``client_ref`` was seen before on this case: the
    stored action is returned (``decision`` is then ``None``) and nothing new is recorded.
    """

    action: CaseActionRecord
    decision: ContactDecision | None
    replayed: bool = False

    @property
    def refused(self) -> bool:
        """True when the contact rules refused the action (it is recorded as refused)."""
        return self.action.status == "refused"


# ------------------------------------------------------------------ helpers


def loan_zone(loan: LoanRecord, contact: ContactSettings) -> str:
    """The borrower's IANA zone (the loan's, else ``[contact] default_time_zone``)."""
    return loan.time_zone or contact.default_time_zone


def case_zone(session: Session, case_id: int, contact: ContactSettings) -> str:
    """The borrower's zone of a case's loan.

    Raises:
        CaseNotFoundError: no such case.
    """
    case = session.get(CaseRecord, case_id)
    loan = session.get(LoanRecord, case.loan_id) if case is not None else None
    if loan is None:
        raise CaseNotFoundError(f"case {case_id} does not exist")
    return loan_zone(loan, contact)


def _event(session: Session, case: CaseRecord, now_ms: int, who: Actor, kind: str, **detail: Any) -> None:
    session.add(CaseEventRecord(case_id=case.id, time_ms=now_ms, actor=who.actor, kind=kind, detail=detail))
    record_access(
        session,
        actor=who.actor,
        role=who.role,
        action=f"case_{kind}" if kind != "assigned" else "assign_case",
        subject_type="loan",
        subject_id=case.loan_id,
        time_ms=now_ms,
        detail={"case_id": case.id, **detail},
    )


def _open_case_of(session: Session, loan_id: str) -> CaseRecord | None:
    return session.scalar(sa.select(CaseRecord).where(CaseRecord.loan_id == loan_id, CaseRecord.status == "open"))


def _case(session: Session, case_id: int, *, must_be_open: bool = True) -> CaseRecord:
    case = session.get(CaseRecord, case_id)
    if case is None:
        raise CaseNotFoundError(f"case {case_id} does not exist")
    if must_be_open and case.status != "open":
        raise CaseClosedError(f"case {case_id} is closed ({case.resolution})")
    return case


def _rank(level: str) -> int:
    return LEVELS.index(level) if level in LEVELS else -1


def _higher_action(current: str, proposed: str) -> str:
    return proposed if LADDER.index(proposed) > LADDER.index(current) else current


# ------------------------------------------------------------------ risk -> cases


def sync_case_with_risk(
    session: Session, loan_id: str, level: str, *, changed: bool, now_ms: int, settings: CaseSettings
) -> CaseRecord | None:
    """Open, raise or close the loan's case after a reassessment at ``level``.

    Args:
        level: the loan's risk level label now.
        changed: the level changed in this reassessment.

    Returns:
        The loan's open case afterwards (``None`` when it has none).
    """
    case = _open_case_of(session, loan_id)
    if case is None:
        if _rank(level) < 0:
            return None
        if not changed and session.scalar(sa.select(CaseRecord.id).where(CaseRecord.loan_id == loan_id).limit(1)):
            return None  # a closed case at this level stays closed until the level changes again
        try:
            with session.begin_nested():
                return _open_case(session, loan_id, level, now_ms, settings)
        except IntegrityError:  # another collector opened it first (uq_cases_one_open)
            return _open_case_of(session, loan_id)
    if _rank(level) < 0:
        _close(session, case, "cured", now_ms=now_ms, who=SYSTEM, note=None)
        return None
    if _rank(level) > _rank(case.level):
        old = case.level
        case.level = level
        case.sla_due_ms = min(case.sla_due_ms, now_ms + settings.sla_ms(level))
        case.next_action = _higher_action(case.next_action, _FIRST_ACTION[level])
        case.next_action_ms = min(case.next_action_ms, case.sla_due_ms)
        case.updated_ms = now_ms
        _event(session, case, now_ms, SYSTEM, "level", old=old, new=level)
    return case


def _open_case(session: Session, loan_id: str, level: str, now_ms: int, settings: CaseSettings) -> CaseRecord:
    due = now_ms + settings.sla_ms(level)
    assignee = settings.default_assignee
    default = session.get(UserRecord, assignee) if assignee is not None else None
    if default is None or default.disabled or default.role not in ASSIGNABLE_ROLES:
        assignee = None  # a default assignee who left (or never existed) leaves the case in the queue
    case = CaseRecord(
        loan_id=loan_id,
        status="open",
        level=level,
        assignee=assignee,
        opened_ms=now_ms,
        updated_ms=now_ms,
        sla_due_ms=due,
        next_action=_FIRST_ACTION[level],
        next_action_ms=due,
        escalations=0,
    )
    session.add(case)
    session.flush()
    _event(session, case, now_ms, SYSTEM, "opened", level=level, assignee=assignee, sla_due_ms=due)
    return case


def _close(session: Session, case: CaseRecord, resolution: str, *, now_ms: int, who: Actor, note: str | None) -> None:
    case.status = "closed"
    case.resolution = resolution
    case.closed_ms = now_ms
    case.updated_ms = now_ms
    session.execute(
        sa.update(CaseActionRecord)
        .where(CaseActionRecord.case_id == case.id, CaseActionRecord.promise_status == "open")
        .values(promise_status="void")
    )
    _event(session, case, now_ms, who, "closed", resolution=resolution, note=note)


# ------------------------------------------------------------------ people -> cases


def close_case(
    session: Session, case_id: int, resolution: str, *, now_ms: int, who: Actor, note: str | None = None
) -> CaseRecord:
    """Close a case as ``cured``, ``settled`` or ``recovered`` (open promises become ``void``).

    Raises:
        CaseNotFoundError, CaseClosedError, InvalidActionError: unknown or closed case, bad resolution.
    """
    if resolution not in RESOLUTIONS:
        raise InvalidActionError(f"resolution {resolution!r:.30} is not one of {', '.join(RESOLUTIONS)}")
    if note is not None and len(note) > MAX_NOTE:
        raise InvalidActionError(f"note has {len(note)} characters, at most {MAX_NOTE}")
    case = _case(session, case_id)
    _close(session, case, resolution, now_ms=now_ms, who=who, note=note)
    session.flush()
    return case


def close_open_case(
    session: Session, loan_id: str, resolution: str, *, now_ms: int, who: Actor, note: str | None = None
) -> CaseRecord | None:
    """Close the loan's open case, if it has one (the loan lifecycle: settled, repossessed -> recovered).

    Raises:
        InvalidActionError: bad resolution or note.
    """
    case = _open_case_of(session, loan_id)
    if case is None:
        return None
    return close_case(session, case.id, resolution, now_ms=now_ms, who=who, note=note)


def _check_assignee(session: Session, assignee: str) -> UserRecord:
    """The assignee's row, locked (``FOR UPDATE``) so a disable running at the same moment waits.

    Locking the user row orders an assignment and a disable of the same user on PostgreSQL:
    the disable (which updates the row, then hands the open cases over) either sees the new
    assignment, or the assignment sees the user disabled and is refused.
    """
    user = (session.get(UserRecord, assignee, with_for_update=True)
            if isinstance(assignee, str) and len(assignee) <= 64 else None)
    if user is None or user.disabled or user.role not in ASSIGNABLE_ROLES:
        raise UnknownAssigneeError(
            f"assignee {assignee!r:.70} must be an enabled user with role {' or '.join(ASSIGNABLE_ROLES)}"
        )
    return user


def assign_case(session: Session, case_id: int, assignee: str, now_ms: int, who: Actor) -> CaseRecord:
    """Assign a case to a user (``users.username``, role collections or admin, not disabled).

    Raises:
        CaseNotFoundError, CaseClosedError, UnknownAssigneeError.
    """
    case = _case(session, case_id)
    _check_assignee(session, assignee)
    previous = case.assignee
    case.assignee = assignee
    case.updated_ms = now_ms
    _event(session, case, now_ms, who, "assigned", assignee=assignee, previous=previous)
    session.flush()
    return case


#: Why a case changed hands without anyone choosing that case (``because`` of its ``assigned`` event).
HANDOVER_CAUSES = ("user_disabled", "role_changed")


def hand_over_cases(
    session: Session, username: str, *, to: str | None, because: str, now_ms: int, who: Actor
) -> list[int]:
    """Move every open case of ``username`` to ``to`` (``None``: back to the unassigned queue).

    Each case gets an ``assigned`` event (``assignee``, ``previous``, ``because``) and an audit
    row ``assign_case`` (subject: the loan), like any reassignment. The caller commits.

    Args:
        because: one of :data:`HANDOVER_CAUSES`.

    Returns:
        The ids of the cases moved, in id order.

    Raises:
        UnknownAssigneeError: ``to`` is ``username``, or not an enabled collections or admin user.
    """
    if because not in HANDOVER_CAUSES:
        raise ValueError(f"because {because!r:.30} is not one of {', '.join(HANDOVER_CAUSES)}")
    if to is not None:
        if to == username:
            raise UnknownAssigneeError(f"{to} cannot take over their own cases; name someone else or none")
        _check_assignee(session, to)
    cases = session.scalars(
        sa.select(CaseRecord).where(CaseRecord.assignee == username, CaseRecord.status == "open")
        .order_by(CaseRecord.id).with_for_update()
    ).all()
    for case in cases:
        case.assignee = to
        case.updated_ms = now_ms
        _event(session, case, now_ms, who, "assigned", assignee=to, previous=username, because=because)
    session.flush()
    return [case.id for case in cases]


def handed_back(session: Session, case_ids: list[int]) -> dict[int, dict[str, Any]]:
    """The cases among ``case_ids`` whose last assignment sent them back to the queue because
    their assignee was disabled or lost the role: ``{case_id: {"previous", "because", "time_ms"}}``."""
    if not case_ids:
        return {}
    last: dict[int, CaseEventRecord] = {}
    for event in session.scalars(
        sa.select(CaseEventRecord).where(CaseEventRecord.case_id.in_(case_ids), CaseEventRecord.kind == "assigned")
        .order_by(CaseEventRecord.id)
    ):
        last[event.case_id] = event
    return {
        case_id: {"previous": e.detail.get("previous"), "because": e.detail["because"], "time_ms": e.time_ms}
        for case_id, e in last.items()
        if e.detail.get("assignee") is None and e.detail.get("because") in HANDOVER_CAUSES
    }


def _contacts_since(session: Session, loan_id: str, since_ms: int) -> list[int]:
    rows = session.scalars(
        sa.select(CaseActionRecord.time_ms).where(
            CaseActionRecord.loan_id == loan_id,
            CaseActionRecord.status == "done",
            CaseActionRecord.kind.in_(sorted(CONTACT_KINDS)),
            CaseActionRecord.time_ms > since_ms,
        )
    )
    return list(rows)


def _inserted(session: Session, row: CaseActionRecord) -> bool:
    """Insert an action; False when a concurrent request with the same ``client_ref`` stored it first."""
    if row.client_ref is None:
        session.add(row)
        session.flush()
        return True
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # uq_case_actions_case_client_ref: the replay lost the race
        return False
    return True


def _replay(session: Session, case_id: int, client_ref: str) -> ActionResult | None:
    same = (CaseActionRecord.case_id == case_id, CaseActionRecord.client_ref == client_ref)
    seen = session.scalar(sa.select(CaseActionRecord).where(*same))
    return ActionResult(seen, None, replayed=True) if seen is not None else None


def _refuse(
    session: Session, case: CaseRecord, action: ActionIn, decision: ContactDecision, *, now_ms: int, who: Actor, tz: str
) -> CaseActionRecord | None:
    row = CaseActionRecord(
        case_id=case.id, loan_id=case.loan_id, time_ms=now_ms, actor=who.actor, role=who.role, kind=action.kind,
        status="refused", outcome=None, note=None, refused_reason=decision.reason,
        allowed_from_ms=decision.allowed_from_ms, client_ref=action.client_ref,
    )
    if not _inserted(session, row):
        return None
    record_access(
        session, actor=who.actor, role=who.role, action="contact_refused", subject_type="loan",
        subject_id=case.loan_id, time_ms=now_ms,
        detail={"case_id": case.id, "action_id": row.id, "kind": action.kind, "reason": decision.reason,
                "allowed_from": iso_local(decision.allowed_from_ms, tz)},
    )
    return row


def _replay_after_race(session: Session, case_id: int, action: ActionIn) -> ActionResult:
    assert action.client_ref is not None  # only a keyed insert can lose a race
    replayed = _replay(session, case_id, action.client_ref)
    if replayed is None:
        raise CaseError(f"action {action.client_ref!r:.70} on case {case_id} was neither stored nor found")
    return replayed


def record_action(
    session: Session, case_id: int, action: ActionIn, *, now_ms: int, who: Actor, contact: ContactSettings
) -> ActionResult:
    """Record an action on an open case at ``now_ms``; a contact the rules forbid is recorded as refused.

    Raises:
        CaseNotFoundError, CaseClosedError, InvalidActionError: nothing is recorded.
    """
    case = _case(session, case_id)
    loan = session.get(LoanRecord, case.loan_id)
    if loan is None:
        raise CaseNotFoundError(f"case {case_id} has no loan")
    if action.client_ref is not None:
        if not _CLIENT_REF.fullmatch(action.client_ref):
            raise InvalidActionError(f"client_ref {action.client_ref!r:.70} must match {_CLIENT_REF.pattern}")
        replayed = _replay(session, case.id, action.client_ref)
        if replayed is not None:
            return replayed
    tz = loan_zone(loan, contact)
    today = datetime.fromtimestamp(now_ms / 1000, tz=zone(tz)).date()
    action.check(today)
    decision = None
    if action.kind in CONTACT_KINDS:
        rules = contact.rules_for(loan.jurisdiction)
        decision = check_contact(rules, tz, now_ms, _contacts_since(session, loan.loan_id, now_ms - 8 * 86_400_000))
        if not decision.allowed:
            refused = _refuse(session, case, action, decision, now_ms=now_ms, who=who, tz=tz)
            if refused is None:
                return _replay_after_race(session, case.id, action)
            return ActionResult(refused, decision)
    row = CaseActionRecord(
        case_id=case.id, loan_id=case.loan_id, time_ms=now_ms, actor=who.actor, role=who.role, kind=action.kind,
        status="done", outcome=action.outcome, note=action.note, promise_date=action.promise_date,
        promise_amount_cents=action.promise_amount_cents,
        promise_status="open" if action.outcome == "promise_to_pay" else None, client_ref=action.client_ref,
    )
    if not _inserted(session, row):
        return _replay_after_race(session, case.id, action)
    if action.next_action is not None:
        case.next_action = action.next_action
    if action.next_action_ms is not None:
        case.next_action_ms = action.next_action_ms
    case.updated_ms = now_ms
    session.flush()
    record_access(
        session, actor=who.actor, role=who.role, action="case_action", subject_type="loan", subject_id=case.loan_id,
        time_ms=now_ms,
        detail={"case_id": case.id, "action_id": row.id, "kind": action.kind, "outcome": action.outcome},
    )
    return ActionResult(row, decision)


# ------------------------------------------------------------------ promises


def escalate_case(
    session: Session, case: CaseRecord, reason: str, *, now_ms: int, settings: CaseSettings, **detail: Any
) -> None:
    """Move an open case's next action one step up the ladder, due within ``escalation_sla_s``."""
    step = min(LADDER.index(case.next_action) + 1, len(LADDER) - 1)
    case.next_action = LADDER[step]
    case.escalations += 1
    due = now_ms + int(settings.escalation_sla_s * 1000)
    case.sla_due_ms = min(case.sla_due_ms, due) if case.sla_due_ms > now_ms else due
    case.next_action_ms = now_ms
    case.updated_ms = now_ms
    _event(session, case, now_ms, SYSTEM, "escalated", reason=reason, next_action=case.next_action, **detail)


def _paid_between(session: Session, loan_id: str, first: date, last: date) -> int:
    total = session.scalar(
        sa.select(sa.func.coalesce(sa.func.sum(RepaymentRecord.amount_cents), 0)).where(
            RepaymentRecord.loan_id == loan_id, RepaymentRecord.paid_on >= first, RepaymentRecord.paid_on <= last
        )
    )
    return int(total or 0)


def check_promises(session: Session, now_ms: int, settings: CaseSettings, contact: ContactSettings) -> dict[str, int]:
    """Settle every open promise to pay: kept when covered, broken (escalating its case) when overdue.

    A promise is covered by the loan's repayments dated from the day it was made (borrower's
    zone) to the promised date; it is broken when the borrower's local date is past the
    promised date without that cover. The caller commits. Returns counts.
    """
    rows = session.execute(
        sa.select(CaseActionRecord, CaseRecord, LoanRecord)
        .join(CaseRecord, CaseRecord.id == CaseActionRecord.case_id)
        .join(LoanRecord, LoanRecord.loan_id == CaseRecord.loan_id)
        .where(CaseActionRecord.promise_status == "open", CaseRecord.status == "open")
        .order_by(CaseActionRecord.id)
    ).all()
    counts = {"checked": len(rows), "kept": 0, "broken": 0}
    for action, case, loan in rows:
        tz = zone(loan_zone(loan, contact))
        made = datetime.fromtimestamp(action.time_ms / 1000, tz=tz).date()
        today = datetime.fromtimestamp(now_ms / 1000, tz=tz).date()
        if action.promise_date is None or action.promise_amount_cents is None:
            continue  # not a promise (the row was written by hand)
        paid = _paid_between(session, loan.loan_id, made, action.promise_date)
        if paid >= action.promise_amount_cents:
            action.promise_status = "kept"
            counts["kept"] += 1
            _event(session, case, now_ms, SYSTEM, "promise_kept", action_id=action.id)
        elif today > action.promise_date:
            action.promise_status = "broken"
            counts["broken"] += 1
            escalate_case(
                session, case, "broken_promise", now_ms=now_ms, settings=settings, action_id=action.id,
                promise_date=action.promise_date.isoformat(), promised_cents=action.promise_amount_cents,
                paid_cents=paid,
            )
    session.flush()
    return counts


# ------------------------------------------------------------------ reads


def _case_dict(case: CaseRecord, tz: str) -> dict[str, Any]:
    def at(ms: int | None) -> str | None:
        return iso_local(ms, tz) if ms is not None else None

    return {
        "case_id": case.id,
        "loan_id": case.loan_id,
        "status": case.status,
        "level": case.level,
        "assignee": case.assignee,
        "time_zone": tz,
        "opened_at": at(case.opened_ms),
        "updated_at": at(case.updated_ms),
        "sla_due_at": at(case.sla_due_ms),
        "next_action": case.next_action,
        "next_action_at": at(case.next_action_ms),
        "escalations": case.escalations,
        "closed_at": at(case.closed_ms),
        "resolution": case.resolution,
    }


def _action_dict(row: CaseActionRecord, tz: str) -> dict[str, Any]:
    return {
        "action_id": row.id,
        "at": iso_local(row.time_ms, tz),
        "actor": row.actor,
        "role": row.role,
        "kind": row.kind,
        "status": row.status,
        "outcome": row.outcome,
        "note": row.note,
        "promise_date": row.promise_date.isoformat() if row.promise_date else None,
        "promise_amount_cents": row.promise_amount_cents,
        "promise_status": row.promise_status,
        "refused_reason": row.refused_reason,
        "allowed_from": iso_local(row.allowed_from_ms, tz) if row.allowed_from_ms is not None else None,
    }


def list_cases(
    session: Session,
    contact: ContactSettings,
    *,
    status: str | None = "open",
    assignee: str | None = None,
    level: str | None = None,
    loan_id: str | None = None,
    limit: int = 200,
) -> list[dict[str, Any]]:
    """Cases matching the filters, most urgent first (earliest SLA), at most ``limit`` (1..1000)."""
    query = sa.select(CaseRecord, LoanRecord).join(LoanRecord, LoanRecord.loan_id == CaseRecord.loan_id)
    if status is not None:
        query = query.where(CaseRecord.status == status)
    if assignee is not None:
        query = query.where(CaseRecord.assignee == assignee)
    if level is not None:
        query = query.where(CaseRecord.level == level)
    if loan_id is not None:
        query = query.where(CaseRecord.loan_id == loan_id)
    query = query.order_by(CaseRecord.sla_due_ms, CaseRecord.id).limit(max(1, min(1000, limit)))
    return [_case_dict(case, loan_zone(loan, contact)) for case, loan in session.execute(query).all()]


def assignees_who_cannot_act(session: Session, names: set[str]) -> set[str]:
    """Those of ``names`` who are disabled or hold a role that takes no cases (their cases are stranded)."""
    if not names:
        return set()
    users = session.scalars(sa.select(UserRecord).where(UserRecord.username.in_(sorted(names))))
    return {u.username for u in users if u.disabled or u.role not in ASSIGNABLE_ROLES}


def open_case_counts(session: Session) -> dict[str, int]:
    """How many open cases each assignee holds (the unassigned are left out)."""
    rows = session.execute(
        sa.select(CaseRecord.assignee, sa.func.count()).where(CaseRecord.status == "open",
                                                              CaseRecord.assignee.is_not(None))
        .group_by(CaseRecord.assignee)
    ).all()
    return {assignee: count for assignee, count in rows if assignee is not None}


def case_details(session: Session, case_id: int, contact: ContactSettings) -> dict[str, Any]:
    """A case with its actions and events (oldest first), times in the borrower's zone.

    Raises:
        CaseNotFoundError: no such case.
    """
    case = _case(session, case_id, must_be_open=False)
    loan = session.get(LoanRecord, case.loan_id)
    tz = loan_zone(loan, contact) if loan is not None else contact.default_time_zone
    actions = session.scalars(
        sa.select(CaseActionRecord).where(CaseActionRecord.case_id == case.id).order_by(CaseActionRecord.id)
    )
    events = session.scalars(
        sa.select(CaseEventRecord).where(CaseEventRecord.case_id == case.id).order_by(CaseEventRecord.id)
    )
    return _case_dict(case, tz) | {
        "actions": [_action_dict(a, tz) for a in actions],
        "events": [
            {"at": iso_local(e.time_ms, tz), "actor": e.actor, "kind": e.kind, "detail": e.detail} for e in events
        ],
    }
