"""``night_door_openings``: repeated door openings at night (severity warning).

How this works: a door opening is a false -> true transition of one of the watched door
or trunk signals (the first value seen after boot is not a transition: we do not know
what came before it). Openings that happen inside the local night window (start
inclusive, end exclusive, may span midnight; local time from the configured IANA zone,
so DST changes are handled by zoneinfo) are kept while they are at most ``window_s``
old. When ``min_openings`` of them sit inside one window the rule raises once, with each
opening (time, door) as evidence; episode id ``night_door_openings:{first_opening_ms}``.

The episode ends at the end of that night or after ``window_s`` without a further
opening, whichever comes first; further openings during the episode are counted into
the CLEARED record, they do not raise again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from protocol import Alert, Severity
from protocol.rule_names import RuleName

from ._rule import Rule, SampleValue, cleared, episode_id, raised
from .config import NightDoorsConfig

__all__ = ["NightDoorOpenings", "NightDoorsState", "is_night", "night_end_after"]

NAME = RuleName.NIGHT_DOOR_OPENINGS.value
MAX_EVIDENCE_OPENINGS = 32


def _local(time_ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(time_ms / 1000.0, zone)


def is_night(time_ms: int, config: NightDoorsConfig, zone: ZoneInfo) -> bool:
    """True if ``time_ms`` falls in the local night window (start inclusive, end exclusive)."""
    local = _local(time_ms, zone)
    minute = local.hour * 60 + local.minute
    start, end = config.start_minute, config.end_minute
    if start < end:
        return start <= minute < end
    return minute >= start or minute < end


def night_end_after(time_ms: int, config: NightDoorsConfig, zone: ZoneInfo) -> int:
    """The first local ``night_end`` strictly after ``time_ms``, as epoch milliseconds."""
    local = _local(time_ms, zone)
    hh, mm = divmod(config.end_minute, 60)
    day = local.date()
    for _ in range(3):
        candidate = datetime(day.year, day.month, day.day, hh, mm, tzinfo=zone)
        end_ms = int(candidate.timestamp() * 1000)
        if end_ms > time_ms:
            return end_ms
        day += timedelta(days=1)
    raise AssertionError("unreachable: a night end exists within three local days")


def _door_label(name: str) -> str:
    # "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen" -> "Row1.DriverSide"; trunk -> "Trunk.Rear"
    parts = name.split(".")
    core = parts[-3:-1] if len(parts) >= 3 else parts
    return ".".join(core)


@dataclass(slots=True)
class NightDoorsState:
    """Persisted state: last value per door, recent night openings, the open episode."""

    door_open: dict[str, bool] = field(default_factory=dict)
    opening_ms: list[int] = field(default_factory=list)
    opening_door: list[str] = field(default_factory=list)
    episode: str | None = None
    episode_openings: int = 0
    last_opening_ms: int | None = None
    night_end_ms: int | None = None


class NightDoorOpenings(Rule):
    """The night door rule (see module docstring)."""

    key = NAME
    state_type = NightDoorsState
    episodes = (("episode", NAME, Severity.WARNING),)
    wants_fixes = False

    def __init__(self, config: NightDoorsConfig, zone: ZoneInfo, counters: Counter[str]) -> None:
        super().__init__(counters)
        self.config = config
        self.zone = zone
        self.signals = frozenset(config.doors)
        self.state = NightDoorsState()

    def advance(self, now: int, *, fix_arriving: bool = False) -> list[Alert]:
        s = self.state
        if s.episode is None or s.night_end_ms is None or s.last_opening_ms is None:
            return []
        quiet = now - s.last_opening_ms >= self.config.window_s * 1000
        if now < s.night_end_ms and not quiet:
            return []
        evidence = {
            "reason": "night_over" if now >= s.night_end_ms else "quiet",
            "openings": s.episode_openings,
            "last_opening_ms": s.last_opening_ms,
        }
        alert = cleared(NAME, Severity.WARNING, now, s.episode, evidence)
        s.episode = None
        s.episode_openings = 0
        s.night_end_ms = None
        s.opening_ms.clear()
        s.opening_door.clear()
        return [alert]

    def on_signal(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        s = self.state
        previous = s.door_open.get(name)
        s.door_open[name] = bool(value)
        if not (value and previous is False):
            return []
        self.counters["door_openings"] += 1
        if not is_night(now, self.config, self.zone):
            return []
        horizon = now - self.config.window_s * 1000
        keep = [i for i, t in enumerate(s.opening_ms) if t >= horizon]
        s.opening_ms = [s.opening_ms[i] for i in keep]
        s.opening_door = [s.opening_door[i] for i in keep]
        s.opening_ms.append(now)
        s.opening_door.append(_door_label(name))
        s.last_opening_ms = now
        if s.episode is not None:
            s.episode_openings += 1
            return []
        if len(s.opening_ms) < self.config.min_openings:
            return []
        s.episode = episode_id(NAME, s.opening_ms[0])
        s.episode_openings = len(s.opening_ms)
        s.night_end_ms = night_end_after(now, self.config, self.zone)
        shown = list(zip(s.opening_ms, s.opening_door, strict=True))[-MAX_EVIDENCE_OPENINGS:]
        evidence = {
            "openings": [
                {"time_ms": t, "local": _local(t, self.zone).strftime("%Y-%m-%d %H:%M:%S"), "door": door}
                for t, door in shown
            ],
            "count": len(s.opening_ms),
            "window_s": self.config.window_s,
            "night": f"{self.config.night_start}-{self.config.night_end}",
            "timezone": self.zone.key,
        }
        return [raised(NAME, Severity.WARNING, now, s.episode, evidence)]
