"""Reassessing a loan with a second tracker (tracker_divergence) beside the same loan with one.

One SQLite file: the sample loan book, two devices on loan L-1001, each with ``--hours`` of
fixes at ``--hz`` (both agree: the common case, where the position comparison reads every
fix of the look-back). Measured in the same run:

1. the baseline: ``reassess_loan`` of L-1001 without a second tracker linked;
2. the same loan with the second tracker linked, both trackers' newest positions agreeing
   (the common case: the comparison stops there and no history is read);
3. the same with the backup's newest position 3 km away (the worst case: both trackers'
   last six hours of fixes are read and paired);
4. the pure comparison of case 3 alone (:func:`collector.risk.trackers.tracker_divergence`)
   on the views read once.

p50 / p95 in milliseconds over ``--repeat`` runs (after one warm-up), and the ratios of 2 and 3
to 1.
Rerun:

    .venv/bin/python bench/tracker_bench.py [--hours 6] [--hz 1] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.loans.csv_import import SAMPLE_BOOK_PATH as SAMPLE
from collector.loans.csv_import import import_loans, parse_loans
from collector.loans.store import link_second_tracker, unlink_second_tracker
from collector.risk.assessment import reassess_loan, tracker_view
from collector.risk.engine import RiskConfig
from collector.risk.trackers import tracker_divergence
from collector.storage.database import create_engine, migrate
from collector.storage.tables import BatchRecord, Device, DeviceStatus, FixRecord

NOW = 1_795_858_800_000  # 2026-11-28T09:00:00Z
MAIN, SPY = "tbox-0001", "spy-0001"


def populate(engine: sa.Engine, hours: float, hz: float) -> int:
    """The sample book and ``hours`` of agreeing fixes of both trackers; returns fixes per tracker."""
    step_ms = int(1000 / hz)
    count = int(hours * 3600 * hz)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        for device, offset in ((MAIN, 0), (SPY, 400)):
            session.add(Device(device_id=device, created_ms=NOW))
            session.flush()
            batch = BatchRecord(device_id=device, seq=1, boot_id=b"\x01" * 16, created_ms=NOW, received_ms=NOW,
                                fix_count=count, sample_count=0, alert_count=0, stats_count=0, first_time_ms=None,
                                last_time_ms=None, counters={}, message_bytes=0)
            session.add(batch)
            session.flush()
            start = NOW - count * step_ms
            session.execute(sa.insert(FixRecord), [
                {"batch_id": batch.id, "device_id": device, "time_ms": start + i * step_ms + offset,
                 "lat": 31.2 + i * 1e-6, "lon": 121.4, "speed_mps": 8.0, "mode": 3}
                for i in range(count)
            ])
            last = start + (count - 1) * step_ms + offset
            session.add(DeviceStatus(device_id=device, last_fix_ms=last, last_lat=31.2 + (count - 1) * 1e-6,
                                     last_lon=121.4, last_seen_ms=last))
        session.commit()
    return count


def measure(repeat: int, action: Callable[[], object]) -> tuple[float, float]:
    """p50 and p95 of ``action`` in milliseconds (one warm-up first)."""
    action()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        action()
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, int(0.95 * len(times)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--hz", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        engine = create_engine(f"sqlite:///{Path(folder) / 'bench.db'}")
        migrate(engine)
        fixes = populate(engine, args.hours, args.hz)

        def assess_once() -> None:
            with Session(engine) as session:
                reassess_loan(session, "L-1001", NOW)
                session.rollback()

        with Session(engine) as session:
            unlink_second_tracker(session, "L-1001")
            session.commit()
        one = measure(args.repeat, assess_once)
        with Session(engine) as session:
            link_second_tracker(session, "L-1001", SPY, now_ms=NOW)
            session.commit()
        two = measure(args.repeat, assess_once)
        with Session(engine) as session:  # the backup's newest fix 3 km away: the history is read
            session.execute(sa.update(DeviceStatus).where(DeviceStatus.device_id == SPY)
                            .values(last_lat=DeviceStatus.last_lat + 0.027))
            session.commit()
        worst = measure(args.repeat, assess_once)
        with Session(engine) as session:
            main_view, spy_view = tracker_view(session, MAIN, NOW), tracker_view(session, SPY, NOW)
        pure = measure(args.repeat, lambda: tracker_divergence(main_view, spy_view, NOW, RiskConfig()))
        engine.dispose()
    print(f"reassess_loan, {fixes:,} fixes per tracker in the look-back ({args.hours:g} h at {args.hz:g} Hz), "
          f"{args.repeat} runs, ms p50 / p95")
    print(f"  one tracker (baseline)       {one[0]:8.2f} / {one[1]:8.2f}")
    print(f"  two trackers, newest agree   {two[0]:8.2f} / {two[1]:8.2f}   ratio {two[0] / one[0]:.1f}x")
    print(f"  two trackers, history read   {worst[0]:8.2f} / {worst[1]:8.2f}   ratio {worst[0] / one[0]:.1f}x")
    print(f"  the comparison alone (3)     {pure[0]:8.2f} / {pure[1]:8.2f}")
    print(f"rerun: .venv/bin/python bench/tracker_bench.py --hours {args.hours:g} --hz {args.hz:g} "
          f"--repeat {args.repeat}")


if __name__ == "__main__":
    main()
