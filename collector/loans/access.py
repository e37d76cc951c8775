"""Approved location access: who may read where a loan's car is, and on what grounds.

How this works
--------------
A location read (a track, a device's last position, a condition report with positions) is
authorised by :func:`authorize_location_read` before any row is fetched:

* ``collections`` needs a **grant**: an access request (reason, scope, duration) made by that
  person for that loan and approved by a *different* person whose role is ``risk_analyst`` or
  ``admin`` (docs/people.md, "Decisions"). The grant runs from its approval for the requested
  duration; a missing, pending, denied or expired grant raises :class:`AccessDeniedError`.
* **Emergency**: while the loan's vehicle has an open theft signature (towing, power cut,
  GNSS jamming or loss, high-voltage disconnect, relocation) a ``collections`` user may
  grant themself a short emergency access; it is flagged ``review_needed`` until a
  ``risk_analyst`` or ``admin`` who is not the requester reviews it.
* ``risk_analyst`` and ``admin`` read by role (they are the approvers), but every read must
  carry a **reason** (``MissingReasonError`` otherwise); the reason is audited with the read.
* A read across the whole book (the console's alert feed and its CSV, whose evidence holds
  the coordinates of many loans) is :func:`authorize_book_location_read`: by role with a
  reason only; a grant covers one loan, so it never opens the whole book.

The module decides; the API writes the audit rows (the grant id, or the reason, with every
read, and ``location_access_denied`` for every refusal).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from protocol.rule_names import RuleName

from ..risk.assessment import LoanNotFoundError, open_alerts
from ..risk.repayments import LoanError
from ..storage.tables import AccessGrant, LoanRecord

__all__ = [
    "APPROVER_ROLES",
    "EMERGENCY_DURATION_MS",
    "MAX_DURATION_MS",
    "SCOPES",
    "THEFT_RULES",
    "AccessDecisionError",
    "AccessDeniedError",
    "AccessError",
    "AccessRequestError",
    "LocationAccess",
    "MissingReasonError",
    "SelfApprovalError",
    "authorize_book_location_read",
    "authorize_location_read",
    "decide_access",
    "grant_as_dict",
    "list_access_requests",
    "request_access",
    "request_emergency_access",
    "review_emergency",
]

#: What a grant may cover: ``track`` (fixes), ``position`` (the vehicle's last position). The
#: condition report (``GET /v1/loans/{id}/condition``) holds daily figures and no positions,
#: so it needs no grant.
SCOPES = ("track", "position")
#: Roles that approve (and that read by role, with a reason).
APPROVER_ROLES = ("risk_analyst", "admin")
#: Roles that must hold a grant to read locations.
GRANTEE_ROLES = ("collections",)
MIN_DURATION_MS = 15 * 60_000
MAX_DURATION_MS = 72 * 3_600_000
EMERGENCY_DURATION_MS = 4 * 3_600_000
MAX_REASON = 500
#: Open alerts of these rules make the emergency path available.
THEFT_RULES = frozenset(
    {RuleName.TOWING, RuleName.POWER_CUT, RuleName.GNSS_JAMMING, RuleName.GNSS_LOST, RuleName.HV_DISCONNECT,
     RuleName.RELOCATION}
)


class AccessError(LoanError):
    """A location access operation was refused."""


class AccessRequestError(AccessError, ValueError):
    """An access request is malformed (reason, scope or duration out of bounds)."""


class MissingReasonError(AccessRequestError):
    """A location read by role carried no reason."""


class AccessDeniedError(AccessError):
    """No approved, unexpired grant covers this read (or the role may not read locations)."""


class SelfApprovalError(AccessError):
    """The approver is the requester (four eyes)."""


class AccessDecisionError(AccessError):
    """The decision is not possible: wrong role, unknown request, or not pending."""


@dataclass(frozen=True, slots=True)
class LocationAccess:
    """On what grounds a read is allowed (written to its audit row)."""

    basis: str  # grant | emergency | role
    grant_id: int | None
    reason: str

    def audit_detail(self) -> dict[str, Any]:
        """The facts the read's audit row carries."""
        return {"access_basis": self.basis, "grant_id": self.grant_id, "access_reason": self.reason}


def _reason(reason: str | None) -> str:
    text = (reason or "").strip()
    if not text:
        raise MissingReasonError("a location read or access request needs a reason")
    if len(text) > MAX_REASON:
        raise AccessRequestError(f"reason is {len(text)} characters, over the limit of {MAX_REASON}")
    return text


