"""Features of the v2 risk score: one loan's evidence -> a fixed vector of numbers.

How this works
--------------
Pure: a :class:`~collector.risk.engine.RiskInput` (repayment facts, open alerts, device status,
movement) and an :class:`Exposure` go in, a row of :data:`FEATURE_NAMES` floats comes out
(plus the alert episodes each feature rests on, so a reason can point at its evidence).
Every feature is 0 when its evidence is absent, so a fitted weight times the value is that
feature's contribution to the log-odds against a loan with no evidence at all.

* **Repayment**: the delinquency bucket today (1-29 / 30-59 / 60-89 days past due, only when
  something is *overdue*), a roll (bucket worse than 30 days ago), lates with decay (each
  late instalment weighs ``0.5 ** (age / 180 days)``), an active streak (>= 3 consecutive
  lates *and* still overdue: a cured streak is not active), a cure flag (lates in the last
  12 months, nothing overdue now) and the arrears in instalments.
* **Exposure**: current loan-to-value (outstanding principal / current vehicle value; an
  unknown value is imputed with :data:`DEFAULT_LTV`), early months on book.
* **Vehicle signals**: each alert kind's newest open episode with recency decay
  (``0.5 ** (age / half-life)``), offline (device silent for more than ``offline_hours``),
  stationary (not moved for ``stationary_days`` **measured on vehicle time**: from the last
  moving fix to the newest fix, and never while the device is offline - a silent box is
  missing data, not a parked car).
* **Combinations**: theft signature (power cut and towing), night doors with relocation
  (region exit), offline while overdue, market dwell while overdue, night doors with an
  active late streak, GNSS loss while overdue.

:func:`feature_rows` is the batch path: one Python pass per loan to read the records,
then one ``numpy`` matrix for the vectorised scoring in :mod:`collector.risk.score`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import numpy.typing as npt

from .engine import DAY_MS, HOUR_MS, OpenAlert, RiskConfig, RiskConfigError, RiskInput
from .repayments import RepaymentFacts

__all__ = [
    "DEFAULT_LTV",
    "FEATURE_NAMES",
    "FEATURE_SUMMARIES",
    "Exposure",
    "FeatureConfig",
    "FeatureRow",
    "delinquency_bucket",
    "exposure_of",
    "feature_matrix",
    "feature_row",
    "feature_rows",
]

#: Loan-to-value assumed when the vehicle's value is not known (typical of a 36-month car loan mid-life).
DEFAULT_LTV = 0.8

#: Feature name -> what it measures (docs/risk.md has the same list).
FEATURE_SUMMARIES: Mapping[str, str] = {
    "dpd_1_29": "overdue, 1-29 days past due",
    "dpd_30_59": "overdue, 30-59 days past due",
    "dpd_60_89": "overdue, 60-89 days past due",
    "dpd_90_plus": "overdue, 90 days past due or more",
    "rolled_forward": "delinquency bucket worse than 30 days ago",
    "lates_decayed": "late instalments, each weighted 0.5 ** (age / 180 days)",
    "late_streak_active": "late_streak consecutive late instalments and still overdue",
    "cured": "late instalments in the last 12 months, nothing overdue now",
    "arrears_installments": "overdue amount in instalments (capped at 6)",
    "ltv": "outstanding principal / current vehicle value (capped at 2)",
    "early_months_on_book": "fewer than 6 instalments due so far",
    "market": "open used-car market dwell, decayed (half-life 14 days)",
    "power_cut": "open power cut / box unplugged, decayed (half-life 7 days)",
    "towing": "open towing (moving with ignition off), decayed (half-life 7 days)",
    "night_doors": "open night door openings, decayed (half-life 14 days)",
    "region_exit": "open exit from the allowed region, decayed (half-life 14 days)",
    "gnss_loss": "open GNSS loss or jamming while moving, decayed (half-life 7 days)",
    "offline": "device silent for more than offline_hours",
    "stationary": "not moved for stationary_days, on vehicle time, device online",
    "theft_signature": "power cut and towing both open",
    "night_doors_relocation": "night door openings and region exit both open",
    "offline_while_overdue": "device offline while an instalment is overdue",
    "market_while_overdue": "market dwell while an instalment is overdue",
    "night_doors_late_streak": "night door openings on a loan with an active late streak",
    "gnss_loss_while_overdue": "GNSS loss while an instalment is overdue",
}
FEATURE_NAMES: tuple[str, ...] = tuple(FEATURE_SUMMARIES)
_INDEX = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True, slots=True)
class FeatureConfig:
    """Parameters of the feature definitions (documented defaults; the model file records them).

    Attributes:
        risk: the v1 thresholds reused here (offline hours, late streak, stationary days, rule names).
        late_half_life_days: half-life of a late instalment's weight.
        half_life_days: alert kind -> half-life of an open episode's weight.
    """

    risk: RiskConfig = field(default_factory=RiskConfig)
    late_half_life_days: float = 180.0
    half_life_days: Mapping[str, float] = field(
        default_factory=lambda: {
            "market": 14.0,
            "power_cut": 7.0,
            "towing": 7.0,
            "night_doors": 14.0,
            "region_exit": 14.0,
            "gnss_loss": 7.0,
        }
    )


@dataclass(frozen=True, slots=True)
class Exposure:
    """What the lender stands to lose on a loan.

    Attributes:
        principal_cents: principal at origination.
        outstanding_cents: principal still outstanding (exposure at default).
        vehicle_value_cents: current value of the vehicle, None when unknown.
        months_on_book: instalments due so far.
    """

    principal_cents: int
    outstanding_cents: int
    vehicle_value_cents: int | None = None
    months_on_book: int = 0

    def __post_init__(self) -> None:
        for name in ("principal_cents", "outstanding_cents", "months_on_book"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise RiskConfigError(f"exposure {name}={value!r:.40} must be an int >= 0")
        value = self.vehicle_value_cents
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise RiskConfigError(f"exposure vehicle_value_cents={value!r:.40} must be an int > 0 or None")

    @property
    def ltv(self) -> float | None:
        """Outstanding principal / current vehicle value (None when the value is unknown)."""
        if self.vehicle_value_cents is None:
            return None
        return self.outstanding_cents / self.vehicle_value_cents


def exposure_of(principal_cents: int, facts: RepaymentFacts, vehicle_value_cents: int | None = None) -> Exposure:
    """Exposure of a loan from its principal and repayment facts.

    Outstanding principal is approximated as the principal times the share of the scheduled
    amount not paid yet (interest and principal amortise together in the schedule).
    """
    scheduled = sum(i.amount_cents for i in facts.installments)
    if scheduled <= 0:
        outstanding = principal_cents
    else:
        remaining = max(0, scheduled - facts.total_paid_cents)
        outstanding = principal_cents * remaining // scheduled
    months = sum(1 for i in facts.installments if i.due_date <= facts.as_of)
    return Exposure(principal_cents, outstanding, vehicle_value_cents, months)


def delinquency_bucket(days_past_due: int) -> int:
    """0 current, 1: 1-29, 2: 30-59, 3: 60-89, 4: 90+ days past due."""
    if days_past_due <= 0:
        return 0
    return min(4, 1 + days_past_due // 30)


def _dpd_on(facts: RepaymentFacts, day: date) -> int:
    """Days past due on an earlier ``day`` from the instalment coverage dates (0 inside grace)."""
    grace = timedelta(days=facts.grace_days)
    for inst in facts.installments:
        if inst.due_date > day:
            return 0
        if inst.covered_on is None or inst.covered_on > day:
            return (day - inst.due_date).days if day > inst.due_date + grace else 0
    return 0


@dataclass(frozen=True, slots=True)
class FeatureRow:
    """One loan's features and the evidence they rest on.

    Attributes:
        values: one float per :data:`FEATURE_NAMES` entry.
        episodes: feature name -> alert episode ids behind it.
        stationary_days: not-moved time on vehicle time (None: unknown or device offline).
        offline_hours: how long the device has been offline (None: online or unknown).
    """

    values: tuple[float, ...]
    episodes: Mapping[str, tuple[str, ...]]
    stationary_days: float | None
    offline_hours: float | None

    def value(self, name: str) -> float:
        """The value of feature ``name``."""
        return self.values[_INDEX[name]]


def _alert_kinds(config: RiskConfig) -> tuple[tuple[str, frozenset[str]], ...]:
    return (
        ("market", config.market_rules),
        ("power_cut", config.power_cut_rules),
        ("towing", config.towing_rules),
        ("night_doors", config.night_door_rules),
        ("region_exit", config.region_rules),
        ("gnss_loss", config.gnss_rules),
    )


def _repayment_features(v: dict[str, float], facts: RepaymentFacts, config: FeatureConfig) -> None:
    """Delinquency bucket, roll-forward, decayed lates, streak, cure and arrears into ``v``."""
    overdue = facts.overdue
    dpd = facts.days_past_due if overdue else 0
    bucket = delinquency_bucket(dpd)
    if bucket:
        v[("dpd_1_29", "dpd_30_59", "dpd_60_89", "dpd_90_plus")[bucket - 1]] = 1.0
    if bucket and bucket > delinquency_bucket(_dpd_on(facts, facts.as_of - timedelta(days=30))):
        v["rolled_forward"] = 1.0
    year_ago = facts.as_of - timedelta(days=365)
    lates = [s for s in facts.installments if s.late]
    v["lates_decayed"] = float(
        sum(0.5 ** ((facts.as_of - s.due_date).days / config.late_half_life_days) for s in lates)
    )
    if overdue and facts.consecutive_late >= config.risk.late_streak:
        v["late_streak_active"] = 1.0
    if not overdue and any(s.due_date > year_ago for s in lates):
        v["cured"] = 1.0
    if overdue:
        typical = max(1, max((s.amount_cents for s in facts.installments), default=1))
        v["arrears_installments"] = min(6.0, facts.total_overdue_cents / typical)


def _alert_features(v: dict[str, float], inp: RiskInput, config: FeatureConfig) -> dict[str, tuple[str, ...]]:
    """Each alert kind's decayed weight into ``v``; returns the episodes behind each kind."""
    now = inp.evaluated_ms
    # Alerts raised after the evaluation time do not exist yet; a duplicate episode counts once.
    unique: dict[tuple[str, str], OpenAlert] = {}
    for alert in inp.alerts:
        if alert.raised_ms <= now:
            unique.setdefault((alert.rule, alert.episode), alert)
    # An episode's age is measured on vehicle time while the device is online (up to its newest
    # fix: a box whose clock runs behind the collector's still ages its alerts correctly), on the
    # collector clock otherwise (a silent box is missing data; "offline" carries that).
    last_fix = inp.movement.last_fix_ms
    clock = last_fix if inp.device.online and last_fix is not None else now
    episodes: dict[str, tuple[str, ...]] = {}
    for kind, rules in _alert_kinds(config.risk) if unique else ():
        matching = [a for a in unique.values() if a.rule in rules]
        if not matching:
            continue
        newest = max(a.raised_ms for a in matching)
        v[kind] = 0.5 ** (max(0, clock - newest) / DAY_MS / config.half_life_days[kind])
        episodes[kind] = tuple(sorted(a.episode for a in matching))
    return episodes


