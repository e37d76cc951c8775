"""Tables of the loan side (loans, schedules, repayments, risk state and events, webhook
outbox, audit log, markets, fix day summaries) and the storage operations on them.

How this works
--------------
The tables hang on :class:`collector.models.Base` (one metadata for the whole collector)
and are created by migration ``0002``. Money is integer cents, times are epoch ms UTC
like the protocol, dates (due dates, payment value dates) are SQL ``DATE``.

:func:`reassess_loan` is the seam between storage and the pure engine: it reads the
schedule, payments, open alerts, device status and recent movement of one loan, runs
:func:`collector.repayments.repayment_facts` and :func:`collector.risk.assess`, keeps the
current state in ``risk_states``, and on a level change appends a ``risk_events`` row and
queues the webhook deliveries in the same transaction (outbox pattern) - so a crash never
leaves an event without its notifications or the reverse. Re-running it on the same data
is harmless: no level change, no event.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.orm.util import identity_key

from .models import AlertRecord, Base, DailyStatsRecord, FixRecord
from .models import DeviceStatus as DeviceStatusRecord
from .repayments import (
    DEFAULT_GRACE_DAYS,
    Installment,
    LoanError,
    Payment,
    RepaymentFacts,
    format_cents,
    repayment_facts,
)
from .risk import (
    DeviceStatus,
    Movement,
    OpenAlert,
    RiskAssessment,
    RiskChange,
    RiskConfig,
    RiskInput,
    RiskLevel,
    assess,
    level_change,
)

if TYPE_CHECKING:
    from .loan_csv import LoanRow
    from .settings import Settings

__all__ = [
    "MOVING_MPS",
    "AuditEntry",
    "ConfigVersion",
    "FixDaySummary",
    "InstallmentRecord",
    "LoanNotFoundError",
    "LoanRecord",
    "LoansSettings",
    "MarketRecord",
    "RepaymentConflictError",
    "RepaymentOutcome",
    "RepaymentRecord",
    "RiskEventRecord",
    "RiskStateConflictError",
    "RiskStateRecord",
    "WebhookDelivery",
    "existing_loan_conflicts",
    "load_risk_input",
    "loan_facts",
    "loans_with_risk",
    "reassess_loan",
    "reassess_loans",
    "record_repayment",
    "risk_commit_hook",
    "store_loan",
    "vehicle_condition",
]

log = logging.getLogger(__name__)

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Speed over ground from which a fix counts as "moving" (GNSS jitter stays below it).
MOVING_MPS = 1.5


class LoanNotFoundError(LoanError):
    """No loan with that id."""


class RepaymentConflictError(LoanError):
    """A payment id was recorded before with a different date or amount."""


class RiskStateConflictError(LoanError):
    """A loan's risk state was changed by other writers on every attempt to write it."""


_CAS_ATTEMPTS = 5


class LoanRecord(Base):
    """A loan secured by a vehicle with a T-BOX."""

    __tablename__ = "loans"

    loan_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    vin: Mapped[str] = mapped_column(sa.String(17), unique=True)
    borrower_ref: Mapped[str] = mapped_column(sa.String(64), index=True)  # console search (migration 0004)
    principal_cents: Mapped[int]
    created_ms: Mapped[int]


class InstallmentRecord(Base):
    """One scheduled instalment of a loan (``seq`` from 1, in due-date order)."""

    __tablename__ = "installments"

    loan_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    due_date: Mapped[date] = mapped_column(sa.Date)
    amount_cents: Mapped[int]


