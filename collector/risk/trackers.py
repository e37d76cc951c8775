"""Two trackers per car: does the second one (a hidden backup) tell the same story as the main one?

How this works
--------------
A loan may link a second device (``loan_devices``) beside its main T-BOX. Someone who
removes or unplugs one tracker rarely finds the other, so the two disagreeing is strong
evidence of tampering. :func:`tracker_divergence` is pure (values in, an
:class:`~collector.risk.engine.OpenAlert` or None out, time from the data and the
evaluation time) and recognises two signatures, both ways round:

* **one silent while the other moves** - one tracker has reported nothing for more than
  ``tracker_silent_hours`` (its newest observation, vehicle time, against the evaluation
  time) while the other is not silent (it reported within that time) and reported a
  position newer than that silence began and more than ``tracker_moved_m`` from the silent
  one's last position (the car left without it);
* **positions disagree** - both report, and their fixes (paired when within
  :data:`PAIR_MS` of each other) have been more than ``tracker_divergence_m`` apart without a
  break for at least ``tracker_window_minutes`` up to the newest pair (one tracker was moved
  to another car, or the car was moved without the other). When the two newest positions are
  within :data:`PAIR_MS` and agree (:func:`newest_fixes_agree`, the common case) the trackers
  agree now and the history is not looked at, so a caller may skip reading it.

Nothing is raised when either tracker never reported a position (nothing to compare). The
episode id is derived from the data (the silent device and the time it fell silent, or the
start of the disagreeing run), so reassessing again and again gives the same episode, and
it ends by itself when the trackers agree again. The evidence carries distances and times,
never coordinates. :func:`collector.risk.assessment.load_risk_input` reads the two
trackers' recent data and adds the result to the loan's open alerts, so the periodic
reassessment and every ingest commit of either device re-evaluate it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.geo import distance_m

from .engine import HOUR_MS, TRACKER_DIVERGENCE, OpenAlert, RiskConfig, RiskConfigError

__all__ = ["LOOKBACK_MS", "PAIR_MS", "TrackFix", "TrackerView", "newest_fixes_agree", "tracker_divergence"]

#: Two fixes of the two trackers are compared when they are at most this far apart in time.
PAIR_MS = 120_000
#: How much recent history of each tracker the position comparison reads.
LOOKBACK_MS = 6 * HOUR_MS


@dataclass(frozen=True, slots=True)
class TrackFix:
    """One WGS-84 position of a tracker at vehicle time ``time_ms``."""

    time_ms: int
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class TrackerView:
    """What the collector knows of one tracker of a car.

    Attributes:
        device_id: the device.
        last_seen_ms: its newest observation of any kind (vehicle time), None if never.
        last_fix: its newest position, None if never.
        fixes: its recent positions in time order (the last :data:`LOOKBACK_MS`).
    """

    device_id: str
    last_seen_ms: int | None
    last_fix: TrackFix | None
    fixes: Sequence[TrackFix] = ()

    def __post_init__(self) -> None:
        if any(b.time_ms < a.time_ms for a, b in zip(self.fixes, self.fixes[1:], strict=False)):
            raise RiskConfigError(f"tracker {self.device_id!r:.64} fixes must be in time order")


def _silent_while_other_moves(
    silent: TrackerView, other: TrackerView, now_ms: int, config: RiskConfig
) -> OpenAlert | None:
    if silent.last_seen_ms is None or silent.last_fix is None or other.last_fix is None or other.last_seen_ms is None:
        return None
    silent_ms, threshold_ms = now_ms - silent.last_seen_ms, config.tracker_silent_hours * HOUR_MS
    if silent_ms <= threshold_ms or other.last_fix.time_ms <= silent.last_seen_ms:
        return None
    if now_ms - other.last_seen_ms > threshold_ms:
        return None  # both silent (a garage, a dead zone): the other one is not reporting either
    apart = distance_m(silent.last_fix.lat, silent.last_fix.lon, other.last_fix.lat, other.last_fix.lon)
    if apart <= config.tracker_moved_m:
        return None
    return OpenAlert(
        TRACKER_DIVERGENCE,
        "high",
        silent.last_seen_ms,
        f"{TRACKER_DIVERGENCE}:silent:{silent.device_id}:{silent.last_seen_ms}",
        {
            "kind": "silent_while_other_moves",
            "silent_device": silent.device_id,
            "reporting_device": other.device_id,
            "silent_since_ms": silent.last_seen_ms,
            "silent_hours": round(silent_ms / HOUR_MS, 2),
            "distance_m": round(apart),
            "threshold_hours": config.tracker_silent_hours,
            "threshold_m": config.tracker_moved_m,
        },
    )


def _pairs(a: Sequence[TrackFix], b: Sequence[TrackFix]) -> list[tuple[int, float]]:
    """(time, distance) for each fix of ``a`` with the nearest-in-time fix of ``b`` within PAIR_MS."""
    out: list[tuple[int, float]] = []
    j = 0
    for fix in a:
        while j + 1 < len(b) and abs(b[j + 1].time_ms - fix.time_ms) <= abs(b[j].time_ms - fix.time_ms):
            j += 1
        if b and abs(b[j].time_ms - fix.time_ms) <= PAIR_MS:
            out.append((fix.time_ms, distance_m(fix.lat, fix.lon, b[j].lat, b[j].lon)))
    return out


def _positions_disagree(a: TrackerView, b: TrackerView, config: RiskConfig) -> OpenAlert | None:
    pairs = _pairs(a.fixes, b.fixes)
    if not pairs or pairs[-1][1] <= config.tracker_divergence_m:
        return None
    start = len(pairs) - 1
    while start > 0 and pairs[start - 1][1] > config.tracker_divergence_m:
        start -= 1
    since_ms, until_ms = pairs[start][0], pairs[-1][0]
    if until_ms - since_ms < config.tracker_window_minutes * 60_000:
        return None
    return OpenAlert(
        TRACKER_DIVERGENCE,
        "high",
        since_ms,
        f"{TRACKER_DIVERGENCE}:apart:{since_ms}",
        {
            "kind": "positions_disagree",
            "devices": [a.device_id, b.device_id],
            "apart_since_ms": since_ms,
            "apart_minutes": round((until_ms - since_ms) / 60_000, 1),
            "distance_m": round(pairs[-1][1]),
            "threshold_m": config.tracker_divergence_m,
            "threshold_minutes": config.tracker_window_minutes,
        },
    )


def newest_fixes_agree(a: TrackerView, b: TrackerView, config: RiskConfig) -> bool:
    """True when both newest positions are within :data:`PAIR_MS` and ``tracker_divergence_m`` of each other."""
    if a.last_fix is None or b.last_fix is None or abs(a.last_fix.time_ms - b.last_fix.time_ms) > PAIR_MS:
        return False
    apart = distance_m(a.last_fix.lat, a.last_fix.lon, b.last_fix.lat, b.last_fix.lon)
    return apart <= config.tracker_divergence_m


def tracker_divergence(main: TrackerView, backup: TrackerView, now_ms: int, config: RiskConfig) -> OpenAlert | None:
    """The ``tracker_divergence`` episode open at ``now_ms`` for a car's two trackers, or None.

    Args:
        main: the loan's main tracker (``loans.device_id``).
        backup: the second tracker (``loan_devices``).
        now_ms: evaluation time (collector clock), epoch ms.
        config: the ``tracker_*`` thresholds of ``[risk]``.

    Returns:
        An open alert (``rule = "tracker_divergence"``) whose evidence names the signature, the
        devices, distances and times; None when the trackers agree or cannot be compared.
    """
    for silent, other in ((main, backup), (backup, main)):
        found = _silent_while_other_moves(silent, other, now_ms, config)
        if found is not None:
            return found
    if newest_fixes_agree(main, backup, config):
        return None
    return _positions_disagree(main, backup, config)
