"""Thresholds of the collateral-signal rules (EV traction battery, learned home base), typed and validated.

They are fields of :class:`~edge.rules.RulesConfig` (``[rules.hv_disconnect]``,
``[rules.soh_drop]``, ``[rules.relocation]``), kept in their own module so these rules stay
apart from the original rule set. Defaults are the documented defaults (docs/rules.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol.places import PlaceType

__all__ = [
    "EV_CHARGING_SIGNAL",
    "EV_CONNECTED_SIGNAL",
    "EV_CURRENT_SIGNAL",
    "EV_SIGNALS",
    "EV_SIGNAL_RANGES",
    "EV_SOC_SIGNAL",
    "EV_SOH_SIGNAL",
    "EV_VOLTAGE_SIGNAL",
    "PLACE_TYPE_DEFAULTS",
    "SEVERITY_NAMES",
    "HvDisconnectConfig",
    "PlaceTypeConfig",
    "RelocationConfig",
    "SohDropConfig",
]

_PACK = "Vehicle.Powertrain.TractionBattery"
EV_SOC_SIGNAL = f"{_PACK}.StateOfCharge.Displayed"
EV_SOH_SIGNAL = f"{_PACK}.StateOfHealth"
EV_VOLTAGE_SIGNAL = f"{_PACK}.CurrentVoltage"
EV_CURRENT_SIGNAL = f"{_PACK}.CurrentCurrent"
EV_CHARGING_SIGNAL = f"{_PACK}.Charging.IsCharging"
EV_CONNECTED_SIGNAL = f"{_PACK}.IsPowerConnected"
#: every traction-battery signal: any of them proves the pack's BMS is on the bus
EV_SIGNALS = frozenset(
    {EV_SOC_SIGNAL, EV_SOH_SIGNAL, EV_VOLTAGE_SIGNAL, EV_CURRENT_SIGNAL, EV_CHARGING_SIGNAL, EV_CONNECTED_SIGNAL}
)
#: accepted value ranges of the numeric ones (others are bool); outside = ``bad_signal_values``
EV_SIGNAL_RANGES: dict[str, tuple[float, float]] = {
    EV_SOC_SIGNAL: (0.0, 100.0),
    EV_SOH_SIGNAL: (0.0, 100.0),
    EV_VOLTAGE_SIGNAL: (0.0, 2000.0),
    EV_CURRENT_SIGNAL: (-5000.0, 5000.0),
}


def _at_least(where: str, value: float, low: float) -> None:
    if not value >= low:
        raise ValueError(f"{where}={value!r} must be >= {low:g}")


@dataclass(frozen=True, slots=True)
class HvDisconnectConfig:
    """``hv_disconnect`` (severity high): the traction battery disconnected or removed while parked.

    Attributes:
        enabled: run the rule.
        missing_after_s: the pack's BMS (every traction-battery signal) silent this long
            while the rest of the bus still talks (cause ``bms_silent``); 0 = off.
        min_pack_voltage_v: a pack voltage below this (the BMS still talks) is a
            disconnected pack (cause ``pack_voltage_low``).
        hysteresis_v: that cause clears at ``min_pack_voltage_v + hysteresis_v`` or more.
        low_for_s: the voltage must stay low this long.
    """

    enabled: bool = True
    missing_after_s: float = 240.0
    min_pack_voltage_v: float = 60.0
    hysteresis_v: float = 20.0
    low_for_s: float = 10.0

    def __post_init__(self) -> None:
        _at_least("missing_after_s", self.missing_after_s, 0.0)
        _at_least("min_pack_voltage_v", self.min_pack_voltage_v, 1.0)
        _at_least("hysteresis_v", self.hysteresis_v, 0.0)
        _at_least("low_for_s", self.low_for_s, 0.0)


@dataclass(frozen=True, slots=True)
class SohDropConfig:
    """``soh_drop`` (severity warning): the pack's state of health fell abnormally fast.

    Attributes:
        enabled: run the rule.
        max_drop_percent: a reading this many points (or more) under the highest reading
            of the last ``window_days`` days is abnormal (a healthy pack loses 2-3 a year).
        window_days: how far back the reference (highest reading) looks.
        confirm_samples: consecutive abnormal readings needed (one glitch never raises).
    """

    enabled: bool = True
    max_drop_percent: float = 5.0
    window_days: int = 30
    confirm_samples: int = 2

    def __post_init__(self) -> None:
        if not 0.5 <= self.max_drop_percent <= 100.0:
            raise ValueError(f"max_drop_percent={self.max_drop_percent!r} must be in 0.5..100")
        if not 1 <= self.window_days <= 730:
            raise ValueError(f"window_days={self.window_days} must be in 1..730")
        if not 1 <= self.confirm_samples <= 100:
            raise ValueError(f"confirm_samples={self.confirm_samples} must be in 1..100")


_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def _minute_of_day(where: str, text: str) -> int:
    match = _HHMM.fullmatch(text)
    if match is None:
        raise ValueError(f"{where}={text!r} must be HH:MM (00:00..23:59)")
    return int(match.group(1)) * 60 + int(match.group(2))


@dataclass(frozen=True, slots=True)
class RelocationConfig:
    """``relocation`` (severity high) and the home-base learner behind it.

    Attributes:
        enabled: run the learner and the rule.
        night_start, night_end: local ``HH:MM`` window whose place is "where the car spent
            the night" (may span midnight).
        day_start, day_end: local ``HH:MM`` window whose place is "where the car spends the day".
        min_presence_s: a window's place is the place where the car stayed longest inside
            it, if at least this long; otherwise the window is undetermined (neither home
            nor away: a car driven all night proves nothing).
        stay_radius_m: fixes within this distance of where a stay began belong to it.
        leave_fixes: consecutive fixes outside that end a stay (one outlier never does).
        place_radius_m: window places this close are the same place.
        usual_min_visits: nights plus days at a place that make it usual.
        away_nights: nights in a row (undetermined ones skipped) at no place that was
            usual when the run began raise ``relocation`` (cause ``away_nights``).
        far_km, far_days: local days in a row whose every fix is more than ``far_km`` from
            every usual place raise it too (cause ``far_days``, the flight signature).
        forget_days: a place not visited for this long is forgotten.
        max_places: places kept at most (least used forgotten first).
        id_salt: mixed into the hashed place ids that leave the device; set a per-device
            secret so nobody can recompute them from candidate coordinates.
    """

    enabled: bool = True
    night_start: str = "00:00"
    night_end: str = "05:00"
    day_start: str = "10:00"
    day_end: str = "16:00"
    min_presence_s: float = 7200.0
    stay_radius_m: float = 200.0
    leave_fixes: int = 3
    place_radius_m: float = 500.0
    usual_min_visits: int = 3
    away_nights: int = 10
    far_km: float = 300.0
    far_days: int = 10
    forget_days: int = 90
    max_places: int = 16
    id_salt: str = ""

    def __post_init__(self) -> None:
        for start, end in (("night_start", "night_end"), ("day_start", "day_end")):
            if _minute_of_day(start, getattr(self, start)) == _minute_of_day(end, getattr(self, end)):
                raise ValueError(f"{start} and {end} must differ")
        _at_least("min_presence_s", self.min_presence_s, 60.0)
        _at_least("stay_radius_m", self.stay_radius_m, 10.0)
        _at_least("place_radius_m", self.place_radius_m, 10.0)
        _at_least("far_km", self.far_km, 1.0)
        for name, low, high in (
            ("leave_fixes", 1, 100),
            ("usual_min_visits", 1, 1000),
            ("away_nights", 1, 365),
            ("far_days", 1, 365),
            ("forget_days", 1, 3650),
            ("max_places", 1, 256),
        ):
            value = getattr(self, name)
            if not low <= value <= high:
                raise ValueError(f"{name}={value} must be in {low}..{high}")
        if len(self.id_salt) > 256:
            raise ValueError("id_salt must be at most 256 characters")

    def window_minutes(self, kind: str) -> tuple[int, int]:
        """(start, end) minutes after local midnight of the ``night`` or ``day`` window."""
        if kind == "night":
            return _minute_of_day("night_start", self.night_start), _minute_of_day("night_end", self.night_end)
        return _minute_of_day("day_start", self.day_start), _minute_of_day("day_end", self.day_end)


SEVERITY_NAMES = ("info", "warning", "high", "panic")
#: dwell threshold (seconds) and severity of each place type; ``used_car_market`` takes its
#: threshold from ``[rules.stationary_near_market] min_duration_s`` unless set here
PLACE_TYPE_DEFAULTS: dict[PlaceType, tuple[float | None, str]] = {
    PlaceType.USED_CAR_MARKET: (None, "high"),
    PlaceType.PAWN_LOT: (24 * 3600.0, "high"),
    PlaceType.AUCTION: (24 * 3600.0, "high"),
    PlaceType.IMPOUND_YARD: (24 * 3600.0, "warning"),
    PlaceType.PORT: (48 * 3600.0, "high"),
    PlaceType.BORDER_CROSSING: (6 * 3600.0, "high"),
}
assert set(PLACE_TYPE_DEFAULTS) == set(PlaceType), "every place type needs a default dwell and severity"


@dataclass(frozen=True, slots=True)
class PlaceTypeConfig:
    """``[rules.stationary_near_market.place_types.TYPE]``: one place type's dwell rule.

    Attributes:
        min_duration_s: how long the car must stay in such a place (None: the type's default).
        severity: ``info`` | ``warning`` | ``high`` | ``panic`` (None: the type's default).
    """

    min_duration_s: float | None = None
    severity: str | None = None

    def __post_init__(self) -> None:
        if self.min_duration_s is not None and not self.min_duration_s > 0:
            raise ValueError(f"min_duration_s={self.min_duration_s!r} must be > 0")
        if self.severity is not None and self.severity not in SEVERITY_NAMES:
            raise ValueError(f"severity={self.severity!r} must be one of {list(SEVERITY_NAMES)}")
