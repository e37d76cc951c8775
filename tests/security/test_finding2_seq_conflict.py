"""Finding 2: the same (device, seq) with other content was silently dropped as a duplicate.

A box whose data directory was wiped (or a replaced box reusing the id) restarted at seq 1:
its batches, alerts included, were acknowledged and discarded until seq passed the old
range. Now such a batch is a ``seq_conflict``: dead-lettered whole, counted in a metric and
on the device's status, listed to admins; and the agent never restarts its sequence at 1
after losing its files (it starts at the clock floor).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from collector.api.app import create_app
from collector.cli.commands import main as collector_main
from collector.ingest.ingestor import Ingestor, Outcome
from collector.settings import Limits, Settings, hash_api_key
from edge.sequence import SequenceAllocator
from protocol import Alert, Batch, Severity, open_batch, seal_batch

from .signing_devices import NOW, T0, SigningDevice, register, rows


def test_wiped_box_reusing_a_seq_is_a_conflict_not_a_duplicate(engine: sa.Engine, car: SigningDevice) -> None:
    register(engine, car)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    assert ingest.handle(car.topic, car.sealed(1)).outcome is Outcome.STORED
    assert ingest.handle(car.topic, car.sealed(1)).outcome is Outcome.DUPLICATE  # a redelivery is still one

    # The wiped box: a new boot, seq 1 again, carrying an alert.
    wiped = Batch(car.device_id, b"\xee" * 16, 1, NOW - 1000,
                  alerts=(Alert("power_cut", Severity.PANIC, NOW - 2000, "cut-1"),))  # fmt: skip
    message = seal_batch(wiped, car.key, car.topic)
    result = ingest.handle(car.topic, message)
    assert (result.outcome, result.reason) == (Outcome.DEAD_LETTERED, "seq_conflict")

    (letter,) = rows(engine, "dead_letters", reason="seq_conflict")
    assert letter["payload"] == message  # kept whole: the only copy of an authenticated batch
    assert letter["device_id"] == car.device_id
    assert "seq 1" in str(letter["detail"])
    assert open_batch(bytes(letter["payload"]), car.topic, {car.device_id: car.key.public_key()}).alerts
    (status,) = rows(engine, "device_status", device_id=car.device_id)
    assert (status["seq_conflicts"], status["duplicates"]) == (1, 1)
    assert ingest.metrics.registry.get_sample_value("lienwatch_ingest_seq_conflicts_total") == 1.0
    assert rows(engine, "alerts") == []  # nothing of it was merged into the stored batch


def test_admins_see_seq_conflicts_in_the_api_and_the_cli(
    engine: sa.Engine, car: SigningDevice, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    register(engine, car)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    ingest.handle(car.topic, car.sealed(5))
    ingest.handle(car.topic, car.sealed(5, t0=T0 + 60_000))
    url = engine.url.render_as_string(hide_password=False)
    toml = tmp_path / "collector.toml"
    toml.write_text(f'database_url = "{url}"\n')
    admin_key = "sec-admin-key-0123456789"
    settings = Settings(data_dir=tmp_path, database_url=url, api_keys={hash_api_key(admin_key): "admin"})
    with TestClient(create_app(settings, engine=engine)) as client:
        headers = {"Authorization": f"Bearer {admin_key}"}
        listed = client.get("/v1/dead-letters", params={"reason": "seq_conflict"}, headers=headers).json()
        device = client.get(f"/v1/devices/{car.device_id}", headers=headers).json()
    assert [d["reason"] for d in listed] == ["seq_conflict"]
    assert device["status"]["seq_conflicts"] == 1
    assert collector_main(["dead-letters", "--config", str(toml), "--reason", "seq_conflict"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert (json.loads(line)["reason"], json.loads(line)["device_id"]) == ("seq_conflict", car.device_id)


def test_agent_that_lost_every_file_starts_above_anything_it_used(tmp_path: Path) -> None:
    clock = [1_800_000_000_000]
    before = SequenceAllocator(tmp_path / "sequence", floor_when_missing=True, clock_ms=lambda: clock[0])
    used = [before.next() for _ in range(5000)]
    # The data directory is wiped (sequence file and outbox): nothing says what was used.
    (tmp_path / "sequence").unlink()
    clock[0] += 10_000  # ten seconds later
    after = SequenceAllocator(tmp_path / "sequence", floor_when_missing=True, clock_ms=lambda: clock[0])
    assert after.clock_floor
    assert after.skipped is None
    assert after.next() > max(used)
