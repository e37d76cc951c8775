"""The typed seams between the agent and its parts (sources and the rules engine).

The agent is wired against these protocols, so a test can hand it a scripted engine or an
in-memory source; :class:`edge.rules.Engine`, :class:`edge.gnss.GnssSource` and
:class:`edge.stamped_can.StampedCanSource` fit them as they are.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from protocol import Alert, DailyStats, Fix, NoFix, SignalSample
from protocol.places import Place, Region

from .rules import RulesConfig

__all__ = ["EngineOutput", "RecordSource", "RulesEngine", "SourceRecord"]

#: What a source yields and the engine is fed.
SourceRecord = Fix | NoFix | SignalSample
#: What the engine produces.
EngineOutput = Alert | DailyStats


class RecordSource(Protocol):
    """What the agent needs from a source."""

    def read(self, timeout: float = 1.0) -> Sequence[SourceRecord]:
        """Records available within ``timeout`` seconds (possibly none)."""
        ...

    def close(self) -> None:
        """Release the device."""
        ...


class RulesEngine(Protocol):
    """What the agent needs from :class:`edge.rules.Engine`."""

    @property
    def active_rules(self) -> frozenset[str]:
        """Rules with an open episode."""
        ...

    @property
    def counters(self) -> Mapping[str, int]:
        """Event counters (published with the agent's as ``rules_*``)."""
        ...

    def feed(self, event: SourceRecord) -> list[EngineOutput]:
        """Feed one observation; return alerts and statistics."""
        ...

    def tick(self, time_ms: int) -> list[EngineOutput]:
        """Let time pass without an event."""
        ...

    def snapshot(self) -> Mapping[str, object]:
        """JSON-serialisable rule state."""
        ...

    def set_markets(self, markets: Sequence[Place]) -> None:
        """Replace the market list."""
        ...

    def set_regions(self, regions: Sequence[Region]) -> None:
        """Replace the allowed regions."""
        ...

    def set_config(self, config: RulesConfig) -> None:
        """Replace the thresholds."""
        ...
