"""Time acceleration: a piecewise-linear map between wall seconds and scenario milliseconds.

``speed`` is scenario seconds per wall second. Each piece of the scenario has its own
speed (per segment, with 1x windows carved around events the HIL rig measures), so the
map is monotonic and piecewise linear; both directions are a bisect plus one division.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["MAX_SPEED", "Pace", "PacePiece"]

MAX_SPEED = 1_000_000.0


@dataclass(frozen=True, slots=True)
class PacePiece:
    """Scenario interval ``[start_ms, end_ms)`` played at ``speed``."""

    start_ms: int
    end_ms: int
    speed: float

    def __post_init__(self) -> None:
        if self.end_ms <= self.start_ms:
            raise ValueError(f"pace piece [{self.start_ms}, {self.end_ms}) is empty")
        if not 0.0 < self.speed <= MAX_SPEED:
            raise ValueError(f"speed {self.speed} is outside (0, {MAX_SPEED:.0f}]")


@dataclass(frozen=True)
class Pace:
    """Contiguous pieces covering the scenario from the first start to the last end."""

    pieces: tuple[PacePiece, ...]
    _starts_ms: tuple[int, ...] = field(init=False, repr=False, compare=False)
    _wall_starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.pieces:
            raise ValueError("a pace needs at least one piece")
        wall = 0.0
        walls = []
        for before, after in zip(self.pieces, self.pieces[1:], strict=False):
            if before.end_ms != after.start_ms:
                raise ValueError(f"pace pieces are not contiguous at {before.end_ms} / {after.start_ms}")
        for piece in self.pieces:
            walls.append(wall)
            wall += (piece.end_ms - piece.start_ms) / 1000.0 / piece.speed
        walls.append(wall)
        object.__setattr__(self, "_starts_ms", tuple(p.start_ms for p in self.pieces))
        object.__setattr__(self, "_wall_starts", tuple(walls))

    @classmethod
    def build(
        cls,
        spans: Sequence[tuple[int, int, float]],
        realtime_windows: Iterable[tuple[int, int]] = (),
    ) -> Pace:
        """Pieces from contiguous ``(start_ms, end_ms, speed)`` spans, slowed to 1x inside the windows."""
        if not spans:
            raise ValueError("a pace needs at least one span")
        begin, finish = spans[0][0], spans[-1][1]
        windows = [(max(begin, a), min(finish, b)) for a, b in realtime_windows if min(finish, b) > max(begin, a)]
        cuts = sorted({s for s, _, _ in spans} | {finish} | {a for a, _ in windows} | {b for _, b in windows})
        span_starts = [s for s, _, _ in spans]
        pieces: list[PacePiece] = []
        for start, end in itertools.pairwise(cuts):
            speed = spans[bisect.bisect_right(span_starts, start) - 1][2]
            if any(a <= start and end <= b for a, b in windows):
                speed = min(speed, 1.0)
            if pieces and pieces[-1].speed == speed:
                pieces[-1] = PacePiece(pieces[-1].start_ms, end, speed)
            else:
                pieces.append(PacePiece(start, end, speed))
        return cls(tuple(pieces))

    @property
    def start_ms(self) -> int:
        """Scenario start."""
        return self.pieces[0].start_ms

    @property
    def end_ms(self) -> int:
        """Scenario end."""
        return self.pieces[-1].end_ms

    @property
    def wall_duration_s(self) -> float:
        """Wall seconds to play everything."""
        return self._wall_starts[-1]

    def _index_for_ms(self, scenario_ms: float) -> int:
        return max(0, min(len(self.pieces) - 1, bisect.bisect_right(self._starts_ms, scenario_ms) - 1))

    def speed_at(self, scenario_ms: float) -> float:
        """Speed of the piece that contains ``scenario_ms``."""
        return self.pieces[self._index_for_ms(scenario_ms)].speed

    def wall_at(self, scenario_ms: float) -> float:
        """Wall seconds since the start at which ``scenario_ms`` is reached (clamped to the scenario)."""
        clamped = min(max(scenario_ms, self.start_ms), self.end_ms)
        index = self._index_for_ms(clamped)
        piece = self.pieces[index]
        return self._wall_starts[index] + (clamped - piece.start_ms) / 1000.0 / piece.speed

    def scenario_at(self, wall_elapsed_s: float) -> int:
        """Scenario milliseconds reached ``wall_elapsed_s`` after the start (clamped to the scenario)."""
        if wall_elapsed_s <= 0.0:
            return self.start_ms
        if wall_elapsed_s >= self._wall_starts[-1]:
            return self.end_ms
        index = min(len(self.pieces) - 1, bisect.bisect_right(self._wall_starts, wall_elapsed_s) - 1)
        piece = self.pieces[index]
        return min(
            piece.end_ms, piece.start_ms + round((wall_elapsed_s - self._wall_starts[index]) * piece.speed * 1000.0)
        )
