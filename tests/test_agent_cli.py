"""`lienwatch agent run` as a real process: NMEA on a pseudo-terminal in, signed batches out, signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tty
from collections.abc import Iterator
from functools import reduce
from pathlib import Path

import pytest

from edge.sequence import provision_sequence
from firmware_sim.rig import Mosquitto
from protocol import batch_topic, open_batch, open_state, state_topic
from protocol.cli import key_files as keys
from tests.child_processes import ChildProcesses
from tests.mqtt_subscriber import Collector, wait_until

DEVICE = "car-cli"
T_2026 = 1_767_254_400_000  # 2026-01-01T08:00:00Z (the NMEA below)


def sentence(body: str) -> bytes:
    checksum = reduce(lambda acc, ch: acc ^ ord(ch), body, 0)
    return f"${body}*{checksum:02X}\r\n".encode()


def epoch(second: int, lat_min: float) -> bytes:
    t = f"0800{second:02d}.00"
    return sentence(f"GPGGA,{t},31{lat_min:07.4f},N,12115.0000,E,1,09,0.9,12.0,M,0.0,M,,") + sentence(
        f"GPRMC,{t},A,31{lat_min:07.4f},N,12115.0000,E,0.0,0.0,010126,,,A"
    )


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_agent_run_reads_nmea_publishes_batches_and_obeys_signals(
    mosquitto: Mosquitto, pty_pair: tuple[int, str], tmp_path: Path
) -> None:
    master, device_path = pty_pair
    generated = keys.generate(tmp_path / "keys", DEVICE)
    config = tmp_path / "agent.toml"
    config.write_text(
        f"""
[device]
id = "{DEVICE}"
key_file = "keys/{DEVICE}.key"
log_format = "json"
[gnss]
url = "{device_path}"
[reporting]
enabled = false  # this test counts every fix through the batcher
[batch]
max_age_s = 3600
max_fixes = 5
[mqtt]
port = {mosquitto.port}
backoff_min_s = 0.05
shutdown_grace_s = 5
"""
    )
    (tmp_path / "data").mkdir()
    provision_sequence(tmp_path / "data" / "sequence")  # a brand-new device counts from 1
    collector = Collector(mosquitto.port, [batch_topic(DEVICE), state_topic(DEVICE)], client_id="cli-collector")
    log_path = tmp_path / "agent.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge", "agent", "run", "--config", str(config)], stdout=log, stderr=log
        )
    try:
        assert collector.wait_for(lambda ms: any(m.topic.endswith("/state") for m in ms), timeout=60)
        for second in range(7):  # 7 epochs: one batch of 5 by size, 2 left open
            os.write(master, epoch(second, 18.0 + second * 0.001))
        assert collector.wait_for(lambda ms: any(m.topic.endswith("/batch") for m in ms), timeout=60)
        config.write_text(config.read_text().replace("max_fixes = 5", "max_fixes = 50"))
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: b'"event":"reloaded"' in log_path.read_bytes(), timeout=30)
        assert wait_until(lambda: b'"event":"mqtt_connected"' in log_path.read_bytes(), timeout=1)
        os.write(master, epoch(7, 18.007))
        os.write(master, epoch(8, 18.008))  # makes epoch 7 complete
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    try:
        assert proc.returncode == 0, log_path.read_text()[-3000:]
        assert collector.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/batch")]) >= 2, timeout=30)
        public = {DEVICE: generated.public_key}
        got = [open_batch(bytes(m.payload), m.topic, public) for m in collector.on(batch_topic(DEVICE))]
        assert [b.seq for b in got] == [1, 2]
        times = [f.time_ms for b in got for f in b.fixes]
        lats = [round(f.lat, 7) for b in got for f in b.fixes]
        assert [len(b.fixes) for b in got] == [5, 4]  # epoch 8 too: emitted at its last sentence
        assert times == [T_2026 + i * 1000 for i in range(9)]
        assert lats[:3] == [round(31 + 18.0 / 60, 7), round(31 + 18.001 / 60, 7), round(31 + 18.002 / 60, 7)]
        assert {f.lon for b in got for f in b.fixes} == {121.25}
        states = [open_state(bytes(m.payload), m.topic, public) for m in collector.on(state_topic(DEVICE))]
        assert states[-1].online is False
        assert states[-1].counters["gnss_records"] >= 8
        text = log_path.read_text()
        assert '"event":"agent_stopped","drained":true' in text
        assert '"needs_restart":[]' in text
    finally:
        collector.close()


def test_agent_run_refuses_a_world_readable_key(tmp_path: Path, processes: ChildProcesses) -> None:
    generated = keys.generate(tmp_path / "keys", DEVICE)
    generated.private_path.chmod(0o644)
    config = tmp_path / "agent.toml"
    config.write_text(f'[device]\nid = "{DEVICE}"\nkey_file = "keys/{DEVICE}.key"\n')
    result = processes.run(
        [sys.executable, "-m", "edge", "agent", "run", "--config", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert b'"event":"start_failed"' in result.stderr
    assert b"car-cli.key" in result.stderr


def test_agent_run_rejects_a_bad_config(tmp_path: Path, processes: ChildProcesses) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('[device]\nid = "x"\nkey_file = "k"\nkye = 1\n')
    result = processes.run(
        [sys.executable, "-m", "edge", "agent", "run", "--config", str(config)],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert b"[device] has unknown key 'kye'" in result.stderr
