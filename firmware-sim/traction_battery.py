"""The simulated traction battery (EV pack and its BMS): the ``EV_BATTERY`` message's signals.

How this works: like the rest of the vehicle model, the pack is a pure function of the
compiled scenario. State of charge falls 0.12 %/km driven (0.072 kWh/km on the default
60 kWh pack) and rises during ``charge`` events at their power; state of health starts at
``[vehicle] soh_percent`` and follows ``battery_degrade`` events (linear to the target
over ``over``, or a step). Pack current follows the VSS sign (into the pack positive):
driving draws 0.072 kWh per km at the current speed, idling with the car on 0.5 kW,
charging puts the charge power in, a parked car draws nothing. The contactors are closed
(``HV_CONNECTED``) while the car is on or charging. An ``hv_disconnect`` event removes the
pack: the BMS, and with it the whole ``EV_BATTERY`` message, is silent until
``hv_restore``.
"""

from __future__ import annotations

from .scenario import Scenario, TimelineEvent

__all__ = ["CONSUMPTION_KWH_PER_KM", "EV_MESSAGE", "TractionBattery"]

EV_MESSAGE = "EV_BATTERY"
CONSUMPTION_KWH_PER_KM = 0.072
SOC_PERCENT_PER_KM = 0.12
IDLE_POWER_KW = 0.5
_HOUR_MS = 3_600_000


class TractionBattery:
    """The pack along a compiled scenario.

    Args:
        scenario: the compiled timeline (charge and degradation events are read from it).
    """

    def __init__(self, scenario: Scenario) -> None:
        vehicle = scenario.vehicle
        self._soc0 = vehicle.soc_percent
        self._soh0 = vehicle.soh_percent
        self._pack_kwh = vehicle.pack_kwh
        self.present = True
        self.charging = False
        starts: dict[int, tuple[int, float]] = {}
        self._charges: list[tuple[int, int, float]] = []  # (start_ms, end_ms, kW)
        self._degrades: list[tuple[int, int, float]] = []  # (start_ms, over_ms, target %)
        for event in scenario.events:
            if event.name == "charge_start":
                starts[int(event.data["session"])] = (event.time_ms, float(event.data["power_kw"]))
            elif event.name == "charge_end":
                begin, power = starts[int(event.data["session"])]
                self._charges.append((begin, event.time_ms, power))
            elif event.name == "battery_degrade":
                over_ms = round(float(event.data["over_s"]) * 1000)
                self._degrades.append((event.time_ms, over_ms, float(event.data["to"])))

    def apply(self, event: TimelineEvent) -> set[str]:
        """Apply a timeline event; return the DBC signals whose value changed."""
        name = event.name
        if name == "hv_disconnect":
            self.present = False
        elif name == "hv_restore":
            self.present = True
            return {"HV_VOLTAGE"}
        elif name in ("charge_start", "charge_end"):
            self.charging = name == "charge_start"
            return {"CHARGING", "HV_CONNECTED", "HV_CURRENT"}
        return set()

    def charged_kwh(self, time_ms: int) -> float:
        """Energy charged since the scenario start."""
        return sum(
            power * (min(time_ms, end) - start) / _HOUR_MS for start, end, power in self._charges if time_ms > start
        )

    def soh_percent(self, time_ms: int) -> float:
        """State of health at ``time_ms``."""
        value = self._soh0
        for start, over, target in self._degrades:
            if time_ms < start:
                break
            if over <= 0 or time_ms >= start + over:
                value = target
            else:
                value += (target - value) * (time_ms - start) / over
        return value

    def signals(self, time_ms: int, *, car_on: bool, speed_kmh: float, driven_km: float) -> dict[str, float]:
        """Physical values of the ``EV_BATTERY`` signals."""
        charged = self.charged_kwh(time_ms) / self._pack_kwh * 100.0
        soc = min(100.0, max(0.0, self._soc0 - SOC_PERCENT_PER_KM * driven_km + charged))
        voltage = 350.0 + 0.5 * soc
        power_kw = 0.0
        if self.charging:
            power_kw = next((p for s, e, p in self._charges if s <= time_ms < e), 0.0)
        elif car_on:
            power_kw = -(CONSUMPTION_KWH_PER_KM * speed_kmh if speed_kmh > 0 else IDLE_POWER_KW)
        return {
            "SOC_DISPLAYED": soc,
            "HV_VOLTAGE": voltage,
            "SOH": self.soh_percent(time_ms),
            "HV_CURRENT": power_kw * 1000.0 / voltage,
            "CHARGING": 1 if self.charging else 0,
            "HV_CONNECTED": 1 if (car_on or self.charging) else 0,
        }
