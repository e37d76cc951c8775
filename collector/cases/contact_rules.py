"""Contact rules: may a borrower be contacted now, and if not, why and from when (pure).

How this works
--------------
A contact (sms, call, visit) is checked in the borrower's local time against three rules of
the loan's jurisdiction (:class:`collector.cases.settings.ContactRules`): the quiet hours
(21:00 -> 08:00 by default), a cap per local calendar day and a cap per 7 x 24 hours.
:func:`check_contact` names the first rule the time breaks and the earliest instant at which
every rule holds again: it moves a candidate time past whichever rule blocks it (end of the
quiet hours, next local midnight, the moment the oldest contact of the week leaves the
window) until none does. Only contacts that were actually made count (refusals do not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta

from ..timefmt import zone
from .settings import ContactRules

__all__ = ["CONTACT_KINDS", "ContactDecision", "check_contact"]

#: Actions that reach the borrower (and so fall under the contact rules).
CONTACT_KINDS = frozenset({"sms", "call", "visit"})
WEEK_MS = 7 * 86_400_000
_MAX_STEPS = 64


@dataclass(frozen=True, slots=True)
class ContactDecision:
    """The answer of :func:`check_contact`.

    Attributes:
        allowed: the contact may happen at the time asked.
        reason: ``quiet_hours``, ``daily_cap`` or ``weekly_cap`` when refused.
        message: a sentence for a person (names the rule and the local time).
        allowed_from_ms: earliest instant every rule holds (the time asked when allowed).
    """

    allowed: bool
    reason: str | None
    message: str
    allowed_from_ms: int


def _local(at_ms: int, zone_name: str) -> datetime:
    return datetime.fromtimestamp(at_ms / 1000, tz=zone(zone_name))


def _in_quiet(rules: ContactRules, local: datetime) -> bool:
    start, end = rules.quiet_minutes
    minute = local.hour * 60 + local.minute
    if start == end:
        return False
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def _quiet_end_after(rules: ContactRules, local: datetime) -> int:
    _, end = rules.quiet_minutes
    end_time = time(end // 60, end % 60)
    candidate = datetime.combine(local.date(), end_time, tzinfo=local.tzinfo)
    if candidate <= local:
        candidate = datetime.combine(local.date() + timedelta(days=1), end_time, tzinfo=local.tzinfo)
    return int(candidate.timestamp() * 1000)


def _next_midnight(local: datetime) -> int:
    midnight = datetime.combine(local.date() + timedelta(days=1), time(0, 0), tzinfo=local.tzinfo)
    return int(midnight.timestamp() * 1000)


def _blocking(rules: ContactRules, zone_name: str, at_ms: int, previous_ms: Sequence[int]) -> tuple[str, int] | None:
    """The first rule ``at_ms`` breaks and the earliest later time that rule alone allows."""
    local = _local(at_ms, zone_name)
    if _in_quiet(rules, local):
        return "quiet_hours", _quiet_end_after(rules, local)
    today = local.date()
    same_day = [t for t in previous_ms if t <= at_ms and _local(t, zone_name).date() == today]
    if len(same_day) >= rules.max_per_day:
        return "daily_cap", _next_midnight(local)
    week = sorted(t for t in previous_ms if at_ms - WEEK_MS < t <= at_ms)
    if len(week) >= rules.max_per_week:
        # the window is (t - 7 d, t]: a contact at c stops counting at c + 7 d
        return "weekly_cap", week[len(week) - rules.max_per_week] + WEEK_MS
    return None


_MESSAGES = {
    "quiet_hours": "no contact between {start} and {end} in the borrower's time zone ({zone})",
    "daily_cap": "the borrower was already contacted {cap} times on this local day ({zone})",
    "weekly_cap": "the borrower was already contacted {cap} times in the last 7 days",
}


def check_contact(rules: ContactRules, zone_name: str, at_ms: int, previous_ms: Sequence[int]) -> ContactDecision:
    """May the borrower be contacted at ``at_ms``?

    Args:
        rules: the contact rules of the loan's jurisdiction.
        zone_name: the borrower's IANA zone.
        at_ms: when the contact would happen (epoch ms).
        previous_ms: when earlier contacts of this loan were made (any order; older than
            a week may be left out).

    Raises:
        TimeFormatError: ``zone_name`` is not an IANA zone.
    """
    first = _blocking(rules, zone_name, at_ms, previous_ms)
    if first is None:
        return ContactDecision(True, None, "allowed", at_ms)
    reason = first[0]
    candidate = first[1]
    for _ in range(_MAX_STEPS):  # each step moves past one rule; a few always suffice
        blocked = _blocking(rules, zone_name, candidate, previous_ms)
        if blocked is None:
            break
        candidate = blocked[1]
    cap = rules.max_per_day if reason == "daily_cap" else rules.max_per_week
    message = _MESSAGES[reason].format(start=rules.quiet_start, end=rules.quiet_end, zone=zone_name, cap=cap)
    return ContactDecision(False, reason, message, candidate)
