"""The traction battery's share of the daily statistics: energy used and charged, sessions, health.

How this works: pack power is ``CurrentVoltage x CurrentCurrent`` (VSS sign: current into
the pack is positive), each value held until the next sample (the signal map sends them on
change with a deadband and a heartbeat). At every voltage or current sample the energy
since the previous one is added to *charged* (power > 0) or *used* (power < 0), unless the
two samples are more than ``MAX_GAP_MS`` apart (box asleep, bus silent: nothing is guessed).
A charging session is a change of ``Charging.IsCharging`` to true (the first value after a
fresh start counts too; a restored state remembers the last one). The state of health is
the last reading, carried into the next day like the odometer.

The figures are ``None`` (absent from the record) until the tracker has heard any
traction-battery signal, so a car without one sends the same statistics as before.
:class:`~edge.rules._daily_stats.DailyStatsTracker` asks :meth:`EvDayMeter.figures` when it
writes a record and calls :meth:`EvDayMeter.start_day` when a new local day begins. The
state is its own snapshot entry (``ev_daily_stats``), so older snapshots still restore.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._collateral_config import (
    EV_CHARGING_SIGNAL,
    EV_CURRENT_SIGNAL,
    EV_SIGNALS,
    EV_SOH_SIGNAL,
    EV_VOLTAGE_SIGNAL,
)
from ._rule import SampleValue

__all__ = ["MAX_GAP_MS", "EvDayMeter", "EvDayState"]

MAX_GAP_MS = 180_000


@dataclass(slots=True)
class EvDayState:
    """Persisted state of the EV statistics."""

    seen: bool = False
    voltage_v: float | None = None
    current_a: float | None = None
    power_ms: int | None = None
    used_wh: float = 0.0
    charged_wh: float = 0.0
    sessions: int = 0
    charging: bool | None = None
    soh_percent: float | None = None


class EvDayMeter:
    """Folds traction-battery samples into the current day's EV figures."""

    key = "ev_daily_stats"
    state_type = EvDayState
    signals = EV_SIGNALS

    def __init__(self) -> None:
        self.state = EvDayState()

    def start_day(self) -> None:
        """A new local day: energy and sessions start from zero (health and held values carry over)."""
        s = self.state
        s.used_wh = s.charged_wh = 0.0
        s.sessions = 0

    def figures(self) -> dict[str, Any]:
        """Keyword arguments for :class:`protocol.DailyStats` (empty for a car without traction battery)."""
        s = self.state
        if not s.seen:
            return {}
        return {
            "energy_used_kwh": round(min(s.used_wh / 1000.0, 1e5), 3),
            "energy_charged_kwh": round(min(s.charged_wh / 1000.0, 1e5), 3),
            "charging_sessions": min(s.sessions, 10_000),
            "soh_percent": s.soh_percent,
        }

    def on_signal(self, name: str, value: SampleValue, now: int) -> None:
        """Fold one traction-battery sample (value type already checked by the engine)."""
        s = self.state
        s.seen = True
        if name == EV_CHARGING_SIGNAL:
            charging = bool(value)
            if charging and s.charging is not True:
                s.sessions += 1
            s.charging = charging
        elif name == EV_SOH_SIGNAL:
            s.soh_percent = float(value)
        elif name in (EV_VOLTAGE_SIGNAL, EV_CURRENT_SIGNAL):
            if s.power_ms is not None and s.voltage_v is not None and s.current_a is not None:
                elapsed = now - s.power_ms
                if 0 < elapsed <= MAX_GAP_MS:
                    energy_wh = s.voltage_v * s.current_a * elapsed / 3_600_000.0
                    if energy_wh > 0:
                        s.charged_wh += energy_wh
                    else:
                        s.used_wh -= energy_wh
            if name == EV_VOLTAGE_SIGNAL:
                s.voltage_v = float(value)
            else:
                s.current_a = float(value)
            s.power_ms = now
