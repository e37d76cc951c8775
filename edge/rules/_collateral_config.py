"""Thresholds of the collateral-signal rules (EV traction battery), typed and validated.

They are fields of :class:`~edge.rules.RulesConfig` (``[rules.hv_disconnect]``,
``[rules.soh_drop]``), kept in their own module so the battery rules stay apart from the
original rule set. Defaults are the documented defaults (docs/rules.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EV_CHARGING_SIGNAL",
    "EV_CONNECTED_SIGNAL",
    "EV_CURRENT_SIGNAL",
    "EV_SIGNALS",
    "EV_SIGNAL_RANGES",
    "EV_SOC_SIGNAL",
    "EV_SOH_SIGNAL",
    "EV_VOLTAGE_SIGNAL",
    "HvDisconnectConfig",
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
