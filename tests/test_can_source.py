"""CanSource on python-can's virtual bus (two Bus objects on one channel), config, backoff."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from edge.backoff import Backoff
from edge.canbus import (
    SAMPLE_DBC,
    SAMPLE_MAP,
    CanSource,
    DbcError,
    SignalDecoder,
    SignalMapError,
    decoder_from_config,
    source_from_config,
)
from edge.config import CanSettings, parse_config
from edge.errors import ConfigError, DeviceError
from protocol import SignalSample

_channels = itertools.count()


def decoder() -> SignalDecoder:
    return SignalDecoder.from_files([SAMPLE_DBC], SAMPLE_MAP)


@pytest.fixture
def channel() -> str:
    return f"lw-test-{next(_channels)}"


@pytest.fixture
def sender(channel: str) -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=channel)
    yield bus
    bus.shutdown()


def send(bus: can.BusABC, arb_id: int, data: bytes, **flags: Any) -> None:
    bus.send(can.Message(arbitration_id=arb_id, data=data, is_extended_id=False, **flags))


def test_reads_samples_from_a_virtual_bus(channel: str, sender: can.BusABC) -> None:
    with CanSource("virtual", channel, decoder=decoder()) as source:
        assert source.is_open
        send(sender, 0x0C0, bytes(8))  # ENGINE_DATA: not mapped, dropped by the bus filter
        send(sender, 0x120, bytes([2]) + bytes(7))
        samples = source.read(timeout=5)
        assert [(s.name, s.value) for s in samples] == [("Vehicle.LowVoltageSystemState", "ON")]
        send(sender, 0x120, b"", is_remote_frame=True)
        send(sender, 0x120, bytes(8), is_error_frame=True)
        send(sender, 0x3B0, bytes([0x10]) + bytes(7))
        samples = source.read(timeout=5)
        assert [s.name for s in samples if s.value is True] == ["Vehicle.Body.Trunk.Rear.IsOpen"]
        assert source.read(timeout=0) == []
        counts = source.counters.as_dict()
    assert (counts["frames_received"], counts["unknown_id"], counts["remote_frames"], counts["error_frames"]) == (
        4, 0, 1, 1,
    )
    assert counts["samples_emitted"] == 6


def test_read_stamps_frames_with_the_callers_clock(channel: str, sender: can.BusABC) -> None:
    seen: list[float] = []

    def clock(host_seconds: float) -> int:
        seen.append(host_seconds)
        return 1_714_550_400_000 + len(seen)

    with CanSource("virtual", channel, decoder=decoder()) as source:
        send(sender, 0x1A0, bytes([0xC4, 0x09]) + bytes(6))
        assert source.read(timeout=5, time_ms=clock) == [SignalSample("Vehicle.Speed", 1_714_550_400_001, 25.0)]
    assert len(seen) == 1
    assert seen[0] > 1.6e9  # virtual bus stamps frames with host time


def test_read_after_close_is_an_error(channel: str) -> None:
    source = CanSource("virtual", channel, decoder=decoder())
    source.close()
    source.close()
    with pytest.raises(DeviceError, match="is closed"):
        source.read(timeout=0)


class ScriptedBuses:
    """can.Bus stand-in: the first open fails, later ones are virtual buses whose recv() follows a script."""

    def __init__(self, real_bus: Any, scripts: list[list[BaseException | None]]) -> None:
        self.real_bus = real_bus
        self.scripts = scripts
        self.opened: list[can.BusABC] = []
        self.attempts = 0

    def __call__(self, **kwargs: Any) -> can.BusABC:
        self.attempts += 1
        if self.attempts == 1:
            raise can.CanInitializationError("could not open port: adapter not plugged in")
        bus: can.BusABC = self.real_bus(**kwargs)
        script = iter(self.scripts[len(self.opened)] if len(self.opened) < len(self.scripts) else [])
        real_recv = bus.recv

        def recv(timeout: float | None = None) -> can.Message | None:
            step = next(script, None)
            if step is not None:
                raise step
            msg: can.Message | None = real_recv(timeout)
            return msg

        bus.recv = recv  # type: ignore[method-assign,unused-ignore]
        self.opened.append(bus)
        return bus


def test_open_failure_adapter_loss_and_garbled_frames_are_survived(
    channel: str, sender: can.BusABC, monkeypatch: pytest.MonkeyPatch
) -> None:
    buses = ScriptedBuses(can.Bus, [[None, None, ValueError("invalid literal for int() with base 16: 'XYZ'"),
                                     can.CanOperationError("Could not read from serial device")]])
    monkeypatch.setattr(can, "Bus", buses)
    source = CanSource("virtual", channel, decoder=decoder(), backoff=Backoff(initial_s=0.001, max_s=0.001))
    try:
        assert not source.is_open
        assert source.last_error is not None
        assert "adapter not plugged in" in source.last_error
        assert source.read(timeout=0.05) == []  # opens the bus on retry; nothing sent yet
        assert source.is_open
        send(sender, 0x120, bytes([0]) + bytes(7))
        assert [s.value for s in source.read(timeout=5)] == ["OFF"]
        send(sender, 0x120, bytes([1]) + bytes(7))
        # garbled line (skipped), then the adapter vanishes; the queued frame dies with it
        assert source.read(timeout=0.05) == []
        assert source.is_open  # reopened within the same read
        send(sender, 0x120, bytes([2]) + bytes(7))
        assert [s.value for s in source.read(timeout=5)] == ["ON"]
        counts = source.counters.as_dict()
    finally:
        source.close()
    assert (counts["bus_open_failures"], counts["malformed_frames"], counts["bus_errors"], counts["bus_reopens"]) == (
        1, 1, 1, 1,  # the first successful open is not a reopen
    )
    assert buses.attempts == 3
    assert len(buses.opened) == 2


def test_bus_kwargs_and_slcan_sleep_default(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    real_bus = can.Bus

    def fake_bus(**kwargs: Any) -> can.BusABC:
        calls.append(kwargs)
        bus: can.BusABC = real_bus(interface="virtual", channel="lw-kwargs")
        return bus

    monkeypatch.setattr(can, "Bus", fake_bus)
    CanSource("slcan", "/dev/ttyACM0", bitrate=500_000, decoder=decoder()).close()
    CanSource("slcan", "/dev/ttyACM0", decoder=decoder(), sleep_after_open=0.5).close()
    assert calls[0]["sleep_after_open"] == 0
    assert calls[0]["bitrate"] == 500_000
    assert calls[0]["can_filters"] == decoder().can_filters
    assert calls[1]["sleep_after_open"] == 0.5
    assert "bitrate" not in calls[1]


@pytest.mark.parametrize(
    ("interface", "kwargs", "message"),
    [
        ("no-such-interface", {}, "not available in python-can"),
        ("", {}, "interface must be a non-empty string"),
        ("virtual", {"bitrate": "fast"}, "bitrate must be a positive int"),
        ("virtual", {"bitrate": -5}, "bitrate must be a positive int"),
    ],
)
def test_impossible_bus_settings_raise(interface: str, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        CanSource(interface, "x", decoder=decoder(), **kwargs)


def test_backoff_doubles_to_the_cap_and_resets() -> None:
    backoff = Backoff(initial_s=0.1, max_s=1.0)
    assert [backoff.next_delay() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    backoff.reset()
    assert backoff.next_delay() == 0.1
    with pytest.raises(ConfigError, match="backoff needs"):
        Backoff(initial_s=2, max_s=1)


# --- agent.toml [can] -------------------------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    shutil.copy(SAMPLE_DBC, tmp_path / "car.dbc")
    shutil.copy(SAMPLE_MAP, tmp_path / "car_map.toml")
    return tmp_path


def can_settings(section: dict[str, Any], base_dir: Path) -> CanSettings:
    """The [can] section as agent.toml's one loader parses it."""
    config = parse_config({"device": {"id": "a", "key_file": "k"}, "can": section}, base_dir, environ={})
    assert config.can is not None
    return config.can


