"""``[cases]`` and ``[contact]``: case SLAs and the contact rules of each jurisdiction.

Sections of the one :class:`collector.settings.Settings` (which loads and validates them with
the rest); defined here so the cases package depends on nothing above it.

``[contact]`` holds the default jurisdiction's rules; ``[contact.jurisdictions.NAME]`` tables
override any of them for loans whose ``jurisdiction`` is ``NAME``::

    [contact]
    default_time_zone = "Asia/Shanghai"
    quiet_start = "21:00"
    quiet_end = "08:00"
    max_per_day = 3
    max_per_week = 10

    [contact.jurisdictions.CN-GD]
    quiet_start = "20:00"
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ConfigError, check_range
from ..timefmt import TimeFormatError, zone

__all__ = ["LEVELS", "CaseSettings", "ContactRules", "ContactSettings", "clock_minutes"]

#: Risk levels that open a case, lowest first.
LEVELS = ("watch", "high", "critical")
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


def clock_minutes(name: str, text: str) -> int:
    """Minutes after midnight of a ``HH:MM`` setting.

    Raises:
        ConfigError: not ``HH:MM`` (00:00 .. 23:59).
    """
    match = _HHMM.match(text) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(f"{name}={text!r:.20} must be a local time HH:MM (00:00 .. 23:59)")
    return int(match.group(1)) * 60 + int(match.group(2))


@dataclass(frozen=True, slots=True)
class ContactRules:
    """When a borrower may be contacted (sms, call, visit), in the borrower's local time.

    Attributes:
        quiet_start: local time from which no contact is allowed (``HH:MM``).
        quiet_end: local time until which no contact is allowed; earlier than ``quiet_start``
            means the quiet hours run over midnight (the default, 21:00 -> 08:00). Equal
            values mean no quiet hours.
        max_per_day: contacts per local calendar day.
        max_per_week: contacts in any 7 x 24 hours.
    """

    quiet_start: str = "21:00"
    quiet_end: str = "08:00"
    max_per_day: int = 3
    max_per_week: int = 10

    def __post_init__(self) -> None:
        clock_minutes("contact.quiet_start", self.quiet_start)
        clock_minutes("contact.quiet_end", self.quiet_end)
        check_range("contact.max_per_day", self.max_per_day, 1, 100)
        check_range("contact.max_per_week", self.max_per_week, self.max_per_day, 700)

    @property
    def quiet_minutes(self) -> tuple[int, int]:
        """``(start, end)`` of the quiet hours in minutes after local midnight."""
        start = clock_minutes("contact.quiet_start", self.quiet_start)
        return start, clock_minutes("contact.quiet_end", self.quiet_end)


@dataclass(frozen=True, slots=True)
class ContactSettings:
    """``[contact]``: the borrower's zone when a loan has none, and the contact rules.

    Attributes:
        default_time_zone: IANA zone of loans without ``time_zone``.
        default_jurisdiction: jurisdiction of loans without ``jurisdiction``.
        quiet_start, quiet_end, max_per_day, max_per_week: the rules of every jurisdiction
            not listed in ``jurisdictions`` (see :class:`ContactRules`).
        jurisdictions: per-jurisdiction rules (``[contact.jurisdictions.NAME]`` in the file;
            keys not given there take the defaults above).
    """

    default_time_zone: str = "Asia/Shanghai"
    default_jurisdiction: str = "default"
    quiet_start: str = "21:00"
    quiet_end: str = "08:00"
    max_per_day: int = 3
    max_per_week: int = 10
    jurisdictions: Mapping[str, ContactRules] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            zone(self.default_time_zone)
        except TimeFormatError as exc:
            raise ConfigError(f"contact.default_time_zone: {exc}") from exc
        self.defaults()  # validates the default rules
        for name, rules in self.jurisdictions.items():
            if not isinstance(rules, ContactRules) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
                raise ConfigError(f"contact.jurisdictions.{name!r:.40} must be a table of contact rules")

    def defaults(self) -> ContactRules:
        """The rules of a jurisdiction without its own table."""
        return ContactRules(self.quiet_start, self.quiet_end, self.max_per_day, self.max_per_week)

    def rules_for(self, jurisdiction: str | None) -> ContactRules:
        """The rules of ``jurisdiction`` (``None``: the default jurisdiction)."""
        return self.jurisdictions.get(jurisdiction or self.default_jurisdiction) or self.defaults()

    def jurisdiction_rules(self, raw: Mapping[str, object]) -> ContactRules:
        """Rules from one ``[contact.jurisdictions.NAME]`` table, defaults for missing keys.

        Raises:
            ConfigError: an unknown key or a value of the wrong type.
        """
        known = {"quiet_start", "quiet_end", "max_per_day", "max_per_week"}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s) in a [contact.jurisdictions] table: {', '.join(unknown)}")
        base = self.defaults()
        values: dict[str, object] = {k: getattr(base, k) for k in known} | dict(raw)
        for key in ("quiet_start", "quiet_end"):
            if not isinstance(values[key], str):
                raise ConfigError(f"contact.jurisdictions: {key} must be text HH:MM")
        for key in ("max_per_day", "max_per_week"):
            if isinstance(values[key], bool) or not isinstance(values[key], int):
                raise ConfigError(f"contact.jurisdictions: {key} must be an integer")
        return ContactRules(
            str(values["quiet_start"]),
            str(values["quiet_end"]),
            int(str(values["max_per_day"])),
            int(str(values["max_per_week"])),
        )


@dataclass(frozen=True, slots=True)
class CaseSettings:
    """``[cases]``: service levels of a case and the promise-to-pay check.

    Attributes:
        sla_watch_s, sla_high_s, sla_critical_s: time from a case's opening (or its level
            going up) to its first action is due, by the loan's risk level.
        escalation_sla_s: an escalated case (broken promise) is due again within this.
        promise_check_interval_s: how often ``serve`` looks for broken promises.
        default_assignee: user name new cases are assigned to (none, or a user who is disabled or
            holds a role that takes no cases: unassigned).
    """

    sla_watch_s: float = 3 * 86_400.0
    sla_high_s: float = 86_400.0
    sla_critical_s: float = 4 * 3_600.0
    escalation_sla_s: float = 86_400.0
    promise_check_interval_s: float = 3_600.0
    default_assignee: str | None = None

    def __post_init__(self) -> None:
        for name in ("sla_watch_s", "sla_high_s", "sla_critical_s", "escalation_sla_s"):
            check_range(f"cases.{name}", getattr(self, name), 60, 90 * 86_400)
        check_range("cases.promise_check_interval_s", self.promise_check_interval_s, 0.01, 86_400)

    def sla_ms(self, level: str) -> int:
        """The SLA of a case at ``level`` in milliseconds (the watch SLA for unknown levels)."""
        seconds = {"high": self.sla_high_s, "critical": self.sla_critical_s}.get(level, self.sla_watch_s)
        return int(seconds * 1000)
