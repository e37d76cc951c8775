"""On-device anomaly rules: a pure engine fed GNSS epochs and CAN signals (sans-I/O).

Typical use::

    config = RulesConfig.from_dict(agent_toml["rules"], base_dir)
    engine = Engine(config, markets=load_markets(config.markets_file), state=saved)
    for event in events:                 # Fix | NoFix | SignalSample, in time order
        for record in engine.feed(event):  # Alert | DailyStats
            ...
    saved = engine.snapshot()            # JSON-ready; persist it

See docs/rules.md for every rule, its thresholds and how ordering is handled.
"""

from . import geo
from ._collateral_config import HvDisconnectConfig, PlaceTypeConfig, RelocationConfig, SohDropConfig
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
from .errors import ConfigError, EventError, PlacesError, RulesError, StateError
from .places import PLACE_TYPES, Market, Region, load_markets, load_regions

__all__ = [
    "DEFAULT_DOORS",
    "PLACE_TYPES",
    "RULE_NAMES",
    "SNAPSHOT_FORMAT",
    "ConfigError",
    "DailyStatsConfig",
    "DwellConfig",
    "Engine",
    "EventError",
    "GnssLostConfig",
    "HvDisconnectConfig",
    "Market",
    "NightDoorsConfig",
    "PlaceTypeConfig",
    "PlacesError",
    "PowerCutConfig",
    "Region",
    "RegionExitConfig",
    "RelocationConfig",
    "RulesConfig",
    "RulesCounters",
    "RulesError",
    "SohDropConfig",
    "StateError",
    "TowingConfig",
    "geo",
    "load_markets",
    "load_regions",
    "local_day_bounds",
]