def _scope(scope: Iterable[str]) -> str:
    items = sorted(set(scope))
    if not items or any(s not in SCOPES for s in items):
        raise AccessRequestError(f"scope {items!r:.100} must be a non-empty subset of {list(SCOPES)}")
    return ",".join(items)


def _loan(session: Session, loan_id: str) -> LoanRecord:
    loan = session.get(LoanRecord, loan_id)
    if loan is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    return loan


def request_access(
    session: Session,
    *,
    loan_id: str,
    requester: str,
    requester_role: str,
    reason: str,
    scope: Iterable[str],
    duration_ms: int,
    now_ms: int,
) -> AccessGrant:
    """File a pending access request (the caller audits and commits).

    Raises:
        LoanNotFoundError: no such loan.
        AccessRequestError: bad reason, scope or duration, or a role that needs no grant.
    """
    if requester_role not in GRANTEE_ROLES:
        raise AccessRequestError(f"role {requester_role!r} reads locations by role (with a reason); no request needed")
    if isinstance(duration_ms, bool) or not MIN_DURATION_MS <= duration_ms <= MAX_DURATION_MS:
        raise AccessRequestError(f"duration {duration_ms} ms must be within {MIN_DURATION_MS}..{MAX_DURATION_MS} ms")
    _loan(session, loan_id)
    grant = AccessGrant(
        loan_id=loan_id, requester=requester, requester_role=requester_role, reason=_reason(reason),
        scope=_scope(scope), requested_ms=now_ms, duration_ms=duration_ms, status="pending", emergency=False,
        review_needed=False,
    )
    session.add(grant)
    session.flush()
    return grant


def _request(session: Session, request_id: int) -> AccessGrant:
    grant = session.get(AccessGrant, request_id, with_for_update=True)
    if grant is None:
        raise AccessDecisionError(f"access request {request_id} does not exist")
    return grant


def _check_approver(grant: AccessGrant, actor: str, role: str, what: str) -> None:
    if role not in APPROVER_ROLES:
        raise AccessDecisionError(f"role {role!r} may not {what} access requests (needs risk_analyst or admin)")
    if actor == grant.requester:
        raise SelfApprovalError(f"{actor} filed access request {grant.id} and may not {what} it")


def decide_access(
    session: Session, request_id: int, *, actor: str, role: str, approve: bool, note: str | None, now_ms: int
) -> AccessGrant:
    """Approve or deny a pending request; an approval runs from now for the requested duration.

    Raises:
        AccessDecisionError: unknown request, not pending, or a role that may not decide.
        SelfApprovalError: the approver filed the request.
    """
    grant = _request(session, request_id)
    _check_approver(grant, actor, role, "decide")
    if grant.status != "pending":
        raise AccessDecisionError(f"access request {request_id} is {grant.status}, not pending")
    grant.status = "approved" if approve else "denied"
    grant.decided_by, grant.decided_ms = actor, now_ms
    grant.decision_note = (note or "").strip()[:MAX_REASON] or None
    if approve:
        grant.valid_from_ms, grant.valid_until_ms = now_ms, now_ms + grant.duration_ms
    session.flush()
    return grant


def theft_signatures(session: Session, loan_id: str, now_ms: int) -> list[str]:
    """Rules of the open theft-signature alerts of the loan's vehicle."""
    loan = _loan(session, loan_id)
    return sorted({a.rule for a in open_alerts(session, loan.device_id, now_ms) if a.rule in THEFT_RULES})


def request_emergency_access(
    session: Session, *, loan_id: str, requester: str, requester_role: str, reason: str, now_ms: int
) -> AccessGrant:
    """Grant a short emergency access at once while a theft signature is open; flagged for review.

    Raises:
        LoanNotFoundError: no such loan.
        AccessRequestError: no reason, or a role that needs no grant.
        AccessDeniedError: the vehicle has no open theft signature.
    """
    if requester_role not in GRANTEE_ROLES:
        raise AccessRequestError(f"role {requester_role!r} reads locations by role (with a reason); no request needed")
    text = _reason(reason)
    signatures = theft_signatures(session, loan_id, now_ms)
    if not signatures:
        raise AccessDeniedError(f"loan {loan_id} has no open theft signature; file an access request for approval")
    grant = AccessGrant(
        loan_id=loan_id, requester=requester, requester_role=requester_role,
        reason=f"{text} [emergency: {', '.join(signatures)}]"[:MAX_REASON], scope=",".join(SCOPES),
        requested_ms=now_ms, duration_ms=EMERGENCY_DURATION_MS, status="approved", valid_from_ms=now_ms,
        valid_until_ms=now_ms + EMERGENCY_DURATION_MS, emergency=True, review_needed=True,
    )
    session.add(grant)
    session.flush()
    return grant


