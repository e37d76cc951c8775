"""Reads across the loan book for the console and the API: the worklist, the alert feed, devices.

Each is one SQL statement with server-side paging (``LIMIT``/``OFFSET``) so a page costs the
same with 100 or 100,000 loans (bench/console_bench.py). ``GET /v1/alerts`` uses
:func:`alert_feed` too.

Worklist order (:data:`SORTS`): by default the v2 expected loss (exposure x probability of a
bad outcome, largest first; loans not scored yet last); or the level (critical first), then
exposure (the overdue amount, ``total_overdue`` of the stored repayment facts), then days past
due; or the score; or days past due. Ties: the severity order, then the loan id (by expected
loss, the loan id: amounts in cents rarely tie).
Filters: level, next step, reason code, tier, region, search.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..risk.engine import RULES, NextStep, RiskLevel
from ..risk.features import FEATURE_NAMES
from ..risk.repayments import format_cents
from ..risk.score import HARD_RULES, Tier
from ..storage.tables import (
    FINAL_LOAN_STATUSES,
    AlertRecord,
    BatchRecord,
    Device,
    DeviceKey,
    DeviceStatus,
    LoanDeviceRecord,
    LoanRecord,
    RiskStateRecord,
    SeqLedgerRecord,
)
from .csv_import import REGION_RE

__all__ = [
    "LEVELS",
    "NEXT_STEPS",
    "REASON_CODES",
    "SEVERITIES",
    "SORTS",
    "TIERS",
    "AlertFilter",
    "WorklistFilter",
    "alert_feed",
    "device_rows",
    "worklist",
]

LEVELS = tuple(level.label for level in sorted(RiskLevel, reverse=True))
NEXT_STEPS = tuple(step.label for step in sorted(NextStep, reverse=True))
#: Reason codes of both engines: the v1 table's rows, the v2 score's hard rules and features.
REASON_CODES = tuple(dict.fromkeys([*(r.code for r in RULES), *(r.code for r in HARD_RULES), *FEATURE_NAMES]))
#: Customer tiers of the v2 score (docs/risk.md).
TIERS = tuple(t.value for t in Tier)
#: Worklist orders: expected loss (the default: exposure x probability, the v2 ranking), the
#: level then overdue amount then days past due, the score (probability of a bad outcome), days past due.
SORTS = ("expected_loss", "severity", "score", "days_past_due")
#: Alert severities as stored (index = the wire value).
SEVERITIES = ("info", "warning", "high", "panic")
MAX_PAGE = 500
_SEARCH = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_RULE = re.compile(r"[a-z0-9_]{1,64}")


class QueryError(ValueError):
    """A filter value is not one the console offers (the message names it)."""


@dataclass(frozen=True, slots=True)
class WorklistFilter:
    """Filters of the worklist; ``None`` = any."""

    level: str | None = None
    next_step: str | None = None
    reason: str | None = None
    search: str | None = None
    tier: str | None = None
    region: str | None = None
    sort: str = "expected_loss"

    def __post_init__(self) -> None:
        if self.region is not None and not REGION_RE.fullmatch(self.region):
            raise QueryError(f"region {self.region!r:.70} is not a region label")
        if self.tier is not None and self.tier not in TIERS:
            raise QueryError(f"tier {self.tier!r:.30} is not one of {', '.join(TIERS)}")
        if self.sort not in SORTS:
            raise QueryError(f"sort {self.sort!r:.30} is not one of {', '.join(SORTS)}")
        if self.level is not None and self.level not in LEVELS:
            raise QueryError(f"level {self.level!r:.20} is not one of {', '.join(LEVELS)}")
        if self.next_step is not None and self.next_step not in NEXT_STEPS:
            raise QueryError(f"next step {self.next_step!r:.20} is not one of {', '.join(NEXT_STEPS)}")
        if self.reason is not None and self.reason not in REASON_CODES:
            raise QueryError(f"reason {self.reason!r:.40} is not a risk rule code")
        if self.search is not None and not _SEARCH.fullmatch(self.search):
            raise QueryError("search takes a loan id, VIN, device id or borrower reference ([A-Za-z0-9_.-])")

    def as_params(self) -> dict[str, str]:
        """The non-empty filters as query parameters."""
        pairs = {"level": self.level, "next_step": self.next_step, "reason": self.reason, "q": self.search,
                 "tier": self.tier, "region": self.region,
                 "sort": None if self.sort == "expected_loss" else self.sort}
        return {k: v for k, v in pairs.items() if v}


def _level_rank() -> sa.ColumnElement[int]:
    return sa.case({label.label: int(label) for label in RiskLevel}, value=RiskStateRecord.level, else_=0)


def _exposure() -> sa.ColumnElement[Any]:
    return sa.func.coalesce(sa.cast(RiskStateRecord.facts["total_overdue"].as_string(), sa.Numeric(18, 2)), 0)


def _dpd() -> sa.ColumnElement[Any]:
    return sa.func.coalesce(RiskStateRecord.facts["days_past_due"].as_integer(), 0)


def _level_condition(level: str) -> sa.ColumnElement[bool]:
    if level == "normal":
        return sa.or_(RiskStateRecord.level.is_(None), RiskStateRecord.level == "normal")
    return RiskStateRecord.level == level


def _prefix(column: sa.orm.InstrumentedAttribute[str], term: str) -> sa.ColumnElement[bool]:
    """``column`` starts with ``term``, as a range an index can serve (LIKE often cannot)."""
    return sa.and_(column >= term, column < term + "\U0010ffff")


#: A search looks at most this many matches per key (a prefix of one or two characters matches many).
MAX_SEARCH_MATCHES = 1000


def _search_ids(term: str) -> sa.CompoundSelect[Any]:
    """Loan ids whose id, VIN or device id starts with ``term`` or whose borrower reference is it;
    one indexed lookup per key, united."""
    lookups = [
        sa.select(LoanRecord.loan_id).where(LoanRecord.borrower_ref == term),
        sa.select(LoanRecord.loan_id).where(_prefix(LoanRecord.loan_id, term)),
        sa.select(LoanRecord.loan_id).where(_prefix(LoanRecord.vin, term.upper())),
        sa.select(LoanRecord.loan_id).where(_prefix(LoanRecord.device_id, term)),
    ]
    return sa.union(*(q.limit(MAX_SEARCH_MATCHES).subquery().select() for q in lookups))


def worklist_statement(
    filters: WorklistFilter, *, level: str | None = None, scored: bool | None = None
) -> sa.Select[Any]:
    """The worklist's SELECT (without paging) in ``filters.sort`` order; ``level`` narrows to one
    level, ``scored`` to loans with (True) or without (False) a v2 expected loss."""
    query = sa.select(
        LoanRecord.loan_id,
        LoanRecord.device_id,
        LoanRecord.vin,
        LoanRecord.borrower_ref,
        LoanRecord.region,
        RiskStateRecord.level,
        RiskStateRecord.next_step,
        RiskStateRecord.reasons,
        RiskStateRecord.facts,
        RiskStateRecord.changed_ms,
        RiskStateRecord.score,
        RiskStateRecord.expected_loss_cents,
        RiskStateRecord.tier,
    ).outerjoin(RiskStateRecord, RiskStateRecord.loan_id == LoanRecord.loan_id)
    query = query.where(LoanRecord.status.not_in(FINAL_LOAN_STATUSES))  # settled/transferred: nothing to work
    for wanted in (filters.level, level):
        if wanted is not None:
            query = query.where(_level_condition(wanted))
    if filters.next_step == "monitor":
        query = query.where(sa.or_(RiskStateRecord.next_step.is_(None), RiskStateRecord.next_step == "monitor"))
    elif filters.next_step is not None:
        query = query.where(RiskStateRecord.next_step == filters.next_step)
    if filters.reason is not None:
        # Reasons are a JSON list stored as text by SQLAlchemy's json.dumps; a code is matched
        # as the value of a "code" key (not inside evidence, where rule names also appear).
        query = query.where(sa.cast(RiskStateRecord.reasons, sa.Text).like(f'%"code": "{filters.reason}"%'))
    if filters.search is not None:
        query = query.where(LoanRecord.loan_id.in_(_search_ids(filters.search)))
    if filters.tier is not None:
        query = query.where(RiskStateRecord.tier == filters.tier)
    if filters.region is not None:
        query = query.where(LoanRecord.region == filters.region)
    if scored is not None:
        has_loss = RiskStateRecord.expected_loss_cents.is_not(None)
        query = query.where(has_loss if scored else ~has_loss)
    severity = (_level_rank().desc(), _exposure().desc(), _dpd().desc())
    if filters.sort == "expected_loss" and scored:  # the expected-loss index serves it; cents rarely tie
        return query.order_by(RiskStateRecord.expected_loss_cents.desc(), LoanRecord.loan_id)
    order = {
        "severity": severity,
        "expected_loss": (RiskStateRecord.expected_loss_cents.desc().nulls_last(), *severity),
        "score": (RiskStateRecord.score.desc().nulls_last(), *severity),
        "days_past_due": (_dpd().desc(), *severity),
    }[filters.sort]
    return query.order_by(*order, LoanRecord.loan_id)


@dataclass(frozen=True, slots=True)
class Page:
    """One page of rows and whether another follows."""

    rows: list[dict[str, Any]]
    page: int
    size: int
    has_next: bool


def worklist(session: Session, filters: WorklistFilter, *, page: int = 1, size: int = 50) -> Page:
    """One page of the worklist (``page`` from 1).

    By severity it is read level by level, most severe first: each level is one indexed query
    sorted on its own (a first page usually comes from the few critical and high loans, without
    sorting the whole book); by expected loss the scored loans come first in the order of the
    expected-loss index, then the loans not scored yet. Segments wholly before the page are
    only counted.
    """
    page, size = max(1, page), max(1, min(MAX_PAGE, size))
    skip, want = (page - 1) * size, size + 1
    found: list[Any] = []
    # A search, a single level or the score / days past due orders are one query; the whole book
    # by severity is read level by level, by expected loss scored loans first (index order), then
    # the loans not scored yet.
    segments: list[tuple[str | None, bool | None]]
    if filters.level is not None or filters.search is not None or filters.sort in ("score", "days_past_due"):
        segments = [(None, None)]
    elif filters.sort == "expected_loss":
        segments = [(None, True), (None, False)]
    else:
        segments = [(level, None) for level in LEVELS]
    for level, scored in segments:
        statement = worklist_statement(filters, level=level, scored=scored)
        if skip:
            in_level = session.scalar(sa.select(sa.func.count()).select_from(statement.order_by(None).subquery()))
            if in_level is not None and in_level <= skip:
                skip -= in_level
                continue
        found.extend(session.execute(statement.offset(skip).limit(want - len(found))).mappings())
        skip = 0
        if len(found) >= want:
            break
    rows = [_worklist_row(r) for r in found]
    return Page(rows[:size], page, size, len(rows) > size)


def _worklist_row(r: Any) -> dict[str, Any]:
    facts = r["facts"] or {}
    return {
        "loan_id": r["loan_id"],
        "device_id": r["device_id"],
        "vin": r["vin"],
        "borrower_ref": r["borrower_ref"],
        "region": r["region"],
        "level": r["level"] or "normal",
        "next_step": r["next_step"] or "monitor",
        "reason_codes": [x.get("code") for x in (r["reasons"] or []) if isinstance(x, dict)],
        "total_overdue": facts.get("total_overdue", "0.00"),
        "days_past_due": facts.get("days_past_due", 0),
        "consecutive_late": facts.get("consecutive_late", 0),
        "changed_ms": r["changed_ms"],
        "score": r["score"],
        "expected_loss": format_cents(r["expected_loss_cents"]) if r["expected_loss_cents"] is not None else None,
        "tier": r["tier"],
    }


def worklist_export_rows(session: Session, filters: WorklistFilter, *, limit: int) -> list[dict[str, Any]]:
    """The whole filtered worklist (at most ``limit`` rows) in one ordered query, for exports."""
    return [_worklist_row(r) for r in session.execute(worklist_statement(filters).limit(limit)).mappings()]


def alert_export_rows(session: Session, filters: AlertFilter, *, limit: int) -> list[dict[str, Any]]:
    """The whole filtered alert feed (at most ``limit`` rows, newest first) in one query."""
    return [alert_row(r) for r in session.execute(alert_statement(filters).limit(limit)).mappings()]


@dataclass(frozen=True, slots=True)
class AlertFilter:
    """Filters of the alert feed; times are epoch ms, inclusive."""

    rule: str | None = None
    severity: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    loan_id: str | None = None

    def __post_init__(self) -> None:
        if self.rule is not None and not _RULE.fullmatch(self.rule):
            raise QueryError(f"rule {self.rule!r:.70} must match [a-z0-9_]{{1,64}}")
        if self.severity is not None and self.severity not in SEVERITIES:
            raise QueryError(f"severity {self.severity!r:.20} is not one of {', '.join(SEVERITIES)}")
        if self.since_ms is not None and self.until_ms is not None and self.until_ms < self.since_ms:
            raise QueryError("the end of the time range is before its start")


def alert_statement(filters: AlertFilter) -> sa.Select[Any]:
    """Alert records (RAISED and CLEARED) with their loan, newest first."""
    query = sa.select(
        AlertRecord.id,
        AlertRecord.device_id,
        AlertRecord.rule,
        AlertRecord.severity,
        AlertRecord.state,
        AlertRecord.time_ms,
        AlertRecord.episode,
        AlertRecord.evidence,
        LoanRecord.loan_id,
    ).outerjoin(LoanRecord, LoanRecord.device_id == AlertRecord.device_id)
    if filters.rule is not None:
        query = query.where(AlertRecord.rule == filters.rule)
    if filters.severity is not None:
        query = query.where(AlertRecord.severity == SEVERITIES.index(filters.severity))
    if filters.since_ms is not None:
        query = query.where(AlertRecord.time_ms >= filters.since_ms)
    if filters.until_ms is not None:
        query = query.where(AlertRecord.time_ms <= filters.until_ms)
    if filters.loan_id is not None:
        query = query.where(LoanRecord.loan_id == filters.loan_id)
    return query.order_by(AlertRecord.time_ms.desc(), AlertRecord.id.desc())


def alert_statement_after(after_id: int, limit: int) -> sa.Select[Any]:
    """Alert records stored after ``after_id`` (the live stream), oldest first."""
    return alert_statement(AlertFilter()).order_by(None).where(AlertRecord.id > after_id).order_by(
        AlertRecord.id).limit(limit)


def alert_row(r: Any) -> dict[str, Any]:
    """JSON-ready alert record (``r`` a row mapping of :func:`alert_statement`)."""
    severity = r["severity"]
    return {
        "id": r["id"],
        "loan_id": r["loan_id"],
        "device_id": r["device_id"],
        "rule": r["rule"],
        "severity": SEVERITIES[severity] if 0 <= severity < len(SEVERITIES) else str(severity),
        "state": "cleared" if r["state"] == 1 else "raised",
        "time_ms": r["time_ms"],
        "episode": r["episode"],
        "evidence": dict(r["evidence"] or {}),
    }


def alert_feed(session: Session, filters: AlertFilter, *, page: int = 1, size: int = 50) -> Page:
    """One page of the alert feed, newest first."""
    page, size = max(1, page), max(1, min(MAX_PAGE, size))
    statement = alert_statement(filters).limit(size + 1).offset((page - 1) * size)
    rows = [alert_row(r) for r in session.execute(statement).mappings()]
    return Page(rows[:size], page, size, len(rows) > size)


def loan_regions(session: Session) -> list[str]:
    """The region labels of the loan book (for the worklist's filter)."""
    query = sa.select(LoanRecord.region).where(LoanRecord.region.is_not(None)).distinct().order_by(LoanRecord.region)
    return [r for r in session.scalars(query) if r is not None]


def alert_rules(session: Session) -> list[str]:
    """The rule names that occur in the alerts table (for the feed's filter)."""
    return list(session.scalars(sa.select(AlertRecord.rule).distinct().order_by(AlertRecord.rule)))


def _missing_batches(session: Session) -> dict[str, int]:
    """Per device, the batches not (yet) received.

    Sequence numbers never repeat on a device: the numbers missing between its lowest and
    highest stored batch are batches not (yet) received. The seq ledger (collector.jobs.receipts)
    knows better (announced skips and clock-floor jumps are no loss); the min/max count is the
    fallback for a device it has not merged yet.
    """
    missing = {
        row.device_id: int(row.high) - int(row.low) + 1 - int(row.stored)
        for row in session.execute(
            sa.select(BatchRecord.device_id, sa.func.min(BatchRecord.seq).label("low"),
                      sa.func.max(BatchRecord.seq).label("high"), sa.func.count().label("stored"))
            .group_by(BatchRecord.device_id)
        )
    }
    for device_id, count in session.execute(sa.select(SeqLedgerRecord.device_id, SeqLedgerRecord.missing)):
        missing[device_id] = int(count)
    return missing


def device_rows(session: Session, now_ms: int, *, online_window_ms: int = 10 * 60_000) -> list[dict[str, Any]]:
    """Every registered device: online (state message, else data within ``online_window_ms``), last
    seen, key status, batches, duplicates and sequence gaps, its loan."""
    keys: dict[str, list[DeviceKey]] = {}
    for key in session.scalars(sa.select(DeviceKey).order_by(DeviceKey.added_ms)):
        keys.setdefault(key.device_id, []).append(key)
    statuses = {s.device_id: s for s in session.scalars(sa.select(DeviceStatus))}
    ledger = _missing_batches(session)
    pairs = session.execute(
        sa.union_all(
            sa.select(LoanRecord.device_id, LoanRecord.loan_id),
            sa.select(LoanDeviceRecord.device_id, LoanDeviceRecord.loan_id),  # second trackers
        )
    )
    loans: dict[str, str] = {row.device_id: row.loan_id for row in pairs}
    out = []
    for device in session.scalars(sa.select(Device).order_by(Device.device_id)):
        status = statuses.get(device.device_id)
        device_keys = keys.get(device.device_id, [])
        active = [k for k in device_keys if k.revoked_ms is None]
        last_seen = status.last_seen_ms if status is not None else None
        if status is not None and status.online is not None:
            online: bool | None = status.online
        else:
            online = None if last_seen is None else now_ms - last_seen <= online_window_ms
        counters = (status.device_counters or {}) if status is not None else {}
        out.append({
            "device_id": device.device_id,
            "label": device.label,
            "loan_id": loans.get(device.device_id),
            "online": online,
            "last_seen_ms": last_seen,
            "last_received_ms": status.last_received_ms if status is not None else None,
            "key_status": "active" if active else ("revoked" if device_keys else "none"),
            "key_fingerprint": active[0].fingerprint[:16] if active else None,
            "batches_stored": status.batches_stored if status is not None else 0,
            "duplicates": status.duplicates if status is not None else 0,
            "seq_gaps": ledger.get(device.device_id, 0),
            "agent_version": counters.get("agent_version"),
        })
    return out
