"""Retention: precise locations for ``fix_days`` (90), loan records for ``record_years`` (5).

How this works
--------------
One run (:func:`run_retention`, in one transaction, the caller commits) does, with the
evaluation time given as ``now_ms``:

1. fixes older than ``now - fix_days`` are folded into ``fix_day_summaries`` (one row per
   device and UTC day: count, first/last time, driven distance - no coordinates) unless
   ``fix_mode = "delete"``, then deleted. A summary row that already exists (a late batch
   for an old day) is merged into, so re-running is harmless. On PostgreSQL the day
   partitions wholly older than the cut-off are dropped (``DROP TABLE``) and only the rest
   is deleted row by row (collector.storage.partitions);
2. loans whose last instalment fell due more than ``record_years`` ago are deleted with
   their schedule, repayments, risk state and risk events; risk events and alerts older
   than ``record_years`` are deleted too (a loan's repayments stay as long as the loan,
   since its facts depend on all of them);
3. dead letters received before the fix cut-off are deleted: their raw bytes may hold
   coordinates, so they live no longer than precise locations;
4. one ``retention_run`` audit row records the cut-offs and what was removed.

The summarising is the pure :func:`summarize_fixes`; the rest are set-based deletes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..clock import utc_date
from ..errors import CollectorError
from ..storage.audit import SYSTEM_ROLE, record_access
from ..storage.partitions import drop_partitions_before
from ..storage.tables import (
    AlertRecord,
    DeadLetter,
    FixDaySummary,
    FixRecord,
    InstallmentRecord,
    LoanRecord,
    RepaymentRecord,
    RiskEventRecord,
    RiskStateRecord,
)

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


def run_retention(
    session: Session, now_ms: int, policy: RetentionPolicy | None = None, *, actor: str = "retention"
) -> RetentionReport:
    """Apply ``policy`` at ``now_ms`` and audit what was removed (the caller commits)."""
    policy = policy or RetentionPolicy()
    fix_cutoff = policy.fix_cutoff_ms(now_ms)
    record_cutoff = policy.record_cutoff_ms(now_ms)

    summaries = 0
    if policy.fix_mode == "summarize":
        old = session.execute(
            sa.select(FixRecord.device_id, FixRecord.time_ms, FixRecord.lat, FixRecord.lon).where(
                FixRecord.time_ms < fix_cutoff
            )
        )
        for summary in summarize_fixes((r[0], r[1], r[2], r[3]) for r in old):
            _merge_summary(session, summary)
            summaries += 1
        session.flush()
    # PostgreSQL: whole day partitions older than the cut-off are dropped, not deleted row by
    # row (collector.storage.partitions); the DELETE then only meets what is left.
    _dropped, fixes_deleted = drop_partitions_before(session.connection(), "fixes", fix_cutoff)
    fixes_deleted += _delete(session, sa.delete(FixRecord).where(FixRecord.time_ms < fix_cutoff))

    # A loan is over when its last instalment fell due; it is kept record_years after that.
    last_due = (
        sa.select(InstallmentRecord.loan_id)
        .group_by(InstallmentRecord.loan_id)
        .having(sa.func.max(InstallmentRecord.due_date) < utc_date(record_cutoff))
    )
    expired = list(session.scalars(last_due))
    repayments_deleted = events_deleted = 0
    if expired:
        repayments_deleted = _delete(session, sa.delete(RepaymentRecord).where(RepaymentRecord.loan_id.in_(expired)))
        events_deleted = _delete(session, sa.delete(RiskEventRecord).where(RiskEventRecord.loan_id.in_(expired)))
        session.execute(sa.delete(RiskStateRecord).where(RiskStateRecord.loan_id.in_(expired)))
        session.execute(sa.delete(InstallmentRecord).where(InstallmentRecord.loan_id.in_(expired)))
        session.execute(sa.delete(LoanRecord).where(LoanRecord.loan_id.in_(expired)))
    events_deleted += _delete(session, sa.delete(RiskEventRecord).where(RiskEventRecord.time_ms < record_cutoff))
    alerts_deleted = _delete(session, sa.delete(AlertRecord).where(AlertRecord.time_ms < record_cutoff))
    dead_letters_deleted = _delete(session, sa.delete(DeadLetter).where(DeadLetter.received_ms < fix_cutoff))

    report = RetentionReport(
        now_ms=now_ms,
        fix_cutoff_ms=fix_cutoff,
        record_cutoff_ms=record_cutoff,
        fixes_deleted=fixes_deleted,
        day_summaries_written=summaries,
        loans_deleted=len(expired),
        repayments_deleted=repayments_deleted,
        risk_events_deleted=events_deleted,
        alerts_deleted=alerts_deleted,
        dead_letters_deleted=dead_letters_deleted,
    )
    detail = report.as_dict() | {"policy": asdict(policy), "loans": sorted(expired)[:1000]}
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
