"""The synthetic book written into a collector database, to exercise the ``--database`` backtest.

How this works
--------------
:func:`store_book` writes each loan of a :class:`~collector.risk.synthetic_book.SyntheticBook`
the way the collector would have stored it: the loan and its schedule, its payments, a
registered device ``dev-{loan}`` with every alert episode as a RAISED record and, once
cleared, a CLEARED record, and the fixes that carry what the risk reader looks at around the
snapshot - a moving fix when the car last moved, a parked fix at the last sign of life
(the start of an outage that covers the snapshot, else the snapshot itself), and a fix when
the outage ended. :func:`outcomes_csv` writes the outcomes file. Loans get no vehicle value
(the loan table has none), so the database path uses the imputed LTV where the in-memory
book knows the car's value.

    python -m collector.risk.synthetic_db sqlite:///book.db outcomes.csv --loans 6000 --seed 7
    lienwatch risk backtest --database --config book.toml --outcomes outcomes.csv --as-of 2026-09-01
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..storage.database import create_engine, migrate
from ..storage.tables import (
    AlertRecord,
    BatchRecord,
    Device,
    FixRecord,
    InstallmentRecord,
    LoanRecord,
    RepaymentRecord,
)
from .synthetic_book import BookLoan, SyntheticBook, generate_book

__all__ = ["main", "outcomes_csv", "store_book"]

_MOVED_BEFORE_MS = 3 * 3_600_000  # the in-memory reader's "moved 3 h before its last fix"
_RULE_SEVERITY = 1  # warning


def _movement_fixes(loan: BookLoan, snapshot_ms: int) -> list[tuple[int, float]]:
    """``(time_ms, speed_mps)`` of the fixes that tell the reader how the car stood at the snapshot."""
    silent = next(
        (o for o in loan.outages if o.start_ms <= snapshot_ms and (o.end_ms is None or o.end_ms > snapshot_ms)), None
    )
    last_fix = silent.start_ms if silent is not None else snapshot_ms
    spell = next((p for p in loan.parked if p.start_ms <= last_fix < p.end_ms), None)
    last_moved = spell.start_ms if spell is not None else max(0, last_fix - _MOVED_BEFORE_MS)
    fixes = [(last_moved, 10.0), (last_fix, 0.0)] if last_moved < last_fix else [(last_fix, 10.0)]
    if silent is not None and silent.end_ms is not None:
        fixes.append((silent.end_ms, 0.0))  # back after the snapshot: not known then
    return fixes


def store_book(session: Session, book: SyntheticBook, *, now_ms: int) -> int:
    """Write every loan of ``book`` (the caller commits). Returns the number of loans written."""
    snapshot = book.snapshot_ms
    for n, loan in enumerate(book.loans):
        device_id = f"dev-{loan.loan_id}"[:64]
        session.add(LoanRecord(loan_id=loan.loan_id, device_id=device_id, vin=f"SYN{n:014d}",
                               borrower_ref=f"B-{n:06d}", principal_cents=loan.principal_cents, created_ms=now_ms))
        session.add(Device(device_id=device_id, created_ms=now_ms))
    session.flush()
    installments, payments, alerts, fixes = [], [], [], []
    for loan in book.loans:
        device_id = f"dev-{loan.loan_id}"[:64]
        installments += [{"loan_id": loan.loan_id, "seq": i, "due_date": s.due_date, "amount_cents": s.amount_cents}
                         for i, s in enumerate(loan.schedule, 1)]
        payments += [{"loan_id": loan.loan_id, "payment_id": p.payment_id, "paid_on": p.paid_on,
                      "amount_cents": p.amount_cents, "recorded_ms": now_ms} for p in loan.payments]
        batch = BatchRecord(device_id=device_id, seq=1, boot_id=b"\x00" * 16, created_ms=snapshot, received_ms=now_ms,
                            fix_count=0, sample_count=0, alert_count=0, stats_count=0, first_time_ms=None,
                            last_time_ms=None, counters={}, message_bytes=0)
        session.add(batch)
        session.flush()
        for episode in loan.alerts:
            for state, time_ms in ((0, episode.raised_ms), (1, episode.cleared_ms)):
                if time_ms is not None:
                    alerts.append({"batch_id": batch.id, "device_id": device_id, "rule": episode.rule,
                                   "severity": _RULE_SEVERITY, "state": state, "time_ms": time_ms,
                                   "episode": episode.episode, "evidence": {}})
        fixes += [{"batch_id": batch.id, "device_id": device_id, "time_ms": t, "lat": 31.2, "lon": 121.4,
                   "speed_mps": speed, "mode": 3} for t, speed in _movement_fixes(loan, snapshot)]
    for table, rows in ((InstallmentRecord, installments), (RepaymentRecord, payments), (AlertRecord, alerts),
                        (FixRecord, fixes)):
        if rows:
            session.execute(sa.insert(table), rows)
    return len(book.loans)


def outcomes_csv(book: SyntheticBook) -> str:
    """The outcomes file of ``book`` (``loan_id,outcome,outcome_date``)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("loan_id", "outcome", "outcome_date"))
    for loan in book.loans:
        day = datetime.fromtimestamp(loan.outcome_ms / 1000, tz=UTC).date().isoformat() if loan.outcome_ms else ""
        writer.writerow((loan.loan_id, loan.outcome, day))
    return out.getvalue()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m collector.risk.synthetic_db DATABASE_URL OUTCOMES_CSV [--loans N] [--seed S]``."""
    parser = argparse.ArgumentParser(prog="python -m collector.risk.synthetic_db", description=__doc__.split("\n")[0])
    parser.add_argument("database_url")
    parser.add_argument("outcomes", type=Path)
    parser.add_argument("--loans", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    book = generate_book(args.loans, seed=args.seed)
    engine = create_engine(args.database_url)
    try:
        migrate(engine)
        with Session(engine) as session:
            written = store_book(session, book, now_ms=book.snapshot_ms)
            session.commit()
    finally:
        engine.dispose()
    args.outcomes.write_text(outcomes_csv(book), encoding="utf-8")
    print(f"{written} loans at snapshot {book.snapshot.isoformat()} (seed {args.seed}); outcomes in {args.outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