def review_emergency(session: Session, request_id: int, *, actor: str, role: str, now_ms: int) -> AccessGrant:
    """Mark an emergency access as reviewed (by an approver who is not the requester).

    Raises:
        AccessDecisionError: unknown request, not an emergency awaiting review, or a wrong role.
        SelfApprovalError: the reviewer took the emergency access.
    """
    grant = _request(session, request_id)
    _check_approver(grant, actor, role, "review")
    if not grant.review_needed:
        raise AccessDecisionError(f"access request {request_id} awaits no review")
    grant.review_needed, grant.reviewed_by, grant.reviewed_ms = False, actor, now_ms
    session.flush()
    return grant


def _active_grant(session: Session, loan_id: str, grantee: str, scope: str, now_ms: int) -> AccessGrant | None:
    rows = session.scalars(
        sa.select(AccessGrant).where(
            AccessGrant.loan_id == loan_id, AccessGrant.requester == grantee, AccessGrant.status == "approved",
            AccessGrant.valid_from_ms <= now_ms, AccessGrant.valid_until_ms > now_ms,
        ).order_by(AccessGrant.valid_until_ms.desc())
    )
    return next((g for g in rows if scope in g.scope.split(",")), None)


def authorize_location_read(
    session: Session, *, loan_id: str, actor: str, role: str, scope: str, reason: str | None, now_ms: int
) -> LocationAccess:
    """Decide whether ``actor`` may read ``scope`` locations of ``loan_id`` now.

    Raises:
        MissingReasonError: an approver role read without a reason.
        AccessDeniedError: no approved, unexpired grant (collections), or a role that never
            reads locations.
    """
    if scope not in SCOPES:
        raise AccessRequestError(f"scope {scope!r} is not one of {list(SCOPES)}")
    if role in APPROVER_ROLES:
        return LocationAccess("role", None, _reason(reason))
    if role not in GRANTEE_ROLES:
        raise AccessDeniedError(f"role {role!r} never reads locations")
    grant = _active_grant(session, loan_id, actor, scope, now_ms)
    if grant is None:
        raise AccessDeniedError(
            f"no approved, unexpired {scope} access grant of loan {loan_id} for {actor}; file an access request"
        )
    return LocationAccess("emergency" if grant.emergency else "grant", grant.id, grant.reason)


def authorize_book_location_read(*, role: str, reason: str | None) -> LocationAccess:
    """Decide whether a reader may see the locations of every loan at once (the alert feed's evidence).

    Raises:
        MissingReasonError: an approver role read without a reason.
        AccessDeniedError: any other role (a grant covers one loan, never the whole book).
    """
    if role not in APPROVER_ROLES:
        raise AccessDeniedError(
            f"role {role!r} sees the alert feed without locations; a grant opens one loan's track on its page"
        )
    return LocationAccess("role", None, _reason(reason))


def list_access_requests(
    session: Session, *, loan_id: str | None = None, status: str | None = None, since_ms: int | None = None,
    until_ms: int | None = None, limit: int = 100,
) -> list[AccessGrant]:
    """Access requests matching every filter given, newest first."""
    query = sa.select(AccessGrant)
    if loan_id is not None:
        query = query.where(AccessGrant.loan_id == loan_id)
    if status == "review_needed":
        query = query.where(AccessGrant.review_needed.is_(True))
    elif status is not None:
        query = query.where(AccessGrant.status == status)
    if since_ms is not None:
        query = query.where(AccessGrant.requested_ms >= since_ms)
    if until_ms is not None:
        query = query.where(AccessGrant.requested_ms <= until_ms)
    return list(session.scalars(query.order_by(AccessGrant.id.desc()).limit(max(1, min(limit, 10_000)))))


def grant_as_dict(grant: AccessGrant) -> dict[str, Any]:
    """JSON-ready form of an access request."""
    return {
        "id": grant.id,
        "loan_id": grant.loan_id,
        "requester": grant.requester,
        "requester_role": grant.requester_role,
        "reason": grant.reason,
        "scope": grant.scope.split(","),
        "requested_ms": grant.requested_ms,
        "duration_ms": grant.duration_ms,
        "status": grant.status,
        "valid_from_ms": grant.valid_from_ms,
        "valid_until_ms": grant.valid_until_ms,
        "decided_by": grant.decided_by,
        "decided_ms": grant.decided_ms,
        "decision_note": grant.decision_note,
        "emergency": grant.emergency,
        "review_needed": grant.review_needed,
        "reviewed_by": grant.reviewed_by,
        "reviewed_ms": grant.reviewed_ms,
    }
