"""``lienwatch gnss``: log files in-process, and a real pty receiver read by the command in a subprocess."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from functools import reduce
from pathlib import Path

import pytest

from edge.cli.gnss import main
from tests.child_processes import ChildProcesses

DATA = Path(__file__).parent / "data" / "nmea"
ROOT = Path(__file__).resolve().parents[1]


def nmea(body: str) -> bytes:
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}\r\n".encode()


def test_jsonl_from_a_log_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--file", str(DATA / "nofix_periods.nmea"), "--jsonl"]) == 0
    out, err = capsys.readouterr()
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0] == {
        "time": "2024-05-15T08:15:40.000Z",
        "mode": "none",
        "lat": None,
        "lon": None,
        "alt": None,
        "speed_mps": None,
        "course_deg": None,
        "hdop": None,
        "sats": None,
        "mean_snr": 19.5,
        "sats_in_view": 4,
    }
    assert rows[3] == {
        "time": "2024-05-15T08:15:43.000Z",
        "mode": "3d",
        "lat": 31.2504,
        "lon": 121.3201,
        "alt": 12.4,
        "speed_mps": 8.3,
        "course_deg": 180.0,
        "hdop": 1.1,
        "sats": 7,
        "mean_snr": 43.4,
    }
    assert [r["mode"] for r in rows] == ["none"] * 3 + ["3d"] * 4 + ["none"] * 3 + ["3d"] * 3
    counters = json.loads(err.strip().splitlines()[-1])["counters"]
    assert counters["fixes_emitted"] == 7
    assert counters["no_fix_epochs"] == 6
    assert counters["untimed_epochs"] == 2


def test_text_output_and_device_path_that_is_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", str(DATA / "mtk_gp_midnight.nmea")]) == 0
    out, _ = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 14
    assert lines[7].startswith("2025-01-01T00:00:00.000Z  3d  31.1903933 121.3923883  alt 13.1")


def test_missing_device_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", str(tmp_path / "ttyNONE"), "--jsonl"]) == 1
    _, err = capsys.readouterr()
    assert "ttyNONE" in err
    assert '"open_failures": 1' in err


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--jsonl"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        main(["--file", "a", "--device", "b"])
    capsys.readouterr()


def test_lienwatch_gnss_reads_a_pty_until_the_receiver_goes_away(tmp_path: Path, processes: ChildProcesses) -> None:
    master, slave = os.openpty()
    link = tmp_path / "gnss"
    os.symlink(os.ttyname(slave), link)
    os.close(slave)
    proc = processes.start(
        [sys.executable, "-m", "edge", "gnss", "--device", str(link), "--baud", "115200", "--jsonl"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        # Speak until the command has opened the port and printed the first epoch (pyserial
        # flushes input on open, so early bytes may be dropped: keep sending new epochs).
        first = b""
        second = 0
        while not first:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert second < 50, "no output from lienwatch gnss"
            hms = f"0815{second:02d}.00"
            os.write(master, nmea(f"GNRMC,{hms},A,3113.82496,N,12128.42206,E,0.0,,150524,,,A"))
            second += 1
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                first = proc.stdout.readline()
        row = json.loads(first)
        assert row["mode"] == "2d"
        assert row["lat"] == pytest.approx(31 + 13.82496 / 60, abs=1e-9)
        os.close(master)  # receiver unplugged: the command flushes the last epoch and exits
        master = -1
        out, err = proc.communicate(timeout=30)
    finally:
        if master >= 0:
            os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    counters = json.loads(err.decode().strip().splitlines()[-1])["counters"]
    assert counters["port_losses"] == 1
    assert counters["fixes_emitted"] == 1 + len(out.splitlines())
