"""``lienwatch inspect``: verify captured messages and print them as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import protocol
from protocol.cli import inspect as inspect_cli
from protocol.examples import EXAMPLE_DEVICE, example_key, tiny_batch
from tests.child_processes import ChildProcesses

TOPIC = protocol.batch_topic(EXAMPLE_DEVICE)


def write_public_key(path: Path, key: Ed25519PrivateKey) -> Path:
    path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path


@pytest.fixture
def capture(tmp_path: Path) -> tuple[Path, Path]:
    message = tmp_path / "batch.cose"
    message.write_bytes(protocol.seal_batch(tiny_batch(), example_key(), TOPIC))
    return message, write_public_key(tmp_path / "car-0001.pub", example_key())


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = inspect_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_the_verified_batch(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    message, key = capture
    code, out, err = run([str(message), "--public-key", str(key), "--topic", TOPIC], capsys)
    assert (code, err) == (0, "")
    printed = json.loads(out)
    assert printed["verified"] is True
    assert printed["kind"] == "batch"
    assert printed["size_bytes"] == 344
    batch = printed["message"]
    assert batch["device_id"] == "car-0001"
    assert batch["seq"] == 7
    assert batch["boot_id"] == "000102030405060708090a0b0c0d0e0f"
    assert batch["created_utc"] == "2025-01-01T00:00:01.000Z"
    assert batch["fixes"][1] == {
        "time_ms": 1735689600100,
        "lat": 31.2305,
        "lon": 121.4736,
        "alt_m": 4.5,
        "speed_mps": 1.25,
        "course_deg": None,
        "mode": "3d",
        "hdop": 0.9,
        "sats_used": 9,
        "mean_snr": None,
    }
    assert batch["samples"][1] == {
        "name": "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
        "time_ms": 1735689600050,
        "value": True,
    }
    assert batch["alerts"][0]["severity"] == "warning"
    assert batch["alerts"][0]["state"] == "raised"
    assert batch["summary"]["highest_severity"] == "warning"
    assert batch["counters"] == {"dropped_samples": 0}


def test_inspect_raw(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    message, key = capture
    code, out, _ = run([str(message), "--public-key", str(key), "--topic", TOPIC, "--raw"], capsys)
    assert code == 0
    printed = json.loads(out)
    assert printed["protected"] == {"1": -8, "4": "h'6361722d30303031'"}
    assert printed["unprotected"] == {}
    assert printed["payload"]["3"] == 7
    assert printed["payload"]["6"]["1"] == [312304000, 1000]
    assert printed["signature"].startswith("h'5b399049")


def test_inspect_bad_signature(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    message, key = capture
    data = bytearray(message.read_bytes())
    data[-3] ^= 0x40
    message.write_bytes(bytes(data))
    code, out, err = run([str(message), "--public-key", str(key), "--topic", TOPIC], capsys)
    assert code == 1
    assert out == ""
    first, hint = err.strip().splitlines()
    assert first == "lienwatch inspect: rejected: bad_signature: COSE_Sign1 signature does not verify"
    assert hint.startswith("lienwatch inspect: hint: the topic is part of what is signed: --topic must be")


def test_inspect_wrong_key(capture: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    message, _ = capture
    other = write_public_key(tmp_path / "other.pub", Ed25519PrivateKey.generate())
    code, _, err = run([str(message), "--public-key", str(other), "--topic", TOPIC], capsys)
    assert code == 1
    assert "bad_signature" in err


def test_inspect_other_devices_topic(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    message, key = capture
    code, _, err = run([str(message), "--public-key", str(key), "--topic", "lw/v1/car-0002/batch"], capsys)
    assert code == 1
    assert "rejected: device_mismatch: kid 'car-0001' does not match topic device 'car-0002'" in err


def test_inspect_bad_topic(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    message, key = capture
    code, _, err = run([str(message), "--public-key", str(key), "--topic", "car-0001"], capsys)
    assert code == 1
    assert "bad_topic" in err


def test_inspect_truncated_capture(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    message, key = capture
    message.write_bytes(message.read_bytes()[:100])
    code, _, err = run([str(message), "--public-key", str(key), "--topic", TOPIC], capsys)
    assert code == 1
    assert "rejected: truncated:" in err


def test_inspect_empty_capture(capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    message, key = capture
    message.write_bytes(b"")
    code, out, err = run([str(message), "--public-key", str(key), "--topic", TOPIC], capsys)
    assert (code, out) == (2, "")
    assert f"{message} is empty (0 bytes): nothing was captured" in err
    assert "tag" not in err


def test_inspect_oversized_capture_reads_no_more_than_the_limit(
    capture: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    message, key = capture
    message.write_bytes(b"\xd2" + bytes(3 * protocol.cose.MAX_MESSAGE_BYTES))
    code, _, err = run([str(message), "--public-key", str(key), "--topic", TOPIC], capsys)
    assert code == 1
    assert "oversized: message is 1048577 bytes" in err


def test_inspect_state_and_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    device_key = write_public_key(tmp_path / "car.pub", example_key())
    state_topic = protocol.state_topic(EXAMPLE_DEVICE)
    state = protocol.DeviceState(EXAMPLE_DEVICE, False, 1735689601000, bytes(16), {"agent": "0.1.0"})
    (tmp_path / "state").write_bytes(protocol.seal_state(state, example_key(), state_topic))
    code, out, _ = run([str(tmp_path / "state"), "--public-key", str(device_key), "--topic", state_topic], capsys)
    assert code == 0
    assert json.loads(out)["message"]["online"] is False

    collector = Ed25519PrivateKey.generate()
    collector_pub = write_public_key(tmp_path / "collector.pub", collector)
    config_topic = protocol.config_topic(EXAMPLE_DEVICE)
    config = protocol.DeviceConfig(EXAMPLE_DEVICE, 2, 1735689601000, {"rules": {"dwell_hours": 72}})
    (tmp_path / "config").write_bytes(protocol.seal_config(config, collector, config_topic))
    code, out, _ = run([str(tmp_path / "config"), "--public-key", str(collector_pub), "--topic", config_topic], capsys)
    assert code == 0
    assert json.loads(out)["message"]["body"] == {"rules": {"dwell_hours": 72}}
    # The device key does not verify downlink configuration.
    code, _, err = run([str(tmp_path / "config"), "--public-key", str(device_key), "--topic", config_topic], capsys)
    assert code == 1
    assert "bad_signature" in err


def test_inspect_a_state_message_given_the_batch_topic_names_the_right_topic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    device_key = write_public_key(tmp_path / "car.pub", example_key())
    state_topic = protocol.state_topic(EXAMPLE_DEVICE)
    state = protocol.DeviceState(EXAMPLE_DEVICE, True, 1735689601000, bytes(16), {"agent": "0.1.0"})
    (tmp_path / "state").write_bytes(protocol.seal_state(state, example_key(), state_topic))
    code, out, err = run([str(tmp_path / "state"), "--public-key", str(device_key), "--topic", TOPIC], capsys)
    assert (code, out) == (1, "")
    assert "rejected: bad_signature" in err
    assert f"hint: it verifies as {state_topic}: give --topic {state_topic}" in err


def test_inspect_into_a_closed_pipe_ends_quietly(capture: tuple[Path, Path], processes: ChildProcesses) -> None:
    """``lienwatch inspect ... | head -3`` (and a reader that is gone before the output): no
    BrokenPipeError traceback, exit 0."""
    message, key = capture
    command = f'{sys.executable} -m protocol inspect "$0" --public-key "$1" --topic "$2"'
    for reader in ("head -3", "true"):  # `true` exits at once: the write always hits a closed pipe
        done = processes.run(
            ["bash", "-c", f"{command} | {reader}; exit ${{PIPESTATUS[0]}}", str(message), str(key), TOPIC],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.stdout.count("\n") == (3 if reader.startswith("head") else 0)
        assert (done.returncode, done.stderr) == (0, "")


def test_inspect_missing_file_or_key(
    capture: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    message, key = capture
    code, _, err = run([str(tmp_path / "none"), "--public-key", str(key), "--topic", TOPIC], capsys)
    assert code == 2
    assert "cannot read" in err
    code, _, err = run([str(message), "--public-key", str(tmp_path / "none.pub"), "--topic", TOPIC], capsys)
    assert code == 2
    assert "invalid_key_file" in err


def test_inspect_through_the_lienwatch_command(capture: tuple[Path, Path], processes: ChildProcesses) -> None:
    """The real entry point in a child process, capture fed on stdin like a pipe from mosquitto_sub."""
    message, key = capture
    ok = processes.run(
        [sys.executable, "-m", "protocol", "inspect", "-", "--public-key", str(key), "--topic", TOPIC],
        input=message.read_bytes(),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["message"]["seq"] == 7
    forged = processes.run(
        [sys.executable, "-m", "protocol", "inspect", "-", "--public-key", str(key), "--topic", TOPIC],
        input=message.read_bytes()[:-1] + b"\x00",
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert forged.returncode == 1
    assert b"bad_signature" in forged.stderr
