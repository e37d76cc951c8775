"""``lienwatch risk backtest|fit`` (also ``python -m collector.cli.risk backtest|fit``).

``backtest`` compares the v2 score with the v1 rule table on the seeded synthetic book (or
a lender's loan CSV plus an outcomes file, or the collector's own database - loans,
repayments, alerts, fixes - plus an outcomes file) and prints a Markdown table or JSON; ``fit`` fits
the v2 model on the synthetic book's train split and writes the model file. The work is in
:mod:`collector.risk.backtest`; this module reads the files and the arguments. See docs/risk.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from protocol.cli import help_text

from ..errors import CollectorError
from ..loans.csv_import import parse_loans
from ..risk.backtest import (
    DEFAULT_LOANS,
    BacktestError,
    backtest_real_book,
    evaluate_book,
    fit_from_book,
    markdown_table,
    parse_day,
    read_outcomes,
    read_real_book,
    run_backtest,
    whole_book_report,
)
from ..risk.model import DEFAULT_MODEL_VERSION, load_model
from ..risk.stored_book import evaluate_stored_book
from ..risk.synthetic_book import DEFAULT_SEED, generate_book
from .context import settings_from_args, settings_session

__all__ = ["backtest_main", "fit_main", "main"]


def _real_book_report(args: argparse.Namespace, model_file: Path | None) -> dict[str, Any]:
    parsed = parse_loans(args.book.read_text(encoding="utf-8-sig"))
    if parsed.errors:
        raise BacktestError("loan file has errors: " + "; ".join(str(e) for e in parsed.errors[:10]))
    loans, outcomes = read_real_book(parsed.rows, args.outcomes.read_text(encoding="utf-8-sig"))
    model = load_model(model_file) if model_file else None
    return backtest_real_book(loans, outcomes, args.as_of, file=str(args.book), model=model)


def _stored_book_report(args: argparse.Namespace, model_file: Path | None) -> dict[str, Any]:
    outcomes = read_outcomes(args.outcomes.read_text(encoding="utf-8-sig"))
    as_of_ms = parse_day(args.as_of, "--as-of")
    settings = settings_from_args(args)
    with settings_session(settings) as session:
        ev = evaluate_stored_book(session, as_of_ms, outcomes, grace_days=settings.risk.grace_days)
    model = load_model(model_file) if model_file else None
    database = make_url(settings.resolved_database_url).render_as_string(hide_password=True)
    return whole_book_report(ev, {"database": database, "as_of": args.as_of}, model)


def backtest_main(argv: Sequence[str] | None = None) -> int:
    """``lienwatch risk backtest``: v1 and v2 on the same book, as a table or JSON."""
    parser = argparse.ArgumentParser(
        prog="lienwatch risk backtest", description="The v2 score against the v1 rule table on a labelled book."
    )
    parser.add_argument("--loans", type=int, default=DEFAULT_LOANS, help="synthetic book size (default 12000)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"book seed (default {DEFAULT_SEED})")
    parser.add_argument("--model", type=Path, help="model file (default: the packaged one)")
    parser.add_argument("--refit", action="store_true", help="fit on this book's train split instead of loading")
    parser.add_argument("--book", type=Path, help="a lender's loan CSV (docs/risk.md layout), not the synthetic book")
    parser.add_argument("--database", action="store_true",
                        help="the collector's database (loans, repayments, alerts, fixes) as the book")
    parser.add_argument("--config", help="with --database: collector.toml (else LIENWATCH_CONFIG)")
    parser.add_argument("--outcomes", type=Path, help="with --book/--database: loan_id,outcome,outcome_date CSV")
    parser.add_argument("--as-of", help="with --book/--database: the scoring date (ISO-8601)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    args = parser.parse_args(argv)
    if args.book is not None and args.database:
        parser.error("give --book or --database, not both")
    if (args.book is not None or args.database) and (args.outcomes is None or args.as_of is None):
        parser.error("--book and --database need --outcomes and --as-of")
    try:
        if args.database:
            report = _stored_book_report(args, args.model)
        elif args.book is not None:
            report = _real_book_report(args, args.model)
        else:
            model = load_model(args.model) if args.model else None
            if args.refit:
                book = generate_book(args.loans, seed=args.seed)
                model = fit_from_book(book, evaluate_book(book.loans, book.snapshot_ms))
            report = run_backtest(loans=args.loans, seed=args.seed, model=model)
    except (BacktestError, CollectorError, OSError, ValueError) as exc:
        print(f"lienwatch risk backtest: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(f"book: {json.dumps(report['book'], sort_keys=True)}; model {report['model']}; split {report['split']}")
        print(markdown_table(report))
    return 0


def fit_main(argv: Sequence[str] | None = None) -> int:
    """``lienwatch risk fit``: fit the model on the seeded synthetic book's train split and write it."""
    parser = argparse.ArgumentParser(prog="lienwatch risk fit", description=help_text(fit_main.__doc__))
    parser.add_argument("--loans", type=int, default=DEFAULT_LOANS)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--version", default=DEFAULT_MODEL_VERSION)
    parser.add_argument("--out", type=Path, required=True, help="model file to write")
    args = parser.parse_args(argv)
    try:
        book = generate_book(args.loans, seed=args.seed)
        model = fit_from_book(book, evaluate_book(book.loans, book.snapshot_ms), version=args.version)
        args.out.write_text(model.to_json(), encoding="utf-8")
    except (BacktestError, OSError, ValueError) as exc:
        print(f"lienwatch risk fit: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (model {model.version}, {model.training['train_loans']} training loans)")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch ``backtest`` or ``fit`` with the remaining arguments."""
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"backtest": backtest_main, "fit": fit_main}
    if not args or args[0] not in commands:
        print("usage: lienwatch risk {backtest,fit} [options]", file=sys.stderr)
        return 2
    return commands[args[0]](args[1:])


if __name__ == "__main__":
    sys.exit(main())
