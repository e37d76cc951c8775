"""What every rule looks like to the engine, and the alert constructors they share.

A rule is a small object holding its config, its state (a mutable dataclass of plain
values, dumped verbatim into the engine snapshot) and the engine's counters. The engine
calls ``advance(now)`` before every event and on ``tick`` (only for rules that override
it), then the handler for the event kind. Handlers return the alerts they produce.

Episode ids are ``f"{rule}:{start_ms}"`` where ``start_ms`` is an observation time the
rule chose when the episode began; they live in the state, so they survive a restore.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from protocol import Alert, AlertState, Fix, NoFix, Severity

__all__ = ["Rule", "SampleValue", "cleared", "episode_id", "raised"]

SampleValue = bool | int | float | str


def episode_id(rule: str, start_ms: int) -> str:
    """The episode id shared by a RAISED record and its CLEARED record."""
    return f"{rule}:{start_ms}"


def raised(rule: str, severity: Severity, now: int, episode: str, evidence: Mapping[str, object]) -> Alert:
    """A RAISED alert record."""
    return Alert(rule=rule, severity=severity, time_ms=now, episode=episode, state=AlertState.RAISED, evidence=evidence)


def cleared(rule: str, severity: Severity, now: int, episode: str, evidence: Mapping[str, object]) -> Alert:
    """The CLEARED record that ends ``episode``."""
    return Alert(
        rule=rule, severity=severity, time_ms=now, episode=episode, state=AlertState.CLEARED, evidence=evidence
    )


class Rule:
    """Base class: no-op handlers; subclasses override what they need.

    Attributes:
        key: name of the state in the snapshot (the rule name, or a family name).
        state_type: the dataclass holding the rule's state.
        signals: canonical signal names routed to :meth:`on_signal`.
        episodes: where each rule's open episode id lives in the state.
        wants_fixes: whether :meth:`on_fix` / :meth:`on_no_fix` should be called.
    """

    key: ClassVar[str]
    #: (state attribute holding the episode id, rule name, severity) per rule run here.
    episodes: ClassVar[tuple[tuple[str, str, Severity], ...]]
    state_type: ClassVar[type]
    wants_fixes: ClassVar[bool] = True
    signals: frozenset[str] = frozenset()
    state: Any

    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters

    def advance(self, now: int, *, fix_arriving: bool = False) -> list[Alert]:
        """Time has reached ``now`` (called before each event and on tick)."""
        return []

    def on_fix(self, fix: Fix, good: bool, now: int) -> list[Alert]:
        """A GNSS fix; ``good`` if it passed the HDOP / satellite-count filter."""
        return []

    def on_no_fix(self, event: NoFix, now: int) -> list[Alert]:
        """A GNSS epoch without a position."""
        return []

    def on_signal(self, name: str, value: SampleValue, now: int) -> list[Alert]:
        """A signal sample whose name is in :attr:`signals` (value type already checked)."""
        return []

    def open_episodes(self) -> Iterable[str]:
        """Rule names that currently have an open episode."""
        return tuple(name for attr, name, _ in self.episodes if getattr(self.state, attr) is not None)

    def close(self, now: int, reason: str) -> list[Alert]:
        """End every open episode (the rule was disabled); returns the CLEARED records."""
        alerts = []
        for attr, name, severity in self.episodes:
            episode = getattr(self.state, attr)
            if episode is not None:
                alerts.append(cleared(name, severity, now, episode, {"reason": reason}))
                setattr(self.state, attr, None)
        return alerts
