"""Retention: what the collector keeps, for how long, applied table by table from one registry.

How this works
--------------
:mod:`collector.jobs.data_registry` lists every table with its policy; one run
(:func:`run_retention`, in one transaction, the caller commits) applies it at ``now_ms``
with two clocks from ``[retention]``: ``fix_days`` (90) and ``record_years`` (5).

1. fixes older than ``now - fix_days`` are folded into ``fix_day_summaries`` (one row per
   device and UTC day: count, first/last time, driven distance - no coordinates) unless
   ``fix_mode = "delete"``. A summary row that already exists (a late batch for an old day)
   is merged into, so re-running is harmless;
2. ``location`` tables lose rows older than ``fix_days`` and every row of a loan **closed**
   (``loans.closed_ms``, collector.loans.lifecycle) more than ``fix_days`` ago. On PostgreSQL
   the day partitions of ``fixes`` and ``samples`` wholly older than the cut-off are dropped
   first (``DROP TABLE``, collector.storage.partitions), so the DELETE only meets the rest;
3. ``until_closure`` tables lose the rows of those closed loans;
4. ``essential_stripped`` tables keep their rows but lose every coordinate key in their JSON
   columns (:func:`collector.jobs.redaction.redact_coordinates`) once the row is older than
   ``fix_days`` or its loan closed more than ``fix_days`` ago;
5. positions observed **after** a loan was settled or transferred (the device was told to stop;
   an agent too old to know the ``tracking`` section may not have) are deleted at every run,
   without waiting for the clocks;
6. essential records go ``record_years`` after the loan's **closure** (a loan never closed:
   after its last due date, the lender never told us); time-keyed records (alerts, risk
   events, access requests, the audit log) also go ``record_years`` after their own time;
7. one ``retention_run`` audit row records the cut-offs and what was removed per table.

The summarising is the pure :func:`summarize_fixes`; the rest are set-based statements.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..clock import utc_date
from ..errors import CollectorError
from ..storage.audit import SYSTEM_ROLE, record_access
from ..storage.partitions import drop_partitions_before
from ..storage.tables import Base, FixDaySummary, FixRecord, InstallmentRecord, LoanRecord, RiskEventRecord
from .data_registry import Policy, TablePolicy, tables_with
from .downlink import STOP_TRACKING_STATUSES
from .redaction import redact_coordinates

__all__ = [
    "DaySummary",
    "RetentionError",
    "RetentionPolicy",
    "RetentionReport",
    "run_retention",
    "summarize_fixes",
]

DAY_MS = 86_400_000
EARTH_RADIUS_M = 6_371_008.8


class RetentionError(CollectorError, ValueError):
    """A retention setting is out of range."""


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """How long what is kept.

    Attributes:
        fix_days: precise fixes are kept this many days (default 90).
        fix_mode: ``summarize`` (default: keep a per-day summary without coordinates) or ``delete``.
        record_years: loans, repayments, alerts and risk events are kept this many years (5).
    """

    fix_days: int = 90
    fix_mode: str = "summarize"
    record_years: int = 5

    def __post_init__(self) -> None:
        if isinstance(self.fix_days, bool) or not isinstance(self.fix_days, int) or not 1 <= self.fix_days <= 3650:
            raise RetentionError(f"retention fix_days={self.fix_days!r} must be an int in 1..3650")
        if self.fix_mode not in ("summarize", "delete"):
            raise RetentionError(f"retention fix_mode={self.fix_mode!r} must be 'summarize' or 'delete'")
        years = self.record_years
        if isinstance(years, bool) or not isinstance(years, int) or not 1 <= years <= 50:
            raise RetentionError(f"retention record_years={self.record_years!r} must be an int in 1..50")

    def fix_cutoff_ms(self, now_ms: int) -> int:
        """Fixes observed before this time are past retention."""
        return now_ms - self.fix_days * DAY_MS

    def record_cutoff_ms(self, now_ms: int) -> int:
        """Records dated before this time are past retention (years of 365.25 days)."""
        return now_ms - round(self.record_years * 365.25 * DAY_MS)


@dataclass(frozen=True, slots=True)
class DaySummary:
    """What is kept of one device-day of fixes."""

    device_id: str
    day: str
    fix_count: int
    first_ms: int
    last_ms: int
    distance_m: float


@dataclass(frozen=True, slots=True)
class RetentionReport:
    """What a run removed (also written to the audit log)."""

    now_ms: int
    fix_cutoff_ms: int
    record_cutoff_ms: int
    fixes_deleted: int
    day_summaries_written: int
    loans_deleted: int
    repayments_deleted: int
    risk_events_deleted: int
    alerts_deleted: int
    dead_letters_deleted: int = 0
    purged: dict[str, int] = field(default_factory=dict)  # rows deleted per table
    stripped: dict[str, int] = field(default_factory=dict)  # rows whose coordinates were removed, per table

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


def _haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def summarize_fixes(fixes: Iterable[tuple[str, int, float, float]]) -> list[DaySummary]:
    """Fold ``(device_id, time_ms, lat, lon)`` rows into per-device UTC-day summaries.

    Rows may come in any order; distance is the sum of great-circle steps between
    consecutive fixes of the same device and day (time order).
    """
    by_key: dict[tuple[str, str], list[tuple[int, float, float]]] = {}
    for device_id, time_ms, lat, lon in fixes:
        day = utc_date(time_ms).isoformat()
        by_key.setdefault((device_id, day), []).append((time_ms, lat, lon))
    out = []
    for (device_id, day), points in sorted(by_key.items()):
        points.sort()
        distance = sum(_haversine_m(a[1], a[2], b[1], b[2]) for a, b in itertools.pairwise(points))
        out.append(DaySummary(device_id, day, len(points), points[0][0], points[-1][0], round(distance, 1)))
    return out


def _merge_summary(session: Session, summary: DaySummary) -> None:
    row = session.get(FixDaySummary, (summary.device_id, summary.day))
    if row is None:
        session.add(
            FixDaySummary(
                device_id=summary.device_id,
                day=summary.day,
                fix_count=summary.fix_count,
                first_ms=summary.first_ms,
                last_ms=summary.last_ms,
                distance_m=summary.distance_m,
            )
        )
        return
    row.fix_count += summary.fix_count
    row.first_ms = min(row.first_ms, summary.first_ms)
    row.last_ms = max(row.last_ms, summary.last_ms)
    row.distance_m = round(row.distance_m + summary.distance_m, 1)


def _delete(session: Session, statement: sa.Delete) -> int:
    result = session.execute(statement)
    return int(getattr(result, "rowcount", 0) or 0)


def _about(entry: TablePolicy, table: sa.Table, loans: sa.Select[Any]) -> sa.ColumnElement[bool]:
    """Rows of ``table`` that belong to one of ``loans`` (a select of loan ids)."""
    if entry.subject == "device_id":
        return table.c.device_id.in_(sa.select(LoanRecord.device_id).where(LoanRecord.loan_id.in_(loans)))
    if entry.subject == "loan_id":
        return table.c.loan_id.in_(loans)
    if entry.subject == "event_id":
        return table.c.event_id.in_(sa.select(RiskEventRecord.event_id).where(RiskEventRecord.loan_id.in_(loans)))
    return sa.false()


def _older(entry: TablePolicy, table: sa.Table, cutoff_ms: int) -> sa.ColumnElement[bool]:
    return table.c[entry.time_column] < cutoff_ms if entry.time_column else sa.false()


def _strip(session: Session, entry: TablePolicy, table: sa.Table, where: sa.ColumnElement[bool]) -> int:
    """Remove coordinate keys from the ``strip`` JSON columns of the matching rows."""
    key = list(table.primary_key.columns)
    changed = 0
    for row in session.execute(sa.select(*key, *(table.c[c] for c in entry.strip)).where(where)).mappings():
        values = {c: redact_coordinates(row[c]) for c in entry.strip if row[c] is not None}
        values = {c: v for c, v in values.items() if v != row[c]}
        if values:
            session.execute(sa.update(table).where(*(k == row[k.name] for k in key)).values(**values))
            changed += 1
    return changed


def _expired_loans(record_cutoff: int) -> sa.Select[Any]:
    """Loans closed more than record_years ago, or never closed and last due more than that ago."""
    last_due = (
        sa.select(InstallmentRecord.loan_id)
        .group_by(InstallmentRecord.loan_id)
        .having(sa.func.max(InstallmentRecord.due_date) < utc_date(record_cutoff))
    )
    return sa.select(LoanRecord.loan_id).where(
        sa.or_(LoanRecord.closed_ms < record_cutoff, sa.and_(LoanRecord.closed_ms.is_(None),
                                                              LoanRecord.loan_id.in_(last_due)))
    )


def _summarize_old_fixes(session: Session, fix_cutoff: int) -> int:
    old = session.execute(
        sa.select(FixRecord.device_id, FixRecord.time_ms, FixRecord.lat, FixRecord.lon).where(
            FixRecord.time_ms < fix_cutoff
        )
    )
    summaries = 0
    for summary in summarize_fixes((r[0], r[1], r[2], r[3]) for r in old):
        _merge_summary(session, summary)
        summaries += 1
    session.flush()
    return summaries


def _purge_positions_after_stop(session: Session) -> int:
    """Step 5: fixes of a settled/transferred loan's device observed after its closure."""
    stopped = sa.exists().where(
        LoanRecord.device_id == FixRecord.device_id,
        LoanRecord.status.in_(STOP_TRACKING_STATUSES),
        FixRecord.time_ms > LoanRecord.closed_ms,
    )
    return _delete(session, sa.delete(FixRecord).where(stopped))


