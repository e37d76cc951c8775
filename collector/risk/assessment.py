"""Risk assessment of stored loans: the seam between storage and the pure risk engine.

How this works
--------------
:func:`reassess_loan` reads the schedule, payments, open alerts, device status and recent
movement of one loan, runs :func:`collector.risk.repayments.repayment_facts` and
:func:`collector.risk.engine.assess` and the v2 score (:func:`collector.risk.score.assess_v2`),
keeps the current state in ``risk_states`` - level, next step and reasons from the engine
``[risk] model`` names (v2 by default, :mod:`collector.risk.decision`) - and on a
level change appends a ``risk_events`` row and queues the webhook deliveries in the same
transaction (outbox pattern, :func:`collector.jobs.webhooks.enqueue_risk_change`) - so a
crash never leaves an event without its notifications or the reverse. Re-running it on the
same data is harmless: no level change, no event.

Thresholds and grace days come from ``[risk]`` (:class:`collector.risk.settings.RiskSettings`),
webhook targets from ``[webhooks] urls``: sections of the one :class:`collector.settings.Settings`.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from ..cases.settings import CaseSettings
from ..cases.store import sync_case_with_risk
from ..clock import utc_date
from ..jobs.webhooks import enqueue_risk_change
from ..storage.tables import (
    FINAL_LOAN_STATUSES,
    AlertRecord,
    Base,
    FixRecord,
    InstallmentRecord,
    LoanDeviceRecord,
    LoanRecord,
    RepaymentRecord,
    RiskEventRecord,
    RiskStateRecord,
)
from ..storage.tables import DeviceStatus as DeviceStatusRecord
from .decision import decide
from .engine import (
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
from .features import FeatureConfig, exposure_of
from .repayments import DEFAULT_GRACE_DAYS, Installment, LoanError, Payment, RepaymentFacts, repayment_facts
from .score import ScoreAssessment, assess_v2
from .settings import RiskSettings
from .trackers import LOOKBACK_MS, TrackerView, TrackFix, newest_fixes_agree, tracker_divergence

__all__ = [
    "MOVING_MPS",
    "LoanNotFoundError",
    "RiskStateConflictError",
    "device_status",
    "load_payments",
    "load_risk_input",
    "load_schedule",
    "loan_facts",
    "movement",
    "open_alerts",
    "reassess_loan",
    "reassess_loan_as_configured",
    "reassess_loans",
    "risk_commit_hook",
    "score_columns",
    "score_loan",
    "tracker_view",
]

log = logging.getLogger(__name__)

#: Speed over ground from which a fix counts as "moving" (GNSS jitter stays below it).
MOVING_MPS = 1.5
_CAS_ATTEMPTS = 5


class LoanNotFoundError(LoanError):
    """No loan with that id."""


class RiskStateConflictError(LoanError):
    """A loan's risk state was changed by other writers on every attempt to write it."""


# ------------------------------------------------------------------ repayment facts


def load_schedule(session: Session, loan_id: str) -> tuple[Installment, ...]:
    """The stored schedule of a loan, in due-date order."""
    rows = session.scalars(
        sa.select(InstallmentRecord).where(InstallmentRecord.loan_id == loan_id).order_by(InstallmentRecord.seq)
    )
    return tuple(Installment(r.due_date, r.amount_cents) for r in rows)


def load_payments(session: Session, loan_id: str) -> tuple[Payment, ...]:
    """The stored payments of a loan, without reversed (bounced) ones."""
    rows = session.scalars(
        sa.select(RepaymentRecord)
        .where(RepaymentRecord.loan_id == loan_id, RepaymentRecord.reversed_ms.is_(None))
        .order_by(RepaymentRecord.id)
    )
    return tuple(Payment(r.payment_id, r.paid_on, r.amount_cents) for r in rows)



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
    """Last time the vehicle moved (a fix at >= :data:`MOVING_MPS`) and the newest fix, both vehicle time."""
    moving = sa.case((FixRecord.speed_mps >= MOVING_MPS, FixRecord.time_ms), else_=None)
    last_moved, last_fix = session.execute(
        sa.select(sa.func.max(moving), sa.func.max(FixRecord.time_ms)).where(
            FixRecord.device_id == device_id, FixRecord.time_ms <= until_ms
        )
    ).one()
    return Movement(
        last_moved_ms=int(last_moved) if last_moved is not None else None,
        last_fix_ms=int(last_fix) if last_fix is not None else None,
    )


