"""The simulator in its own process, read through the real drivers the agent uses.

GNSS through pyserial, CAN through python-can's unmodified ``slcan`` interface; decoded
here with pynmea2 and cantools. The simulator holds its scenario clock until the host
opens the SLCAN channel (``--wait-open``), so a slow start on a busy machine does not
lose the first events. Every test stops its processes; waits are bounded, never fixed sleeps.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import cast

import can
import cantools
import pynmea2
import pytest
import serial

from firmware_sim import distance_m
from tests.child_processes import ChildProcesses

ROOT = Path(__file__).resolve().parent.parent
_LOADED = cantools.database.load_file(str(ROOT / "edge" / "data" / "generic_car.dbc"), strict=False)
assert isinstance(_LOADED, cantools.database.can.Database)
DBC = _LOADED
START = (31.30215, 121.24590)
END = (31.30300, 121.24590)  # 94.5 m north

SCENARIO = f"""
name = "xproc"
start = 2026-05-04T01:00:00+08:00
position = [{START[0]}, {START[1]}]
speed = 1
seed = 11
[gnss]
rate_hz = 5
[can]
background_fps = 20
[[segment]]
kind = "park"
duration = "3s"
[[segment.event]]
at = "1500ms"
kind = "door_open"
door = "FL"
open_for = "1s"
[[segment]]
kind = "drive"
speed = 5
speed_kmh = 36
route = [[{END[0]}, {END[1]}]]
[[segment]]
kind = "park"
duration = "2s"
"""

UNPLUG = f"""
name = "xunplug"
start = 2026-05-04T09:00:00+08:00
position = [{START[0]}, {START[1]}]
[[segment]]
kind = "idle"
duration = "6s"
[[segment.event]]
at = "1s"
kind = "can_unplug"
duration = "1500ms"
"""

pytestmark = pytest.mark.timeout(180)


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def close_bus(bus: can.BusABC) -> None:
    """Shut a bus down even when its adapter has vanished (shutdown's ``C`` then fails)."""
    with contextlib.suppress(can.CanError):
        bus.shutdown()
    bus.serialPortOrig.close()  # type: ignore[attr-defined]


def read_until_gone(bus: can.BusABC, port: serial.Serial, deadline: float) -> tuple[list, bytes]:
    """Read both links until the simulator closes them (the host sees the devices vanish)."""
    frames: list[tuple[float, can.Message]] = []
    nmea = bytearray()
    can_open = gnss_open = True
    while (can_open or gnss_open) and time.monotonic() < deadline:
        if can_open:
            try:
                message = bus.recv(timeout=0.01)
            except can.CanOperationError:
                can_open = False
            else:
                if message is not None:
                    frames.append((time.time(), message))
        if gnss_open:
            try:
                nmea += port.read(port.in_waiting or 1)
            except (serial.SerialException, OSError):  # in_waiting's ioctl fails with EIO once it is gone
                gnss_open = False
    assert not can_open, "the simulator never closed its SLCAN link"
    assert not gnss_open, "the simulator never closed its GNSS link"
    return frames, bytes(nmea)


def drain(bus: can.BusABC) -> None:
    """Receive until the bus fails (the test expects it to)."""
    for _ in range(10_000):
        bus.recv(timeout=0.05)


def read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


@pytest.fixture
def sim_process(
    tmp_path: Path, processes: ChildProcesses
) -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], Path, Path, Path]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(scenario_text: str, *extra: str) -> tuple[subprocess.Popen[bytes], Path, Path, Path]:
        scenario = tmp_path / "scenario.toml"
        scenario.write_text(scenario_text)
        gnss, can_link, events = tmp_path / "gnss0", tmp_path / "can0", tmp_path / "events.jsonl"
        command = [
            sys.executable,
            "-m",
            "firmware_sim",
            "run",
            "--scenario",
            str(scenario),
            "--gnss-link",
            str(gnss),
            "--can-link",
            str(can_link),
            "--events-jsonl",
            str(events),
            *extra,
        ]
        proc = processes.start(command, cwd=ROOT, stderr=subprocess.PIPE)
        started.append(proc)
        wait_for(lambda: (gnss.exists() and can_link.exists()) or proc.poll() is not None, 60, "the pty symlinks")
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
        return proc, gnss, can_link, events

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_nmea_and_slcan_through_the_real_drivers(sim_process: Callable) -> None:
    proc, gnss_link, can_link, events_path = sim_process(SCENARIO, "--wait-open", "60")
    port = serial.Serial(str(gnss_link), baudrate=9600, timeout=0)
    bus = can.Bus(interface="slcan", channel=str(can_link), bitrate=500000, sleep_after_open=0)
    try:
        bus.send(can.Message(arbitration_id=0x7E0, data=b"\x02\x01\x0d", is_extended_id=False))
        frames, nmea = read_until_gone(bus, port, time.monotonic() + 120)
    finally:
        close_bus(bus)
        port.close()
    assert proc.wait(timeout=30) == 0
    events = read_events(events_path)
    assert events[-1]["type"] == "end"
    assert events[-1]["reason"] == "finished"
    by_name = {e["event"]: e for e in events if e["type"] == "event"}
    clocks = [e for e in events if e["type"] == "clock"]
    walls = [c["wall_time"] for c in clocks]
    assert max(b - a for a, b in itertools.pairwise(walls)) < 1.5  # about once per wall second
    assert [c["progress"] for c in clocks] == sorted(c["progress"] for c in clocks)
    assert clocks[-1]["progress"] == 100.0
    start_record = next(e for e in events if e["type"] == "start")
    assert clocks[-1]["scenario_time"] == start_record["scenario_end"]

    # GNSS: valid sentences, timestamps on the scenario clock, positions along the route
    lines = [ln.decode() for ln in nmea.split(b"\r\n") if ln.startswith(b"$")]
    parsed = [pynmea2.parse(ln, check=True) for ln in lines]
    rmc = [m for m in parsed if isinstance(m, pynmea2.RMC) and m.status == "A"]
    assert len(rmc) >= 15
    assert {m.datestamp.isoformat() for m in rmc} == {"2026-05-03"}  # 01:00 +08:00 is the previous UTC day
    assert all("17:00:00" <= m.timestamp.isoformat() <= "17:00:30" for m in rmc)
    assert distance_m(rmc[0].latitude, rmc[0].longitude, *START) < 15
    assert distance_m(rmc[-1].latitude, rmc[-1].longitude, *END) < 15
    assert {type(m).__name__ for m in parsed} >= {"RMC", "VTG", "GGA", "GSA", "GSV"}

    # CAN: door frames at the scripted times, ignition state per segment
    def decoded(name: str) -> list[tuple[float, dict]]:
        frame_id = DBC.get_message_by_name(name).frame_id
        return [
            (t, cast(dict, DBC.decode_message(frame_id, m.data, decode_choices=False)))
            for t, m in frames
            if m.arbitration_id == frame_id
        ]

    opened, closed = by_name["door_open"]["wall_time"], by_name["door_close"]["wall_time"]
    doors = decoded("SEATS_DOORS")
    first_open = next(t for t, d in doors if d["DOOR_OPEN_FL"] == 1)
    # wall_time is stamped just after the event's frames were written: they may be read a hair earlier
    assert opened - 0.05 <= first_open < opened + 2.0  # generous: two cores shared by the whole team
    assert all(d["DOOR_OPEN_FL"] == 0 for t, d in doors if t < opened - 0.05)
    assert all(d["DOOR_OPEN_FL"] == 0 for t, d in doors if t > closed + 2.0)
    drive_start, drive_end = by_name["drive_start"]["wall_time"], by_name["drive_end"]["wall_time"]
    power = decoded("POWER_STATE")
    assert {d["IGNITION_STATE"] for t, d in power if t < drive_start - 0.05} == {0}
    assert 3 in {d["IGNITION_STATE"] for t, d in power}  # START while cranking
    assert {d["IGNITION_STATE"] for t, d in power if drive_start + 1.6 < t < drive_end - 0.1} == {2}
    speeds = [d["SPEED_KPH"] for t, d in decoded("VEHICLE_SPEED") if drive_start + 0.3 < t < drive_end - 0.1]
    assert speeds
    assert all(35.0 < s < 37.0 for s in speeds)
    unknown = [m for _, m in frames if m.arbitration_id not in {msg.frame_id for msg in DBC.messages}]
    assert unknown  # background load on ids the DBC does not define
    end_counters = events[-1]["counters"]
    assert end_counters["slcan_frames_to_host"] >= len(frames)
    assert end_counters["slcan_repeated"] >= 1  # python-can's C-while-closed / O-twice
    assert end_counters.get("slcan_error_unknown_command", 0) == 0
    assert end_counters["slcan_frames_from_host"] == 1  # our 0x7E0 request was acknowledged


