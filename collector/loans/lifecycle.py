"""Loan lifecycle: active -> settled / charged_off / repossessed / transferred.

============  ==========================================  ======================================
status        may become                                  the device
============  ==========================================  ======================================
active        settled, charged_off, repossessed,          tracks
              transferred
charged_off   repossessed, settled, transferred           tracks (recovery is still under way)
repossessed   settled, transferred                        tracks (the car is in the lender's yard)
settled       (final)                                     stops tracking: ``tracking`` section
transferred   (final)                                     stops tracking (the loan left the book)
============  ==========================================  ======================================

Every change out of ``active`` sets ``closed_ms`` (the time the lender gives, at the latest
now); the retention clocks count from it (collector.jobs.retention: locations and other
non-essential data 90 days, the essential records 5 years). A change to ``settled`` or
``transferred`` makes the device's next configuration carry ``{"tracking": {"enabled": false,
"reason": status}}`` (collector.jobs.downlink): signed at once when a signing key is given,
otherwise by the running collector's publisher on its next round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from ..jobs.downlink import STOP_TRACKING_STATUSES, ConfigMessage, build_device_configs
from ..risk.assessment import LoanNotFoundError
from ..risk.repayments import LoanError
from ..storage.tables import LoanRecord

__all__ = ["STATUSES", "TRANSITIONS", "LifecycleChange", "LifecycleError", "change_status"]

STATUSES = ("active", "settled", "charged_off", "repossessed", "transferred")
TRANSITIONS: dict[str, frozenset[str]] = {
    "active": frozenset({"settled", "charged_off", "repossessed", "transferred"}),
    "charged_off": frozenset({"repossessed", "settled", "transferred"}),
    "repossessed": frozenset({"settled", "transferred"}),
    "settled": frozenset(),
    "transferred": frozenset(),
}


class LifecycleError(LoanError):
    """A status change that the lifecycle does not allow (unknown status, final status, future time)."""


@dataclass(frozen=True, slots=True)
class LifecycleChange:
    """What :func:`change_status` did."""

    loan_id: str
    old_status: str
    new_status: str
    closed_ms: int
    tracking_stopped: bool
    configs: list[ConfigMessage] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the configurations by device and version)."""
        return {
            "loan_id": self.loan_id,
            "old_status": self.old_status,
            "status": self.new_status,
            "closed_ms": self.closed_ms,
            "tracking_stopped": self.tracking_stopped,
            "configs_signed": [{"device_id": c.device_id, "version": c.version} for c in self.configs],
        }


def change_status(
    session: Session,
    loan_id: str,
    new_status: str,
    *,
    now_ms: int,
    effective_ms: int | None = None,
    signing_key: Ed25519PrivateKey | None = None,
) -> LifecycleChange:
    """Move a loan to ``new_status`` (the caller audits and commits, then publishes ``configs``).

    Args:
        effective_ms: when the closure happened (the lender's date); default ``now_ms``.
        signing_key: sign the device's stop-tracking configuration now (else the publisher does).

    Raises:
        LoanNotFoundError: no such loan.
        LifecycleError: unknown status, a change the table above does not allow, or a future time.
    """
    if new_status not in STATUSES:
        raise LifecycleError(f"status {new_status!r:.40} is not one of {list(STATUSES)}")
    loan = session.get(LoanRecord, loan_id, with_for_update=True)
    if loan is None:
        raise LoanNotFoundError(f"loan {loan_id!r:.80} does not exist")
    old = loan.status
    if new_status not in TRANSITIONS[old]:
        allowed = sorted(TRANSITIONS[old]) or "nothing (final)"
        raise LifecycleError(f"loan {loan_id} is {old}; it may become {allowed}, not {new_status}")
    closed_ms = now_ms if effective_ms is None else effective_ms
    if closed_ms > now_ms:
        raise LifecycleError(f"loan {loan_id}: a closure time in the future ({closed_ms} > {now_ms}) is refused")
    loan.status, loan.closed_ms, loan.status_changed_ms = new_status, closed_ms, now_ms
    session.flush()
    stopped = new_status in STOP_TRACKING_STATUSES
    configs = []
    if stopped and signing_key is not None:
        configs = build_device_configs(session, signing_key, [loan.device_id], now_ms)
    return LifecycleChange(loan_id, old, new_status, closed_ms, stopped, configs)
