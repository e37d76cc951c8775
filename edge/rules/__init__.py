"""On-device anomaly rules: a pure engine fed GNSS epochs and CAN signals (sans-I/O).

Typical use::

    config = RulesConfig.from_dict(agent_toml["rules"], base_dir)
    engine = Engine(config, markets=markets, regions=regions, state=saved)
    for event in events:                 # Fix | NoFix | SignalSample, in time order
        for record in engine.feed(event):  # Alert | DailyStats
            ...
    saved = engine.snapshot()            # JSON-ready; persist it

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
from .errors import ConfigError, EventError, RulesError, StateError

__all__ = [
    "DEFAULT_DOORS",
    "RULE_NAMES",
    "SNAPSHOT_FORMAT",
    "ConfigError",
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
    "RulesError",
    "StateError",
    "TowingConfig",
    "local_day_bounds",
]
