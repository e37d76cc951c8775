"""``lienwatch sim fleet``: bulk-provisioned keys, realistic signed batches, bounded runs."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector.ingest.ingestor import Ingestor
from collector.ingest.registry import DeviceRegistry
from collector.ingest.service import IngestService
from collector.settings import Limits, MqttSettings
from collector.storage.database import create_engine, migrate
from firmware_sim.cli import main as sim_main
from firmware_sim.fleet import FleetError, FleetGenerator, FleetKeys
from firmware_sim.rig import Mosquitto
from protocol import open_batch
from protocol.errors import ProtocolError
from tests.collector_process import WAIT_S, wait_until
from tests.fake_devices import count

END_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def public_keys(path: Path) -> dict[str, str]:
    return {row["device_id"]: row["public_key_pem"] for row in map(json.loads, path.read_text().splitlines())}


def test_keys_are_derived_from_the_seed_and_written_for_the_registry(tmp_path: Path) -> None:
    keys = FleetKeys(3, seed="s1")
    assert keys.write_public_keys(tmp_path / "k.jsonl") == 3
    again = FleetKeys(3, seed="s1")
    again.write_public_keys(tmp_path / "k2.jsonl")
    other = FleetKeys(3, seed="s2")
    other.write_public_keys(tmp_path / "k3.jsonl")
    written = public_keys(tmp_path / "k.jsonl")
    assert list(written) == ["fleet-0000000", "fleet-0000001", "fleet-0000002"]
    assert written == public_keys(tmp_path / "k2.jsonl")
    assert set(written.values()).isdisjoint(public_keys(tmp_path / "k3.jsonl").values())


def test_batches_verify_with_the_written_keys_and_spread_over_the_fleet() -> None:
    keys = FleetKeys(4, seed="t")
    gen = FleetGenerator(keys, fixes=60, alert_share=0.5)
    registry = {keys.device_id(i): keys.private_key(i).public_key() for i in range(4)}
    opened = []
    alerts = 0
    for i in range(40):
        topic, payload, alert = gen.message(i, END_MS + i * 15_000)
        batch = open_batch(payload, topic, registry)
        opened.append((batch.device_id, batch.seq))
        alerts += alert
        assert len(batch.alerts) == int(alert)
        assert len(batch.fixes) == 60
        assert batch.fixes[-1].time_ms == END_MS + i * 15_000 == batch.created_ms
        assert [f.time_ms for f in batch.fixes] == list(range(batch.created_ms - 59_000, batch.created_ms + 1, 1000))
    assert opened[:5] == [("fleet-0000000", 1), ("fleet-0000001", 1), ("fleet-0000002", 1), ("fleet-0000003", 1),
                          ("fleet-0000000", 2)]  # fmt: skip
    assert len(set(opened)) == 40
    assert 5 < alerts < 35  # "occasional": about the share asked for
    # A message of one device signed with its key does not open on another device's topic.
    topic, payload, _ = gen.message(0, END_MS)
    with pytest.raises(ProtocolError):
        open_batch(payload, "lw/v1/fleet-0000001/batch", registry)


@pytest.mark.parametrize(
    "build",
    [
        lambda: FleetKeys(0),
        lambda: FleetGenerator(FleetKeys(1), fixes=0),
        lambda: FleetGenerator(FleetKeys(1), alert_share=1.5),
    ],
)
def test_out_of_range_options_are_refused(build: object) -> None:
    with pytest.raises(FleetError):
        build()  # type: ignore[operator]


def test_cli_refuses_a_bad_rate_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["fleet", "--devices", "2", "--rate", "0", "--duration", "1"]) == 2
    assert "--rate 0.0 is outside" in capsys.readouterr().err


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(db)
    yield db
    db.dispose()


def test_a_fleet_run_is_bounded_in_time_and_every_batch_is_stored(
    engine: sa.Engine, open_broker: Mosquitto, tmp_path: Path
) -> None:
    mosquitto = open_broker  # one connection speaks for 20 devices: a load generator (conftest.open_broker)
    keys_file = tmp_path / "keys.jsonl"
    limits = Limits(key_cache_ttl_s=0)
    settings = MqttSettings(host="127.0.0.1", port=mosquitto.port, client_id="fleet-collector", group="fleet")
    with IngestService(Ingestor(engine, limits), settings, limits) as ingest:
        assert ingest.ready.wait(WAIT_S)
        fleet = [sys.executable, "-m", "firmware_sim", "fleet", "--devices", "20", "--rate", "100",
                 "--port", str(mosquitto.port), "--keys-out", str(keys_file), "--alert-share", "0.1"]  # fmt: skip
        subprocess.run([*fleet, "--duration", "0"], check=True, timeout=WAIT_S)  # keys only
        command = [*fleet, "--duration", "2"]
        registry = DeviceRegistry(engine)
        for device_id, pem in public_keys(keys_file).items():
            registry.add(device_id, pem)
        result = subprocess.run(command, capture_output=True, text=True, timeout=WAIT_S, check=False)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["devices"] == 20
        assert report["published"] == report["acknowledged"] == 200
        assert 1.9 <= report["seconds"] < 2.5 + 1.0  # bounded: the duration, not more
        wait_until(lambda: count(engine, "batches") == 200, what="200 stored batches")
    assert count(engine, "fixes") == 200 * 60
    assert count(engine, "alerts") == report["alerts"] > 0
    assert count(engine, "dead_letters") == 0
