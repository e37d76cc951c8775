"""Simulator I/O shells in-process: the pty link, the load pattern, the DBC catalog, the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import cast

import cantools
import pytest

from firmware_sim import CanCatalog, LinkError, LoadPattern, PtyLink, ScenarioError
from firmware_sim.cli import main as sim_main

ROOT = Path(__file__).resolve().parent.parent


def test_link_publishes_a_raw_pty_and_removes_it(tmp_path: Path) -> None:
    link = PtyLink(tmp_path / "gnss0")
    with link:
        target = os.readlink(tmp_path / "gnss0")
        assert target.startswith("/dev/pts/")
        assert link.device == target
        host = os.open(tmp_path / "gnss0", os.O_RDWR | os.O_NOCTTY)
        try:
            assert link.write(b"$GNTXT\r\n")
            assert os.read(host, 100) == b"$GNTXT\r\n"  # raw: no CR/LF translation, no echo
            os.write(host, b"O\r")
            assert link.read() == b"O\r"
        finally:
            os.close(host)
    assert not os.path.lexists(tmp_path / "gnss0")
    assert link.read() == b""
    assert not link.write(b"x")  # unplugged: refused and counted
    assert link.counters["dropped_writes"] == 1


def test_link_replaces_a_stale_symlink_but_never_a_file(tmp_path: Path) -> None:
    stale = tmp_path / "can0"
    stale.symlink_to("/dev/pts/nonexistent")
    with PtyLink(stale) as link:
        assert os.readlink(stale) == link.device
    regular = tmp_path / "file"
    regular.write_text("keep")
    with pytest.raises(LinkError, match="not a symlink"):
        PtyLink(regular).plug()
    assert regular.read_text() == "keep"


def test_link_buffer_is_bounded_when_nobody_reads(tmp_path: Path) -> None:
    with PtyLink(tmp_path / "can0", max_pending=4096) as link:
        accepted = sum(link.write(b"t1238" + b"00" * 8 + b"\r") for _ in range(20_000))
        assert accepted < 20_000  # the kernel buffer plus 4 KiB, then refusals
        assert link.pending <= 4096
        assert link.counters["dropped_writes"] == 20_000 - accepted
        assert link.room() == 4096 - link.pending


def test_link_replug_at_the_same_path(tmp_path: Path) -> None:
    path = tmp_path / "can0"
    link = PtyLink(path)
    link.plug()
    link.unplug()
    assert not os.path.lexists(path)
    link.plug()
    try:
        assert os.readlink(path) == link.device
        assert link.counters["plugs"] == 2
    finally:
        link.close()


def test_load_pattern_mix_and_sequence_numbers() -> None:
    pattern = LoadPattern(CanCatalog(), mapped_share=0.05)
    lines = pattern.lines(1000)
    mapped = [line for line, is_mapped in lines if is_mapped]
    unknown = [line for line, is_mapped in lines if not is_mapped]
    assert len(mapped) == 50
    assert unknown[0] == b"t0F1800000001005AA5FF\r"
    assert [int(line[5:13], 16) for line in unknown] == list(range(1, 951))
    db = cantools.database.load_file(str(ROOT / "edge" / "data" / "generic_car.dbc"), strict=False)
    assert isinstance(db, cantools.database.can.Database)
    speed = next(line for line in mapped if line.startswith(b"t1A0"))
    decoded = cast(dict, db.decode_message(0x1A0, bytes.fromhex(speed[5:-1].decode())))
    assert decoded["SPEED_KPH"] == 50.0


def test_load_pattern_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="mapped_share"):
        LoadPattern(None, mapped_share=1.5)
    with pytest.raises(ValueError, match="needs a DBC"):
        LoadPattern(None, mapped_share=0.1)
    with pytest.raises(ValueError, match="DBC messages"):
        LoadPattern(CanCatalog(), unknown_ids=(0x3B0,))


def test_catalog_reads_cycle_times_and_refuses_bad_files(tmp_path: Path) -> None:
    catalog = CanCatalog()
    cycles = {spec.name: spec.cycle_ms for spec in catalog.messages}
    assert cycles == {
        "ENGINE_DATA": 20, "POWER_STATE": 100, "VEHICLE_SPEED": 100, "SEATS_DOORS": 100,
        "BATTERY_12V": 100, "ODOMETER": 1000, "EV_BATTERY": 1000,
    }  # fmt: skip
    frame = catalog.encode("BATTERY_12V", {"BATTERY_VOLTAGE": 99.0, "BATTERY_CURRENT": -1.5})
    assert frame.data[:2] == (65535).to_bytes(2, "little")  # clamped to the DBC maximum
    bad = tmp_path / "bad.dbc"
    bad.write_text("garbage {{{")
    with pytest.raises(ScenarioError, match="cannot load the DBC"):
        CanCatalog(bad)
    with pytest.raises(ScenarioError, match="cannot load the DBC"):
        CanCatalog(tmp_path / "missing.dbc")


def test_cli_list_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "night_doors" in listed
    assert "commute_week" in listed
    assert sim_main(["show", "night_doors"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[0]["scenario"] == "night_doors"
    assert records[0]["planned_wall_s"] < 60
    opens = [r for r in records[1:] if r["event"] == "door_open"]
    assert [r["door"] for r in opens] == ["FL", "RR", "TRUNK", "FL"]
    assert all(r["speed"] == 1.0 for r in opens)


def test_cli_reports_errors_with_exit_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert sim_main(["show", "no_such"]) == 2
    assert "no such scenario" in capsys.readouterr().err
    assert sim_main(["load", "--can-link", str(tmp_path / "c"), "--fps", "0"]) == 2
    assert "fps" in capsys.readouterr().err
