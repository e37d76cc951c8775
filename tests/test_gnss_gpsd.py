"""Our decoder against gpsd 3.22 on the same receiver logs (gpsd's output is stored; gpsd is not needed here).

For each log, gpsd's TPV reports are grouped by time and the last one of each time is taken
(gpsd sends several partial TPVs per epoch until it has learned the receiver's cycle; the
last is the complete one). Every such epoch must appear in our output with the same time,
mode, position (1e-7 degrees), altitude, speed and course. Where we knowingly differ, the
difference is listed below with its reason (and in tests/data/nmea/README.md).
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pytest

from edge.cli.gnss import record_to_json
from edge.gnss import NmeaDecoder, read_nmea_file
from tests.child_processes import ChildProcesses

DATA = Path(__file__).parent / "data" / "nmea"
LOGS = ["ublox_gn_multi", "mtk_gp_midnight", "nofix_periods", "corrupt_lines"]
MODE = {1: "none", 2: "2d", 3: "3d"}

#: Epochs we emit that gpsd does not report with a time, and why.
EXTRA_EPOCHS = {
    # gpsd does not trust the receiver's time before its first fix and reports mode 1 with
    # no time; the RMC carries a plausible date (2024-05-15), so we emit NoFix records.
    "nofix_periods": {"2024-05-15T08:15:40.000Z", "2024-05-15T08:15:41.000Z", "2024-05-15T08:15:42.000Z"},
    # The GGA of 09:30:07 has a bad checksum; gpsd skips the whole epoch (its cycle detector
    # lost step), we still report RMC's position with GSA's mode.
    "corrupt_lines": {"2024-05-15T09:30:07.000Z"},
}

#: Fields that knowingly differ: (log, time) -> {field: our value}.
FIELD_DEVIATIONS = {
    # The GGA of 09:30:03 has no checksum: gpsd accepts it, we require one, so no altitude.
    ("corrupt_lines", "2024-05-15T09:30:03.000Z"): {"alt": None},
}


def _gpsd_epochs(name: str) -> dict[str, dict[str, object]]:
    last: dict[str, dict[str, object]] = {}
    for line in (DATA / f"{name}.gpsd.jsonl").read_text().splitlines():
        report = json.loads(line)
        if report.get("class") == "TPV" and "time" in report:
            last[report["time"]] = report
    return last


def _ours(name: str) -> dict[str, dict[str, object]]:
    rows = [record_to_json(r) for r in read_nmea_file(DATA / f"{name}.nmea", decoder=NmeaDecoder())]
    times = [str(row["time"]) for row in rows]
    assert times == sorted(times)
    assert len(set(times)) == len(times)
    return {str(row["time"]): row for row in rows}


@pytest.mark.parametrize("name", LOGS)
def test_same_epochs_as_gpsd(name: str) -> None:
    gpsd = _gpsd_epochs(name)
    ours = _ours(name)
    assert len(gpsd) >= 9
    assert set(ours) - set(gpsd) == EXTRA_EPOCHS.get(name, set())
    assert set(gpsd) <= set(ours)


@pytest.mark.parametrize("name", LOGS)
def test_fields_agree_with_gpsd(name: str) -> None:
    gpsd = _gpsd_epochs(name)
    ours = _ours(name)
    compared = 0
    for time, tpv in gpsd.items():
        row = ours[time]
        deviations = FIELD_DEVIATIONS.get((name, time), {})
        assert row["mode"] == MODE[int(tpv["mode"])], time  # type: ignore[call-overload]
        if row["mode"] == "none":
            assert row["lat"] is None
            assert row["lon"] is None
            assert "lat" not in tpv
            continue
        assert row["lat"] == pytest.approx(tpv["lat"], abs=1e-7), time
        assert row["lon"] == pytest.approx(tpv["lon"], abs=1e-7), time
        if "alt" in deviations:
            assert row["alt"] == deviations["alt"]
            assert "altMSL" in tpv
        elif "altMSL" in tpv:
            assert row["alt"] == pytest.approx(tpv["altMSL"], abs=1e-3), time
        else:
            assert row["alt"] is None, time
        if "track" in tpv:
            assert row["speed_mps"] == pytest.approx(tpv["speed"], abs=2e-3), time
            assert row["course_deg"] == pytest.approx(tpv["track"], abs=1e-3), time
        else:
            # No RMC/VTG survived: gpsd derives a speed from successive positions (and has
            # no track); we report only what the receiver said.
            assert row["speed_mps"] is None, time
            assert row["course_deg"] is None, time
        compared += 1
    assert compared >= 7


def test_midnight_rollover_matches_gpsd() -> None:
    ours = list(_ours("mtk_gp_midnight"))
    assert ours[6:8] == ["2024-12-31T23:59:59.000Z", "2025-01-01T00:00:00.000Z"]
    assert set(ours) == set(_gpsd_epochs("mtk_gp_midnight"))


def test_logs_are_what_the_generator_writes(tmp_path: Path, processes: ChildProcesses) -> None:
    """The stored logs (and thus gpsd's golden output) match make_logs.py exactly."""
    script = (DATA / "make_logs.py").read_text()
    copy = tmp_path / "make_logs.py"
    copy.write_text(script)
    processes.run([sys.executable, str(copy)], check=True, capture_output=True, timeout=60)
    for name in LOGS:
        assert (tmp_path / f"{name}.nmea").read_bytes() == (DATA / f"{name}.nmea").read_bytes(), name


def test_gpsd_reports_in_known_dates() -> None:
    """Sanity check of the stored golden output itself (guards against a wrong capture)."""
    for name in LOGS:
        for time in _gpsd_epochs(name):
            day = dt.date.fromisoformat(time[:10])
            assert dt.date(2024, 5, 15) <= day <= dt.date(2025, 1, 1)
