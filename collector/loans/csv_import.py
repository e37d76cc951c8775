"""Loan book import from CSV: one row per loan, schedule and payments in two compact columns.

How this works
--------------
``parse_loans`` is sans-I/O: text (or an open text file) in, a :class:`LoanImport` out,
holding the good rows and one :class:`RowError` per problem (line number, column, reason
slug, message). It never raises on bad content; the reason slugs double as counters
(:meth:`LoanImport.counters`). Limits (file size, rows, field size, instalments and payments
per loan) are checked before work is done on the data.

``import_loans`` writes a parsed import through a SQLAlchemy session: all or nothing unless
``skip_bad_rows`` is set, and a loan already in the database with identical terms is
"unchanged" (re-importing the same file is harmless); different terms are an error.

Layout (documented in docs/risk.md)::

    loan_id,device_id,vin,borrower_ref,principal,schedule,payments
    L-1001,TBOX-0001,LSVAU2180N2183294,B-7f3a,20000.00,2026-01-01:3500.00;2026-02-01:3500.00,PAY-1:2026-01-01:3500.00
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TextIO

from sqlalchemy.orm import Session

from protocol import check_device_id
from protocol.errors import InvalidRecord

from ..risk.repayments import Installment, LoanError, Payment, RepaymentError, parse_amount
from .schedules import revise_schedule
from .store import LoanRow, existing_loan_conflicts, record_repayment, store_loan

__all__ = [
    "COLUMNS",
    "LIMITS",
    "REGION_RE",
    "ImportReport",
    "LoanImport",
    "LoanImportError",
    "LoanRow",
    "RowError",
    "import_loans",
    "loan_from_fields",
    "parse_loans",
    "vin_check_digit",
]

COLUMNS = ("loan_id", "device_id", "vin", "borrower_ref", "principal", "schedule", "payments", "region")
REQUIRED = COLUMNS[:6]


@dataclass(frozen=True, slots=True)
class ImportLimits:
    """Size limits of a loan CSV."""

    max_bytes: int = 16 * 1024 * 1024
    max_rows: int = 100_000
    max_field: int = 64 * 1024
    max_installments: int = 600
    max_payments: int = 2_000


LIMITS = ImportLimits()

LOAN_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
BORROWER_REF_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
#: a region label: letters (any script), digits, space, ``.``, ``_``, ``-``; 1..64 characters
REGION_RE = re.compile(r"[^\W][\w .-]{0,63}")
# Values that look like real personal identifiers must not land in a pseudonymous column:
# PRC resident id (18 chars, 17 digits + digit/X), old 15-digit id, mainland mobile number.
PERSONAL_ID_RE = re.compile(r"\d{17}[\dXx]|\d{15}|1[3-9]\d{9}")
VIN_RE = re.compile(r"[A-HJ-NPR-Z0-9]{17}")
DATE_RE = re.compile(r"\d{4}-\d{2}-\d{2}")
_VIN_VALUES = {
    **{str(d): d for d in range(10)},
    **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
    **dict(zip("JKLMN", range(1, 6), strict=True)),
    "P": 7,
    "R": 9,
    **dict(zip("STUVWXYZ", range(2, 10), strict=True)),
}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


class LoanImportError(LoanError):
    """A loan import was refused; ``errors`` lists every problem with its line."""

    def __init__(self, message: str, errors: Sequence[RowError] = ()) -> None:
        super().__init__(message)
        self.errors = tuple(errors)


@dataclass(frozen=True, slots=True)
class RowError:
    """One problem in a loan CSV.

    Attributes:
        line: 1-based line where the record starts (1 = header, 0 = the file as a whole).
        column: the column at fault, if one.
        reason: stable slug (``bad_date``, ``bad_amount``, ``bad_vin``, ``duplicate_loan_id``, ...).
        message: what was wrong, naming the value and the rule it broke.
    """

    line: int
    column: str | None
    reason: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" + (f", {self.column}" if self.column else "")
        return f"{where}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {"line": self.line, "column": self.column, "reason": self.reason, "message": self.message}


@dataclass(frozen=True, slots=True)
class LoanImport:
    """The result of parsing a loan CSV: good rows and every error found."""

    rows: tuple[LoanRow, ...] = ()
    errors: tuple[RowError, ...] = ()
    bad_lines: frozenset[int] = field(default_factory=frozenset)

    @property
    def ok(self) -> bool:
        """True when the file had no error at all."""
        return not self.errors

    def counters(self) -> dict[str, int]:
        """``rows_ok``, ``rows_bad`` and one count per error reason."""
        counts = Counter(e.reason for e in self.errors)
        return {"rows_ok": len(self.rows), "rows_bad": len(self.bad_lines), **dict(sorted(counts.items()))}


def vin_check_digit(vin: str) -> str:
    """The ISO 3779 / FMVSS 115 check digit (position 9) of a 17-character VIN.

    China's GB 16735 uses the same computation, so it covers the domestic fleet too.
    """
    total = sum(_VIN_VALUES[ch] * w for ch, w in zip(vin, _VIN_WEIGHTS, strict=True))
    rest = total % 11
    return "X" if rest == 10 else str(rest)


def _parse_date(text: str) -> date:
    if not DATE_RE.fullmatch(text):
        raise ValueError(f"date {text!r:.40} must be YYYY-MM-DD")
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"date {text!r:.40} does not exist") from None


class _RowChecker:
    """Collects the errors of one record."""

    def __init__(self, line: int) -> None:
        self.line = line
        self.errors: list[RowError] = []

    def fail(self, column: str | None, reason: str, message: str) -> None:
        self.errors.append(RowError(self.line, column, reason, message))

    def loan_id(self, text: str) -> str:
        if not LOAN_ID_RE.fullmatch(text):
            self.fail("loan_id", "bad_loan_id", f"loan id {text!r:.80} must match [A-Za-z0-9_-]{{1,64}}")
        return text

    def device_id(self, text: str) -> str:
        try:
            return check_device_id(text)
        except InvalidRecord as exc:
            self.fail("device_id", "bad_device_id", str(exc))
            return text

    def vin(self, text: str) -> str:
        vin = text.upper()
        if len(vin) != 17:
            self.fail("vin", "bad_vin", f"VIN {text!r:.40} has {len(vin)} characters, must have 17")
        elif not VIN_RE.fullmatch(vin):
            self.fail("vin", "bad_vin", f"VIN {text!r} may only use 0-9 and A-Z without I, O, Q")
        elif vin[8] != vin_check_digit(vin):
            self.fail("vin", "bad_vin", f"VIN {text!r} check digit is {vin[8]!r}, computed {vin_check_digit(vin)!r}")
        return vin

    def borrower_ref(self, text: str) -> str:
        if not BORROWER_REF_RE.fullmatch(text):
            self.fail("borrower_ref", "bad_borrower_ref", f"borrower ref {text!r:.80} must match [A-Za-z0-9_-]{{1,64}}")
        elif PERSONAL_ID_RE.fullmatch(text):
            self.fail(
                "borrower_ref",
                "personal_identifier",
                "borrower ref looks like an ID card or phone number; use a pseudonymous reference",
            )
        return text

    def region(self, text: str) -> str | None:
        if not text:
            return None
        if not REGION_RE.fullmatch(text):
            self.fail("region", "bad_region",
                      f"region {text!r:.80} must be 1..64 letters, digits, spaces, '.', '_' or '-'")
        return text

    def amount(self, column: str, text: str, what: str) -> int | None:
        if text.strip().startswith("-"):
            self.fail(column, "negative_amount", f"{what} {text!r:.40} is negative")
            return None
        try:
            return parse_amount(text, what=what)
        except RepaymentError as exc:
            self.fail(column, "bad_amount", str(exc))
            return None

    def schedule(self, text: str) -> tuple[Installment, ...]:
        parts = [p.strip() for p in text.split(";") if p.strip()]
        if not parts:
            self.fail("schedule", "empty_schedule", "schedule must list at least one DATE:AMOUNT installment")
            return ()
        if len(parts) > LIMITS.max_installments:
            limit = LIMITS.max_installments
            self.fail("schedule", "too_many_installments", f"{len(parts)} installments, limit {limit}")
            return ()
        out: list[Installment] = []
        for i, part in enumerate(parts, 1):
            day_text, sep, amount_text = part.partition(":")
            if not sep:
                self.fail("schedule", "bad_schedule", f"installment {i} {part!r:.60} must be DATE:AMOUNT")
                continue
            try:
                due = _parse_date(day_text.strip())
            except ValueError as exc:
                self.fail("schedule", "bad_date", f"installment {i}: {exc}")
                continue
            cents = self.amount("schedule", amount_text, f"installment {i} amount")
            if cents is not None:
                out.append(Installment(due, cents))
        for before, after in itertools.pairwise(out):
            if after.due_date <= before.due_date:
                message = f"due dates must increase: {before.due_date} then {after.due_date}"
                self.fail("schedule", "unordered_schedule", message)
                break
        return tuple(out)

    def payments(self, text: str) -> tuple[Payment, ...]:
        parts = [p.strip() for p in text.split(";") if p.strip()]
        if len(parts) > LIMITS.max_payments:
            self.fail("payments", "too_many_payments", f"{len(parts)} payments, limit {LIMITS.max_payments}")
            return ()
        out: list[Payment] = []
        seen: set[str] = set()
        for i, part in enumerate(parts, 1):
            fields = part.split(":")
            if len(fields) != 3:
                self.fail("payments", "bad_payment", f"payment {i} {part!r:.60} must be PAYMENT_ID:DATE:AMOUNT")
                continue
            payment_id, day_text, amount_text = (f.strip() for f in fields)
            if payment_id in seen:
                self.fail("payments", "duplicate_payment_id", f"payment id {payment_id!r:.64} appears twice")
                continue
            seen.add(payment_id)
            try:
                paid_on = _parse_date(day_text)
            except ValueError as exc:
                self.fail("payments", "bad_date", f"payment {payment_id!r:.64}: {exc}")
                continue
            cents = self.amount("payments", amount_text, f"payment {payment_id!r:.64} amount")
            if cents is None:
                continue
            try:
                out.append(Payment(payment_id, paid_on, cents))
            except RepaymentError as exc:
                self.fail("payments", "bad_payment", str(exc))
        return tuple(out)


def _read_text(source: str | TextIO) -> str:
    if isinstance(source, str):
        return source
    text = source.read(LIMITS.max_bytes + 1)
    if not isinstance(text, str):
        raise TypeError("parse_loans needs text or a file opened in text mode")
    return text


def parse_loans(source: str | TextIO) -> LoanImport:
    """Parse and validate a loan CSV.

    Args:
        source: the CSV text, or a file opened in text mode (UTF-8, optional BOM).

    Returns:
        The valid rows and every error found. Nothing raises on bad content.
    """
    text = _read_text(source)
    if len(text) > LIMITS.max_bytes:
        return LoanImport(
            errors=(RowError(0, None, "file_too_large", f"file is over {LIMITS.max_bytes} characters"),),
            bad_lines=frozenset({0}),
        )
    text = text.removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    errors: list[RowError] = []
    rows: list[LoanRow] = []
    bad_lines: set[int] = set()
    first_seen: dict[tuple[str, str], int] = {}
    old_limit = csv.field_size_limit(LIMITS.max_field)
    try:
        header = _read_header(reader, errors)
        if header is None:
            return LoanImport(errors=tuple(errors), bad_lines=frozenset({1}))
        index = {name: i for i, name in enumerate(header)}
        line = reader.line_num
        records = 0
        while True:
            start = line + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                errors.append(RowError(start, None, "malformed_csv", f"cannot read CSV: {exc}"))
                bad_lines.add(start)
                break  # the reader cannot resynchronise reliably after a broken quote
            line = reader.line_num
            if not any(cell.strip() for cell in record):
                continue
            records += 1
            if records > LIMITS.max_rows:
                errors.append(RowError(start, None, "too_many_rows", f"more than {LIMITS.max_rows} loans in one file"))
                bad_lines.add(start)
                break
            row_errors, row = _check_record(start, record, header, index, first_seen)
            if row_errors:
                errors.extend(row_errors)
                bad_lines.add(start)
            elif row is not None:
                rows.append(row)
    finally:
        csv.field_size_limit(old_limit)
    return LoanImport(tuple(rows), tuple(errors), frozenset(bad_lines))


def _read_header(reader: Iterable[list[str]], errors: list[RowError]) -> list[str] | None:
    try:
        header = next(iter(reader), None)
    except csv.Error as exc:
        errors.append(RowError(1, None, "malformed_csv", f"cannot read the header: {exc}"))
        return None
    if header is None:
        errors.append(RowError(1, None, "empty_file", "the file is empty; expected a header line"))
        return None
    names = [h.strip().lower() for h in header]
    missing = [c for c in REQUIRED if c not in names]
    unknown = [h for h in names if h not in COLUMNS]
    duplicated = sorted({h for h in names if names.count(h) > 1})
    if missing or unknown or duplicated:
        parts = []
        if missing:
            parts.append(f"missing columns {missing}")
        if unknown:
            parts.append(f"unknown columns {unknown[:10]}")
        if duplicated:
            parts.append(f"repeated columns {duplicated}")
        errors.append(RowError(1, None, "bad_header", "; ".join(parts) + f"; expected {list(COLUMNS)}"))
        return None
    return names


def _check_record(
    line: int,
    record: list[str],
    header: list[str],
    index: dict[str, int],
    first_seen: dict[tuple[str, str], int],
) -> tuple[list[RowError], LoanRow | None]:
    check = _RowChecker(line)
    if len(record) != len(header):
        check.fail(None, "wrong_field_count", f"{len(record)} fields, header has {len(header)}")
        return check.errors, None

    def cell(name: str) -> str:
        return record[index[name]].strip() if name in index else ""

    loan_id = check.loan_id(cell("loan_id"))
    device_id = check.device_id(cell("device_id"))
    vin = check.vin(cell("vin"))
    borrower_ref = check.borrower_ref(cell("borrower_ref"))
    principal = check.amount("principal", cell("principal"), "principal")
    schedule = check.schedule(cell("schedule"))
    payments = check.payments(cell("payments"))
    region = check.region(cell("region"))
    if principal is not None and schedule and not check.errors:
        total = sum(i.amount_cents for i in schedule)
        if total < principal:
            check.fail("schedule", "schedule_below_principal", "installments sum to less than the principal")
    for column, value, reason in (
        ("loan_id", loan_id, "duplicate_loan_id"),
        ("device_id", device_id, "duplicate_device_id"),
        ("vin", vin, "duplicate_vin"),
    ):
        first = first_seen.setdefault((column, value), line)
        if first != line:
            check.fail(column, reason, f"{column} {value!r:.64} already used on line {first}")
    if check.errors or principal is None:
        return check.errors, None
    return [], LoanRow(line, loan_id, device_id, vin, borrower_ref, principal, schedule, payments, region)


def loan_from_fields(fields: dict[str, str]) -> tuple[LoanRow | None, list[RowError]]:
    """Validate one loan given as column texts (the JSON API's path), with the CSV's rules.

    ``schedule`` and ``payments`` use the CSV column syntax. Errors carry line 0.
    """
    header = list(COLUMNS)
    record = [fields.get(name, "") for name in header]
    errors, row = _check_record(0, record, header, {n: i for i, n in enumerate(header)}, {})
    return row, errors


# ------------------------------------------------------------------ writing to the database


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What :func:`import_loans` did."""

    created: tuple[str, ...]
    unchanged: tuple[str, ...]
    payments_recorded: int
    skipped_lines: tuple[int, ...]
    errors: tuple[RowError, ...]
    rescheduled: tuple[str, ...] = ()  # stored loans whose schedule became a new version

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form."""
        return {
            "created": list(self.created),
            "unchanged": list(self.unchanged),
            "rescheduled": list(self.rescheduled),
            "payments_recorded": self.payments_recorded,
            "skipped_lines": list(self.skipped_lines),
            "errors": [e.as_dict() for e in self.errors],
        }


def import_loans(session: Session, parsed: LoanImport, *, now_ms: int, skip_bad_rows: bool = False) -> ImportReport:
    """Write the loans of ``parsed`` (with schedules and payments) through ``session``.

    Nothing is written when the file has errors, unless ``skip_bad_rows``: then the good
    rows are imported and the bad lines reported. A loan already stored with the same terms
    is left as is (its payments are still recorded idempotently); a changed schedule becomes
    a new schedule version (``rescheduled``); other different terms, or a device/VIN bound to
    another loan, are errors of that row. The caller commits.

    Raises:
        LoanImportError: the file (or the database check) found errors and skipping is off.
    """
    errors = list(parsed.errors)
    if errors and not skip_bad_rows:
        raise LoanImportError(f"{len(errors)} error(s); nothing imported (use --skip-bad-rows)", errors)
    good: list[LoanRow] = []
    unchanged: list[str] = []
    skipped = set(parsed.bad_lines)
    for row in parsed.rows:
        conflicts = existing_loan_conflicts(session, row)
        if conflicts is None:
            unchanged.append(row.loan_id)
            good.append(row)
        elif conflicts:
            errors.extend(RowError(row.line, column, reason, message) for column, reason, message in conflicts)
            skipped.add(row.line)
        else:
            good.append(row)
    if len(errors) > len(parsed.errors) and not skip_bad_rows:
        raise LoanImportError(f"{len(errors)} error(s) against stored loans; nothing imported", errors)
    created: list[str] = []
    rescheduled: list[str] = []
    payments = 0
    for row in good:
        if row.loan_id not in unchanged:
            store_loan(session, row, now_ms=now_ms)
            created.append(row.loan_id)
        elif revise_schedule(session, row.loan_id, row.schedule, kind="restructure", reason="loan book import",
                             actor="import", now_ms=now_ms).created:
            rescheduled.append(row.loan_id)
        for payment in row.payments:
            if record_repayment(session, row.loan_id, payment, now_ms=now_ms).created:
                payments += 1
    session.flush()
    unchanged = [loan_id for loan_id in unchanged if loan_id not in rescheduled]
    return ImportReport(tuple(created), tuple(unchanged), payments, tuple(sorted(skipped)), tuple(errors),
                        tuple(rescheduled))


# ------------------------------------------------------------------ the sample loan book

#: The shipped sample book (collector/data/sample_loans.csv) describes the loans as of this day.
SAMPLE_BOOK_AS_OF = date(2026, 11, 28)
SAMPLE_BOOK_PATH = Path(__file__).resolve().parents[1] / "data" / "sample_loans.csv"
_ISO_DATE = re.compile(r"(?<![0-9])(\d{4})-(\d{2})-(\d{2})(?![0-9])")


def sample_loan_book(as_of: date) -> str:
    """The sample loan book re-dated so that ``as_of`` plays the role of its reference day.

    Every date in the file moves by ``as_of - SAMPLE_BOOK_AS_OF`` days, so the facts the demo
    and the tests rely on hold on any day: L-1002 is three instalments late and 88 days past
    due, L-1001 is paid up, and so on (docs/risk.md).
    """
    shift = as_of - SAMPLE_BOOK_AS_OF

    def move(match: re.Match[str]) -> str:
        day = date(int(match[1]), int(match[2]), int(match[3])) + shift
        return day.isoformat()

    return _ISO_DATE.sub(move, SAMPLE_BOOK_PATH.read_text(encoding="utf-8"))
