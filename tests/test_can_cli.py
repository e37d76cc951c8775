"""``lienwatch can --log`` and read_can_log over candump, ASC and BLF files."""

from __future__ import annotations

import json
from pathlib import Path

import can
import pytest

from edge.canbus import CanCounters, CanLogError, read_can_log
from edge.canbus._log import MAX_LOG_LINE
from edge.cli.can import main

CANDUMP = """\
(1714550400.000000) can0 120#0208050000000000
(1714550400.050000) can0 0C0#0000000000000000

this line is garbage
(1714550400.100000) can0 1A0#C409010700000000
(1714550400.150000) can0 1A0#ZZ
(1714550400.200000) can0 3C0#30
(1714550400.250000) can0 3B0#1100000000000000 R
(1714550401.300000) can0 1A0#D007010700000000
"""

GOLDEN_JSONL = [
    {"time": "2024-05-01T08:00:00.000Z", "name": "Vehicle.LowVoltageSystemState", "value": "ON"},
    {"time": "2024-05-01T08:00:00.100Z", "name": "Vehicle.Speed", "value": 25.0},
    {"time": "2024-05-01T08:00:00.250Z", "name": "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", "value": True},
    {"time": "2024-05-01T08:00:00.250Z", "name": "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen", "value": False},
    {"time": "2024-05-01T08:00:00.250Z", "name": "Vehicle.Cabin.Door.Row2.DriverSide.IsOpen", "value": False},
    {"time": "2024-05-01T08:00:00.250Z", "name": "Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen", "value": False},
    {"time": "2024-05-01T08:00:00.250Z", "name": "Vehicle.Body.Trunk.Rear.IsOpen", "value": True},
    {"time": "2024-05-01T08:00:01.300Z", "name": "Vehicle.Speed", "value": 20.0},
]


@pytest.fixture
def candump(tmp_path: Path) -> Path:
    path = tmp_path / "drive.log"
    path.write_text(CANDUMP)
    return path


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], dict[str, int]]:
    code = main(argv)
    captured = capsys.readouterr()
    counters = json.loads(captured.err.strip().splitlines()[-1])["counters"]
    return code, captured.out.splitlines(), counters


def test_log_to_jsonl_golden(candump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, counters = run(["--log", str(candump), "--jsonl"], capsys)
    assert code == 0
    assert [json.loads(line) for line in lines] == GOLDEN_JSONL
    assert counters["frames_received"] == 6
    assert counters["unknown_id"] == 1
    assert counters["malformed_frames"] == 2
    assert (counters["short_frames"], counters["signals_missing"]) == (1, 1)
    assert counters["samples_emitted"] == 8


def test_log_text_output_and_max_samples(candump: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines, _ = run(["--log", str(candump), "--max-samples", "2"], capsys)
    assert code == 0
    assert lines == [
        '2024-05-01T08:00:00.000Z Vehicle.LowVoltageSystemState "ON"',
        "2024-05-01T08:00:00.100Z Vehicle.Speed 25.0",
    ]


def test_bad_map_exits_1_with_the_reason(candump: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad_map.toml"
    bad.write_text('[[signal]]\nname = "Vehicle.Speed"\ndbc_message = "NOPE"\ndbc_signal = "X"\n')
    code = main(["--log", str(candump), "--map", str(bad)])
    err = capsys.readouterr().err
    assert code == 1
    assert f"lienwatch can: {bad}: [[signal]] #1 ('Vehicle.Speed'): dbc_message 'NOPE' is not defined in" in err


def test_interface_and_channel_are_required_without_log(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--jsonl"])
    assert info.value.code == 2
    assert "--interface and --channel are required unless --log is given" in capsys.readouterr().err


def test_unopenable_bus_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--interface", "slcan", "--channel", str(tmp_path / "absent"), "--bitrate", "500000"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot open" in err
    assert "use --wait-for-bus" in err
    assert json.loads(err.strip().splitlines()[-1])["counters"]["bus_open_failures"] == 1


def test_unknown_log_format_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "drive.xyz"
    path.write_text("hello")
    assert main(["--log", str(path)]) == 1
    assert "cannot read as a CAN log" in capsys.readouterr().err


# --- read_can_log -----------------------------------------------------------------------


def test_candump_oversized_and_garbled_lines_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "big.log"
    path.write_text(
        "(1714550400.0) can0 120#02\n" + "x" * (MAX_LOG_LINE * 3) + "\n" + "(1714550400.1) can0 1A0#C409\n"
        "\x00\xff binary\n"
    )
    counters = CanCounters()
    frames = list(read_can_log(path, counters))
    assert [(m.arbitration_id, bytes(m.data)) for m in frames] == [(0x120, b"\x02"), (0x1A0, b"\xc4\x09")]
    assert counters.malformed_frames == 2


def test_missing_candump_file(tmp_path: Path) -> None:
    with pytest.raises(CanLogError, match=r"nope\.log: cannot open CAN log"):
        list(read_can_log(tmp_path / "nope.log"))


def test_asc_is_read_with_absolute_timestamps(tmp_path: Path) -> None:
    path = tmp_path / "drive.asc"
    with can.ASCWriter(path) as writer:
        writer.on_message_received(can.Message(timestamp=1_714_550_400.5, arbitration_id=0x120, data=b"\x02" * 8,
                                               is_extended_id=False))
    frames = list(read_can_log(path))
    assert len(frames) == 1
    assert frames[0].timestamp == pytest.approx(1_714_550_400.5, abs=0.001)


def test_blf_round_trip_and_corrupt_blf(tmp_path: Path) -> None:
    path = tmp_path / "drive.blf"
    with can.BLFWriter(path) as writer:
        for i in range(3):
            writer.on_message_received(can.Message(timestamp=1_714_550_400 + i, arbitration_id=0x1A0,
                                                   data=bytes([i] * 8), is_extended_id=False))
    assert [bytes(m.data)[0] for m in read_can_log(path)] == [0, 1, 2]
    corrupt = tmp_path / "corrupt.blf"
    corrupt.write_bytes(path.read_bytes()[:200] + b"\xff" * 64)
    counters = CanCounters()
    with pytest.raises(CanLogError, match=r"corrupt\.blf: "):
        list(read_can_log(corrupt, counters))
    assert counters.malformed_frames == 1
