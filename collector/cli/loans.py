"""``lienwatch collector loans|repayments|retention|places|markets``: the loan book from the shell.

Every command works on the database named by the settings (``--config`` or
``LIENWATCH_CONFIG`` + ``LIENWATCH_*``), the same one ``serve`` uses, and may run while
``serve`` runs. Reads of personal data (``loans list``, ``loans show``) are written to the
audit log with the actor ``cli:{OS user}``. Changes reassess the loans they touch at once
(level changes queue their webhooks; the running collector delivers them), and a places
import or delete is signed and published by the running collector's downlink publisher within
``[downlink] resync_interval_s``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Callable
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session
from tqdm import tqdm

from protocol.places import PlaceType

from ..clock import utc_date, wall_clock_ms
from ..files import FileReadError, read_bounded
from ..jobs.retention import RetentionPolicy, run_retention
from ..loans.csv_import import SAMPLE_BOOK_PATH, LoanImportError, import_loans, parse_loans, sample_loan_book
from ..loans.feed import FeedEntryError, apply_feed, parse_feed_csv
from ..loans.lifecycle import STATUSES, LifecycleError, change_status
from ..loans.store import (
    LoanNotFoundError,
    RepaymentConflictError,
    TrackerLinkError,
    link_second_tracker,
    loan_details,
    loan_summaries,
    record_repayment,
    refuse_future_payment,
    unlink_second_tracker,
)
from ..risk.assessment import reassess_loan_as_configured
from ..risk.repayments import Payment, RepaymentError, parse_amount
from ..settings import Settings
from ..storage.audit import record_access
from ..storage.places import PlaceFileError, delete_place, load_place_file, place_items, upsert_places
from ..storage.tables import LoanRecord, RiskStateRecord
from ..timefmt import TimeFormatError, parse_time
from .context import cli_actor, settings_session

__all__ = ["add_subcommands", "cli_actor"]

SettingsLoader = Callable[[argparse.Namespace], Settings]
#: Files with more loans than this show a progress bar on stderr.
PROGRESS_FROM = 500
MAX_FEED_FILE_BYTES = 4 * 1024 * 1024


def _audit(session: Session, action: str, subject_type: str, subject_id: str, **detail: Any) -> None:
    record_access(
        session,
        actor=cli_actor(),
        role="admin",
        action=action,
        subject_type=subject_type,
        subject_id=subject_id,
        time_ms=wall_clock_ms(),
        detail=detail,
    )


def _print_json(value: object) -> None:
    print(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))


class _Progress:
    """A tqdm bar on stderr for long runs (nothing for short ones or without a terminal)."""

    def __init__(self, total: int, what: str) -> None:
        self._bar: Any = None
        if total >= PROGRESS_FROM:
            self._bar = tqdm(total=total, desc=what, unit="loan", file=sys.stderr, leave=True)  # ends on N/N

    def step(self, n: int = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _reassess(session: Session, settings: Settings, loan_ids: list[str], progress: _Progress) -> dict[str, str]:
    now = wall_clock_ms()
    levels = {}
    for loan_id in loan_ids:
        assessment, _ = reassess_loan_as_configured(
            session, loan_id, now, settings.risk, settings.webhooks.urls, cases=settings.cases
        )
        levels[loan_id] = assessment.level.label
        progress.step()
    return levels


# ------------------------------------------------------------------ loans


def _loans_import(args: argparse.Namespace, settings: Settings) -> int:
    if args.sample == (args.file is not None):
        print("lienwatch collector loans import: give a FILE or --sample (not both)", file=sys.stderr)
        return 2
    if args.sample:
        as_of = args.as_of or datetime.now(UTC).date()
        path = SAMPLE_BOOK_PATH
        parsed = parse_loans(sample_loan_book(as_of))
        print(f"sample loan book re-dated to {as_of.isoformat()}", file=sys.stderr)
    else:
        path = Path(args.file)
        try:
            with path.open(encoding="utf-8", newline="") as handle:
                parsed = parse_loans(handle)
        except (OSError, UnicodeDecodeError) as exc:
            print(f"lienwatch collector loans import: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    with settings_session(settings) as session:
        try:
            report = import_loans(session, parsed, now_ms=wall_clock_ms(), skip_bad_rows=args.skip_bad_rows)
        except LoanImportError as exc:
            for error in exc.errors:
                print(f"{path}: {error}", file=sys.stderr)
            print(f"imported 0, unchanged 0, errors {len(exc.errors)}: nothing imported (--skip-bad-rows imports "
                  "the good rows)")
            return 1
        session.commit()
        # one step per loan: the import itself is one transaction, the assessment the long part
        imported = [*report.created, *report.unchanged, *report.rescheduled]
        progress = _Progress(len(imported), "importing and assessing")
        levels = _reassess(session, settings, imported, progress)
        session.commit()
        progress.close()
    for error in report.errors:
        print(f"{path}: {error} (skipped)", file=sys.stderr)
    print(
        f"imported {len(report.created)}, unchanged {len(report.unchanged)}, "
        + (f"rescheduled {len(report.rescheduled)}, " if report.rescheduled else "")
        + f"errors {len(report.errors)}"
        + (f" (lines {', '.join(map(str, report.skipped_lines))} skipped)" if report.skipped_lines else "")
        + f"; payments recorded {report.payments_recorded}"
        + _at_risk(levels)
    )
    return 0


def _at_risk(levels: dict[str, str]) -> str:
    """``; at risk: L-1 watch, L-2 high`` (or counts per level when more than ten)."""
    at_risk = {k: v for k, v in sorted(levels.items()) if v != "normal"}
    if not at_risk:
        return ""
    if len(at_risk) <= 10:
        return "; at risk: " + ", ".join(f"{k} {v}" for k, v in at_risk.items())
    counts = Counter(at_risk.values())
    ordered = [level for level in ("critical", "high", "watch") if level in counts]
    return "; at risk: " + ", ".join(f"{counts[level]} {level}" for level in ordered)


def _loans_list(args: argparse.Namespace, settings: Settings) -> int:
    with settings_session(settings) as session:
        summaries = loan_summaries(session, level=args.level, order=args.order, limit=args.limit, offset=args.offset)
        out = [summary.as_dict() for summary in summaries]
        _audit(session, "list_loans", "loan", "*", level=args.level, order=args.order, count=len(out))
        session.commit()
    for item in out:
        _print_json(item)
    return 0


def _loans_show(args: argparse.Namespace, settings: Settings) -> int:
    with settings_session(settings) as session:
        loan = session.get(LoanRecord, args.loan_id)
        if loan is None:
            print(f"lienwatch collector loans show: loan {args.loan_id!r} does not exist", file=sys.stderr)
            return 1
        out = loan_details(session, loan, utc_date(wall_clock_ms()), grace_days=settings.risk.grace_days)
        state = session.get(RiskStateRecord, loan.loan_id)
        out["risk"] = (
            None
            if state is None
            else {
                "level": state.level,
                "next_step": state.next_step,
                "reasons": state.reasons,
                "evaluated_ms": state.evaluated_ms,
                "changed_ms": state.changed_ms,
            }
        )
        _audit(session, "read_loan", "loan", loan.loan_id)
        session.commit()
    _print_json(out)
    return 0


def _loans_close(args: argparse.Namespace, settings: Settings) -> int:
    now = wall_clock_ms()
    try:
        effective = parse_time(args.at) if args.at else None
    except TimeFormatError as exc:
        print(f"lienwatch collector loans close: --at: {exc}", file=sys.stderr)
        return 2
    with settings_session(settings) as session:
        try:
            change = change_status(session, args.loan_id, args.status, now_ms=now, effective_ms=effective)
        except (LoanNotFoundError, LifecycleError) as exc:
            print(f"lienwatch collector loans close: {exc}", file=sys.stderr)
            return 1
        _audit(session, "change_loan_status", "loan", args.loan_id, old=change.old_status, new=change.new_status,
               closed_ms=change.closed_ms)
        session.commit()
    note = {"note": "the running collector signs and publishes the stop-tracking configuration"} \
        if change.tracking_stopped else {}
    _print_json(change.as_dict() | note)
    return 0


# ------------------------------------------------------------------ repayments


def _repayments_add(args: argparse.Namespace, settings: Settings) -> int:
    try:
        paid_on = date.fromisoformat(args.paid_on)
    except ValueError:
        print(
            f"lienwatch collector repayments add: --paid-on {args.paid_on!r:.40} is not a date; "
            "write it as YYYY-MM-DD (ISO-8601), e.g. 2026-11-27",
            file=sys.stderr,
        )
        return 2
    try:
        payment = Payment(args.payment_id, paid_on, parse_amount(args.amount))
    except RepaymentError as exc:
        print(f"lienwatch collector repayments add: {exc}", file=sys.stderr)
        return 2
    with settings_session(settings) as session:
        try:
            refuse_future_payment(payment, wall_clock_ms())
            outcome = record_repayment(session, args.loan, payment, now_ms=wall_clock_ms())
        except (LoanNotFoundError, RepaymentConflictError) as exc:
            print(f"lienwatch collector repayments add: {exc}", file=sys.stderr)
            return 1
        except RepaymentError as exc:
            print(f"lienwatch collector repayments add: {exc}", file=sys.stderr)
            return 2
        levels = _reassess(session, settings, [args.loan], _Progress(0, ""))
        _audit(session, "record_repayment", "loan", args.loan, payment_id=payment.payment_id, created=outcome.created)
        session.commit()
    _print_json(
        {
            "loan_id": args.loan,
            "payment_id": payment.payment_id,
            "paid_on": payment.paid_on.isoformat(),
            "created": outcome.created,
            "level": levels[args.loan],
        }
    )
    return 0


def _repayments_import(args: argparse.Namespace, settings: Settings) -> int:
    try:
        rows = parse_feed_csv(read_bounded(Path(args.file), MAX_FEED_FILE_BYTES, "repayment feed"))
    except (FileReadError, FeedEntryError) as exc:
        print(f"lienwatch collector repayments import: {exc}", file=sys.stderr)
        return 1
    with settings_session(settings) as session:
        now = wall_clock_ms()
        report = apply_feed(session, rows, now_ms=now)
        levels = _reassess(session, settings, list(report.touched_loans), _Progress(len(report.touched_loans),
                                                                                     "reassessing"))
        _audit(session, "repayment_feed", "repayments", "*", counts=report.counts(), file=Path(args.file).name)
        session.commit()
    for outcome in report.outcomes:
        if outcome.outcome in ("error", "conflict"):
            print(f"{args.file}: entry {outcome.index}: {outcome.outcome} {outcome.reason}: {outcome.detail}",
                  file=sys.stderr)
    _print_json({"counts": report.counts(), "loans": levels})
    return 0 if all(o.outcome in ("created", "duplicate") for o in report.outcomes) else 1


def _loans_tracker(args: argparse.Namespace, settings: Settings) -> int:
    command = f"lienwatch collector loans {'link' if args.device else 'unlink'}-tracker"
    with settings_session(settings) as session:
        try:
            if args.device:
                changed = link_second_tracker(session, args.loan, args.device, now_ms=wall_clock_ms())
                device: str | None = args.device
            else:
                device = unlink_second_tracker(session, args.loan)
                changed = device is not None
        except (LoanNotFoundError, TrackerLinkError) as exc:
            print(f"{command}: {exc}", file=sys.stderr)
            return 1
        levels = _reassess(session, settings, [args.loan], _Progress(0, ""))
        action = "link_second_tracker" if args.device else "unlink_second_tracker"
        _audit(session, action, "loan", args.loan, device_id=device, changed=changed)
        session.commit()
    _print_json({"loan_id": args.loan, "second_tracker": args.device, "changed": changed, "level": levels[args.loan]})
    return 0


# ------------------------------------------------------------------ retention and places


def _retention_run(args: argparse.Namespace, settings: Settings) -> int:
    r = settings.retention
    policy = RetentionPolicy(r.fix_days, r.fix_mode, r.record_years)
    with settings_session(settings) as session:
        report = run_retention(session, wall_clock_ms(), policy, actor=cli_actor())
        if args.dry_run:
            session.rollback()
        else:
            session.commit()
    _print_json(report.as_dict() | {"dry_run": args.dry_run})
    return 0


def _places_import(args: argparse.Namespace, settings: Settings) -> int:
    command = "markets" if args.markets else "places"
    default_type = PlaceType(args.type) if args.type else None
    try:
        items = load_place_file(Path(args.file), default_type=default_type)
    except PlaceFileError as exc:
        print(f"lienwatch collector {command} import: {exc}", file=sys.stderr)
        return 1
    with settings_session(settings) as session:
        created, changed = upsert_places(session, items, now_ms=wall_clock_ms())
        _audit(session, f"import_{command}", "place", "*", created=created, changed=changed, items=len(items))
        session.commit()
    print(f"{command}: {created} created, {changed} changed, {len(items) - created - changed} unchanged"
          f"{_downlink_note(settings, created + changed)}")
    return 0


def _downlink_note(settings: Settings, changes: int) -> str:
    if not changes:
        return "; nothing changed"
    if settings.downlink.signing_key is None:
        return "; no [downlink] signing_key configured: devices are not updated"
    return "; the running collector signs and publishes the new list"


def _places_list(args: argparse.Namespace, settings: Settings) -> int:
    with settings_session(settings) as session:
        for item in place_items(session, [args.type] if args.type else None):
            _print_json(item)
    return 0


def _places_delete(args: argparse.Namespace, settings: Settings) -> int:
    with settings_session(settings) as session:
        if not delete_place(session, args.place_id, now_ms=wall_clock_ms()):
            print(f"lienwatch collector places delete: no place {args.place_id!r:.80}", file=sys.stderr)
            return 1
        _audit(session, "delete_place", "place", args.place_id)
        session.commit()
    print(f"places: {args.place_id} deleted{_downlink_note(settings, 1)}")
    return 0


# ------------------------------------------------------------------ parser


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    settings_of: SettingsLoader,
) -> None:
    """Add ``loans``, ``repayments``, ``retention``, ``places`` and ``markets`` to ``lienwatch collector``."""

    def bind(handler: Callable[[argparse.Namespace, Settings], int]) -> Callable[[argparse.Namespace], int]:
        return lambda args: handler(args, settings_of(args))

    loans = sub.add_parser("loans", help="the loan book")
    lsub = loans.add_subparsers(dest="action", required=True)
    imp = lsub.add_parser("import", parents=[common], help="import loans from a CSV file (docs/risk.md)")
    imp.add_argument(
        "file", nargs="?", help="loan CSV: loan_id,device_id,vin,borrower_ref,principal,schedule,payments"
    )
    imp.add_argument(
        "--sample", action="store_true", help="import the shipped sample loan book, re-dated to --as-of (demo)"
    )
    imp.add_argument(
        "--as-of", type=date.fromisoformat, help="with --sample: the day the book describes (default: today, UTC)"
    )
    imp.add_argument("--skip-bad-rows", action="store_true", help="import the good rows of a file with errors")
    imp.set_defaults(func=bind(_loans_import))
    lst = lsub.add_parser("list", parents=[common], help="loans with their risk level as JSON lines")
    lst.add_argument("--level", choices=("normal", "watch", "high", "critical"))
    lst.add_argument(
        "--order",
        choices=("severity", "expected_loss"),
        default="severity",
        help="most severe first (default) or largest expected loss first, as GET /v1/loans?order=",
    )
    lst.add_argument("--limit", type=int, help="at most this many loans (GET /v1/loans: limit, default 100 there)")
    lst.add_argument("--offset", type=int, default=0, help="skip this many (paging, as the API's offset)")
    lst.set_defaults(func=bind(_loans_list))
    show = lsub.add_parser("show", parents=[common], help="one loan with repayment facts and risk reasons (JSON)")
    show.add_argument("loan_id")
    show.set_defaults(func=bind(_loans_show))
    close = lsub.add_parser("close", parents=[common],
                            help="settle, charge off, repossess or transfer a loan (settled/transferred stop tracking)")
    close.add_argument("loan_id")
    close.add_argument("--status", required=True, choices=[s for s in STATUSES if s != "active"])
    close.add_argument("--at", help="when it closed (ISO-8601 with offset, or epoch ms); default now")
    close.set_defaults(func=bind(_loans_close))
    link = lsub.add_parser("link-tracker", parents=[common], help="link a second tracker (e.g. a hidden backup) "
                           "to a loan's car (docs/risk.md, two trackers per car)")
    link.add_argument("loan")
    link.add_argument("device")
    link.set_defaults(func=bind(_loans_tracker))
    unlink = lsub.add_parser("unlink-tracker", parents=[common], help="remove a loan's second tracker")
    unlink.add_argument("loan")
    unlink.set_defaults(func=bind(_loans_tracker), device=None)

    repayments = sub.add_parser("repayments", help="received payments")
    rsub = repayments.add_subparsers(dest="action", required=True)
    add = rsub.add_parser("add", parents=[common], help="record a payment (idempotent on --payment-id)")
    add.add_argument("--loan", required=True, help="loan id")
    add.add_argument("--payment-id", required=True, help="the payment's id in the bank's records")
    add.add_argument(
        "--paid-on",
        "--date",
        dest="paid_on",
        required=True,
        help="value date YYYY-MM-DD (paid_on in the API; --date is the old name)",
    )
    add.add_argument("--amount", required=True, help="amount, e.g. 3500.00")
    add.set_defaults(func=bind(_repayments_add))
    feed = rsub.add_parser("import", parents=[common],
                           help="payments and reversals from the lender's feed file (idempotent on txn_id)")
    feed.add_argument("file", help="CSV: kind,loan_id,txn_id,paid_on,amount,reverses (kind payment|reversal)")
    feed.set_defaults(func=bind(_repayments_import))

    retention = sub.add_parser("retention", help="data retention")
    tsub = retention.add_subparsers(dest="action", required=True)
    run = tsub.add_parser("run", parents=[common], help="apply [retention] now and print what it removed")
    run.add_argument("--dry-run", action="store_true", help="report what would be removed, change nothing")
    run.set_defaults(func=bind(_retention_run))

    types = [t.value for t in PlaceType]
    places = sub.add_parser("places", help="typed places (markets, pawn lots, ports, ...) pushed to the devices")
    psub = places.add_subparsers(dest="action", required=True)
    pimp = psub.add_parser("import", parents=[common], help="create/replace places from a TOML or JSON file")
    pimp.add_argument("file", help="like edge/data/places.sample.toml: [[place]] id, type, name, lat, lon, radius_m, "
                      "datum")
    pimp.add_argument("--type", choices=types, help="type of the items that name none (default used_car_market)")
    pimp.set_defaults(func=bind(_places_import), markets=False)
    plst = psub.add_parser("list", parents=[common], help="every place as JSON lines (as stored, declared datum)")
    plst.add_argument("--type", choices=types)
    plst.set_defaults(func=bind(_places_list))
    pdel = psub.add_parser("delete", parents=[common], help="delete a place (devices get the new list)")
    pdel.add_argument("place_id")
    pdel.set_defaults(func=bind(_places_delete))

    markets = sub.add_parser("markets", help="used-car markets (places of type used_car_market)")
    msub = markets.add_subparsers(dest="action", required=True)
    mimp = msub.add_parser("import", parents=[common], help="create/replace markets from a TOML or JSON file")
    mimp.add_argument("file", help="like edge/data/markets.sample.toml: [[market]] id, name, lat, lon, radius_m, datum")
    mimp.set_defaults(func=bind(_places_import), markets=True, type=PlaceType.USED_CAR_MARKET.value)
