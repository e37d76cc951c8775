"""The compliance report: access requests, approvals, location reads, refusals, refused contacts, purges.

``lienwatch collector compliance report --from --to`` and ``GET /v1/compliance/report`` (auditor,
admin) print the same document for a period (docs/compliance.md). It is built from the
``access_requests`` table and the audit log, so it shows what happened, not what should have.

Refused contacts (the 21:00-08:00 rule and caps) are recorded by the cases part
(``case_actions`` rows with status ``refused``, collector.cases); :func:`compliance_report`
takes them from :data:`REFUSED_CONTACTS` (a query ``(session, from_ms, to_ms) -> rows``,
:func:`refused_contacts`). A report built with ``refused_contacts=None`` says
``"refused_contacts": null`` and ``"refused_contacts_source": "not wired"``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..storage.audit import entry_as_dict
from ..storage.tables import AccessGrant, AuditEntry, CaseActionRecord
from ..timefmt import iso_utc
from .access import grant_as_dict

__all__ = ["LOCATION_READ_ACTIONS", "REFUSAL_ACTIONS", "REFUSED_CONTACTS", "RefusedContacts", "compliance_report",
           "refused_contacts"]

#: Audit actions that showed a vehicle's location (API and console; the alert feed's rows are one per loan).
LOCATION_READ_ACTIONS = ("read_track", "read_position", "view_track", "export_track_geojson", "export_track_gpx",
                         "view_alert_locations", "export_alert_locations_csv")
#: Audit actions of a refused access.
REFUSAL_ACTIONS = ("location_access_denied", "access_denied", "access_request_refused", "emergency_access_refused",
                   "access_decision_refused", "access_review_refused")
MAX_ROWS = 10_000

RefusedContacts = Callable[[Session, int, int], list[dict[str, Any]]]


def refused_contacts(session: Session, from_ms: int, to_ms: int) -> list[dict[str, Any]]:
    """Contact actions the contact rules refused in ``[from_ms, to_ms]`` (collector.cases), oldest first."""
    rows = session.scalars(
        sa.select(CaseActionRecord)
        .where(CaseActionRecord.status == "refused", CaseActionRecord.time_ms >= from_ms,
               CaseActionRecord.time_ms <= to_ms)
        .order_by(CaseActionRecord.time_ms, CaseActionRecord.id).limit(MAX_ROWS)
    )
    return [
        {
            "time": iso_utc(r.time_ms), "loan_id": r.loan_id, "case_id": r.case_id, "actor": r.actor,
            "role": r.role, "kind": r.kind, "reason": r.refused_reason,
            "allowed_from": iso_utc(r.allowed_from_ms) if r.allowed_from_ms is not None else None,
        }
        for r in rows
    ]


#: Where the report's refused contacts come from (the cases part's ``case_actions``).
REFUSED_CONTACTS: RefusedContacts | None = refused_contacts


def _audit_rows(session: Session, actions: tuple[str, ...], from_ms: int, to_ms: int) -> list[AuditEntry]:
    return list(session.scalars(
        sa.select(AuditEntry)
        .where(AuditEntry.action.in_(actions), AuditEntry.time_ms >= from_ms, AuditEntry.time_ms <= to_ms)
        .order_by(AuditEntry.time_ms, AuditEntry.id).limit(MAX_ROWS)
    ))


def compliance_report(
    session: Session, from_ms: int, to_ms: int, *, refused_contacts: RefusedContacts | None = REFUSED_CONTACTS
) -> dict[str, Any]:
    """Everything a compliance officer checks for ``[from_ms, to_ms]`` (JSON-ready, up to 10,000 rows a list).

    Args:
        refused_contacts: where refused contact actions come from (default :data:`REFUSED_CONTACTS`).

    Raises:
        ValueError: ``to_ms`` before ``from_ms``.
    """
    if to_ms < from_ms:
        raise ValueError(f"the period ends ({to_ms}) before it starts ({from_ms})")
    requests = list(session.scalars(
        sa.select(AccessGrant).where(AccessGrant.requested_ms >= from_ms, AccessGrant.requested_ms <= to_ms)
        .order_by(AccessGrant.id).limit(MAX_ROWS)
    ))
    decisions = list(session.scalars(
        sa.select(AccessGrant).where(AccessGrant.decided_ms >= from_ms, AccessGrant.decided_ms <= to_ms)
        .order_by(AccessGrant.decided_ms, AccessGrant.id).limit(MAX_ROWS)
    ))
    reads = _audit_rows(session, LOCATION_READ_ACTIONS, from_ms, to_ms)
    refusals = _audit_rows(session, REFUSAL_ACTIONS, from_ms, to_ms)
    purges = _audit_rows(session, ("retention_run",), from_ms, to_ms)
    awaiting_review = list(session.scalars(
        sa.select(AccessGrant).where(AccessGrant.review_needed.is_(True)).order_by(AccessGrant.id).limit(MAX_ROWS)
    ))
    contacts = refused_contacts(session, from_ms, to_ms) if refused_contacts is not None else None
    return {
        "from_ms": from_ms,
        "to_ms": to_ms,
        "summary": {
            "access_requests": len(requests),
            "emergency_accesses": sum(1 for g in requests if g.emergency),
            "decisions": dict(Counter(g.status for g in decisions)),
            "location_reads": dict(Counter(r.detail.get("access_basis", "unrecorded") for r in reads)),
            "refusals": dict(Counter(r.action for r in refusals)),
            "emergencies_awaiting_review": len(awaiting_review),
            "refused_contacts": None if contacts is None else len(contacts),
            "retention_runs": len(purges),
        },
        "access_requests": [grant_as_dict(g) for g in requests],
        "approvals": [{"id": g.id, "loan_id": g.loan_id, "requester": g.requester, "status": g.status,
                       "decided_by": g.decided_by, "decided_ms": g.decided_ms, "valid_until_ms": g.valid_until_ms}
                      for g in decisions],
        "emergencies_awaiting_review": [grant_as_dict(g) for g in awaiting_review],
        "location_reads": [entry_as_dict(r) for r in reads],
        "refusals": [entry_as_dict(r) for r in refusals],
        "refused_contacts": contacts,
        "refused_contacts_source": "wired" if refused_contacts is not None else "not wired",
        "purges": [{"time_ms": r.time_ms, "actor": r.actor, "purged": r.detail.get("purged", {}),
                    "stripped": r.detail.get("stripped", {}), "loans": r.detail.get("loans", [])} for r in purges],
    }
