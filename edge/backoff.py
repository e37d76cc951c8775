"""Exponential backoff, the one schedule behind every reconnect and reopen of the edge.

``initial_s``, multiplied by ``factor`` per consecutive failure, capped at ``max_s``. The
sources use it as a counter of failures (:meth:`Backoff.next_delay` / :meth:`Backoff.reset`);
the MQTT uplink asks for a jittered delay of a given attempt (:meth:`Backoff.delay`), so many
devices reconnecting after a broker restart spread out.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["Backoff"]


@dataclass(slots=True)
class Backoff:
    """Exponential delays with an optional full jitter.

    Attributes:
        initial_s: first delay in seconds.
        max_s: longest delay in seconds.
        factor: growth per consecutive failure.
    """

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0
    _failures: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.factor < 1:
            raise ConfigError(
                "backoff needs 0 < initial_s <= max_s and factor >= 1, "
                f"got {self.initial_s}, {self.max_s}, {self.factor}"
            )

    def base(self, attempt: int) -> float:
        """The un-jittered delay before retry number ``attempt`` (0-based)."""
        return float(min(self.max_s, self.initial_s * self.factor ** min(attempt, 64)))

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A delay in ``[base/2, base]`` before retry number ``attempt`` (jittered)."""
        base = self.base(attempt)
        return float(base / 2 + rng.uniform(0, base / 2))

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        delay = self.base(self._failures)
        self._failures += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a successful open)."""
        self._failures = 0
