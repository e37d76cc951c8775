"""The rules engine: a pure object fed GNSS epochs and signal samples, returning records.

How this works: the engine owns one *clock*, the newest observation time it has seen.
Every accepted event first advances time (day roll-over, timers of rules that have them),
then goes to the rules that asked for it (fixes to the position rules, each signal name
to its subscribers). Nothing here reads a clock, a file or a socket.

Ordering, as documented in docs/rules.md:

* GNSS epochs (Fix and NoFix) form one stream: an epoch not newer than the previous one
  is a duplicate or replay, counted ``duplicate_epochs`` and dropped.
* Per signal name, a sample older than the previous one, or with the same time and
  value, is counted ``duplicate_samples`` and dropped.
* Across streams, an event older than the clock by at most ``reorder_tolerance_ms``
  (CAN and GNSS interleave with small skews) is processed *as if at the clock*, counted
  ``late_events``; anything older is counted ``stale_events`` and dropped. Rules therefore
  only ever see non-decreasing time, so no duration can go negative.
* A known signal with a value of the wrong type or out of range is counted
  ``bad_signal_values`` and dropped; a sample of a name no rule uses is counted
  ``ignored_samples``. Feeding anything but Fix / NoFix / SignalSample raises
  :class:`~edge.rules.errors.EventError` (and counts ``rejected_events``).

The snapshot is a JSON-ready dict: the engine's stream positions plus every rule's state
dataclass, field by field. ``Engine(config, state=snapshot)`` restores it exactly.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol import Alert, DailyStats, Fix, NoFix, SignalSample
from protocol.places import Place, Region
from protocol.rule_names import RuleName

from ._daily_stats import DailyStatsTracker
from ._gnss_lost import GnssWatch
from ._night_door_openings import NightDoorOpenings
from ._power_cut import PowerCut
from ._region_exit import RegionExit
from ._rule import Rule, SampleValue
from ._stationary_near_market import StationaryNearMarket
from ._towing import Towing
from ._typed_values import build_dataclass, dump_dataclass
from .config import IGNITION_SIGNAL, ODOMETER_SIGNAL, SPEED_SIGNAL, VOLTAGE_SIGNAL, RulesConfig
from .errors import EventError, StateError

__all__ = ["RULE_NAMES", "SNAPSHOT_FORMAT", "Engine", "RulesCounters"]

SNAPSHOT_FORMAT = "lienwatch.rules/1"
#: Every alert rule name the engine can raise.
RULE_NAMES = frozenset(name.value for name in RuleName)
Output = list[Alert | DailyStats]

COUNTER_NAMES = (
    "fixes",
    "poor_fixes",
    "no_fixes",
    "samples",
    "ticks",
    "late_events",
    "stale_events",
    "stale_ticks",
    "duplicate_epochs",
    "duplicate_samples",
    "ignored_samples",
    "bad_signal_values",
    "rejected_events",
    "door_openings",
    "stats_glitches",
    "alerts_raised",
    "alerts_cleared",
    "stats_records",
)


class RulesCounters(Counter[str]):
    """Event counters of the engine (a :class:`collections.Counter`)."""

    def as_dict(self) -> dict[str, int]:
        """Every known counter (zeros included), plus any other that was touched."""
        out = dict.fromkeys(COUNTER_NAMES, 0)
        out.update(self)
        return out


def _number(lo: float, hi: float) -> Callable[[SampleValue], SampleValue | None]:
    def check(value: SampleValue) -> SampleValue | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value) or not lo <= value <= hi:
            return None
        return float(value)

    return check


def _boolean(value: SampleValue) -> SampleValue | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    return None


def _ignition(value: SampleValue) -> SampleValue | None:
    if isinstance(value, str) and value.upper() in {"OFF", "ACC", "ON", "START", "LOCK"}:
        return value.upper()
    return None


_VALUE_CHECKS: dict[str, Callable[[SampleValue], SampleValue | None]] = {
    SPEED_SIGNAL: _number(0.0, 600.0),
    VOLTAGE_SIGNAL: _number(0.0, 100.0),
    ODOMETER_SIGNAL: _number(0.0, 1e8),
    IGNITION_SIGNAL: _ignition,
}


@dataclass(slots=True)
class _StreamState:
    clock_ms: int | None = None
    gnss_ms: int | None = None
    sample_ms: dict[str, int] = field(default_factory=dict)


class Engine:
    """The on-device anomaly rules (pure: values in, records out).

    Args:
        config: thresholds (:class:`~edge.rules.RulesConfig`).
        markets: used-car markets (WGS-84, see :func:`~edge.rules.load_markets`).
        regions: allowed regions (:func:`~edge.rules.load_regions`); none = region rule off.
        state: a dict from :meth:`snapshot` (possibly through JSON) to continue from.

    Raises:
        StateError: ``state`` is not a snapshot this version can restore.
    """

    def __init__(
        self,
        config: RulesConfig,
        *,
        markets: Sequence[Place] = (),
        regions: Sequence[Region] = (),
        state: Mapping[str, Any] | None = None,
    ) -> None:
        self.counters = RulesCounters()
        self._stream = _StreamState()
        self._last_value: dict[str, SampleValue] = {}
        self._pending: Output = []
        self._markets = tuple(markets)
        self._regions = tuple(regions)
        self._config = config
        self._build(config)
        if state is not None:
            self._restore(state)

    # ------------------------------------------------------------------ wiring

    def _build(self, config: RulesConfig, keep: Mapping[str, Any] | None = None) -> None:
        zone = config.zone
        self._dwell = StationaryNearMarket(config.stationary_near_market, self._markets, self.counters)
        self._night = NightDoorOpenings(config.night_door_openings, zone, self.counters)
        self._power = PowerCut(config.power_cut, self.counters)
        self._gnss = GnssWatch(config.gnss_lost, self.counters)
        self._towing = Towing(config.towing, self.counters)
        self._region = RegionExit(config.region_exit, self._regions, self.counters)
        self._stats = DailyStatsTracker(config.daily_stats, zone, self.counters)
        self._all_rules: tuple[Rule, ...] = (
            self._dwell,
            self._night,
            self._power,
            self._gnss,
            self._towing,
            self._region,
        )
        if keep is not None:
            for rule in self._all_rules:
                rule.state = keep[rule.key]
            self._stats.state = keep[self._stats.key]
        enabled = {
            self._dwell.key: config.stationary_near_market.enabled,
            self._night.key: config.night_door_openings.enabled,
            self._power.key: config.power_cut.enabled,
            self._gnss.key: config.gnss_lost.enabled,
            self._towing.key: config.towing.enabled,
            self._region.key: config.region_exit.enabled,
        }
        self._rules = tuple(r for r in self._all_rules if enabled[r.key])
        self._disabled = tuple(r for r in self._all_rules if not enabled[r.key])
        self._timed = tuple(r for r in self._rules if type(r).advance is not Rule.advance)
        self._fix_rules = tuple(r for r in self._rules if r.wants_fixes)
        routes: dict[str, list[Callable[[str, SampleValue, int], list[Any] | None]]] = {}
        for rule in self._rules:
            for name in rule.signals:
                routes.setdefault(name, []).append(rule.on_signal)
        if config.daily_stats.enabled:
            for name in self._stats.signals:
                routes.setdefault(name, []).append(self._stats.on_signal)
        self._routes = {name: tuple(handlers) for name, handlers in routes.items()}
        self._checks = dict(_VALUE_CHECKS)
        for door in config.night_door_openings.doors:
            self._checks[door] = _boolean
        self._stats_on = config.daily_stats.enabled

    def _states(self) -> dict[str, Any]:
        states = {rule.key: rule.state for rule in self._all_rules}
        states[self._stats.key] = self._stats.state
        return states

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> RulesConfig:
        """The configuration in force."""
        return self._config

    @property
    def active_rules(self) -> frozenset[str]:
        """Names of rules with an open episode (the batcher closes batches faster then)."""
        return frozenset(name for rule in self._rules for name in rule.open_episodes())

    def set_markets(self, markets: Sequence[Place]) -> None:
        """Replace the market list (e.g. from a collector config); takes effect at the next fix."""
        self._markets = tuple(markets)
        self._dwell.set_markets(self._markets)

    def set_regions(self, regions: Sequence[Region]) -> None:
        """Replace the allowed regions; an empty list switches the region rule off (and clears it)."""
        self._regions = tuple(regions)
        self._region.set_regions(self._regions)

    def set_config(self, config: RulesConfig) -> None:
        """Apply new thresholds, keeping every rule's state.

        A rule switched off with an open episode gets a CLEARED record (reason
        ``rule_disabled``), returned by the next :meth:`feed` or :meth:`tick`.
        """
        keep = self._states()
        self._config = config
        self._build(config, keep)
        now = self._stream.clock_ms
        if now is not None:
            for rule in self._disabled:
                self._pending.extend(rule.close(now, "rule_disabled"))

    def feed(self, event: Fix | NoFix | SignalSample) -> Output:
        """Process one observation; returns the alert and statistics records it produced.

        Raises:
            EventError: ``event`` is not a Fix, NoFix or SignalSample.
        """
        if isinstance(event, SignalSample):
            return self._feed_sample(event)
        if isinstance(event, (Fix, NoFix)):
            return self._feed_epoch(event)
        self.counters["rejected_events"] += 1
        raise EventError(f"engine input must be Fix, NoFix or SignalSample, got {type(event).__name__}")

    def tick(self, time_ms: int) -> Output:
        """Time has passed with no event (host timer mapped onto observation time)."""
        if isinstance(time_ms, bool) or not isinstance(time_ms, int):
            self.counters["rejected_events"] += 1
            raise EventError(f"tick time must be int epoch milliseconds, got {time_ms!r:.40}")
        self.counters["ticks"] += 1
        clock = self._stream.clock_ms
        if clock is not None and time_ms < clock:
            self.counters["stale_ticks"] += 1
            return self._drain([])
        self._stream.clock_ms = time_ms
        return self._drain(self._advance(time_ms))

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable state; ``Engine(config, state=snapshot)`` continues from it."""
        return {
            "format": SNAPSHOT_FORMAT,
            "stream": dump_dataclass(self._stream),
            "rules": {key: dump_dataclass(state) for key, state in self._states().items()},
        }

    # ------------------------------------------------------------------ internals

    def _restore(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping):
            raise StateError(f"engine state must be a map, got {type(state).__name__}")
        if state.get("format") != SNAPSHOT_FORMAT:
            raise StateError(f"engine state format {state.get('format')!r} is not {SNAPSHOT_FORMAT!r}")
        unknown = set(state) - {"format", "stream", "rules"}
        if unknown:
            raise StateError(f"unknown key state.{sorted(unknown)[0]}")
        self._stream = build_dataclass(_StreamState, state.get("stream"), "state.stream", StateError, require_all=True)
        rules = state.get("rules")
        if not isinstance(rules, Mapping):
            raise StateError("state.rules must be a map")
        holders = {rule.key: rule for rule in self._all_rules}
        for key in rules:
            if key not in holders and key != self._stats.key:
                raise StateError(f"unknown key state.rules.{key}")
        for key, data in rules.items():
            holder = holders.get(key, self._stats)
            holder.state = build_dataclass(holder.state_type, data, f"state.rules.{key}", StateError, require_all=True)
        # Rules missing from an older snapshot simply start fresh.

    def _admit(self, time_ms: int) -> int | None:
        clock = self._stream.clock_ms
        if clock is None or time_ms >= clock:
            self._stream.clock_ms = time_ms
            return time_ms
        if clock - time_ms <= self._config.reorder_tolerance_ms:
            self.counters["late_events"] += 1
            return clock
        self.counters["stale_events"] += 1
        return None

    def _advance(self, now: int, *, fix_arriving: bool = False) -> Output:
        out: Output = []
        if self._stats_on:
            out.extend(self._stats.advance(now))
        for rule in self._timed:
            alerts = rule.advance(now, fix_arriving=fix_arriving)
            if alerts:
                out.extend(alerts)
        return out

    def _feed_epoch(self, event: Fix | NoFix) -> Output:
        stream = self._stream
        if stream.gnss_ms is not None and event.time_ms <= stream.gnss_ms:
            self.counters["duplicate_epochs"] += 1
            return self._drain([])
        now = self._admit(event.time_ms)
        if now is None:
            return self._drain([])
        stream.gnss_ms = event.time_ms
        out = self._advance(now, fix_arriving=isinstance(event, Fix))
        if isinstance(event, Fix):
            self.counters["fixes"] += 1
            cfg = self._config
            good = (event.hdop is None or event.hdop <= cfg.max_hdop) and (
                event.sats_used is None or event.sats_used >= cfg.min_sats
            )
            if not good:
                self.counters["poor_fixes"] += 1
            for rule in self._fix_rules:
                alerts = rule.on_fix(event, good, now)
                if alerts:
                    out.extend(alerts)
            if self._stats_on:
                self._stats.on_fix(event, good, now)
        else:
            self.counters["no_fixes"] += 1
            for rule in self._fix_rules:
                alerts = rule.on_no_fix(event, now)
                if alerts:
                    out.extend(alerts)
        return self._drain(out)

    def _feed_sample(self, event: SignalSample) -> Output:
        self.counters["samples"] += 1
        name = event.name
        routes = self._routes.get(name)
        if routes is None:
            self.counters["ignored_samples"] += 1
            now = self._admit(event.time_ms)
            return self._drain([] if now is None else self._advance(now))
        value = self._checks.get(name, _boolean)(event.value)
        if value is None:
            self.counters["bad_signal_values"] += 1
            return self._drain([])
        previous = self._stream.sample_ms.get(name)
        if previous is not None and (
            event.time_ms < previous or (event.time_ms == previous and self._last_value.get(name) == value)
        ):
            self.counters["duplicate_samples"] += 1
            return self._drain([])
        now = self._admit(event.time_ms)
        if now is None:
            return self._drain([])
        self._stream.sample_ms[name] = event.time_ms
        self._last_value[name] = value
        out = self._advance(now)
        for handler in routes:
            alerts = handler(name, value, now)
            if alerts:
                out.extend(alerts)
        return self._drain(out)

    def _drain(self, out: Output) -> Output:
        if self._pending:
            out = self._pending + out
            self._pending = []
        for record in out:
            if isinstance(record, Alert):
                self.counters["alerts_raised" if record.state == 0 else "alerts_cleared"] += 1
            else:
                self.counters["stats_records"] += 1
        return out