def _device_features(v: dict[str, float], inp: RiskInput, risk: RiskConfig) -> tuple[float | None, float | None]:
    """Offline and stationary into ``v``; returns (stationary days, offline hours)."""
    offline_ms = inp.device.offline_ms(inp.evaluated_ms)
    offline_hours = None if offline_ms is None else offline_ms / HOUR_MS
    offline = offline_hours is not None and offline_hours > risk.offline_hours
    if offline:
        v["offline"] = 1.0
    stationary_days: float | None = None
    last_fix, last_moved = inp.movement.last_fix_ms, inp.movement.last_moved_ms
    if not offline and last_fix is not None and last_moved is not None:
        stationary_days = max(0, last_fix - last_moved) / DAY_MS
        if stationary_days >= risk.stationary_days:
            v["stationary"] = 1.0
    return stationary_days, offline_hours


def _combination_features(v: dict[str, float], episodes: dict[str, tuple[str, ...]], overdue: bool) -> None:
    """The combinations of alert kinds (and repayment trouble) into ``v``, with their episodes."""
    v["theft_signature"] = min(v["power_cut"], v["towing"])
    v["night_doors_relocation"] = min(v["night_doors"], v["region_exit"])
    if overdue:
        v["market_while_overdue"] = v["market"]
        v["gnss_loss_while_overdue"] = v["gnss_loss"]
    v["night_doors_late_streak"] = v["night_doors"] * v["late_streak_active"]
    for combo, parts in (
        ("theft_signature", ("power_cut", "towing")),
        ("night_doors_relocation", ("night_doors", "region_exit")),
        ("market_while_overdue", ("market",)),
        ("gnss_loss_while_overdue", ("gnss_loss",)),
        ("night_doors_late_streak", ("night_doors",)),
    ):
        if v[combo] > 0:
            episodes[combo] = tuple(e for part in parts for e in episodes.get(part, ()))


