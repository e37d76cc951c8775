"""Reassessing 100,000 loans: the v2 score (batch path) beside the v1 rule table, same run.

Reads ``--distinct`` loans of the seeded synthetic book at its snapshot (repayment facts,
open alerts, device status, movement: the engine inputs), repeats them up to ``--loans``,
and times on the same inputs:

* ``v1 table``: :func:`collector.risk.engine.assess` per loan (the baseline);
* ``v2 full``: :func:`collector.risk.score.assess_many` - features per loan, one vectorised
  scoring, then every loan's explanation (axes, reasons with contributions, tier);
* ``v2 scoring only``: :func:`collector.risk.score.score_matrix` on the feature matrix
  (the numpy part: probabilities, hard rules, levels, expected loss).

Reading the book (the database's part in the collector) is not timed. Ratios are against
v1 in the same run. CPU time, best of ``--repeat``.

Run: .venv/bin/python bench/risk_bench.py [--loans 100000] [--distinct 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from collector.risk.backtest import inputs_at  # noqa: E402
from collector.risk.engine import assess  # noqa: E402
from collector.risk.features import feature_matrix, feature_row  # noqa: E402
from collector.risk.model import default_model  # noqa: E402
from collector.risk.score import assess_many, score_matrix  # noqa: E402
from collector.risk.synthetic_book import generate_book  # noqa: E402


def best_cpu(fn: Callable[[], object], repeat: int) -> float:
    """Lowest CPU time of ``repeat`` runs, seconds."""
    times = []
    for _ in range(repeat):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loans", type=int, default=100_000)
    parser.add_argument("--distinct", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    book = generate_book(args.distinct)
    pairs = [inputs_at(loan, book.snapshot_ms) for loan in book.loans]
    pairs = (pairs * (args.loans // len(pairs) + 1))[: args.loans]
    inputs = [p[0] for p in pairs]
    exposures = [p[1] for p in pairs]
    model = default_model()
    x = feature_matrix([feature_row(i, e) for i, e in pairs])
    outstanding = np.array([e.outstanding_cents for e in exposures], dtype=np.float64)

    v1 = best_cpu(lambda: [assess(i) for i in inputs], args.repeat)
    v2 = best_cpu(lambda: assess_many(inputs, exposures, model), args.repeat)
    scoring = best_cpu(lambda: score_matrix(x, outstanding, model), args.repeat)

    n = args.loans
    print(f"reassessing {n:,} loans ({args.distinct:,} distinct synthetic loans repeated), CPU time, best of "
          f"{args.repeat}")
    print(f"{'engine':<18}{'seconds':>10}{'loans/s':>14}{'vs v1':>9}")
    for name, seconds in (("v1 table", v1), ("v2 full", v2), ("v2 scoring only", scoring)):
        print(f"{name:<18}{seconds:>10.3f}{n / seconds:>14,.0f}{v1 / seconds:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
