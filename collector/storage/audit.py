"""The audit log: who read or changed personal data, what, and when.

Every read of personal data through the API (loan details with repayment history, tracks,
alerts with their evidence, vehicle condition) and every retention run appends one row.
Rows are written in the caller's transaction, so an answer and its audit record commit
together; the API commits before it returns the data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..errors import CollectorError
from .tables import AuditEntry

__all__ = ["SYSTEM_ROLE", "AuditEntry", "AuditError", "entry_as_dict", "query_audit_log", "record_access"]


class AuditError(CollectorError, ValueError):
    """An audit row is missing who, what or which."""


#: Role recorded for actions the collector takes by itself (retention, risk evaluation).
SYSTEM_ROLE = "system"
_MAX_TEXT = {"actor": 128, "role": 32, "action": 64, "subject_type": 32, "subject_id": 128}


def record_access(
    session: Session,
    *,
    actor: str,
    role: str,
    action: str,
    subject_type: str,
    subject_id: str,
    time_ms: int,
    detail: Mapping[str, Any] | None = None,
) -> AuditEntry:
    """Append one audit row (flushed, not committed).

    Args:
        actor: who (API key name, or ``retention``).
        role: the role the actor used.
        action: what, e.g. ``read_loan``, ``read_track``, ``record_repayment``, ``retention_run``.
        subject_type: ``loan``, ``device``, ``market``, ``retention``...
        subject_id: which one.
        time_ms: when, epoch ms.
        detail: extra JSON facts (query range, counts), never the personal data itself.
    """
    values = {"actor": actor, "role": role, "action": action, "subject_type": subject_type, "subject_id": subject_id}
    for name, value in values.items():
        if not isinstance(value, str) or not value:
            raise AuditError(f"audit {name} must be non-empty text, got {value!r:.40}")
    entry = AuditEntry(
        time_ms=time_ms,
        **{name: value[: _MAX_TEXT[name]] for name, value in values.items()},
        detail=dict(detail or {}),
    )
    session.add(entry)
    session.flush()
    return entry


def query_audit_log(
    session: Session,
    *,
    since_ms: int | None = None,
    until_ms: int | None = None,
    actor: str | None = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Audit rows matching every given filter, newest first (at most ``limit``, 1..1000)."""
    query = sa.select(AuditEntry)
    if since_ms is not None:
        query = query.where(AuditEntry.time_ms >= since_ms)
    if until_ms is not None:
        query = query.where(AuditEntry.time_ms <= until_ms)
    if actor is not None:
        query = query.where(AuditEntry.actor == actor)
    if subject_type is not None:
        query = query.where(AuditEntry.subject_type == subject_type)
    if subject_id is not None:
        query = query.where(AuditEntry.subject_id == subject_id)
    limit = max(1, min(1000, limit))
    return list(session.scalars(query.order_by(AuditEntry.time_ms.desc(), AuditEntry.id.desc()).limit(limit)))


def entry_as_dict(entry: AuditEntry) -> dict[str, Any]:
    """JSON-ready form of an audit row."""
    return {
        "id": entry.id,
        "time_ms": entry.time_ms,
        "actor": entry.actor,
        "role": entry.role,
        "action": entry.action,
        "subject_type": entry.subject_type,
        "subject_id": entry.subject_id,
        "detail": entry.detail,
    }