def tracker_view(session: Session, device_id: str, now_ms: int, *, history: bool = True) -> TrackerView:
    """One tracker's newest observation and position and (``history``) its fixes of the last ``LOOKBACK_MS``."""
    row = session.get(DeviceStatusRecord, device_id)
    last_fix = None
    if row is not None and row.last_fix_ms is not None and row.last_lat is not None and row.last_lon is not None:
        last_fix = TrackFix(row.last_fix_ms, row.last_lat, row.last_lon)
    last_seen = row.last_seen_ms if row is not None else None
    if not history:
        return TrackerView(device_id, last_seen, last_fix)
    fixes = session.execute(
        sa.select(FixRecord.time_ms, FixRecord.lat, FixRecord.lon)
        .where(FixRecord.device_id == device_id, FixRecord.time_ms > now_ms - LOOKBACK_MS,
               FixRecord.time_ms <= now_ms)
        .order_by(FixRecord.time_ms, FixRecord.id)
    ).all()
    return TrackerView(device_id, last_seen, last_fix, tuple(TrackFix(*f) for f in fixes))


def _divergence(session: Session, main: str, backup: str, now_ms: int, config: RiskConfig) -> OpenAlert | None:
    """:func:`tracker_divergence` of a car's two trackers, reading their fix history only when needed."""
    light = tracker_view(session, main, now_ms, history=False), tracker_view(session, backup, now_ms, history=False)
    found = tracker_divergence(*light, now_ms, config)  # the silent signatures need no history
    if found is not None or newest_fixes_agree(*light, config):
        return found
    full = tracker_view(session, main, now_ms), tracker_view(session, backup, now_ms)
    return tracker_divergence(*full, now_ms, config)


def load_risk_input(
    session: Session, loan_id: str, now_ms: int, *, grace_days: int = DEFAULT_GRACE_DAYS,
    config: RiskConfig | None = None,
) -> RiskInput:
    """Everything the risk engine needs about one stored loan at ``now_ms``.

    With a second tracker linked (``loan_devices``), its open alerts count too, and a
    ``tracker_divergence`` episode (:func:`collector.risk.trackers.tracker_divergence`, with the
    ``tracker_*`` thresholds of ``config``) joins them when the two disagree.
    """
    loan = session.get(LoanRecord, loan_id)
    if loan is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    facts = loan_facts(session, loan_id, utc_date(now_ms), grace_days=grace_days)
    alerts = open_alerts(session, loan.device_id, now_ms)
    backup = session.scalar(sa.select(LoanDeviceRecord.device_id).where(LoanDeviceRecord.loan_id == loan_id))
    if backup is not None:
        alerts += open_alerts(session, backup, now_ms)
        divergence = _divergence(session, loan.device_id, backup, now_ms, config or RiskConfig())
        if divergence is not None:
            alerts += (divergence,)
    return RiskInput(
        loan_id,
        now_ms,
        facts,
        alerts,
        device_status(session, loan.device_id),
        movement(session, loan.device_id, now_ms),
    )


def score_loan(session: Session, inp: RiskInput, config: RiskConfig | None = None) -> ScoreAssessment:
    """The v2 score of a stored loan (the vehicle's value is not stored: LTV is imputed)."""
    loan = session.get(LoanRecord, inp.loan_id)
    if loan is None:
        raise LoanNotFoundError(f"loan {inp.loan_id!r:.80} does not exist")
    features = FeatureConfig(risk=config or RiskConfig())
    return assess_v2(inp, exposure_of(loan.principal_cents, inp.facts), None, features)


