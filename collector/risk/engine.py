"""The loan risk engine: repayment facts + open alerts + device status -> level, reasons, next step.

How this works
--------------
Pure: values in, values out. The evaluation time is part of the input (``evaluated_ms``),
nothing reads a clock, and alerts raised after ``evaluated_ms`` are ignored, so the same
evidence always gives the same :class:`RiskAssessment` (re-running it is harmless).

Every rule is one row of :data:`RULES` (code, level, next step, what it supersedes, a
condition). A condition returns zero or more matches; a matched row becomes one :class:`Reason`
that points at its evidence (the latest alert episode, and every episode when several
match; the repayment facts; the device status).
The level is the maximum over matched rows, the next step the most severe next step over
them. A row may *supersede* weaker rows built on the same evidence (``towing_while_overdue``
supersedes ``towing`` and ``overdue``), so the reason list says each thing once, at the level
it counted for; superseded rows are still evaluated, just not repeated. docs/risk.md holds
the same table in prose with the defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

from protocol.rule_names import RuleName

from ..errors import CollectorError
from ..json_values import json_ready
from .repayments import RepaymentFacts, format_cents

__all__ = [
    "RULES",
    "TRACKER_DIVERGENCE",
    "DeviceStatus",
    "Movement",
    "NextStep",
    "OpenAlert",
    "Reason",
    "RiskAssessment",
    "RiskChange",
    "RiskConfig",
    "RiskConfigError",
    "RiskInput",
    "RiskLevel",
    "RiskRule",
    "assess",
    "level_change",
    "repayment_evidence",
    "rule_table",
]

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
#: The collector-side rule raised when a car's two trackers disagree (collector.risk.trackers).
TRACKER_DIVERGENCE = "tracker_divergence"


class RiskConfigError(CollectorError, ValueError):
    """A risk threshold or input is out of range (the message names it and the limit)."""


class RiskLevel(IntEnum):
    """Risk level of a loan, ordered so that ``max`` gives the most severe."""

    NORMAL = 0
    WATCH = 1
    HIGH = 2
    CRITICAL = 3

    @property
    def label(self) -> str:
        """``normal``, ``watch``, ``high`` or ``critical``."""
        return self.name.lower()

    @classmethod
    def from_label(cls, label: str) -> RiskLevel:
        """Inverse of :attr:`label`; raises RiskConfigError on an unknown label."""
        try:
            return cls[label.upper()]
        except KeyError:
            raise RiskConfigError(f"risk level {label!r:.40} is not one of normal, watch, high, critical") from None


class NextStep(IntEnum):
    """Graded intervention for the post-loan team, mildest first."""

    MONITOR = 0
    REMINDER = 1
    CALL = 2
    ON_SITE_CHECK = 3
    RECOVERY = 4

    @property
    def label(self) -> str:
        """``monitor``, ``reminder``, ``call``, ``on_site_check`` or ``recovery``."""
        return self.name.lower()


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """An alert episode raised on the vehicle and not cleared yet.

    Attributes:
        rule: device rule name, e.g. ``stationary_near_market``.
        severity: severity label (``info``, ``warning``, ``high``, ``panic``).
        raised_ms: observation time the episode started, epoch ms.
        episode: episode id (shared by RAISED and CLEARED records).
        evidence: the alert's evidence map as sent by the device.
    """

    rule: str
    severity: str
    raised_ms: int
    episode: str
    evidence: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.rule, str) or not self.rule:
            raise RiskConfigError(f"alert rule {self.rule!r:.40} must be non-empty text")
        if not isinstance(self.episode, str) or not self.episode:
            raise RiskConfigError(f"alert episode {self.episode!r:.40} must be non-empty text")
        _check_ms("alert raised_ms", self.raised_ms)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "raised_ms": self.raised_ms,
            "episode": self.episode,
            "evidence": dict(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """What the collector knows about the box's connection.

    Attributes:
        online: True/False from the last state message, None if never heard of.
        last_seen_ms: time of the last message from the device, if any.
        offline_since_ms: when the device went offline (Last Will / clean stop), if offline.
    """

    online: bool | None = None
    last_seen_ms: int | None = None
    offline_since_ms: int | None = None

    def __post_init__(self) -> None:
        for name in ("last_seen_ms", "offline_since_ms"):
            value = getattr(self, name)
            if value is not None:
                _check_ms(f"device {name}", value)

    def offline_ms(self, now_ms: int) -> int | None:
        """How long the device has been offline at ``now_ms`` (None when online or unknown).

        Offline starts at ``offline_since_ms``; when only ``last_seen_ms`` is known and the
        device is not known to be online, it starts there.
        """
        if self.online:
            return None
        start = self.offline_since_ms if self.offline_since_ms is not None else self.last_seen_ms
        if start is None:
            return None
        return max(0, now_ms - start)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"online": self.online, "last_seen_ms": self.last_seen_ms, "offline_since_ms": self.offline_since_ms}


@dataclass(frozen=True, slots=True)
class Movement:
    """Recent movement of the vehicle (from fixes).

    Attributes:
        last_moved_ms: last time the vehicle was seen moving, if known.
        distance_24h_m: distance driven in the 24 h before the evaluation, if known.
        last_fix_ms: vehicle time of the newest fix received, if known (the v2 score measures
            "not moved for" up to here, never up to the wall clock; the v1 table ignores it).
    """

    last_moved_ms: int | None = None
    distance_24h_m: float | None = None
    last_fix_ms: int | None = None

    def __post_init__(self) -> None:
        if self.last_moved_ms is not None:
            _check_ms("movement last_moved_ms", self.last_moved_ms)
        if self.last_fix_ms is not None:
            _check_ms("movement last_fix_ms", self.last_fix_ms)
        if self.distance_24h_m is not None and (
            not isinstance(self.distance_24h_m, (int, float))
            or not math.isfinite(self.distance_24h_m)
            or self.distance_24h_m < 0
        ):
            raise RiskConfigError(f"distance_24h_m={self.distance_24h_m!r} must be a finite number >= 0")

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        # The v1 table's evidence; last_fix_ms is read by the v2 features only.
        return {"last_moved_ms": self.last_moved_ms, "distance_24h_m": self.distance_24h_m}


@dataclass(frozen=True, slots=True)
class RiskInput:
    """Everything the engine looks at for one loan."""

    loan_id: str
    evaluated_ms: int
    facts: RepaymentFacts
    alerts: tuple[OpenAlert, ...] = ()
    device: DeviceStatus = field(default_factory=DeviceStatus)
    movement: Movement = field(default_factory=Movement)

    def __post_init__(self) -> None:
        _check_ms("evaluated_ms", self.evaluated_ms)
        if not isinstance(self.facts, RepaymentFacts):
            raise RiskConfigError("facts must be RepaymentFacts")
        if not all(isinstance(a, OpenAlert) for a in self.alerts):
            raise RiskConfigError("alerts must be OpenAlert values")


def repayment_evidence(facts: RepaymentFacts) -> dict[str, Any]:
    """The ``repayment`` sub-map of a reason's evidence (both engines' reasons use it)."""
    return {
        "as_of": facts.as_of.isoformat(),
        "days_past_due": facts.days_past_due,
        "consecutive_late": facts.consecutive_late,
        "total_overdue": format_cents(facts.total_overdue_cents),
    }


def _check_ms(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53:
        raise RiskConfigError(f"{name}={value!r:.40} must be epoch milliseconds (int, 0..2**53)")


@dataclass(frozen=True, slots=True)
class RiskConfig:
    """Thresholds of the risk table (defaults documented in docs/risk.md).

    Attributes:
        offline_hours: a device offline for *more than* this is "offline" (default 48).
        late_streak: consecutive late instalments that count as a streak (default 3).
        dpd_call: days past due from which a call is due (default 30).
        dpd_on_site: days past due from which the level is high with an on-site check (default 90).
        stationary_days: a vehicle not moved for at least this many days while overdue is watched (7).
        market_rules / power_cut_rules / towing_rules / night_door_rules / region_rules /
            gnss_rules / relocation_rules / hv_disconnect_rules / soh_drop_rules /
            tracker_rules: device (or collector-side) rule names that count as each kind of alert.
        tracker_divergence_m: a car's two trackers more than this apart (metres, default 1000) ...
        tracker_window_minutes: ... for at least this long (default 30) is ``tracker_divergence``.
        tracker_silent_hours: a tracker with nothing newer than this (default 2) is silent ...
        tracker_moved_m: ... and the other one reporting this far from it (default 2000) since
            is ``tracker_divergence`` (one was removed or unplugged).
    """

    offline_hours: float = 48.0
    late_streak: int = 3
    dpd_call: int = 30
    dpd_on_site: int = 90
    stationary_days: float = 7.0
    market_rules: frozenset[str] = frozenset({RuleName.STATIONARY_NEAR_MARKET})
    power_cut_rules: frozenset[str] = frozenset({RuleName.POWER_CUT})
    towing_rules: frozenset[str] = frozenset({RuleName.TOWING})
    night_door_rules: frozenset[str] = frozenset({RuleName.NIGHT_DOOR_OPENINGS})
    region_rules: frozenset[str] = frozenset({RuleName.REGION_EXIT})
    gnss_rules: frozenset[str] = frozenset({RuleName.GNSS_LOST, RuleName.GNSS_JAMMING})
    relocation_rules: frozenset[str] = frozenset({RuleName.RELOCATION})
    hv_disconnect_rules: frozenset[str] = frozenset({RuleName.HV_DISCONNECT})
    soh_drop_rules: frozenset[str] = frozenset({RuleName.SOH_DROP})
    tracker_rules: frozenset[str] = frozenset({TRACKER_DIVERGENCE})
    tracker_divergence_m: float = 1000.0
    tracker_window_minutes: float = 30.0
    tracker_silent_hours: float = 2.0
    tracker_moved_m: float = 2000.0

    def __post_init__(self) -> None:
        for name, lo, hi in (
            ("offline_hours", 1, 24 * 90),
            ("late_streak", 1, 60),
            ("dpd_call", 1, 3650),
            ("dpd_on_site", 1, 3650),
            ("stationary_days", 0.5, 365),
            ("tracker_divergence_m", 50, 1_000_000),
            ("tracker_window_minutes", 1, 7 * 24 * 60),
            ("tracker_silent_hours", 0.01, 24 * 30),  # 36 s: a live-clock rig (hil-tests/test_two_trackers.py)
            ("tracker_moved_m", 50, 1_000_000),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
                raise RiskConfigError(f"risk {name}={value!r} must be a number in [{lo}, {hi}]")
        if self.dpd_on_site < self.dpd_call:
            raise RiskConfigError(f"dpd_on_site={self.dpd_on_site} must be >= dpd_call={self.dpd_call}")

    @classmethod
    def from_dict(cls, section: Mapping[str, Any]) -> RiskConfig:
        """Build from a ``[risk]`` TOML table; unknown keys are an error."""
        known = set(cls.__dataclass_fields__)
        unknown = set(section) - known
        if unknown:
            raise RiskConfigError(f"unknown [risk] keys: {sorted(unknown)}; known: {sorted(known)}")
        values: dict[str, Any] = {}
        for key, value in section.items():
            if key.endswith("_rules"):
                if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                    raise RiskConfigError(f"[risk] {key} must be a list of rule names")
                values[key] = frozenset(value)
            else:
                values[key] = value
        return cls(**values)


@dataclass(frozen=True, slots=True)
class Reason:
    """Why a rule matched, pointing at its evidence.

    Attributes:
        code: the rule row's code (e.g. ``late_streak_near_market``).
        level: the level this row stands for.
        next_step: the intervention this row asks for.
        alert_episode: the device alert episode it rests on, if any.
        evidence: ``repayment`` / ``alert`` / ``device`` / ``movement`` sub-maps as relevant.
        explanation: for a reason of the v2 score (:mod:`collector.risk.decision`), its axis,
            kind, summary, value and contribution (``log_odds``, ``pd_points``); None for a
            row of this table.
    """

    code: str
    level: RiskLevel
    next_step: NextStep
    alert_episode: str | None
    evidence: Mapping[str, Any]
    explanation: Mapping[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``explanation`` only when there is one)."""
        out = {
            "code": self.code,
            "level": self.level.label,
            "next_step": self.next_step.label,
            "alert_episode": self.alert_episode,
            "evidence": json_ready(self.evidence),
        }
        if self.explanation is not None:
            out["explanation"] = dict(self.explanation)
        return out