def _purge_essential(session: Session, expired: list[str], record_cutoff: int, purged: Counter[str]) -> None:
    """Step 6: records of expired loans (children before ``loans``), and time-keyed records past their years."""
    loans = sa.select(LoanRecord.loan_id).where(LoanRecord.loan_id.in_(expired))
    essential = tables_with(Policy.ESSENTIAL, Policy.ESSENTIAL_STRIPPED)
    for entry in sorted(essential, key=lambda e: e.table == "loans"):
        table = Base.metadata.tables[entry.table]
        where = sa.or_(_about(entry, table, loans) if expired else sa.false(), _older(entry, table, record_cutoff))
        purged[entry.table] += _delete(session, sa.delete(table).where(where))


def run_retention(
    session: Session, now_ms: int, policy: RetentionPolicy | None = None, *, actor: str = "retention"
) -> RetentionReport:
    """Apply ``policy`` at ``now_ms`` to every table of the registry and audit what was removed
    (the caller commits)."""
    policy = policy or RetentionPolicy()
    fix_cutoff = policy.fix_cutoff_ms(now_ms)
    record_cutoff = policy.record_cutoff_ms(now_ms)
    summaries = _summarize_old_fixes(session, fix_cutoff) if policy.fix_mode == "summarize" else 0

    closed = sa.select(LoanRecord.loan_id).where(LoanRecord.closed_ms < fix_cutoff)
    purged: Counter[str] = Counter()
    stripped: Counter[str] = Counter()
    for name in ("fixes", "samples"):  # PostgreSQL: whole day partitions go first (DROP, not DELETE)
        purged[name] += drop_partitions_before(session.connection(), name, fix_cutoff)[1]
    for entry in tables_with(Policy.LOCATION):
        table = Base.metadata.tables[entry.table]
        where = sa.or_(_older(entry, table, fix_cutoff), _about(entry, table, closed))
        purged[entry.table] += _delete(session, sa.delete(table).where(where))
    for entry in tables_with(Policy.UNTIL_CLOSURE):
        table = Base.metadata.tables[entry.table]
        purged[entry.table] += _delete(session, sa.delete(table).where(_about(entry, table, closed)))
    for entry in tables_with(Policy.ESSENTIAL_STRIPPED):
        table = Base.metadata.tables[entry.table]
        where = sa.or_(_older(entry, table, fix_cutoff), _about(entry, table, closed))
        stripped[entry.table] += _strip(session, entry, table, where)

    purged["fixes_after_stop"] = _purge_positions_after_stop(session)
    expired = sorted(session.scalars(_expired_loans(record_cutoff)))
    _purge_essential(session, expired, record_cutoff, purged)

    report = RetentionReport(
        now_ms=now_ms,
        fix_cutoff_ms=fix_cutoff,
        record_cutoff_ms=record_cutoff,
        fixes_deleted=purged["fixes"] + purged["fixes_after_stop"],
        day_summaries_written=summaries,
        loans_deleted=purged["loans"],
        repayments_deleted=purged["repayments"],
        risk_events_deleted=purged["risk_events"],
        alerts_deleted=purged["alerts"],
        dead_letters_deleted=purged["dead_letters"],
        purged={k: v for k, v in sorted(purged.items()) if v},
        stripped={k: v for k, v in sorted(stripped.items()) if v},
    )
    detail = report.as_dict() | {"policy": asdict(policy), "loans": expired[:1000]}
    record_access(
        session,
        actor=actor,
        role=SYSTEM_ROLE,
        action="retention_run",
        subject_type="retention",
        subject_id=str(now_ms),
        time_ms=now_ms,
        detail=detail,
    )
    session.expire_all()
    return report