def feature_row(inp: RiskInput, exposure: Exposure, config: FeatureConfig | None = None) -> FeatureRow:
    """The features of one loan at ``inp.evaluated_ms`` (see the module docstring)."""
    config = config or FeatureConfig()
    overdue = inp.facts.overdue
    v = dict.fromkeys(FEATURE_NAMES, 0.0)
    _repayment_features(v, inp.facts, config)

    ltv = exposure.ltv
    v["ltv"] = min(2.0, DEFAULT_LTV if ltv is None else ltv)
    if exposure.months_on_book < 6:
        v["early_months_on_book"] = 1.0

    episodes = _alert_features(v, inp, config)
    stationary_days, offline_hours = _device_features(v, inp, config.risk)
    if overdue:
        v["offline_while_overdue"] = v["offline"]
    if episodes:  # no open alert: every alert feature and combination stays 0
        _combination_features(v, episodes, overdue)
    return FeatureRow(tuple(v.values()), episodes, stationary_days, offline_hours)


def feature_rows(
    inputs: Sequence[RiskInput], exposures: Sequence[Exposure], config: FeatureConfig | None = None
) -> list[FeatureRow]:
    """:func:`feature_row` for many loans (``inputs`` and ``exposures`` pair up by position)."""
    if len(inputs) != len(exposures):
        raise RiskConfigError(f"{len(inputs)} inputs but {len(exposures)} exposures")
    config = config or FeatureConfig()
    return [feature_row(inp, exp, config) for inp, exp in zip(inputs, exposures, strict=True)]


def feature_matrix(rows: Sequence[FeatureRow]) -> npt.NDArray[np.float64]:
    """The ``(len(rows), len(FEATURE_NAMES))`` matrix of the rows' values."""
    if not rows:
        return np.zeros((0, len(FEATURE_NAMES)))
    return np.array([r.values for r in rows], dtype=np.float64)
