"""``lienwatch replay`` on generated NMEA + candump logs: a normal week and each anomaly.

The simulator (firmware_sim) is written in parallel by another engineer; until it can
write log files, these scenarios are generated here from a small vehicle timeline
(GNSS epochs + CAN frames encoded with the sample DBC). They go through the real
decoders (edge.gnss NmeaDecoder, edge.canbus SignalDecoder) and the real engine, via
the command's ``main``. Simulator-driven replays are to be added by the lead.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from edge.cli.replay import main
from protocol import Fix, NoFix
from protocol.geo import distance_m
from tests.timeline import MARKET_WGS, SHANGHAI, S, local_ms, nmea_epoch, offset

REPO = Path(__file__).resolve().parents[1]
DBC = REPO / "edge" / "data" / "generic_car.dbc"
SIGNAL_MAP = REPO / "edge" / "data" / "generic_car_map.toml"
HOME = (31.2200, 121.4400)  # Xuhui, ~24 km from the market
WORK = (31.2400, 121.5000)  # Lujiazui
MONDAY = local_ms(SHANGHAI, 2024, 5, 6, 0, 0)
_IGNITION = {"OFF": 0, "ACC": 1, "ON": 2, "START": 3, "LOCK": 4}


@dataclass
class Vehicle:
    """A tiny vehicle model that writes what a receiver and a CAN bus would have said."""

    lat: float
    lon: float
    t: int
    ignition: str = "LOCK"
    speed_kmh: float = 0.0
    voltage: float = 12.6
    doors: list[bool] = field(default_factory=lambda: [False] * 5)
    odometer_km: float = 20_000.0
    gnss: list[Fix | NoFix] = field(default_factory=list)
    frames: list[can.Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.db = cantools.database.load_file(DBC, strict=False)

    def _frame(self, name: str, values: dict[str, float]) -> None:
        message = self.db.get_message_by_name(name)  # type: ignore[union-attr]
        full = {s.name: 0 for s in message.signals} | values
        data = message.encode(full, strict=False)
        frame = can.Message(timestamp=self.t / 1000.0, arbitration_id=message.frame_id, data=data, is_extended_id=False)
        self.frames.append(frame)

    def bus(self) -> None:
        """One round of the periodic frames (the bus is awake)."""
        self._frame("POWER_STATE", {"IGNITION_STATE": _IGNITION[self.ignition]})
        self._frame("VEHICLE_SPEED", {"SPEED_KPH": self.speed_kmh, "SPEED_VALID": 1})
        names = ["DOOR_OPEN_FL", "DOOR_OPEN_FR", "DOOR_OPEN_RL", "DOOR_OPEN_RR", "TRUNK_OPEN"]
        self._frame("SEATS_DOORS", {n: int(v) for n, v in zip(names, self.doors, strict=True)})
        self._frame("BATTERY_12V", {"BATTERY_VOLTAGE": self.voltage})
        self._frame("ODOMETER", {"ODOMETER_KM": self.odometer_km})

    def fix(self, jitter_m: float = 0.0, snr: float = 42.0) -> None:
        i = len(self.gnss)
        lat, lon = offset(self.lat, self.lon, jitter_m * math.sin(i * 1.3), jitter_m * math.cos(i * 2.1))
        self.gnss.append(Fix(self.t, lat, lon, speed_mps=self.speed_kmh / 3.6, hdop=0.9, sats_used=9, mean_snr=snr))

    def park(self, seconds: int, every_s: int, jitter_m: float = 10.0, bus: bool = False) -> None:
        """Parked: a fix every ``every_s`` (the box sleeps between), bus frames if awake."""
        self.speed_kmh = 0.0
        end = self.t + seconds * S
        while self.t < end:
            self.fix(jitter_m)
            if bus:
                self.bus()
            self.t += every_s * S

    def drive_to(
        self, lat: float, lon: float, speed_kmh: float = 54.0, *, gnss: bool = True, ignition: str = "ON"
    ) -> None:
        """Drive in a straight line at 1 Hz (fixes and bus frames every second)."""
        self.ignition = ignition
        self.bus()
        total = distance_m(self.lat, self.lon, lat, lon)
        steps = max(1, int(total / (speed_kmh / 3.6)))
        lat0, lon0 = self.lat, self.lon
        self.speed_kmh = speed_kmh
        for k in range(1, steps + 1):
            self.t += S
            self.lat = lat0 + (lat - lat0) * k / steps
            self.lon = lon0 + (lon - lon0) * k / steps
            self.odometer_km += speed_kmh / 3600.0
            if gnss:
                self.fix()
            self.bus()
        self.speed_kmh = 0.0
        self.t += S
        self.bus()
        self.ignition = "LOCK" if ignition == "ON" else ignition
        self.bus()

    def write(self, folder: Path) -> tuple[Path, Path]:
        nmea = folder / "gnss.nmea"
        with nmea.open("w", encoding="ascii") as fh:
            for epoch in self.gnss:
                fh.writelines(line + "\r\n" for line in nmea_epoch(epoch))
        log = folder / "can.log"
        writer = can.CanutilsLogWriter(log, channel="can0")
        for frame in sorted(self.frames, key=lambda m: m.timestamp):
            writer.on_message_received(frame)
        writer.stop()
        return nmea, log


def agent_toml(folder: Path) -> Path:
    path = folder / "agent.toml"
    path.write_text(
        f"""
