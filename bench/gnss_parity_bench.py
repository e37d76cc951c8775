"""GNSS parity with gpsd on gpsd's regression logs: fixes reproduced and extra fixes.

Point it at a folder holding gpsd's ``test/daemon`` logs with their ``.chk`` files (gpsd's
source tree, BSD licence; a representative subset ships in ``tests/data/gpsd``)::

    .venv/bin/python bench/gnss_parity_bench.py /path/to/gpsd/test/daemon
    .venv/bin/python bench/gnss_parity_bench.py tests/data/gpsd --all   # every log's line

Binary-protocol logs are skipped (this decoder reads NMEA 0183). Goal (issue #19):
>= 99.5 % of gpsd's fixes reproduced, <= 0.5 % extra fixes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path

from edge.gnss.parity import compare_log, is_nmea_log, total


def _iso(time_ms: int) -> str:
    return dt.datetime.fromtimestamp(time_ms / 1000, tz=dt.UTC).isoformat(timespec="milliseconds")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="folder with gpsd's *.log and *.log.chk files")
    parser.add_argument("--all", action="store_true", help="print every log, not only those that differ")
    parser.add_argument("--times", action="store_true", help="print the missed and extra epochs")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the decoder logs each log's first rejected line of each kind
    logs = sorted(args.folder.glob("*.log"))
    if not logs:
        print(f"no *.log files in {args.folder}", file=sys.stderr)
        return 2
    results = []
    skipped_binary = skipped_no_chk = 0
    start = time.perf_counter()
    for log in logs:
        chk = log.with_name(log.name + ".chk")
        if not chk.exists():
            skipped_no_chk += 1
            continue
        if not is_nmea_log(log.read_bytes()):
            skipped_binary += 1
            continue
        result = compare_log(log, chk)
        results.append(result)
        if args.all or result.reproduced != result.gpsd_fixes or result.extra:
            print(
                f"{result.name:42s} gpsd {result.gpsd_fixes:4d}  reproduced {result.reproduced:4d}  "
                f"extra {result.extra:3d}  ours {result.ours:4d}"
            )
            if args.times:
                for t in result.missed_times:
                    print(f"    missed {_iso(t)}")
                for t in result.extra_times:
                    print(f"    extra  {_iso(t)}")
    elapsed = time.perf_counter() - start
    sums = total(results)
    with_fixes = sum(1 for r in results if r.gpsd_fixes)
    print(
        f"\n{sums.logs} NMEA logs ({with_fixes} with gpsd fixes; skipped {skipped_binary} binary-protocol, "
        f"{skipped_no_chk} without .chk), decoded in {elapsed:.1f} s"
    )
    print(
        f"reproduced {sums.reproduced} of {sums.gpsd_fixes} gpsd fixes = {100 * sums.reproduced_ratio:.2f} % "
        f"(goal >= 99.5 %; {sums.rollover_shifted} compared modulo gpsd's 1024-week rollover shift)"
    )
    print(f"extra fixes where gpsd reports none: {sums.extra} = {100 * sums.extra_ratio:.2f} % (goal <= 0.5 %)")
    print(f"new time bases (receiver time went back and stayed): {sums.time_resets}; stale epochs: {sums.stale_epochs}")
    print(f"rerun: .venv/bin/python bench/gnss_parity_bench.py {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
