"""Every threshold of the on-device rules, in one typed, validated object.

Built from the ``[rules]`` section of agent.toml by :meth:`RulesConfig.from_dict`; each
rule has its own sub-table (``[rules.power_cut]`` ...). Unknown keys are an error naming
the key. The defaults below are the documented defaults (docs/rules.md).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from edge.errors import ConfigError

from ._typed_values import build_dataclass, dump_dataclass

__all__ = [
    "DEFAULT_DOORS",
    "IGNITION_SIGNAL",
    "ODOMETER_SIGNAL",
    "SPEED_SIGNAL",
    "VOLTAGE_SIGNAL",
    "DailyStatsConfig",
    "DwellConfig",
    "GnssLostConfig",
    "NightDoorsConfig",
    "PowerCutConfig",
    "RegionExitConfig",
    "RulesConfig",
    "TowingConfig",
]

SPEED_SIGNAL = "Vehicle.Speed"
IGNITION_SIGNAL = "Vehicle.LowVoltageSystemState"
VOLTAGE_SIGNAL = "Vehicle.LowVoltageBattery.CurrentVoltage"
ODOMETER_SIGNAL = "Vehicle.TraveledDistance"
DEFAULT_DOORS: tuple[str, ...] = (
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen",
    "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen",
    "Vehicle.Body.Trunk.Rear.IsOpen",
)
_HHMM = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")


def _positive(where: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{where}={value!r} must be > 0")


def _non_negative(where: str, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{where}={value!r} must be >= 0")


@dataclass(frozen=True, slots=True)
class DwellConfig:
    """``stationary_near_market`` (severity high).

    Attributes:
        enabled: run the rule.
        radius_m: the vehicle counts as staying put while good fixes are within this
            distance of the dwell centre (a running median of recent positions).
        min_duration_s: how long it must stay (default 72 h).
        leave_fixes: consecutive good fixes outside the radius that end a dwell (one
            outlier never ends a three-day dwell).
        centre_samples: positions kept for the running median centre.
        centre_sample_interval_s: at most one position per this many seconds enters the
            median buffer (so a 10 Hz burst does not flush the history).
    """

    enabled: bool = True
    radius_m: float = 150.0
    min_duration_s: float = 72 * 3600.0
    leave_fixes: int = 3
    centre_samples: int = 31
    centre_sample_interval_s: float = 30.0

    def __post_init__(self) -> None:
        _positive("radius_m", self.radius_m)
        _positive("min_duration_s", self.min_duration_s)
        if not 1 <= self.leave_fixes <= 100:
            raise ValueError(f"leave_fixes={self.leave_fixes} must be in 1..100")
        if not 1 <= self.centre_samples <= 255:
            raise ValueError(f"centre_samples={self.centre_samples} must be in 1..255")
        _non_negative("centre_sample_interval_s", self.centre_sample_interval_s)


@dataclass(frozen=True, slots=True)
class NightDoorsConfig:
    """``night_door_openings`` (severity warning).

    Attributes:
        enabled: run the rule.
        min_openings: door-open transitions (false -> true) needed inside the window.
        window_s: sliding window length; openings at most this far apart count together.
        night_start: local ``HH:MM`` the night starts (inclusive).
        night_end: local ``HH:MM`` it ends (exclusive); may be earlier than the start
            (the night spans midnight).
        doors: canonical bool signals watched (four doors and the trunk by default).
    """

    enabled: bool = True
    min_openings: int = 3
    window_s: float = 7200.0
    night_start: str = "22:00"
    night_end: str = "06:00"
    doors: tuple[str, ...] = DEFAULT_DOORS

    def __post_init__(self) -> None:
        if not 1 <= self.min_openings <= 100:
            raise ValueError(f"min_openings={self.min_openings} must be in 1..100")
        _positive("window_s", self.window_s)
        for name in ("night_start", "night_end"):
            if not _HHMM.fullmatch(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be HH:MM (00:00..23:59)")
        if self.night_start == self.night_end:
            raise ValueError("night_start and night_end must differ")
        if not self.doors:
            raise ValueError("doors must name at least one signal")

    @property
    def start_minute(self) -> int:
        """Night start as minutes after local midnight."""
        hh, mm = self.night_start.split(":")
        return int(hh) * 60 + int(mm)

    @property
    def end_minute(self) -> int:
        """Night end as minutes after local midnight."""
        hh, mm = self.night_end.split(":")
        return int(hh) * 60 + int(mm)


@dataclass(frozen=True, slots=True)
class PowerCutConfig:
    """``power_cut`` (severity panic).

    Attributes:
        enabled: run the rule.
        min_voltage_v: main supply below this is "cut" (12 V systems; use ~18 V for 24 V).
        hysteresis_v: the episode clears only at ``min_voltage_v + hysteresis_v`` or more.
        low_for_s: the voltage must stay low this long before the alert.
        missing_after_s: no voltage sample for this long, while fixes or ticks show time
            passing, also counts as a cut (the box is on its backup battery). 0 disables
            this path. Default 90 s: the sample signal map sends the voltage on change
            (0.2 V deadband) and as a 60 s heartbeat, so 10 s of silence is normal.
    """

    enabled: bool = True
    min_voltage_v: float = 9.0
    hysteresis_v: float = 1.0
    low_for_s: float = 3.0
    missing_after_s: float = 90.0

    def __post_init__(self) -> None:
        _positive("min_voltage_v", self.min_voltage_v)
        _non_negative("hysteresis_v", self.hysteresis_v)
        _non_negative("low_for_s", self.low_for_s)
        _non_negative("missing_after_s", self.missing_after_s)


@dataclass(frozen=True, slots=True)
class GnssLostConfig:
    """``gnss_lost`` and ``gnss_jamming`` (both severity high).

    Attributes:
        enabled: run ``gnss_lost``.
        jamming_enabled: also run ``gnss_jamming``.
        lost_after_s: no valid fix for this long while the car moves.
        min_speed_kmh: CAN ``Vehicle.Speed`` above this means "moving".
        snr_floor_dbhz: jamming if the mean SNR of tracked satellites falls below this ...
        snr_drop_db: ... or falls this far below the running baseline.
        baseline_tau_s: time constant of the baseline (exponential average over fixes).
    """

    enabled: bool = True
    jamming_enabled: bool = True
    lost_after_s: float = 60.0
    min_speed_kmh: float = 5.0
    snr_floor_dbhz: float = 20.0
    snr_drop_db: float = 15.0
    baseline_tau_s: float = 300.0

    def __post_init__(self) -> None:
        _positive("lost_after_s", self.lost_after_s)
        _non_negative("min_speed_kmh", self.min_speed_kmh)
        _non_negative("snr_floor_dbhz", self.snr_floor_dbhz)
        _positive("snr_drop_db", self.snr_drop_db)
        _positive("baseline_tau_s", self.baseline_tau_s)


@dataclass(frozen=True, slots=True)
class TowingConfig:
    """``towing`` (severity high).

    Attributes:
        enabled: run the rule.
        max_move_m: ignition off and the position more than this from where it was
            switched off.
        speed_kmh: ... or GNSS speed above this ...
        speed_fixes: ... for this many consecutive good fixes.
        settle_s: an episode clears when the vehicle has not moved for this long (or the
            ignition comes on); the place it settled becomes the new reference.
    """

    enabled: bool = True
    max_move_m: float = 300.0
    speed_kmh: float = 10.0
    speed_fixes: int = 3
    settle_s: float = 600.0

    def __post_init__(self) -> None:
        _positive("max_move_m", self.max_move_m)
        _positive("speed_kmh", self.speed_kmh)
        if not 1 <= self.speed_fixes <= 100:
            raise ValueError(f"speed_fixes={self.speed_fixes} must be in 1..100")
        _positive("settle_s", self.settle_s)


@dataclass(frozen=True, slots=True)
class RegionExitConfig:
    """``region_exit`` (severity warning); off while no region is configured.

    Attributes:
        enabled: run the rule (when regions exist).
        leave_fixes: consecutive good fixes outside every region that raise the alert.
        return_fixes: consecutive good fixes inside a region that clear it.
    """

    enabled: bool = True
    leave_fixes: int = 3
    return_fixes: int = 3

    def __post_init__(self) -> None:
        for name in ("leave_fixes", "return_fixes"):
            if not 1 <= getattr(self, name) <= 100:
                raise ValueError(f"{name}={getattr(self, name)} must be in 1..100")


@dataclass(frozen=True, slots=True)
class DailyStatsConfig:
    """Daily driving statistics (records, not alerts).

    Attributes:
        enabled: produce DailyStats records.
        moving_speed_kmh: GNSS speed at or above this counts as driving.
        min_step_m: distance is summed along points at least this far apart (parked
            jitter never adds up).
        max_gap_s: fixes further apart than this are not joined (no distance, no time).
        max_speed_kmh: a step implying more than this is a glitch and is skipped.
        harsh_accel_mps2: speed gain per second that counts as a harsh acceleration.
        harsh_brake_mps2: speed loss per second that counts as harsh braking.
        interim_s: emit a non-final record at least this often while data flows (0 = only
            the final record at the end of each local day).
    """

    enabled: bool = True
    moving_speed_kmh: float = 3.0
    min_step_m: float = 5.0
    max_gap_s: float = 60.0
    max_speed_kmh: float = 300.0
    harsh_accel_mps2: float = 3.0
    harsh_brake_mps2: float = 4.0
    interim_s: float = 3600.0

    def __post_init__(self) -> None:
        _non_negative("moving_speed_kmh", self.moving_speed_kmh)
        _non_negative("min_step_m", self.min_step_m)
        _positive("max_gap_s", self.max_gap_s)
        _positive("max_speed_kmh", self.max_speed_kmh)
        _positive("harsh_accel_mps2", self.harsh_accel_mps2)
        _positive("harsh_brake_mps2", self.harsh_brake_mps2)
        _non_negative("interim_s", self.interim_s)


@dataclass(frozen=True, slots=True)
class RulesConfig:
    """The ``[rules]`` section of agent.toml.

    Attributes:
        timezone: IANA zone for local-time rules and local days (default Asia/Shanghai).
        markets_file: TOML/JSON list of used-car markets (loaded by the agent with
            :func:`~edge.rules.load_markets`; the engine itself does no I/O).
        regions_file: TOML/GeoJSON list of allowed regions (:func:`~edge.rules.load_regions`).
        max_hdop: fixes with a worse HDOP are ignored by the position rules.
        min_sats: fixes with fewer satellites used are ignored by the position rules.
        reorder_tolerance_ms: input up to this much older than the newest seen is
            processed as if it arrived at the newest time (GNSS and CAN interleave); older
            input is counted and dropped.
        stationary_near_market, night_door_openings, power_cut, gnss_lost, towing,
        region_exit, daily_stats: per-rule settings.
    """

    timezone: str = "Asia/Shanghai"
    markets_file: Path | None = None
    regions_file: Path | None = None
    max_hdop: float = 5.0
    min_sats: int = 4
    reorder_tolerance_ms: int = 2000
    stationary_near_market: DwellConfig = field(default_factory=DwellConfig)
    night_door_openings: NightDoorsConfig = field(default_factory=NightDoorsConfig)
    power_cut: PowerCutConfig = field(default_factory=PowerCutConfig)
    gnss_lost: GnssLostConfig = field(default_factory=GnssLostConfig)
    towing: TowingConfig = field(default_factory=TowingConfig)
    region_exit: RegionExitConfig = field(default_factory=RegionExitConfig)
    daily_stats: DailyStatsConfig = field(default_factory=DailyStatsConfig)

    def __post_init__(self) -> None:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone {self.timezone!r} is not a known IANA zone") from exc
        _positive("max_hdop", self.max_hdop)
        if not 0 <= self.min_sats <= 64:
            raise ValueError(f"min_sats={self.min_sats} must be in 0..64")
        if not 0 <= self.reorder_tolerance_ms <= 3_600_000:
            raise ValueError(f"reorder_tolerance_ms={self.reorder_tolerance_ms} must be in 0..3600000")

    @property
    def zone(self) -> ZoneInfo:
        """The configured zone as a :class:`zoneinfo.ZoneInfo`."""
        return ZoneInfo(self.timezone)

    @classmethod
    def from_dict(cls, section: Mapping[str, object], base_dir: Path | None = None) -> RulesConfig:
        """Build from the ``[rules]`` table of agent.toml.

        Args:
            section: the table (may be empty: every key has a default).
            base_dir: relative ``markets_file``/``regions_file`` are resolved against it
                (normally the folder of agent.toml).

        Raises:
            ConfigError: unknown key, wrong type or out-of-range value (the message names
                the key, e.g. ``rules.power_cut.min_voltage_v``).
        """
        config = build_dataclass(cls, section, "rules", ConfigError, require_all=False)
        if base_dir is not None:
            changes: dict[str, Path] = {}
            for name in ("markets_file", "regions_file"):
                value = getattr(config, name)
                if value is not None and not value.is_absolute():
                    changes[name] = base_dir / value
            if changes:
                config = replace(config, **changes)  # type: ignore[arg-type]
        return config

    def to_dict(self) -> dict[str, Any]:
        """The settings as a TOML/JSON-ready table (what :meth:`from_dict` reads back)."""
        return dump_dataclass(self)

    def merged(self, overrides: Mapping[str, object], base_dir: Path | None = None) -> RulesConfig:
        """These settings with ``overrides`` (a partial ``[rules]`` table) laid over them, key by key.

        Raises:
            ConfigError: the merged table is not acceptable (the message names the key).
        """
        return RulesConfig.from_dict(_deep_merge(self.to_dict(), overrides), base_dir)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        current = out.get(key)
        out[key] = _deep_merge(current, value) if isinstance(value, Mapping) and isinstance(current, Mapping) else value
    return out
