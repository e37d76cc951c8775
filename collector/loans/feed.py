"""The lender's repayment feed: payments and reversals in bulk, idempotent on the lender's ids.

How this works
--------------
An entry is a **payment** (``txn_id`` = the lender's transaction id, value date, amount) or a
**reversal** (its own ``txn_id`` and ``reverses`` = the bounced payment's ``txn_id``). Each
entry is applied in its own savepoint and gets one outcome:

* ``created`` - stored now; ``duplicate`` - the same entry was stored before (a re-posted
  file or request changes nothing);
* ``conflict`` - the id is stored with other content (another amount/date, or the payment
  was reversed by another reversal);
* ``error`` - the entry is malformed or names an unknown loan or payment (``reason`` says which).

A reversal keeps the payment row and marks it (``reversal_id``, ``reversed_ms``): the
repayment facts (collector.risk.assessment.load_payments) leave reversed payments out, so a
bounced payment flips days past due back. Every loan an entry touched is reassessed once by
the caller. Sources: ``POST /v1/repayments/feed`` (JSON) and ``lienwatch collector repayments
import FILE`` (CSV with the header ``kind,loan_id,txn_id,paid_on,amount,reverses``).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..risk.assessment import LoanNotFoundError
from ..risk.repayments import Payment, RepaymentError, parse_amount
from ..storage.tables import RepaymentRecord
from .store import RepaymentConflictError, record_repayment

__all__ = [
    "FEED_COLUMNS",
    "MAX_FEED_ENTRIES",
    "EntryOutcome",
    "FeedEntry",
    "FeedReport",
    "apply_feed",
    "parse_feed_csv",
    "parse_feed_item",
]

FEED_COLUMNS = ("kind", "loan_id", "txn_id", "paid_on", "amount", "reverses")
MAX_FEED_ENTRIES = 10_000
MAX_FEED_BYTES = 4 * 1024 * 1024
_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.:/")


@dataclass(frozen=True, slots=True)
class FeedEntry:
    """One payment (``payment`` set) or reversal (``reverses`` set)."""

    kind: str
    loan_id: str
    txn_id: str
    payment: Payment | None = None
    reverses: str | None = None


@dataclass(frozen=True, slots=True)
class EntryOutcome:
    """What happened to one entry (``index`` in the request or file, from 0)."""

    index: int
    outcome: str  # created | duplicate | conflict | error
    loan_id: str | None
    txn_id: str | None
    reason: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (empty fields left out)."""
        return {k: v for k, v in {"index": self.index, "outcome": self.outcome, "loan_id": self.loan_id,
                                  "txn_id": self.txn_id, "reason": self.reason, "detail": self.detail}.items()
                if v is not None}


@dataclass(frozen=True, slots=True)
class FeedReport:
    """Every entry's outcome and the loans to reassess."""

    outcomes: tuple[EntryOutcome, ...]
    touched_loans: tuple[str, ...] = field(default=())

    def counts(self) -> dict[str, int]:
        """How many entries had each outcome."""
        return dict(Counter(o.outcome for o in self.outcomes))