def test_unplug_removes_the_link_and_replug_publishes_a_new_pty(sim_process: Callable) -> None:
    proc, _gnss, can_link, events_path = sim_process(UNPLUG, "--wait-open", "60")
    bus = can.Bus(interface="slcan", channel=str(can_link), bitrate=500000, sleep_after_open=0)
    try:
        wait_for(lambda: bus.recv(timeout=0.05) is not None, 30, "a first frame")

        def seen(name: str) -> bool:
            return any(e.get("event") == name for e in read_events(events_path))

        wait_for(lambda: seen("can_unplug"), 60, "the unplug event")
        assert not os.path.lexists(can_link)
        # the host's driver notices the vanished adapter (frames still buffered come first)
        with pytest.raises(can.CanOperationError):
            drain(bus)
    finally:
        close_bus(bus)
    wait_for(lambda: os.path.lexists(can_link), 60, "the re-plugged pty")
    replug = next(e for e in read_events(events_path) if e.get("event") == "can_replug")
    assert os.readlink(can_link) == replug["device"]
    again = can.Bus(interface="slcan", channel=str(can_link), bitrate=500000, sleep_after_open=0)
    try:
        wait_for(lambda: again.recv(timeout=0.05) is not None, 30, "frames after the re-plug")
    finally:
        close_bus(again)
    assert proc.wait(timeout=60) == 0
    assert not os.path.lexists(can_link)


