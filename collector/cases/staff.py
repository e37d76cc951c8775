"""A person who stops working cases hands their open cases over (docs/people.md, "Cases of a user who leaves").

How this works
--------------
Disabling a user, or giving them a role that may not hold cases (``risk_analyst``,
``auditor``), goes through :func:`disable_user` / :func:`change_role`, the one path of the
console's Users page and of ``lienwatch collector users disable|role``. In the same
transaction as the change (:mod:`collector.storage.people` keeps its own rules: the last
admin, no self-lockout), every open case of the user moves to the reassignee the admin named
(an enabled ``collections`` or ``admin`` user) or, when none is named, back to the team's
unassigned queue, where the cases page marks it. No open case is left with someone who can
no longer sign in or act on it, and the SLA clock keeps running in plain sight.

Each moved case is an ``assigned`` case event and an ``assign_case`` audit row (subject: the
loan) with ``because`` (``user_disabled``, ``role_changed``); the caller's own audit row of
the change carries :meth:`Handover.audit_detail`. The caller commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from ..storage.people import set_disabled, set_role
from .store import ASSIGNABLE_ROLES, Actor, hand_over_cases

__all__ = ["Handover", "change_role", "disable_user"]


@dataclass(frozen=True, slots=True)
class Handover:
    """The open cases a change moved, and to whom (``None``: the unassigned queue)."""

    case_ids: tuple[int, ...] = ()
    to: str | None = None

    def audit_detail(self) -> dict[str, Any]:
        """What the change's audit row says about the cases."""
        return {"open_cases": len(self.case_ids), "reassigned_to": self.to if self.case_ids else None}

    def summary(self) -> str:
        """One line for a person (the CLI's output)."""
        if not self.case_ids:
            return "no open cases to hand over"
        where = f"reassigned to {self.to}" if self.to is not None else "back in the unassigned queue"
        return f"{len(self.case_ids)} open case(s) {where}: " + ", ".join(f"#{i}" for i in self.case_ids)


def disable_user(
    session: Session, username: str, *, reassign_to: str | None, now_ms: int, who: Actor,
    acting_username: str | None = None,
) -> Handover:
    """Disable ``username`` (ending their sessions) and hand their open cases to ``reassign_to`` or the queue.

    Disabling a user who is disabled already still hands over what they hold (cases left from
    before this rule).

    Raises:
        PeopleError: as :func:`collector.storage.people.set_disabled` (no such user, the last
            admin, yourself).
        UnknownAssigneeError: ``reassign_to`` is the user, or not an enabled collections or admin user.
    """
    set_disabled(session, username, True, now_ms=now_ms, acting_username=acting_username)
    moved = hand_over_cases(session, username, to=reassign_to, because="user_disabled", now_ms=now_ms, who=who)
    return Handover(tuple(moved), reassign_to)


def change_role(
    session: Session, username: str, role: str, *, reassign_to: str | None, now_ms: int, who: Actor,
    acting_username: str | None = None,
) -> tuple[str, Handover]:
    """Give ``username`` another role; a role that may not hold cases hands their open cases over.

    Returns:
        The previous role and the handover (empty when the new role may hold cases).

    Raises:
        PeopleError: as :func:`collector.storage.people.set_role`.
        UnknownAssigneeError: as :func:`disable_user`.
    """
    old = set_role(session, username, role, now_ms=now_ms, acting_username=acting_username)
    if role in ASSIGNABLE_ROLES:
        return old, Handover()
    moved = hand_over_cases(session, username, to=reassign_to, because="role_changed", now_ms=now_ms, who=who)
    return old, Handover(tuple(moved), reassign_to)
