"""``lienwatch collector compliance report`` and ``access list|request|approve|deny|review`` (docs/compliance.md).

The command line acts as ``admin`` with the actor ``cli:{OS user}`` (like the other
commands): it approves, denies and reviews location access requests of others (four eyes:
never its own). ``access request --as USER`` files a request for a named ``collections`` user
(actor ``user:{USER}``), who then reads with their console or API identity. Every command is
an audit row; reading the report too (``compliance_report``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from sqlalchemy.orm import Session

from ..clock import wall_clock_ms
from ..loans.access import (
    AccessError,
    decide_access,
    grant_as_dict,
    list_access_requests,
    request_access,
    review_emergency,
)
from ..loans.compliance import compliance_report
from ..risk.assessment import LoanNotFoundError
from ..settings import Settings
from ..storage.audit import record_access
from ..storage.people import UserRecord
from ..storage.tables import AccessGrant
from ..timefmt import TimeFormatError, parse_time
from .context import settings_session
from .loans import cli_actor

__all__ = ["add_subcommands"]

SettingsLoader = Callable[[argparse.Namespace], Settings]


def _report(args: argparse.Namespace, settings: Settings) -> int:
    try:
        start, end = parse_time(args.from_), parse_time(args.to)
    except TimeFormatError as exc:
        print(f"lienwatch collector compliance report: {exc}", file=sys.stderr)
        return 2
    if end < start:
        print("lienwatch collector compliance report: --to is before --from", file=sys.stderr)
        return 2
    with settings_session(settings) as session:
        report = compliance_report(session, start, end)
        record_access(session, actor=cli_actor(), role="auditor", action="compliance_report",
                      subject_type="compliance", subject_id=f"{start}-{end}", time_ms=wall_clock_ms(),
                      detail=report["summary"])
        session.commit()
    json.dump(report, sys.stdout, ensure_ascii=False, indent=1, default=str)
    sys.stdout.write("\n")
    return 0


def _requester(session: Session, username: str) -> UserRecord:
    user = session.get(UserRecord, username)
    if user is None or user.disabled:
        raise AccessError(f"no active user {username!r}")
    return user


def _access_list(args: argparse.Namespace, settings: Settings) -> int:
    with settings_session(settings) as session:
        rows = [grant_as_dict(g) for g in list_access_requests(session, loan_id=args.loan, status=args.status)]
        record_access(session, actor=cli_actor(), role="admin", action="list_access_requests",
                      subject_type="access_request", subject_id=args.loan or "*", time_ms=wall_clock_ms(),
                      detail={"count": len(rows)})
        session.commit()
    for row in rows:
        print(json.dumps(row, sort_keys=True))
    return 0


def _change(args: argparse.Namespace, session: Session, actor: str, now: int) -> tuple[str, AccessGrant]:
    """Apply one ``access request|approve|deny|review``; returns the audit action and the request."""
    if args.action == "request":
        user = _requester(session, args.as_user)
        return "request_location_access", request_access(
            session, loan_id=args.loan_id, requester=f"user:{user.username}", requester_role=user.role,
            reason=args.reason, scope=args.scope.split(","), duration_ms=args.minutes * 60_000, now_ms=now,
        )
    if args.action == "review":
        return "review_emergency_access", review_emergency(session, args.request_id, actor=actor, role="admin",
                                                           now_ms=now)
    approve = args.action == "approve"
    grant = decide_access(session, args.request_id, actor=actor, role="admin", approve=approve, note=args.note,
                          now_ms=now)
    return ("approve_location_access" if approve else "deny_location_access"), grant


def _access_change(args: argparse.Namespace, settings: Settings) -> int:
    now, actor = wall_clock_ms(), cli_actor()
    with settings_session(settings) as session:
        try:
            action, grant = _change(args, session, actor, now)
        except (AccessError, LoanNotFoundError) as exc:
            session.rollback()
            subject = str(getattr(args, "request_id", None) or args.loan_id)
            record_access(session, actor=actor, role="admin", action=f"access_{args.action}_refused",
                          subject_type="access_request", subject_id=subject, time_ms=now, detail={"error": str(exc)})
            session.commit()
            print(f"lienwatch collector access {args.action}: {exc}", file=sys.stderr)
            return 1
        record_access(session, actor=actor, role="admin", action=action, subject_type="loan", subject_id=grant.loan_id,
                      time_ms=now, detail={"grant_id": grant.id, "status": grant.status})
        session.commit()
        print(json.dumps(grant_as_dict(grant), sort_keys=True))
    return 0


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    settings_of: SettingsLoader,
) -> None:
    """Add ``compliance report`` and ``access ...`` to ``lienwatch collector``."""
    compliance = sub.add_parser("compliance", help="compliance report (access, reads, refusals, purges)")
    csub = compliance.add_subparsers(dest="action", required=True)
    report = csub.add_parser("report", parents=[common], help="the report for a period, as JSON")
    report.add_argument("--from", dest="from_", required=True, help="start, ISO-8601 with offset or epoch ms")
    report.add_argument("--to", required=True, help="end, ISO-8601 with offset or epoch ms")
    report.set_defaults(func=lambda args: _report(args, settings_of(args)))

    access = sub.add_parser("access", help="location access requests (four eyes; docs/compliance.md)")
    asub = access.add_subparsers(dest="action", required=True)
    def run(args: argparse.Namespace) -> int:
        return (_access_list if args.action == "list" else _access_change)(args, settings_of(args))

    lst = asub.add_parser("list", parents=[common], help="access requests as JSON lines, newest first")
    lst.add_argument("--loan", help="only this loan")
    lst.add_argument("--status", choices=("pending", "approved", "denied", "review_needed"))
    lst.set_defaults(func=run)
    req = asub.add_parser("request", parents=[common], help="file a request for a named collections user")
    req.add_argument("loan_id")
    req.add_argument("--as", dest="as_user", required=True, help="the collections user who will read")
    req.add_argument("--reason", required=True)
    req.add_argument("--scope", default="track", help="track, position or track,position")
    req.add_argument("--minutes", type=int, required=True, help="how long the grant runs once approved (15..4320)")
    req.set_defaults(func=run)
    for name, what in (("approve", "approve a pending request"), ("deny", "deny a pending request")):
        decide = asub.add_parser(name, parents=[common], help=what)
        decide.add_argument("request_id", type=int)
        decide.add_argument("--note")
        decide.set_defaults(func=run)
    rev = asub.add_parser("review", parents=[common], help="record the review of an emergency access")
    rev.add_argument("request_id", type=int)
    rev.set_defaults(func=run)
