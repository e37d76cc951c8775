"""On-device anomaly rules: a pure engine fed GNSS epochs and CAN signals (sans-I/O).

Typical use (what :func:`edge.agent.build_engine` does)::

    config = edge.config.load_config("agent.toml")          # [rules] is a RulesConfig already
    markets, regions = edge.place_files.load_rules_places(config.rules)
    engine = Engine(config.rules, markets=markets, regions=regions, state=saved)
    for event in events:                 # Fix | NoFix | SignalSample, in time order
        for record in engine.feed(event):  # Alert | DailyStats
            ...
    saved = engine.snapshot()            # JSON-ready; persist it

The engine reads no file and no clock: places come in as :mod:`protocol.places` values and
time from the events.

See docs/rules.md for every rule, its thresholds and how ordering is handled.
"""

from ._daily_stats import local_day_bounds
from .config import (
    DEFAULT_DOORS,
    DailyStatsConfig,
    DwellConfig,
    GnssLostConfig,
    NightDoorsConfig,
    PowerCutConfig,
    RegionExitConfig,
    RulesConfig,
    TowingConfig,
)
from .engine import RULE_NAMES, SNAPSHOT_FORMAT, Engine, RulesCounters
from .errors import EventError, StateError

__all__ = [
    "DEFAULT_DOORS",
    "RULE_NAMES",
    "SNAPSHOT_FORMAT",
    "DailyStatsConfig",
    "DwellConfig",
    "Engine",
    "EventError",
    "GnssLostConfig",
    "NightDoorsConfig",
    "PowerCutConfig",
    "RegionExitConfig",
    "RulesConfig",
    "RulesCounters",
    "StateError",
    "TowingConfig",
    "local_day_bounds",
]