[can]
interface = "virtual"
channel = "replay"
dbc = ["{DBC}"]
signal_map = "{SIGNAL_MAP}"

[rules]
markets_file = "{REPO / 'edge' / 'data' / 'markets.sample.toml'}"
regions_file = "{REPO / 'edge' / 'data' / 'regions.sample.toml'}"
""",
        encoding="utf-8",
    )
    return path


def replay(
    tmp_path: Path, car: Vehicle, capsys: pytest.CaptureFixture[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    nmea, log = car.write(tmp_path)
    code = main(["--config", str(agent_toml(tmp_path)), "--nmea", str(nmea), "--can", str(log), "--jsonl"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    records = [json.loads(line) for line in captured.out.splitlines()]
    counters = json.loads(captured.err.strip().splitlines()[-1])["replay_counters"]
    return records, counters


def alert_summary(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(r["rule"], r["state"]) for r in records if "rule" in r]


def commute_day(car: Vehicle, day_start: int) -> None:
    """Home at night, to work at 08:00, home at 18:00 (doors opened by day only)."""
    car.t = max(car.t, day_start)
    car.park((8 * 3600 * S - (car.t - day_start)) // S, every_s=600)
    car.doors[0] = True
    car.bus()
    car.t += 5 * S
    car.doors[0] = False
    car.drive_to(*WORK)
    car.park((18 * 3600 * S - (car.t - day_start)) // S, every_s=600)
    car.drive_to(*HOME)


def test_normal_week_gives_no_alerts_and_daily_stats(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    car = Vehicle(*HOME, t=MONDAY)
    for day in range(7):
        commute_day(car, MONDAY + day * 24 * 3600 * S)
    car.park(3600, every_s=600)
    car.t = MONDAY + 7 * 24 * 3600 * S + 60 * S
    car.fix()
    records, counters = replay(tmp_path, car, capsys)
    assert alert_summary(records) == []
    finals = [r["stats"] for r in records if "stats" in r and r["stats"]["final"]]
    assert [s["day"] for s in finals] == [f"2024-05-{d:02d}" for d in range(6, 13)]
    one_way = distance_m(*HOME, *WORK)
    for s in finals:
        assert abs(s["distance_m"] - 2 * one_way) < 0.02 * one_way
        assert s["odometer_km"] is not None
    assert counters["rules"]["fixes"] == len(car.gnss)  # every epoch decoded and fed
    assert counters["rules"]["stale_events"] == 0


def test_parked_in_market_gives_exactly_the_dwell_alert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    car = Vehicle(*HOME, t=MONDAY + 9 * 3600 * S)
    spot = offset(*MARKET_WGS, 60.0, -40.0)
    car.drive_to(*spot, speed_kmh=72.0)
    arrived = car.t
    car.park(4 * 24 * 3600, every_s=900, jitter_m=30.0)
    records, _ = replay(tmp_path, car, capsys)
    assert alert_summary(records) == [("stationary_near_market", "raised")]
    [alert] = [r for r in records if "rule" in r]
    assert alert["severity"] == "high"
    assert alert["evidence"]["market_id"] == "sh-jiading-ucm"
    assert arrived - 2 * S <= alert["evidence"]["dwell_start_ms"] <= arrived + 900 * S


def test_night_doors_gives_exactly_the_night_alert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    car = Vehicle(*HOME, t=local_ms(SHANGHAI, 2024, 5, 7, 0, 30))
    car.park(1800, every_s=10, bus=True)
    for door in (0, 4, 1):  # driver door, trunk, passenger door, 20 minutes apart
        car.doors[door] = True
        car.park(60, every_s=10, bus=True)
        car.doors[door] = False
        car.park(1140, every_s=10, bus=True)
    car.park(3 * 3600, every_s=60, bus=True)
    records, _ = replay(tmp_path, car, capsys)
    assert alert_summary(records) == [("night_door_openings", "raised"), ("night_door_openings", "cleared")]
    raised = next(r for r in records if r.get("state") == "raised")
    doors = [o["door"] for o in raised["evidence"]["openings"]]
    assert doors == ["Row1.DriverSide", "Trunk.Rear", "Row1.PassengerSide"]


def test_unplug_gives_exactly_the_power_cut_alert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    car = Vehicle(*HOME, t=MONDAY + 14 * 3600 * S)
    car.park(600, every_s=5, bus=True)
    car.voltage = 0.0  # main supply cut: the body controller reports 0 V, then the bus dies
    car.park(10, every_s=1, bus=True)
    car.park(600, every_s=5, bus=False)  # fixes continue on the backup battery
    records, _ = replay(tmp_path, car, capsys)
    assert alert_summary(records) == [("power_cut", "raised")]
    [alert] = [r for r in records if "rule" in r]
    assert (alert["severity"], alert["evidence"]["cause"]) == ("panic", "low_voltage")


def test_tow_away_gives_exactly_the_towing_alert(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    car = Vehicle(*HOME, t=MONDAY + 2 * 3600 * S)
    car.park(600, every_s=10, bus=True)
    # Lifted onto a truck: ignition stays LOCK, the car moves 2 km at 25 km/h.
    car.drive_to(*offset(*HOME, 2000.0, 0.0), speed_kmh=25.0, ignition="LOCK")
    car.park(1800, every_s=10, bus=True)
    records, _ = replay(tmp_path, car, capsys)
    assert alert_summary(records) == [("towing", "raised"), ("towing", "cleared")]
    raised = next(r for r in records if r.get("state") == "raised")
    assert raised["evidence"]["cause"] == "speed"


def test_gnss_jamming_gives_exactly_the_gnss_alerts(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    car = Vehicle(*HOME, t=MONDAY + 10 * 3600 * S)
    car.drive_to(*offset(*HOME, 0.0, 3000.0), speed_kmh=60.0)
    # Jammed for two minutes while driving on: no fix, tracked SNR at 18 dB-Hz.
    car.ignition, car.speed_kmh = "ON", 60.0
    for _ in range(120):
        car.t += S
        car.gnss.append(NoFix(car.t, sats_in_view=7, mean_snr=18.0))
        car.bus()
    car.t += S
    car.fix()
    records, _ = replay(tmp_path, car, capsys)
    assert sorted(alert_summary(records)) == [
        ("gnss_jamming", "cleared"),
        ("gnss_jamming", "raised"),
        ("gnss_lost", "cleared"),
        ("gnss_lost", "raised"),
    ]


def test_replay_rejects_bad_arguments_and_configs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nmea = tmp_path / "x.nmea"
    nmea.write_text("$GPGGA,garbage*00\r\nnot nmea at all\r\n")
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules]\nno_such_key = 1\n")
    assert main(["--config", str(bad), "--nmea", str(nmea)]) == 2
    assert "unknown key rules.no_such_key" in capsys.readouterr().err
    good = tmp_path / "good.toml"
    good.write_text("[rules]\n")
    assert main(["--config", str(good), "--nmea", str(tmp_path / "missing.nmea")]) == 2
    assert main(["--config", str(good), "--nmea", str(nmea), "--can", str(nmea)]) == 2
    assert "needs a [can] section" in capsys.readouterr().err
    # Garbage NMEA is counted by the decoder, not a crash.
    assert main(["--config", str(good), "--nmea", str(nmea), "--jsonl"]) == 0
    captured = capsys.readouterr()
    assert captured.out == ""
    counters = json.loads(captured.err.strip().splitlines()[-1])["replay_counters"]
    assert counters["events"] == 0
    assert sum(counters["gnss"].values()) >= 2