class RepaymentRecord(Base):
    """A received payment; ``(loan_id, payment_id)`` is the idempotency key."""

    __tablename__ = "repayments"
    __table_args__ = (sa.UniqueConstraint("loan_id", "payment_id", name="uq_repayments_loan_payment"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    loan_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"))
    payment_id: Mapped[str] = mapped_column(sa.String(64))
    paid_on: Mapped[date] = mapped_column(sa.Date, index=True)
    amount_cents: Mapped[int]
    recorded_ms: Mapped[int]


class RiskStateRecord(Base):
    """The current risk state of a loan (one row per assessed loan)."""

    __tablename__ = "risk_states"

    loan_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[str] = mapped_column(sa.String(16), index=True)
    next_step: Mapped[str] = mapped_column(sa.String(16))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    facts: Mapped[dict[str, Any]]
    evaluated_ms: Mapped[int]
    changed_ms: Mapped[int]


class RiskEventRecord(Base):
    """A level change of a loan (old -> new, with the reasons at that time)."""

    __tablename__ = "risk_events"
    __table_args__ = (sa.Index("ix_risk_events_loan_time", "loan_id", "time_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(36), unique=True)
    loan_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"))
    time_ms: Mapped[int] = mapped_column(index=True)
    old_level: Mapped[str] = mapped_column(sa.String(16))
    new_level: Mapped[str] = mapped_column(sa.String(16))
    next_step: Mapped[str] = mapped_column(sa.String(16))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)


class WebhookDelivery(Base):
    """One (event, URL) delivery in the webhook outbox (see collector.webhooks)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("event_id", "url", name="uq_webhook_deliveries_event_url"),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_ms"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(36))
    url: Mapped[str] = mapped_column(sa.String(2048))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    status: Mapped[str] = mapped_column(sa.String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_ms: Mapped[int]
    created_ms: Mapped[int]
    delivered_ms: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))


class AuditEntry(Base):
    """Who read or changed what, when (see collector.audit)."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_subject", "subject_type", "subject_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time_ms: Mapped[int] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(32))
    action: Mapped[str] = mapped_column(sa.String(64))
    subject_type: Mapped[str] = mapped_column(sa.String(32))
    subject_id: Mapped[str] = mapped_column(sa.String(128))
    detail: Mapped[dict[str, Any]]


class MarketRecord(Base):
    """A used-car market the devices watch; stored as given (with its datum) and in WGS-84."""

    __tablename__ = "markets"

    market_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    lat: Mapped[float] = mapped_column(sa.Double)
    lon: Mapped[float] = mapped_column(sa.Double)
    datum: Mapped[str] = mapped_column(sa.String(8))
    radius_m: Mapped[float] = mapped_column(sa.Double)
    updated_ms: Mapped[int]


class ConfigVersion(Base):
    """The last configuration signed for a device (versions must strictly increase).

    ``payload`` is the signed message (kept so it can be published, and re-published
    retained after a broker lost it); ``published_ms`` is set once the broker acknowledged
    it (NULL = still to publish). Migration 0003 added both.
    """

    __tablename__ = "config_versions"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int]
    issued_ms: Mapped[int]
    payload: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    published_ms: Mapped[int | None]


class FixDaySummary(Base):
    """What retention keeps of a device-day of fixes once the precise points are gone."""

    __tablename__ = "fix_day_summaries"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    day: Mapped[str] = mapped_column(sa.String(10), primary_key=True)  # UTC date YYYY-MM-DD
    fix_count: Mapped[int]
    first_ms: Mapped[int]
    last_ms: Mapped[int]
    distance_m: Mapped[float] = mapped_column(sa.Double)


# ------------------------------------------------------------------ loans and repayments


def store_loan(session: Session, row: LoanRow, *, now_ms: int) -> LoanRecord:
    """Insert a loan and its schedule (the caller checked :func:`existing_loan_conflicts`)."""
    loan = LoanRecord(
        loan_id=row.loan_id,
        device_id=row.device_id,
        vin=row.vin,
        borrower_ref=row.borrower_ref,
        principal_cents=row.principal_cents,
        created_ms=now_ms,
    )
    session.add(loan)
    session.flush()  # no ORM relationship: the parent row must exist before its children
    session.add_all(
        InstallmentRecord(loan_id=row.loan_id, seq=i, due_date=inst.due_date, amount_cents=inst.amount_cents)
        for i, inst in enumerate(row.schedule, 1)
    )
    session.flush()
    return loan


def load_schedule(session: Session, loan_id: str) -> tuple[Installment, ...]:
    """The stored schedule of a loan, in due-date order."""
    rows = session.scalars(
        sa.select(InstallmentRecord).where(InstallmentRecord.loan_id == loan_id).order_by(InstallmentRecord.seq)
    )
    return tuple(Installment(r.due_date, r.amount_cents) for r in rows)


def load_payments(session: Session, loan_id: str) -> tuple[Payment, ...]:
    """The stored payments of a loan."""
    rows = session.scalars(
        sa.select(RepaymentRecord).where(RepaymentRecord.loan_id == loan_id).order_by(RepaymentRecord.id)
    )
    return tuple(Payment(r.payment_id, r.paid_on, r.amount_cents) for r in rows)


def existing_loan_conflicts(session: Session, row: LoanRow) -> list[tuple[str | None, str, str]] | None:
    """Compare an imported row with what is stored.

    Returns:
        ``None`` if the loan is stored with exactly these terms (and no conflicting payment);
        an empty list if it is new and nothing stored conflicts; otherwise
        ``(column, reason, message)`` tuples.
    """
    problems: list[tuple[str | None, str, str]] = []
    stored = session.get(LoanRecord, row.loan_id)
    if stored is not None:
        same = (
            stored.device_id == row.device_id
            and stored.vin == row.vin
            and stored.borrower_ref == row.borrower_ref
            and stored.principal_cents == row.principal_cents
            and load_schedule(session, row.loan_id) == row.schedule
        )
        if not same:
            problems.append(("loan_id", "loan_exists", f"loan {row.loan_id} is already stored with different terms"))
    for column, attr, value in (("device_id", LoanRecord.device_id, row.device_id), ("vin", LoanRecord.vin, row.vin)):
        other = session.scalar(sa.select(LoanRecord.loan_id).where(attr == value, LoanRecord.loan_id != row.loan_id))
        if other is not None:
            problems.append((column, f"{column}_in_use", f"{column} {value} is already bound to loan {other}"))
    if stored is not None:
        known = {p.payment_id: p for p in load_payments(session, row.loan_id)}
        problems.extend(
            ("payments", "payment_conflict", f"payment {p.payment_id} is stored with a different date/amount")
            for p in row.payments
            if p.payment_id in known and known[p.payment_id] != p
        )
    if problems:
        return problems
    return None if stored is not None else []


@dataclass(frozen=True, slots=True)
class RepaymentOutcome:
    """Result of :func:`record_repayment`: ``created`` is False for an idempotent replay."""

    payment: Payment
    created: bool
    recorded_ms: int


def record_repayment(session: Session, loan_id: str, payment: Payment, *, now_ms: int) -> RepaymentOutcome:
    """Record a payment once per ``(loan_id, payment_id)``.

    A replay with the same date and amount returns the stored record (``created=False``); a
    replay with different content raises :class:`RepaymentConflictError`. Concurrent replays are
    settled by the unique key (the loser re-reads inside a savepoint).

    Raises:
        LoanNotFoundError: no such loan.
        RepaymentConflictError: the payment id is taken by a different payment.
    """
    if session.get(LoanRecord, loan_id) is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")

    def existing() -> RepaymentRecord | None:
        return session.scalar(
            sa.select(RepaymentRecord).where(
                RepaymentRecord.loan_id == loan_id, RepaymentRecord.payment_id == payment.payment_id
            )
        )

    def outcome(record: RepaymentRecord) -> RepaymentOutcome:
        stored = Payment(record.payment_id, record.paid_on, record.amount_cents)
        if stored != payment:
            raise RepaymentConflictError(
                f"payment {payment.payment_id} of loan {loan_id} was recorded as {stored.paid_on} "
                f"{format_cents(stored.amount_cents)}, not {payment.paid_on} {format_cents(payment.amount_cents)}"
            )
        return RepaymentOutcome(stored, False, record.recorded_ms)

    found = existing()
    if found is not None:
        return outcome(found)
    try:
        with session.begin_nested():
            session.add(
                RepaymentRecord(
                    loan_id=loan_id,
                    payment_id=payment.payment_id,
                    paid_on=payment.paid_on,
                    amount_cents=payment.amount_cents,
                    recorded_ms=now_ms,
                )
            )
    except sa.exc.IntegrityError:
        found = existing()
        if found is None:
            raise
        return outcome(found)
    return RepaymentOutcome(payment, True, now_ms)


def loans_with_risk(
    session: Session,
    *,
    level: str | None = None,
    most_severe_first: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> list[tuple[LoanRecord, RiskStateRecord | None]]:
    """Loans with their stored risk state (None: never assessed, i.e. ``normal``).

    Args:
        level: only loans at this level (``normal`` includes loans never assessed).
        most_severe_first: order by level (critical first), then loan id; else by loan id.
        limit: at most this many rows.
        offset: rows to skip (paging).
    """
    order: list[Any] = [LoanRecord.loan_id]
    if most_severe_first:
        rank = sa.case({label.label: int(label) for label in RiskLevel}, value=RiskStateRecord.level, else_=0)
        order.insert(0, rank.desc())
    query = (
        sa.select(LoanRecord, RiskStateRecord)
        .outerjoin(RiskStateRecord, RiskStateRecord.loan_id == LoanRecord.loan_id)
        .order_by(*order)
        .offset(offset)
    )
    if limit is not None:
        query = query.limit(limit)
    if level == "normal":
        query = query.where(sa.or_(RiskStateRecord.level.is_(None), RiskStateRecord.level == "normal"))
    elif level is not None:
        query = query.where(RiskStateRecord.level == level)
    return [(loan, state) for loan, state in session.execute(query).all()]


def utc_date(time_ms: int) -> date:
    """The UTC calendar date of an epoch-ms time."""
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).date()


def loan_facts(session: Session, loan_id: str, as_of: date, *, grace_days: int = DEFAULT_GRACE_DAYS) -> RepaymentFacts:
    """Repayment facts of a stored loan on ``as_of``.

    Raises:
        LoanNotFoundError: no such loan.
    """
    if session.get(LoanRecord, loan_id) is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    return repayment_facts(
        load_schedule(session, loan_id), load_payments(session, loan_id), as_of, grace_days=grace_days
    )


# ------------------------------------------------------------------ risk


def open_alerts(session: Session, device_id: str, until_ms: int) -> tuple[OpenAlert, ...]:
    """Alert episodes of ``device_id`` raised by ``until_ms`` and not cleared by then."""
    rows = session.execute(
        sa.select(AlertRecord).where(AlertRecord.device_id == device_id, AlertRecord.time_ms <= until_ms)
        .order_by(AlertRecord.time_ms, AlertRecord.id)
    ).scalars()
    raised: dict[tuple[str, str], AlertRecord] = {}
    cleared: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.rule, row.episode)
        if row.state == 1:
            cleared.add(key)
        else:
            raised.setdefault(key, row)
    severities = ("info", "warning", "high", "panic")
    return tuple(
        OpenAlert(
            r.rule,
            severities[r.severity] if 0 <= r.severity < len(severities) else str(r.severity),
            r.time_ms,
            r.episode,
            dict(r.evidence or {}),
        )
        for key, r in raised.items()
        if key not in cleared
    )


def device_status(session: Session, device_id: str) -> DeviceStatus:
    """The engine's view of a device from the ingest's ``device_status`` row."""
    row = session.get(DeviceStatusRecord, device_id)
    if row is None:
        return DeviceStatus()
    offline_since = row.state_time_ms if row.online is False else None
    return DeviceStatus(online=row.online, last_seen_ms=row.last_seen_ms, offline_since_ms=offline_since)


def movement(session: Session, device_id: str, until_ms: int) -> Movement:
    """Last time the vehicle moved (a fix at >= :data:`MOVING_MPS`) and the distance of the last 24 h."""
    last_moved = session.scalar(
        sa.select(sa.func.max(FixRecord.time_ms)).where(
            FixRecord.device_id == device_id, FixRecord.time_ms <= until_ms, FixRecord.speed_mps >= MOVING_MPS
        )
    )
    return Movement(last_moved_ms=int(last_moved) if last_moved is not None else None)


def load_risk_input(
    session: Session, loan_id: str, now_ms: int, *, grace_days: int = DEFAULT_GRACE_DAYS
) -> RiskInput:
    """Everything the risk engine needs about one stored loan at ``now_ms``."""
    loan = session.get(LoanRecord, loan_id)
    if loan is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    facts = loan_facts(session, loan_id, utc_date(now_ms), grace_days=grace_days)
    return RiskInput(
        loan_id,
        now_ms,
        facts,
        open_alerts(session, loan.device_id, now_ms),
        device_status(session, loan.device_id),
        movement(session, loan.device_id, now_ms),
    )


def _states_insert(session: Session) -> Any:
    bind = session.get_bind()
    module = postgresql if bind.dialect.name == "postgresql" else sqlite
    return module.insert(Base.metadata.tables["risk_states"])


def reassess_loan(
    session: Session,
    loan_id: str,
    now_ms: int,
    *,
    config: RiskConfig | None = None,
    grace_days: int = DEFAULT_GRACE_DAYS,
    webhook_urls: Sequence[str] = (),
) -> tuple[RiskAssessment, RiskChange | None]:
    """Assess a loan, keep its state, and on a level change store an event and queue webhooks.

    The caller commits: state, event and outbox rows land in one transaction.

    Concurrent reassessments of one loan (the risk worker, an API request, another collector
    process) must not record the same change twice, so the state row is written with a
    compare-and-set on the level read before assessing (``UPDATE ... WHERE level = :seen``,
    ``INSERT ... ON CONFLICT DO NOTHING`` for a first assessment). When another writer got
    there first the loan is assessed again against what it wrote. An evaluation older than
    the stored one (``evaluated_ms`` later than ``now_ms``) changes nothing.
    """
    states = Base.metadata.tables["risk_states"]
    for _attempt in range(_CAS_ATTEMPTS):
        inp = load_risk_input(session, loan_id, now_ms, grace_days=grace_days)
        assessment = assess(inp, config)
        stored = session.execute(
            sa.select(states.c.level, states.c.evaluated_ms).where(states.c.loan_id == loan_id)
        ).first()
        if stored is not None and stored.evaluated_ms > now_ms:
            return assessment, None
        previous = RiskLevel.from_label(stored.level) if stored is not None else None
        change = level_change(previous, assessment)
        reasons = [r.as_dict() for r in assessment.reasons]
        values: dict[str, Any] = {
            "level": assessment.level.label,
            "next_step": assessment.next_step.label,
            "reasons": reasons,
            "facts": inp.facts.as_dict(),
            "evaluated_ms": now_ms,
        }
        if stored is None:
            insert = _states_insert(session).values(loan_id=loan_id, changed_ms=now_ms, **values)
            statement: Any = insert.on_conflict_do_nothing(index_elements=["loan_id"])
        else:
            if change is not None:
                values["changed_ms"] = now_ms
            statement = (
                sa.update(states)
                .where(states.c.loan_id == loan_id, states.c.level == stored.level, states.c.evaluated_ms <= now_ms)
                .values(**values)
            )
        # RETURNING says portably whether this writer won (rowcount of an upsert is not reliable).
        if session.execute(statement.returning(states.c.loan_id)).first() is None:
            continue  # another writer changed the state in between: look again
        cached = session.identity_map.get(identity_key(RiskStateRecord, loan_id))
        if cached is not None:
            session.expire(cached)
        if change is not None:
            event_id = str(uuid.uuid4())
            session.add(
                RiskEventRecord(
                    event_id=event_id,
                    loan_id=loan_id,
                    time_ms=now_ms,
                    old_level=change.old_level.label,
                    new_level=change.new_level.label,
                    next_step=change.next_step.label,
                    reasons=reasons,
                )
            )
            if webhook_urls:
                from .webhooks import enqueue_risk_change

                enqueue_risk_change(session, event_id, change, webhook_urls, now_ms=now_ms)
        session.flush()
        return assessment, change
    raise RiskStateConflictError(
        f"risk state of loan {loan_id} kept changing under {_CAS_ATTEMPTS} reassessments at {now_ms} ms"
    )


@dataclass(frozen=True, slots=True)
class LoansSettings:
    """Settings of the loan side: grace days, risk thresholds, webhook targets."""

    grace_days: int = DEFAULT_GRACE_DAYS
    risk: RiskConfig = field(default_factory=RiskConfig)
    webhook_urls: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> LoansSettings:
        """The loan side's view of the collector settings (``[risk]`` and ``[webhooks]``)."""
        return cls(settings.risk.grace_days, settings.risk.config, tuple(settings.webhooks.urls))


def reassess_loans(
    session: Session,
    now_ms: int,
    *,
    settings: LoansSettings | None = None,
    device_ids: Iterable[str] | None = None,
) -> list[RiskChange]:
    """Reassess every loan (the periodic job: days past due grow with time) or those of ``device_ids``.

    The caller commits. Returns the level changes.
    """
    settings = settings or LoansSettings()
    query = sa.select(LoanRecord.loan_id).order_by(LoanRecord.loan_id)
    if device_ids is not None:
        query = query.where(LoanRecord.device_id.in_(sorted(set(device_ids))))
    changes = []
    for loan_id in session.scalars(query).all():
        _, change = reassess_loan(
            session, loan_id, now_ms, config=settings.risk, grace_days=settings.grace_days,
            webhook_urls=settings.webhook_urls,
        )
        if change is not None:
            changes.append(change)
    return changes


def risk_commit_hook(
    engine: sa.Engine,
    *,
    settings: LoansSettings | None = None,
    on_change: Callable[[list[RiskChange]], None] | None = None,
) -> Callable[[object], None]:
    """An ``Ingestor.on_commit`` hook: reassess the loans of a device after its data committed.

    Duplicates (nothing new stored) and state messages that changed nothing are skipped.
    Evaluation time is the collector's receive time of the message. ``on_change`` (e.g.
    ``WebhookWorker.wake``) is called with the level changes after they committed.
    """

    def hook(event: object) -> None:
        device_id = getattr(event, "device_id", None)
        received_ms = getattr(event, "received_ms", None)
        if not isinstance(device_id, str) or not isinstance(received_ms, int):
            return
        if getattr(event, "duplicate", False) or getattr(event, "applied", True) is False:
            return
        with Session(engine) as session:
            changes = reassess_loans(session, received_ms, settings=settings, device_ids=[device_id])
            session.commit()
        if changes and on_change is not None:
            on_change(changes)

    return hook


# ------------------------------------------------------------------ vehicle condition


def vehicle_condition(session: Session, device_id: str, today: date, *, days: int = 30) -> dict[str, Any]:
    """Condition summary for the disposal team: the last ``days`` days of DailyStats.

    Returns per-day distance (km), driving time (h), harsh accelerations and brakings, the
    totals, and the last odometer reading known.
    """
    first = (today - timedelta(days=days - 1)).isoformat()
    rows = list(
        session.scalars(
            sa.select(DailyStatsRecord)
            .where(
                DailyStatsRecord.device_id == device_id,
                DailyStatsRecord.day >= first,
                DailyStatsRecord.day <= today.isoformat(),
            )
            .order_by(DailyStatsRecord.day)
        )
    )
    odometer = session.execute(
        sa.select(DailyStatsRecord.odometer_km, DailyStatsRecord.day)
        .where(DailyStatsRecord.device_id == device_id, DailyStatsRecord.odometer_km.is_not(None))
        .order_by(DailyStatsRecord.day.desc())
        .limit(1)
    ).first()
    return {
        "device_id": device_id,
        "from": first,
        "to": today.isoformat(),
        "days": [
            {
                "day": r.day,
                "distance_km": round(r.distance_m / 1000, 3),
                "driving_h": round(r.driving_s / 3600, 3),
                "harsh_accel": r.harsh_accel,
                "harsh_brake": r.harsh_brake,
                "final": r.final,
            }
            for r in rows
        ],
        "total_distance_km": round(sum(r.distance_m for r in rows) / 1000, 3),
        "total_driving_h": round(sum(r.driving_s for r in rows) / 3600, 3),
        "harsh_accel": sum(r.harsh_accel for r in rows),
        "harsh_brake": sum(r.harsh_brake for r in rows),
        "last_odometer_km": odometer[0] if odometer else None,
        "last_odometer_day": odometer[1] if odometer else None,
    }