def test_source_from_config_resolves_relative_paths(config_dir: Path, channel: str, sender: can.BusABC) -> None:
    section = {
        "interface": "virtual", "channel": channel, "dbc": "car.dbc", "signal_map": "car_map.toml",
        "bus_options": {"receive_own_messages": False},
    }
    with source_from_config(can_settings(section, config_dir)) as source:
        send(sender, 0x3D0, (123456).to_bytes(4, "little") + bytes(4))
        assert [s.value for s in source.read(timeout=5)] == [12345.6]


def test_decoder_from_config_takes_a_list_of_dbcs(config_dir: Path) -> None:
    section = {"dbc": [str(config_dir / "car.dbc")], "signal_map": "car_map.toml", "interface": "virtual"}
    assert decoder_from_config(can_settings(section, config_dir)).can_filters == decoder().can_filters


@pytest.mark.parametrize(
    ("section", "error", "message"),
    [
        ({"signal_map": "car_map.toml"}, ConfigError, "'dbc' and 'signal_map' are required"),
        ({"dbc": [], "signal_map": "car_map.toml"}, ConfigError, "non-empty list of paths"),
        ({"dbc": [3], "signal_map": "car_map.toml"}, ConfigError, r"\[can\] dbc: expected a file path, got 3"),
        ({"dbc": "car.dbc", "signal_map": "car_map.toml", "bitrte": 5}, ConfigError, r"unknown key 'bitrte'"),
        ({"dbc": "other.dbc", "signal_map": "car_map.toml"}, DbcError, r"other\.dbc: cannot read DBC"),
        ({"dbc": "car.dbc", "signal_map": "none.toml"}, SignalMapError, r"none\.toml: cannot read signal map"),
        ({"dbc": "car.dbc", "signal_map": "car_map.toml", "channel": "x"}, ConfigError, "must be strings"),
        (
            {"dbc": "car.dbc", "signal_map": "car_map.toml", "interface": "virtual", "channel": "x",
             "bus_options": {"can_filters": []}},
            ConfigError, "can_filters cannot be set here",
        ),
        (
            {"dbc": "car.dbc", "signal_map": "car_map.toml", "interface": "virtual", "channel": "x",
             "bus_options": 3},
            ConfigError, "bus_options: expected a table",
        ),
    ],
)
def test_bad_can_sections(config_dir: Path, section: dict[str, Any], error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        source_from_config(can_settings(section, config_dir))
