"""The edge agent's test harness: an agent.toml for a brand-new device, in-memory sources and a rules-engine double.

Used by tests/test_agent.py and the attack tests in tests/security (no tests in here).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edge.config import AgentConfig, load_config
from edge.sequence import provision_sequence
from protocol import Alert, AlertState, Fix, Severity, SignalSample
from protocol.cli import key_files as keys

__all__ = ["DEVICE", "T0", "ListSource", "ScriptedEngine", "fixes", "make_config"]

DEVICE = "car-0042"
T0 = 1_767_225_600_000


class ListSource:
    """An in-memory source: hands out its records in chunks, then blocks like an idle port."""

    def __init__(self, records: Sequence[Any], chunk: int = 100) -> None:
        self._records = list(records)
        self._chunk = chunk
        self._idle = threading.Event()
        self.closed = False

    def read(self, timeout: float = 1.0) -> list[Any]:
        if not self._records:
            self._idle.wait(timeout)
            return []
        out, self._records = self._records[: self._chunk], self._records[self._chunk :]
        return out

    def close(self) -> None:
        self.closed = True
        self._idle.set()


class ScriptedEngine:
    """A rules-engine double: raises a WARNING alert on every fix whose time is a multiple of ``every_ms``."""

    def __init__(self, every_ms: int = 0, urgent_on: str | None = None) -> None:
        self.every_ms = every_ms
        self.urgent_on = urgent_on
        self.fed = 0
        self.calls: list[tuple[str, Any]] = []
        self.active_rules: frozenset[str] = frozenset()
        self.counters = {"fed": 0}

    def feed(self, event: Any) -> list[Any]:
        self.fed += 1
        self.counters["fed"] = self.fed
        if isinstance(event, Fix) and self.every_ms and (event.time_ms - T0) % self.every_ms == 0:
            return [Alert("night_door_openings", Severity.WARNING, event.time_ms, f"ep-{event.time_ms}")]
        if isinstance(event, SignalSample) and event.name == self.urgent_on:
            return [Alert("power_cut", Severity.PANIC, event.time_ms, "cut-1", AlertState.RAISED, {"voltage_v": 0.0})]
        return []

    def tick(self, time_ms: int) -> list[Any]:
        return []

    def snapshot(self) -> dict[str, Any]:
        return {"fed": self.fed}

    def set_markets(self, markets: Any) -> None:
        self.calls.append(("markets", [m.id for m in markets]))

    def set_regions(self, regions: Any) -> None:
        self.calls.append(("regions", [r.id for r in regions]))

    def set_config(self, config: Any) -> None:
        self.calls.append(("config", config.max_hdop))


def fixes(n: int, step_ms: int = 100) -> list[Fix]:
    return [Fix(time_ms=T0 + i * step_ms, lat=31.3 + i * 1e-6, lon=121.25) for i in range(n)]


def make_config(tmp_path: Path, port: int, extra: str = "", grace: float = 5.0) -> AgentConfig:
    """An agent.toml for the harness; the reporting policy is off (these tests count every record
    through the batcher) unless ``extra`` has its own ``[reporting]`` table."""
    keys.generate(tmp_path / "keys", DEVICE)
    reporting = "" if "[reporting]" in extra else "[reporting]\nenabled = false"
    text = f"""
[device]
id = "{DEVICE}"
key_file = "keys/{DEVICE}.key"
snapshot_interval_s = 3600
[batch]
max_age_s = 3600
max_fixes = 50
[mqtt]
port = {port}
backoff_min_s = 0.05
backoff_max_s = 0.5
shutdown_grace_s = {grace}
{reporting}
{extra}
"""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    config = load_config(path, environ={})
    config.device.data_dir.mkdir(parents=True, exist_ok=True)
    provision_sequence(config.device.data_dir / "sequence")  # a brand-new device counts from 1
    return config
