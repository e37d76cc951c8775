"""``lienwatch collector cases list|show|act|assign|close|check-promises``: cases from the shell.

Works on the database named by the settings, like every command, and may run while
``serve`` runs. The actor of reads and changes in the audit log is ``cli:{OS user}`` with
the ``admin`` role. A contact the rules refuse is recorded (and audited) and the command
prints why and from when it is allowed (ISO-8601 with the borrower's offset), exit status 3.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import date

from pydantic import ValidationError
from sqlalchemy.orm import Session

from ..api.cases import ActionBody, action_from_body
from ..cases.store import (
    ACTION_KINDS,
    LADDER,
    RESOLUTIONS,
    Actor,
    CaseError,
    assign_case,
    case_details,
    case_zone,
    check_promises,
    close_case,
    list_cases,
    record_action,
)
from ..clock import wall_clock_ms
from ..settings import Settings
from ..storage.audit import record_access
from ..timefmt import iso_local
from .context import cli_actor, settings_session

__all__ = ["REFUSED", "add_subcommands"]

SettingsLoader = Callable[[argparse.Namespace], Settings]
#: exit status of ``cases act`` when the contact rules refused the action
REFUSED = 3


def _print(value: object) -> None:
    print(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str))


def _who() -> Actor:
    return Actor(cli_actor(), "admin")


def _audit_read(session: Session, action: str, subject_type: str, subject_id: str, **detail: object) -> None:
    who = _who()
    record_access(session, actor=who.actor, role=who.role, action=action, subject_type=subject_type,
                  subject_id=subject_id, time_ms=wall_clock_ms(), detail=detail)


def _list(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    status = None if args.status == "all" else args.status
    cases = list_cases(session, settings.contact, status=status, assignee=args.assignee, level=args.level,
                       limit=args.limit)
    _audit_read(session, "list_cases", "case", "*", count=len(cases))
    session.commit()
    for case in cases:
        _print(case)
    return 0


def _show(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    details = case_details(session, args.case_id, settings.contact)
    _audit_read(session, "read_case", "loan", details["loan_id"], case_id=args.case_id)
    session.commit()
    _print(details)
    return 0


def _act(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    zone_name = case_zone(session, args.case_id, settings.contact)
    try:
        body = ActionBody(
            kind=args.kind, outcome=args.outcome, note=args.note,
            promise_date=date.fromisoformat(args.promise_date) if args.promise_date else None,
            promise_amount=args.promise_amount, next_action=args.next_action, next_action_at=args.next_action_at,
            client_ref=args.client_ref,
        )
    except (ValidationError, ValueError) as exc:
        raise CaseError(f"action: {exc}") from exc
    action = action_from_body(body, zone_name)
    result = record_action(session, args.case_id, action, now_ms=wall_clock_ms(), who=_who(), contact=settings.contact)
    session.commit()
    if result.refused and result.decision is not None:
        allowed = iso_local(result.decision.allowed_from_ms, zone_name)
        _print({"refused": result.decision.reason, "message": result.decision.message, "allowed_from": allowed,
                "action_id": result.action.id})
        print(f"lienwatch collector: {args.kind} refused ({result.decision.message}); allowed from {allowed}",
              file=sys.stderr)
        return REFUSED
    _print({"action_id": result.action.id, "status": result.action.status,
            "at": iso_local(result.action.time_ms, zone_name)})
    return 0


def _assign(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    assign_case(session, args.case_id, args.assignee, wall_clock_ms(), _who())
    session.commit()
    _print(case_details(session, args.case_id, settings.contact))
    return 0


def _close(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    close_case(session, args.case_id, args.resolution, now_ms=wall_clock_ms(), who=_who(), note=args.note)
    session.commit()
    _print(case_details(session, args.case_id, settings.contact))
    return 0


def _check_promises(args: argparse.Namespace, settings: Settings, session: Session) -> int:
    counts = check_promises(session, wall_clock_ms(), settings.cases, settings.contact)
    session.commit()
    _print(counts)
    return 0


_ACTIONS = {"list": _list, "show": _show, "act": _act, "assign": _assign, "close": _close,
            "check-promises": _check_promises}


def _run(args: argparse.Namespace, load: SettingsLoader) -> int:
    settings = load(args)
    with settings_session(settings) as session:
        return _ACTIONS[args.action](args, settings, session)


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser, load: SettingsLoader
) -> None:
    """Add ``cases`` to the ``lienwatch collector`` parser."""
    cases = sub.add_parser("cases", help="collections cases: list, show, act, assign, close, check promises")
    csub = cases.add_subparsers(dest="action", required=True)
    listing = csub.add_parser("list", parents=[common], help="cases as JSON lines, most urgent first")
    listing.add_argument("--status", choices=("open", "closed", "all"), default="open")
    listing.add_argument("--assignee", help="user name")
    listing.add_argument("--level", choices=("watch", "high", "critical"))
    listing.add_argument("--limit", type=int, default=200)
    show = csub.add_parser("show", parents=[common], help="a case with its actions and events (JSON)")
    show.add_argument("case_id", type=int)
    act = csub.add_parser("act", parents=[common], help="record an action (contacts are checked against the rules)")
    act.add_argument("case_id", type=int)
    act.add_argument("--kind", required=True, choices=ACTION_KINDS)
    act.add_argument("--outcome", help="contacted, no_answer, promise_to_pay, refused, vehicle_located, ...")
    act.add_argument("--note")
    act.add_argument("--promise-date", help="YYYY-MM-DD (promise_to_pay)")
    act.add_argument("--promise-amount", help="e.g. 3500.00 (promise_to_pay)")
    act.add_argument("--next-action", choices=LADDER)
    act.add_argument("--next-action-at", help="ISO-8601 (no offset: the borrower's zone)")
    act.add_argument("--client-ref", help="idempotency key: running the command again records nothing new")
    assign = csub.add_parser("assign", parents=[common], help="assign a case to a user (collections or admin)")
    assign.add_argument("case_id", type=int)
    assign.add_argument("assignee")
    close = csub.add_parser("close", parents=[common], help="close a case")
    close.add_argument("case_id", type=int)
    close.add_argument("--resolution", required=True, choices=RESOLUTIONS)
    close.add_argument("--note")
    csub.add_parser("check-promises", parents=[common], help="settle promises to pay; broken ones escalate")
    cases.set_defaults(func=lambda args: _run(args, load))