def score_columns(scored: ScoreAssessment) -> dict[str, Any]:
    """The ``risk_states`` columns of a v2 assessment."""
    return {
        "score": scored.score,
        "expected_loss_cents": scored.expected_loss_cents,
        "credit_level": scored.credit.level.label,
        "credit_next_step": scored.credit.next_step,
        "collateral_level": scored.collateral.level.label,
        "collateral_next_step": scored.collateral.next_step,
        "tier": scored.tier.value,
        "model_version": scored.model_version,
        "assessment": scored.as_dict(),
    }


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
    cases: CaseSettings | None = None,
    model: str = "v2",
) -> tuple[RiskAssessment, RiskChange | None]:
    """Assess a loan, keep its state, and on a level change store an event and queue webhooks.

    Both engines run; ``model`` (``[risk] model``, :mod:`collector.risk.decision`) says whose
    answer is the stored level, next step and reasons, the risk event and the webhooks. The
    v2 score and its axes are stored either way. Returns the authoritative assessment.

    The caller commits: state, event, outbox and case rows land in one transaction. The
    loan's collections case follows the level (:func:`collector.cases.store.sync_case_with_risk`:
    opened at watch or above, raised with the level, closed as cured at normal; SLAs from
    ``cases``, the ``[cases]`` defaults when ``None``).

    Concurrent reassessments of one loan (the risk worker, an API request, another collector
    process) must not record the same change twice, so the state row is written with a
    compare-and-set on the level read before assessing (``UPDATE ... WHERE level = :seen``,
    ``INSERT ... ON CONFLICT DO NOTHING`` for a first assessment). When another writer got
    there first the loan is assessed again against what it wrote. An evaluation older than
    the stored one (``evaluated_ms`` later than ``now_ms``) changes nothing.
    """
    states = Base.metadata.tables["risk_states"]
    for _attempt in range(_CAS_ATTEMPTS):
        inp = load_risk_input(session, loan_id, now_ms, grace_days=grace_days, config=config)
        scored = score_loan(session, inp, config)
        assessment = decide(model, assess(inp, config), scored, inp, config)
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
        } | score_columns(scored)
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
                enqueue_risk_change(session, event_id, change, webhook_urls, now_ms=now_ms)
        sync_case_with_risk(
            session, loan_id, assessment.level.label, changed=change is not None, now_ms=now_ms,
            settings=cases or CaseSettings(),
        )
        session.flush()
        return assessment, change
    raise RiskStateConflictError(
        f"risk state of loan {loan_id} kept changing under {_CAS_ATTEMPTS} reassessments at {now_ms} ms"
    )


def reassess_loan_as_configured(
    session: Session,
    loan_id: str,
    now_ms: int,
    risk: RiskSettings,
    webhook_urls: Sequence[str] = (),
    *,
    cases: CaseSettings | None = None,
) -> tuple[RiskAssessment, RiskChange | None]:
    """:func:`reassess_loan` with the ``[risk]`` model, thresholds and grace days (``[webhooks] urls``, ``[cases]``)."""
    return reassess_loan(
        session, loan_id, now_ms, config=risk.config, grace_days=risk.grace_days, webhook_urls=webhook_urls,
        cases=cases, model=risk.model,
    )


def reassess_loans(
    session: Session,
    now_ms: int,
    *,
    risk: RiskSettings | None = None,
    webhook_urls: Sequence[str] = (),
    device_ids: Iterable[str] | None = None,
    cases: CaseSettings | None = None,
) -> list[RiskChange]:
    """Reassess every loan (the periodic job: days past due grow with time) or those of ``device_ids``.

    Settled and transferred loans are left alone (their remaining instalments will never be
    paid to this book). The caller commits. Returns the level changes.
    """
    risk = risk or RiskSettings()
    query = (
        sa.select(LoanRecord.loan_id)
        .where(LoanRecord.status.not_in(FINAL_LOAN_STATUSES))
        .order_by(LoanRecord.loan_id)
    )
    if device_ids is not None:
        wanted = sorted(set(device_ids))
        backups = sa.select(LoanDeviceRecord.loan_id).where(LoanDeviceRecord.device_id.in_(wanted))
        query = query.where(sa.or_(LoanRecord.device_id.in_(wanted), LoanRecord.loan_id.in_(backups)))
    changes = []
    for loan_id in session.scalars(query).all():
        _, change = reassess_loan_as_configured(session, loan_id, now_ms, risk, webhook_urls, cases=cases)
        if change is not None:
            changes.append(change)
    return changes


def risk_commit_hook(
    engine: sa.Engine,
    *,
    risk: RiskSettings | None = None,
    webhook_urls: Sequence[str] = (),
    on_change: Callable[[list[RiskChange]], None] | None = None,
    cases: CaseSettings | None = None,
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
            changes = reassess_loans(
                session, received_ms, risk=risk, webhook_urls=webhook_urls, device_ids=[device_id], cases=cases
            )
            session.commit()
        if changes and on_change is not None:
            on_change(changes)

    return hook
