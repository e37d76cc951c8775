"""``lienwatch collector compliance report --from --to``: the compliance report as JSON (docs/compliance.md).

Reading the report is itself an audit row (``compliance_report``, actor ``cli:{OS user}``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

from ..clock import wall_clock_ms
from ..loans.compliance import compliance_report
from ..settings import Settings
from ..storage.audit import record_access
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


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    settings_of: SettingsLoader,
) -> None:
    """Add ``compliance report`` to ``lienwatch collector``."""
    compliance = sub.add_parser("compliance", help="compliance report (access, reads, refusals, purges)")
    csub = compliance.add_subparsers(dest="action", required=True)
    report = csub.add_parser("report", parents=[common], help="the report for a period, as JSON")
    report.add_argument("--from", dest="from_", required=True, help="start, ISO-8601 with offset or epoch ms")
    report.add_argument("--to", required=True, help="end, ISO-8601 with offset or epoch ms")
    report.set_defaults(func=lambda args: _report(args, settings_of(args)))
