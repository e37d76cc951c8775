"""The rules engine's persisted state (``{data_dir}/rules_state.json``), so a reboot keeps a 3-day dwell.

Written atomically; a file that is not a JSON object is moved aside (never deleted) and
counted as lost state, and the engine starts fresh.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path

from .sequence import write_atomically
from .structured_log import log_event

__all__ = ["RuleStateFile"]

log = logging.getLogger("lienwatch.agent")


class RuleStateFile:
    """Load and save the engine snapshot.

    Args:
        path: the JSON file.
        counters: where ``rule_state_lost`` (snapshots found unusable: moved aside or refused
            by the engine) and ``snapshot_failures`` (snapshots not written) are counted.
    """

    def __init__(self, path: Path, counters: dict[str, int]) -> None:
        self.path = path
        self.counters = counters
        for name in ("rule_state_lost", "snapshot_failures"):
            counters.setdefault(name, 0)

    def load(self) -> Mapping[str, object] | None:
        """The saved snapshot, or None (none yet, or unusable: then moved aside and counted)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = json.loads(data)
        except ValueError as exc:
            problem = f"not JSON: {exc}"
        else:
            if isinstance(state, dict):
                return state
            problem = "not a JSON object"
        aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        with contextlib.suppress(OSError):
            self.path.replace(aside)
        self.refused(problem)
        return None

    def refused(self, problem: str) -> None:
        """Count and log a snapshot that cannot be used (the engine starts fresh)."""
        self.counters["rule_state_lost"] += 1
        log_event(log, logging.ERROR, "rule_state_lost", path=str(self.path), error=problem)

    def save(self, snapshot: Mapping[str, object]) -> None:
        """Write the snapshot atomically; a failure is counted and logged, never raised."""
        try:
            data = json.dumps(snapshot, separators=(",", ":"), sort_keys=True).encode()
            write_atomically(self.path, data)
        except (OSError, TypeError, ValueError) as exc:
            self.counters["snapshot_failures"] += 1
            log_event(log, logging.ERROR, "snapshot_failed", error=str(exc))
