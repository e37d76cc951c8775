"""Traction-battery rules: ``hv_disconnect`` (high) and ``soh_drop`` (warning).

How ``hv_disconnect`` works: the pack's BMS sends every traction-battery signal; a pack
that is removed (or whose connector is pulled) vanishes from the bus while the gateway and
the body controller keep talking. So, with the ignition known to be off (parked):

* ``bms_silent``: no traction-battery sample for ``missing_after_s`` (counted from the
  later of the last one and the moment the ignition went off) while other CAN samples
  (12 V supply, ignition, speed) keep arriving. Only CAN input counts as proof
  that the bus is alive (GNSS and ticks do not), and a stretch with no CAN input at all
  longer than ``missing_after_s`` (bus asleep, box asleep or unplugged: that is
  ``power_cut``'s business) restarts the timer. A car whose BMS was never heard (no
  traction battery) never raises.
* ``pack_voltage_low``: the BMS still talks but reads the pack voltage below
  ``min_pack_voltage_v`` for ``low_for_s`` (service plug pulled, pack cabling cut).

The episode (``hv_disconnect:{since_ms}``) clears when the BMS talks again (``bms_silent``)
or the voltage is back at ``min_pack_voltage_v + hysteresis_v`` (``pack_voltage_low``).

How ``soh_drop`` works: each state-of-health reading is compared with the highest
reading of the last ``window_days`` days (kept as one maximum per UTC day, so the state
stays small). ``confirm_samples`` consecutive readings ``max_drop_percent`` or more below
that reference raise once (``soh_drop:{first_low_ms}``); the episode clears only if the
health comes back within half the threshold of the reference it was raised against (a
BMS recalibration), never by the reference ageing out: lost capacity is lost value.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from protocol import Alert, Severity
from protocol.rule_names import RuleName

from ._collateral_config import EV_SIGNALS, EV_SOH_SIGNAL, EV_VOLTAGE_SIGNAL, HvDisconnectConfig, SohDropConfig
from ._rule import Rule, SampleValue, cleared, episode_id, raised
from .config import IGNITION_SIGNAL, SPEED_SIGNAL, VOLTAGE_SIGNAL

__all__ = ["HvDisconnect", "HvDisconnectState", "SohDrop", "SohDropState"]

HV_NAME = RuleName.HV_DISCONNECT.value
SOH_NAME = RuleName.SOH_DROP.value
DAY_MS = 86_400_000
_IGNITION_ON = frozenset({"ON", "START"})


@dataclass(slots=True)
class HvDisconnectState:
    """Persisted state of ``hv_disconnect``."""

    bms_ms: int | None = None
    bus_ms: int | None = None
    ignition: str | None = None
    pack_voltage_v: float | None = None
    low_since_ms: int | None = None
    episode: str | None = None
    cause: str | None = None


class HvDisconnect(Rule):
    """The high-voltage disconnect / battery removal rule (see module docstring)."""

    key = HV_NAME
    state_type = HvDisconnectState
    episodes = (("episode", HV_NAME, Severity.HIGH),)
    wants_fixes = False

    def __init__(self, config: HvDisconnectConfig, counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.signals = EV_SIGNALS | {VOLTAGE_SIGNAL, IGNITION_SIGNAL, SPEED_SIGNAL}
        self.state = HvDisconnectState()

    def _clear(self, now: int, reason: str) -> list[Alert]:
        s = self.state
        assert s.episode is not None
        evidence = {"cause": s.cause, "reason": reason, "pack_voltage_v": s.pack_voltage_v}
        alert = cleared(HV_NAME, Severity.HIGH, now, s.episode, evidence)
        s.episode = s.cause = None
        return [alert]

    def on_signal(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        s = self.state
        missing_ms = self.config.missing_after_s * 1000
        if missing_ms > 0 and s.bus_ms is not None and now - s.bus_ms > missing_ms and s.bms_ms is not None:
            s.bms_ms = now  # the whole bus was silent: asleep or unplugged, not a missing pack
        s.bus_ms = now
        out: list[Alert] = []
        if name == IGNITION_SIGNAL:
            self._on_ignition(str(value), now)
        elif name in EV_SIGNALS:
            out.extend(self._on_bms(name, value, now))
        if s.episode is None and s.ignition is not None and s.ignition not in _IGNITION_ON:
            out.extend(self._check_parked(now, missing_ms))
        return out

    def _on_ignition(self, ignition: str, now: int) -> None:
        s = self.state
        parked_now = ignition not in _IGNITION_ON
        if parked_now and (s.ignition is None or s.ignition in _IGNITION_ON) and s.bms_ms is not None:
            s.bms_ms = now  # "while parked": the BMS's silence counts from the moment the car is off
        s.ignition = ignition

    def _on_bms(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        """A traction-battery signal: the BMS talks; a pack voltage may start or end a low stretch."""
        s = self.state
        cfg = self.config
        s.bms_ms = now
        out: list[Alert] = []
        if s.episode is not None and s.cause == "bms_silent":
            out.extend(self._clear(now, "bms_back"))
        if name != EV_VOLTAGE_SIGNAL:
            return out
        voltage = float(value)
        s.pack_voltage_v = voltage
        if voltage < cfg.min_pack_voltage_v:
            if s.low_since_ms is None:
                s.low_since_ms = now
            return out
        s.low_since_ms = None
        if (
            s.episode is not None
            and s.cause == "pack_voltage_low"
            and voltage >= cfg.min_pack_voltage_v + cfg.hysteresis_v
        ):
            out.extend(self._clear(now, "voltage_back"))
        return out

    def _check_parked(self, now: int, missing_ms: float) -> list[Alert]:
        """Parked with no open episode: raise on a silent BMS first, else on a pack voltage low long enough."""
        s = self.state
        if missing_ms > 0 and s.bms_ms is not None and now - s.bms_ms >= missing_ms:
            return self._raise(now, s.bms_ms, "bms_silent")
        if s.low_since_ms is not None and now - s.low_since_ms >= self.config.low_for_s * 1000:
            return self._raise(now, s.low_since_ms, "pack_voltage_low")
        return []

    def _raise(self, now: int, since_ms: int, cause: str) -> list[Alert]:
        s = self.state
        s.episode = episode_id(HV_NAME, since_ms)
        s.cause = cause
        evidence = {
            "cause": cause,
            "since_ms": since_ms,
            "last_bms_ms": s.bms_ms,
            "pack_voltage_v": s.pack_voltage_v,
            "ignition": s.ignition,
        }
        if cause == "bms_silent":
            evidence["missing_after_s"] = self.config.missing_after_s
        else:
            evidence["min_pack_voltage_v"] = self.config.min_pack_voltage_v
        return [raised(HV_NAME, Severity.HIGH, now, s.episode, evidence)]


@dataclass(slots=True)
class SohDropState:
    """Persisted state of ``soh_drop``: one (UTC day, highest reading) pair per day of the window."""

    day_index: list[int] = field(default_factory=list)
    day_max: list[float] = field(default_factory=list)
    low_count: int = 0
    low_since_ms: int | None = None
    episode: str | None = None
    reference: float | None = None


class SohDrop(Rule):
    """The abnormal state-of-health drop rule (see module docstring)."""

    key = SOH_NAME
    state_type = SohDropState
    episodes = (("episode", SOH_NAME, Severity.WARNING),)
    wants_fixes = False

    def __init__(self, config: SohDropConfig, counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.signals = frozenset({EV_SOH_SIGNAL})
        self.state = SohDropState()

    def on_signal(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        s = self.state
        cfg = self.config
        soh = float(value)
        today = now // DAY_MS
        while s.day_index and s.day_index[0] <= today - cfg.window_days:
            del s.day_index[0], s.day_max[0]
        reference = max(s.day_max) if s.day_max else None
        out: list[Alert] = []
        if s.episode is not None:
            assert s.reference is not None
            if soh >= s.reference - cfg.max_drop_percent / 2:
                evidence = {"reason": "recovered", "soh_percent": soh, "reference_percent": s.reference}
                out.append(cleared(SOH_NAME, Severity.WARNING, now, s.episode, evidence))
                s.episode = s.reference = None
                s.low_count, s.low_since_ms = 0, None
        elif reference is not None and soh <= reference - cfg.max_drop_percent:
            s.low_count += 1
            if s.low_since_ms is None:
                s.low_since_ms = now
            if s.low_count >= cfg.confirm_samples:
                s.episode = episode_id(SOH_NAME, s.low_since_ms)
                s.reference = reference
                evidence = {
                    "soh_percent": soh,
                    "reference_percent": reference,
                    "drop_percent": round(reference - soh, 2),
                    "since_ms": s.low_since_ms,
                    "window_days": cfg.window_days,
                    "max_drop_percent": cfg.max_drop_percent,
                }
                out.append(raised(SOH_NAME, Severity.WARNING, now, s.episode, evidence))
        else:
            s.low_count, s.low_since_ms = 0, None
        if s.day_index and s.day_index[-1] == today:
            s.day_max[-1] = max(s.day_max[-1], soh)
        else:
            s.day_index.append(today)
            s.day_max.append(soh)
        return out
