"""A CAN source whose samples carry observation time (see :mod:`edge.observation_clock`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

from protocol import SignalSample

from .observation_clock import HOLD_MAX, ObservationClock

__all__ = ["StampedCanSource", "TimedSampleSource"]


class TimedSampleSource(Protocol):
    """What :class:`StampedCanSource` needs from a CAN source (edge.canbus.CanSource fits)."""

    @property
    def counters(self) -> object:
        """The source's counters (published with the agent's)."""
        ...

    def read(self, timeout: float = 1.0, time_ms: Callable[[float], int] | None = None) -> list[SignalSample]:
        """Samples within ``timeout`` seconds, stamped by ``time_ms(host_timestamp)``."""
        ...

    def close(self) -> None:
        """Release the bus."""
        ...


class StampedCanSource:
    """A CanSource whose samples are stamped on the observation clock.

    Before the clock is anchored, samples are held (bounded) and released stamped with the
    anchor's time, so the first ignition/door states of a boot are not lost or misdated.
    """

    def __init__(self, source: TimedSampleSource, clock: ObservationClock) -> None:
        self._source = source
        self._clock = clock
        self._held: list[SignalSample] = []
        self.dropped_before_clock = 0
        self.counters = source.counters

    def read(self, timeout: float = 1.0) -> list[SignalSample]:
        """Samples stamped on the observation clock (none while it is not anchored yet)."""
        if self._clock.anchored:
            samples = list(self._source.read(timeout, time_ms=self._clock.stamp))
            if self._held:
                first = self._clock.first_epoch_ms() or self._clock.now_ms()
                held, self._held = self._held, []
                # Held samples happened before the first epoch: stamp them at it, in order.
                samples = [dataclasses.replace(s, time_ms=first) for s in held] + [
                    s if s.time_ms >= first else dataclasses.replace(s, time_ms=first) for s in samples
                ]
            return samples
        for sample in self._source.read(timeout, time_ms=lambda ts: int(ts * 1000)):
            if len(self._held) < HOLD_MAX:
                self._held.append(sample)
            else:
                self.dropped_before_clock += 1
        return []

    def close(self) -> None:
        """Close the CAN source."""
        self._source.close()
