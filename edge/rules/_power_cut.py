"""``power_cut``: main supply cut or box unplugged (severity panic).

How this works: two causes open the same kind of episode.

* ``low_voltage``: ``Vehicle.LowVoltageBattery.CurrentVoltage`` below ``min_voltage_v``
  continuously for ``low_for_s`` (the low value holds until a new sample says otherwise,
  because the CAN decoder only sends changes and heartbeats).
* ``signal_lost``: the voltage was seen at least once, and then no voltage sample came
  for ``missing_after_s`` while other input (fixes, other signals, tick()) shows that
  time is passing, i.e. the box still runs (on its backup battery) but no longer hears the
  vehicle. A stretch with *no input at all* longer than ``missing_after_s`` (the box
  itself was off, or asleep) restarts the timer instead, so a reboot does not panic.

The episode (``power_cut:{since_ms}``) clears when a voltage sample at or above
``min_voltage_v + hysteresis_v`` arrives.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from protocol import Alert, Severity
from protocol.rule_names import RuleName

from ._rule import Rule, SampleValue, cleared, episode_id, raised
from .config import VOLTAGE_SIGNAL, PowerCutConfig

__all__ = ["PowerCut", "PowerCutState"]

NAME = RuleName.POWER_CUT.value


@dataclass(slots=True)
class PowerCutState:
    """Persisted state of the power-cut rule."""

    voltage: float | None = None
    voltage_ms: int | None = None
    low_since_ms: int | None = None
    observed_ms: int | None = None
    episode: str | None = None
    cause: str | None = None


class PowerCut(Rule):
    """The power-cut rule (see module docstring)."""

    key = NAME
    state_type = PowerCutState
    episodes = (("episode", NAME, Severity.PANIC),)
    wants_fixes = False

    def __init__(self, config: PowerCutConfig, counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.signals = frozenset({VOLTAGE_SIGNAL})
        self.state = PowerCutState()

    def _raise(self, now: int, since_ms: int, cause: str) -> list[Alert]:
        s = self.state
        s.episode = episode_id(NAME, since_ms)
        s.cause = cause
        evidence = {
            "cause": cause,
            "since_ms": since_ms,
            "voltage_v": s.voltage,
            "last_voltage_ms": s.voltage_ms,
            "min_voltage_v": self.config.min_voltage_v,
        }
        return [raised(NAME, Severity.PANIC, now, s.episode, evidence)]

    def advance(self, now: int, *, fix_arriving: bool = False) -> list[Alert]:
        s = self.state
        missing_ms = self.config.missing_after_s * 1000
        silent = s.observed_ms is not None and now - s.observed_ms > missing_ms
        if missing_ms > 0 and silent and s.voltage_ms is not None:
            # Nothing at all was observed for a while: the box was off or asleep. Time
            # only counts as "passing without the supply signal" from here on.
            s.voltage_ms = now
            if s.low_since_ms is not None:
                s.low_since_ms = now
        s.observed_ms = now
        if s.episode is not None:
            return []
        if s.low_since_ms is not None and now - s.low_since_ms >= self.config.low_for_s * 1000:
            return self._raise(now, s.low_since_ms, "low_voltage")
        if missing_ms > 0 and s.voltage_ms is not None and now - s.voltage_ms >= missing_ms:
            return self._raise(now, s.voltage_ms, "signal_lost")
        return []

    def on_signal(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        s = self.state
        voltage = float(value)
        s.voltage = voltage
        s.voltage_ms = now
        if voltage < self.config.min_voltage_v:
            if s.low_since_ms is None:
                s.low_since_ms = now
            if s.episode is None and now - s.low_since_ms >= self.config.low_for_s * 1000:
                return self._raise(now, s.low_since_ms, "low_voltage")
            return []
        s.low_since_ms = None
        if s.episode is not None and voltage >= self.config.min_voltage_v + self.config.hysteresis_v:
            evidence = {"cause": s.cause, "voltage_v": voltage, "restored_ms": now}
            alert = cleared(NAME, Severity.PANIC, now, s.episode, evidence)
            s.episode = None
            s.cause = None
            return [alert]
        return []