def test_sigterm_cleans_up_links_and_reports(sim_process: Callable) -> None:
    proc, gnss_link, can_link, events_path = sim_process(UNPLUG, "--loop")
    wait_for(lambda: any(e["type"] == "clock" for e in read_events(events_path)), 60, "the first clock line")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    assert not os.path.lexists(gnss_link)
    assert not os.path.lexists(can_link)
    events = read_events(events_path)
    assert events[0]["type"] == "ready"
    assert events[-1]["type"] == "end"
    assert events[-1]["reason"] == "stopped"


def test_refuses_to_replace_a_regular_file(tmp_path: Path, processes: ChildProcesses) -> None:
    target = tmp_path / "gnss0"
    target.write_text("precious")
    result = processes.run(
        [
            sys.executable,
            "-m",
            "firmware_sim",
            "run",
            "--scenario",
            "unplug",
            "--gnss-link",
            str(target),
            "--can-link",
            str(tmp_path / "can0"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "is not a symlink" in result.stderr
    assert target.read_text() == "precious"
    assert not os.path.lexists(tmp_path / "can0")


def test_bad_scenario_exits_2_with_the_key_named(tmp_path: Path, processes: ChildProcesses) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("start = 2026-01-01T00:00:00Z\nposition = [1, 2]\n[[segment]]\nkind = 'park'\nduration = 'x'\n")
    result = processes.run(
        [
            sys.executable,
            "-m",
            "firmware_sim",
            "run",
            "--scenario",
            str(bad),
            "--gnss-link",
            str(tmp_path / "g"),
            "--can-link",
            str(tmp_path / "c"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "segment[0].duration" in result.stderr


def test_load_paces_frames_and_reports_what_it_sent(tmp_path: Path, processes: ChildProcesses) -> None:
    can_link, gnss_link = tmp_path / "can0", tmp_path / "gnss0"
    command = [
        sys.executable,
        "-m",
        "firmware_sim",
        "load",
        "--can-link",
        str(can_link),
        "--fps",
        "1000",
        "--seconds",
        "2",
        "--gnss-link",
        str(gnss_link),
        "--gnss-hz",
        "10",
        "--open-timeout",
        "60",
    ]
    proc = processes.start(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (can_link.exists() and gnss_link.exists()) or proc.poll() is not None, 60, "load links")
        port = serial.Serial(str(gnss_link), timeout=0)
        bus = can.Bus(interface="slcan", channel=str(can_link), bitrate=500000, sleep_after_open=0)
        try:
            frames, nmea = read_until_gone(bus, port, time.monotonic() + 120)
        finally:
            close_bus(bus)
            port.close()
        received = [message for _, message in frames]
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["reason"] == "finished"
    assert report["frames_sent"] == pytest.approx(2000, rel=0.1)
    assert report["frames_mapped"] == pytest.approx(report["frames_sent"] * 0.05, abs=2)
    assert report["frames_dropped"] == 0
    # unknown frames carry a sequence number: what we read is a gap-free prefix of what was sent
    ids = {msg.frame_id for msg in DBC.messages}
    sequence = [int.from_bytes(m.data[:4], "big") for m in received if m.arbitration_id not in ids]
    assert sequence == list(range(1, len(sequence) + 1))
    assert len(received) >= report["frames_sent"] * 0.9
    rmc = [pynmea2.parse(ln.decode(), check=True) for ln in nmea.split(b"\r\n") if ln.startswith(b"$GNRMC")]
    assert len(rmc) >= 15
    assert not os.path.lexists(can_link)
    assert not os.path.lexists(gnss_link)