class FeedEntryError(ValueError):
    """One entry is malformed (``reason`` is a slug)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _text_id(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not 1 <= len(value) <= 64 or not set(value) <= _ID_CHARS:
        raise FeedEntryError(f"bad_{key}", f"{key} must be 1..64 characters of [A-Za-z0-9_.:/-]")
    return value


def parse_feed_item(item: object) -> FeedEntry:
    """Check one entry (a JSON object or a CSV row as a map).

    Raises:
        FeedEntryError: a missing or malformed field (``reason`` names it).
    """
    if not isinstance(item, Mapping):
        raise FeedEntryError("not_an_object", "an entry must be an object")
    unknown = set(item) - set(FEED_COLUMNS)
    if unknown:
        raise FeedEntryError("unknown_field", f"unknown fields {sorted(unknown)[:5]}")
    kind = item.get("kind", "payment")
    loan_id, txn_id = _text_id(item, "loan_id"), _text_id(item, "txn_id")
    if kind == "reversal":
        return FeedEntry("reversal", loan_id, txn_id, reverses=_text_id(item, "reverses"))
    if kind != "payment":
        raise FeedEntryError("bad_kind", "kind must be 'payment' or 'reversal'")
    if item.get("reverses") not in (None, ""):
        raise FeedEntryError("bad_reverses", "a payment does not reverse anything")
    raw_date, raw_amount = item.get("paid_on"), item.get("amount")
    try:
        paid_on = date.fromisoformat(raw_date) if isinstance(raw_date, str) and len(raw_date) == 10 else None
    except ValueError:
        paid_on = None
    if paid_on is None:
        raise FeedEntryError("bad_paid_on", "paid_on must be a date YYYY-MM-DD")
    if not isinstance(raw_amount, str):
        raise FeedEntryError("bad_amount", "amount must be text such as '3500.00'")
    try:
        payment = Payment(txn_id, paid_on, parse_amount(raw_amount))
    except RepaymentError as exc:
        raise FeedEntryError("bad_amount", str(exc)) from exc
    return FeedEntry("payment", loan_id, txn_id, payment=payment)


def parse_feed_csv(data: bytes) -> list[dict[str, str] | FeedEntryError]:
    """The rows of a feed file as maps (one :class:`FeedEntryError` per unusable row).

    Raises:
        FeedEntryError: the file is too large, not UTF-8, has another header or too many rows.
    """
    if len(data) > MAX_FEED_BYTES:
        raise FeedEntryError("too_large", f"feed file is {len(data)} bytes, over {MAX_FEED_BYTES}")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise FeedEntryError("not_utf8", f"feed file is not UTF-8: {exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != FEED_COLUMNS:
        raise FeedEntryError("bad_header", f"the header must be {','.join(FEED_COLUMNS)}")
    out: list[dict[str, str] | FeedEntryError] = []
    for row in reader:
        if len(out) >= MAX_FEED_ENTRIES:
            raise FeedEntryError("too_many", f"a feed file holds at most {MAX_FEED_ENTRIES} entries")
        if not row:
            continue
        if len(row) != len(FEED_COLUMNS):
            out.append(FeedEntryError("bad_row", f"a row has {len(FEED_COLUMNS)} fields, got {len(row)}"))
            continue
        out.append({k: v.strip() for k, v in zip(FEED_COLUMNS, row, strict=True) if v.strip()})
    return out


def _reverse(session: Session, entry: FeedEntry, now_ms: int) -> str:
    """Mark the reversed payment; ``created`` or ``duplicate`` (raises on a conflict/unknown)."""
    assert entry.reverses is not None  # parse_feed_item set it
    row = session.scalar(
        sa.select(RepaymentRecord).where(
            RepaymentRecord.loan_id == entry.loan_id, RepaymentRecord.payment_id == entry.reverses
        ).with_for_update()
    )
    if row is None:
        raise FeedEntryError("unknown_payment", f"loan {entry.loan_id} has no payment {entry.reverses} to reverse")
    if row.reversal_id == entry.txn_id:
        return "duplicate"
    if row.reversal_id is not None:
        raise RepaymentConflictError(f"payment {entry.reverses} was already reversed by {row.reversal_id}")
    row.reversal_id, row.reversed_ms = entry.txn_id, now_ms
    return "created"


def _apply_one(session: Session, index: int, item: object, now_ms: int) -> EntryOutcome:
    loan_id = item.get("loan_id") if isinstance(item, Mapping) else None
    txn_id = item.get("txn_id") if isinstance(item, Mapping) else None
    ids = (loan_id if isinstance(loan_id, str) else None, txn_id if isinstance(txn_id, str) else None)
    try:
        if isinstance(item, FeedEntryError):
            raise item
        entry = parse_feed_item(item)
        with session.begin_nested():
            if entry.payment is not None:
                created = record_repayment(session, entry.loan_id, entry.payment, now_ms=now_ms).created
                outcome = "created" if created else "duplicate"
            else:
                outcome = _reverse(session, entry, now_ms)
    except FeedEntryError as exc:
        return EntryOutcome(index, "error", *ids, exc.reason, str(exc))
    except LoanNotFoundError as exc:
        return EntryOutcome(index, "error", *ids, "unknown_loan", str(exc))
    except RepaymentConflictError as exc:
        return EntryOutcome(index, "conflict", *ids, "conflict", str(exc))
    return EntryOutcome(index, outcome, entry.loan_id, entry.txn_id)


def apply_feed(session: Session, items: Iterable[object], *, now_ms: int) -> FeedReport:
    """Apply every entry (each in its own savepoint); the caller reassesses ``touched_loans`` and commits."""
    outcomes = [_apply_one(session, index, item, now_ms) for index, item in enumerate(items)]
    touched = sorted({o.loan_id for o in outcomes if o.outcome == "created" and o.loan_id})
    session.flush()
    return FeedReport(tuple(outcomes), tuple(touched))