@dataclass(frozen=True, slots=True)
class RiskAssessment:
    """The engine's answer for one loan at one time."""

    loan_id: str
    evaluated_ms: int
    level: RiskLevel
    next_step: NextStep
    reasons: tuple[Reason, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "loan_id": self.loan_id,
            "evaluated_ms": self.evaluated_ms,
            "level": self.level.label,
            "next_step": self.next_step.label,
            "reasons": [r.as_dict() for r in self.reasons],
        }


@dataclass(frozen=True, slots=True)
class RiskChange:
    """A level change, to be stored as a risk event and pushed to webhooks."""

    loan_id: str
    time_ms: int
    old_level: RiskLevel
    new_level: RiskLevel
    next_step: NextStep
    reasons: tuple[Reason, ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the webhook event body's ``data``)."""
        return {
            "loan_id": self.loan_id,
            "time_ms": self.time_ms,
            "old_level": self.old_level.label,
            "new_level": self.new_level.label,
            "next_step": self.next_step.label,
            "reasons": [r.as_dict() for r in self.reasons],
        }


# ------------------------------------------------------------------ the table


@dataclass(frozen=True, slots=True)
class _Match:
    alert: OpenAlert | None
    evidence: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Context:
    inp: RiskInput
    config: RiskConfig
    alerts: tuple[OpenAlert, ...]

    @property
    def facts(self) -> RepaymentFacts:
        return self.inp.facts

    def open_of(self, rules: frozenset[str]) -> list[OpenAlert]:
        return [a for a in self.alerts if a.rule in rules]

    def repayment(self) -> dict[str, Any]:
        return repayment_evidence(self.facts)

    def offline_hours(self) -> float | None:
        offline = self.inp.device.offline_ms(self.inp.evaluated_ms)
        return None if offline is None else offline / HOUR_MS


Condition = Callable[[_Context], list[_Match]]


@dataclass(frozen=True, slots=True)
class RiskRule:
    """One row of the risk table."""

    code: str
    level: RiskLevel
    next_step: NextStep
    summary: str
    condition: Condition
    supersedes: tuple[str, ...] = ()


def _alone(rules_of: Callable[[RiskConfig], frozenset[str]]) -> Condition:
    def condition(ctx: _Context) -> list[_Match]:
        return [_Match(a, {"alert": a.as_dict()}) for a in ctx.open_of(rules_of(ctx.config))]

    return condition


def _while_overdue(rules_of: Callable[[RiskConfig], frozenset[str]]) -> Condition:
    def condition(ctx: _Context) -> list[_Match]:
        if not ctx.facts.overdue:
            return []
        return [
            _Match(a, {"alert": a.as_dict(), "repayment": ctx.repayment()})
            for a in ctx.open_of(rules_of(ctx.config))
        ]

    return condition


def _overdue(ctx: _Context) -> list[_Match]:
    return [_Match(None, {"repayment": ctx.repayment()})] if ctx.facts.overdue else []


def _dpd_at_least(threshold_of: Callable[[RiskConfig], int]) -> Condition:
    def condition(ctx: _Context) -> list[_Match]:
        threshold = threshold_of(ctx.config)
        if ctx.facts.overdue and ctx.facts.days_past_due >= threshold:
            return [_Match(None, {"repayment": ctx.repayment(), "threshold_days": threshold})]
        return []

    return condition


def _late_streak(ctx: _Context) -> list[_Match]:
    if ctx.facts.consecutive_late >= ctx.config.late_streak:
        return [_Match(None, {"repayment": ctx.repayment(), "threshold_installments": ctx.config.late_streak})]
    return []


def _late_streak_near_market(ctx: _Context) -> list[_Match]:
    if ctx.facts.consecutive_late < ctx.config.late_streak:
        return []
    movement = ctx.inp.movement.as_dict()
    return [
        _Match(a, {"alert": a.as_dict(), "repayment": ctx.repayment(), "movement": movement})
        for a in ctx.open_of(ctx.config.market_rules)
    ]


def _offline(*, while_overdue: bool) -> Condition:
    def condition(ctx: _Context) -> list[_Match]:
        hours = ctx.offline_hours()
        if hours is None or hours <= ctx.config.offline_hours or (while_overdue and not ctx.facts.overdue):
            return []
        evidence: dict[str, Any] = {
            "device": ctx.inp.device.as_dict(),
            "offline_hours": round(hours, 2),
            "threshold_hours": ctx.config.offline_hours,
        }
        if while_overdue:
            evidence["repayment"] = ctx.repayment()
        return [_Match(None, evidence)]

    return condition


def _stationary_while_overdue(ctx: _Context) -> list[_Match]:
    last = ctx.inp.movement.last_moved_ms
    if last is None or not ctx.facts.overdue:
        return []
    days = (ctx.inp.evaluated_ms - last) / DAY_MS
    if days < ctx.config.stationary_days:
        return []
    return [
        _Match(
            None,
            {
                "movement": ctx.inp.movement.as_dict(),
                "stationary_days": round(days, 2),
                "threshold_days": ctx.config.stationary_days,
                "repayment": ctx.repayment(),
            },
        )
    ]


W, H, C = RiskLevel.WATCH, RiskLevel.HIGH, RiskLevel.CRITICAL
S = NextStep

#: The risk table. Order only matters for the order of reasons of equal level.
RULES: tuple[RiskRule, ...] = (
    RiskRule("power_cut_while_overdue", C, S.RECOVERY, "box unplugged / main power cut while overdue",
             _while_overdue(lambda c: c.power_cut_rules), ("power_cut", "overdue")),
    RiskRule("tracker_divergence_while_overdue", C, S.RECOVERY,
             "the car's two trackers disagree (one silent while the other moves, or far apart) while overdue",
             _while_overdue(lambda c: c.tracker_rules), ("tracker_divergence", "overdue")),
    RiskRule("towing_while_overdue", C, S.RECOVERY, "towed (moving with ignition off) while overdue",
             _while_overdue(lambda c: c.towing_rules), ("towing", "overdue")),
    RiskRule("gnss_jamming_while_overdue", C, S.RECOVERY, "GNSS jammed or lost while moving, while overdue",
             _while_overdue(lambda c: c.gnss_rules), ("gnss_jamming", "overdue")),
    RiskRule("late_streak_near_market", H, S.ON_SITE_CHECK,
             "late_streak consecutive late instalments AND stationary near a used-car market",
             _late_streak_near_market, ("stationary_near_market", "late_streak", "overdue")),
    RiskRule("offline_while_overdue", H, S.ON_SITE_CHECK, "device offline for more than offline_hours while overdue",
             _offline(while_overdue=True), ("device_offline", "overdue")),
    RiskRule("region_exit_while_overdue", H, S.ON_SITE_CHECK, "left the allowed region while overdue",
             _while_overdue(lambda c: c.region_rules), ("region_exit", "overdue")),
    RiskRule("relocation_while_overdue", H, S.ON_SITE_CHECK, "stopped coming home (relocated) while overdue",
             _while_overdue(lambda c: c.relocation_rules), ("relocation", "overdue")),
    RiskRule("hv_disconnect_while_overdue", H, S.ON_SITE_CHECK,
             "traction battery disconnected or removed while parked, while overdue",
             _while_overdue(lambda c: c.hv_disconnect_rules), ("hv_disconnect", "overdue")),
    RiskRule("severely_past_due", H, S.ON_SITE_CHECK, "days past due >= dpd_on_site",
             _dpd_at_least(lambda c: c.dpd_on_site), ("past_due", "overdue")),
    RiskRule("past_due", W, S.CALL, "days past due >= dpd_call", _dpd_at_least(lambda c: c.dpd_call), ("overdue",)),
    RiskRule("late_streak", W, S.CALL, "late_streak consecutive late instalments", _late_streak),
    RiskRule("stationary_while_overdue", W, S.CALL, "not moved for stationary_days while overdue",
             _stationary_while_overdue, ("overdue",)),
    RiskRule("stationary_near_market", W, S.CALL, "parked (dwell) near a used-car market",
             _alone(lambda c: c.market_rules)),
    RiskRule("power_cut", W, S.CALL, "box unplugged / main power cut", _alone(lambda c: c.power_cut_rules)),
    RiskRule("towing", W, S.CALL, "towed (moving with ignition off)", _alone(lambda c: c.towing_rules)),
    RiskRule("gnss_jamming", W, S.CALL, "GNSS jammed or lost while moving", _alone(lambda c: c.gnss_rules)),
    RiskRule("region_exit", W, S.CALL, "left the allowed region", _alone(lambda c: c.region_rules)),
    RiskRule("tracker_divergence", H, S.ON_SITE_CHECK,
             "the car's two trackers disagree: one silent while the other moves, or far apart (one was removed)",
             _alone(lambda c: c.tracker_rules)),
    RiskRule("relocation", W, S.CALL, "stopped coming home: nights away from every usual night place",
             _alone(lambda c: c.relocation_rules)),
    RiskRule("hv_disconnect", W, S.CALL, "traction battery disconnected or removed while parked",
             _alone(lambda c: c.hv_disconnect_rules)),
    RiskRule("soh_drop", W, S.MONITOR, "abnormal drop of the traction battery's state of health (collateral value)",
             _alone(lambda c: c.soh_drop_rules)),
    RiskRule("device_offline", W, S.CALL, "device offline for more than offline_hours", _offline(while_overdue=False)),
    RiskRule("night_door_openings", W, S.MONITOR, "repeated door openings at night",
             _alone(lambda c: c.night_door_rules)),
    RiskRule("overdue", W, S.REMINDER, "an instalment is unpaid after its grace period", _overdue),
)

_CODES = [r.code for r in RULES]
assert len(set(_CODES)) == len(_CODES), "risk rule codes must be unique"
assert all(s in _CODES for r in RULES for s in r.supersedes), "supersedes must name existing rows"


def assess(inp: RiskInput, config: RiskConfig | None = None) -> RiskAssessment:
    """Evaluate the risk table for one loan.

    Args:
        inp: repayment facts, open alerts, device status and movement at ``inp.evaluated_ms``.
        config: thresholds; :class:`RiskConfig` defaults when omitted.

    Returns:
        The level (max over matched rows, ``normal`` when none), the most severe next step,
        and one reason per matched row and alert episode, most severe first.
    """
    config = config or RiskConfig()
    alerts = tuple(
        sorted((a for a in inp.alerts if a.raised_ms <= inp.evaluated_ms), key=lambda a: (a.raised_ms, a.episode))
    )
    # The same episode reported twice (QoS 1 duplicates) must not count twice.
    unique: dict[tuple[str, str], OpenAlert] = {}
    for alert in alerts:
        unique.setdefault((alert.rule, alert.episode), alert)
    ctx = _Context(inp, config, tuple(unique.values()))

    matched: list[tuple[RiskRule, list[_Match]]] = []
    for rule in RULES:
        matches = rule.condition(ctx)
        if matches:
            matched.append((rule, matches))
    superseded = {code for rule, _ in matched for code in rule.supersedes}
    reasons: list[Reason] = []
    for rule, matches in matched:
        if rule.code in superseded:
            continue
        reasons.append(_one_reason(rule, matches))
    order = {code: i for i, code in enumerate(_CODES)}
    reasons.sort(key=lambda r: (-r.level, order[r.code], r.alert_episode or ""))
    # Level and next step come from every matched row, superseded or not.
    level = max((rule.level for rule, _ in matched), default=RiskLevel.NORMAL)
    step = max((rule.next_step for rule, _ in matched), default=NextStep.MONITOR)
    return RiskAssessment(inp.loan_id, inp.evaluated_ms, level, step, tuple(reasons))


def _one_reason(rule: RiskRule, matches: list[_Match]) -> Reason:
    """One reason per rule row, however many alert episodes match it (a rule is listed once).

    It rests on the latest episode (the matches come in raise order); with several, its
    evidence also names every episode, oldest first, under ``episodes``.
    """
    latest = matches[-1]
    episodes = [m.alert.episode for m in matches if m.alert is not None]
    evidence = latest.evidence
    if len(episodes) > 1:
        evidence = {**evidence, "episodes": episodes}
    return Reason(rule.code, rule.level, rule.next_step, latest.alert.episode if latest.alert else None, evidence)


def level_change(previous: RiskLevel | None, assessment: RiskAssessment) -> RiskChange | None:
    """The change to record when ``assessment`` moves a loan off ``previous`` (None if unchanged).

    A loan never assessed before (``previous`` None) counts as ``normal``: its first
    assessment is an event only if it is above normal.
    """
    old = previous if previous is not None else RiskLevel.NORMAL
    if assessment.level == old:
        return None
    return RiskChange(
        assessment.loan_id, assessment.evaluated_ms, old, assessment.level, assessment.next_step, assessment.reasons
    )


def rule_table() -> list[dict[str, str]]:
    """The risk table as rows of text (for docs and the API)."""
    return [
        {
            "code": r.code,
            "level": r.level.label,
            "next_step": r.next_step.label,
            "when": r.summary,
            "supersedes": ", ".join(r.supersedes),
        }
        for r in RULES
    ]
