"""``lienwatch collector users add|list|passwd|role|disable|enable``: named people of the console (docs/people.md).

Every change is an audit row (actor ``cli:{OS user}``, role ``admin``, subject ``user:{name}``)
with the same action names as the console's user page: ``add_user``, ``reset_password``,
``set_user_role``, ``disable_user``, ``enable_user``. The last enabled admin cannot be
disabled or demoted here either. ``disable`` and a ``role`` that may not hold cases hand the
user's open cases to ``--reassign-to USER`` or back to the unassigned queue
(:mod:`collector.cases.staff`, the same path as the console's).

Passwords are read from standard input (``--password-stdin``, one line) or asked for on the
terminal, never taken from the command line (it shows in ``ps`` and shell history).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable

from sqlalchemy.orm import Session

from ..cases.staff import change_role, disable_user
from ..cases.store import Actor, CaseError
from ..clock import wall_clock_ms
from ..settings import ROLES, Settings
from ..storage.audit import record_access
from ..storage.people import PeopleError, add_user, list_users, set_disabled, set_password
from .context import cli_actor, open_settings_database

__all__ = ["add_subcommands"]

SettingsLoader = Callable[[argparse.Namespace], Settings]


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass("password: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("lienwatch collector: the two passwords differ")
    return first


def _run(args: argparse.Namespace, load: SettingsLoader) -> int:
    engine = open_settings_database(load(args))
    now = wall_clock_ms()
    try:
        with Session(engine) as session:
            if args.action == "list":
                for user in list_users(session):
                    print(json.dumps(user, ensure_ascii=False))
                return 0
            detail: dict[str, str | int | None] = {}
            who = Actor(cli_actor(), "admin")
            try:
                if args.action == "add":
                    add_user(session, username=args.username, display_name=args.display_name or args.username,
                             role=args.role, password=_read_password(args), now_ms=now, locale=args.locale,
                             time_zone=args.time_zone)
                    action, detail = "add_user", {"role": args.role}
                    print(f"user {args.username} added ({args.role})")
                elif args.action == "passwd":
                    set_password(session, args.username, _read_password(args), now_ms=now)
                    action = "reset_password"
                    print(f"password of {args.username} changed; their sessions ended")
                elif args.action == "role":
                    old, handover = change_role(session, args.username, args.role, reassign_to=args.reassign_to,
                                                now_ms=now, who=who)
                    action, detail = "set_user_role", {"role": args.role, "old_role": old, **handover.audit_detail()}
                    print(f"{args.username} is now {args.role}; their sessions ended; {handover.summary()}")
                elif args.action == "disable":
                    handover = disable_user(session, args.username, reassign_to=args.reassign_to, now_ms=now, who=who)
                    action, detail = "disable_user", handover.audit_detail()
                    print(f"{args.username} disabled; {handover.summary()}")
                else:
                    set_disabled(session, args.username, False, now_ms=now)
                    action = "enable_user"
                    print(f"{args.username} enabled")
            except (PeopleError, CaseError) as exc:
                print(f"lienwatch collector: {exc}", file=sys.stderr)
                return 1
            record_access(session, actor=cli_actor(), role="admin", action=action, subject_type="user",
                          subject_id=args.username, time_ms=now, detail=detail)
            session.commit()
        return 0
    finally:
        engine.dispose()


def add_subcommands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser, load: SettingsLoader
) -> None:
    """Add ``users`` to the ``lienwatch collector`` parser."""
    users = sub.add_parser("users", help="named people who sign in to the console")
    usub = users.add_subparsers(dest="action", required=True)
    add = usub.add_parser("add", parents=[common], help="add a user (password from the terminal or stdin)")
    add.add_argument("username", help="[a-z][a-z0-9_.-]{1,63}")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--display-name", help="shown in the console (default: the user name)")
    add.add_argument("--locale", default="en", help="en or zh-CN (the console's language)")
    add.add_argument("--time-zone", default="Asia/Shanghai", help="IANA zone (default Asia/Shanghai)")
    add.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    usub.add_parser("list", parents=[common], help="list users as JSON lines (no password hashes)")
    passwd = usub.add_parser("passwd", parents=[common], help="set a user's password (ends their sessions)")
    passwd.add_argument("username")
    passwd.add_argument("--password-stdin", action="store_true", help="read the password from one line of stdin")
    role = usub.add_parser("role", parents=[common], help="give a user another role (ends their sessions)")
    role.add_argument("username")
    role.add_argument("role", choices=ROLES)
    disable = usub.add_parser("disable", parents=[common], help="disable a user (ends their sessions)")
    disable.add_argument("username")
    for parser in (role, disable):
        parser.add_argument(
            "--reassign-to", metavar="USER",
            help="who takes the user's open cases (an enabled collections or admin user) when they are disabled or "
                 "get a role that holds no cases; default: back to the unassigned queue",
        )
    usub.add_parser("enable", parents=[common], help="enable a disabled user").add_argument("username")
    users.set_defaults(func=lambda args: _run(args, load))
