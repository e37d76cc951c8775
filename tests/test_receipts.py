"""End-to-end receipts, in process: the receipt message, the collector's seq ledger, the
agent's outbox and receipt gate (docs/protocol.md section 14).

The broker tier (flood, broker killed) is tests/test_receipts_mqtt.py.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api.app import create_app
from collector.ingest.ingestor import Ingestor, StoredBatch
from collector.ingest.seq_ledger import SeqLedger, merge_ranges
from collector.jobs.receipts import GapMetrics, ReceiptPublisher, device_gaps, fleet_gaps
from collector.loans.queries import device_rows
from collector.settings import Limits, Settings, hash_api_key
from collector.storage.database import create_engine, migrate
from collector.storage.tables import SeqLedgerRecord
from edge.outbox import Outbox, Priority
from edge.receipts import ReceiptGate, ReceiptRejectedError
from protocol import MAX_RECEIPT_RANGES, Receipt, open_receipt, receipt_topic, seal_receipt
from protocol.cose import ALG, ALG_EDDSA, KID, sign1
from protocol.errors import (
    BadSignature,
    DeviceMismatch,
    InvalidRecord,
    InvalidValue,
    LocalProtocolError,
    OversizedMessage,
    SchemaError,
    TopicError,
    TruncatedMessage,
)
from tests.fake_devices import T0, FakeDevice, register

COLLECTOR = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"collector").digest())
FORGER = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"forger").digest())
TOPIC = receipt_topic("car-0001")


def sealed(receipt: Receipt, key: Ed25519PrivateKey = COLLECTOR, topic: str = TOPIC) -> bytes:
    return seal_receipt(receipt, key, topic)


def raw_receipt(payload: object, key: Ed25519PrivateKey = COLLECTOR, topic: str = TOPIC) -> bytes:
    """A receipt with a hand-made payload, properly signed (to reach the schema checks)."""
    body = cbor2.dumps(payload)
    return sign1(body, key, protected={ALG: ALG_EDDSA, KID: b"collector"}, external_aad=topic.encode())


# ------------------------------------------------------------------ the message


def test_receipt_round_trip_and_cover() -> None:
    receipt = Receipt("car-0001", 5, 9, ((12, 14), (20, 20)), T0, 42)
    opened = open_receipt(sealed(receipt), TOPIC, COLLECTOR.public_key())
    assert opened == receipt
    assert [s for s in range(1, 22) if opened.covers(s)] == [5, 6, 7, 8, 9, 12, 13, 14, 20]
    nothing = Receipt("car-0001", 7, 6, ((9, 9),), T0, 1)  # low - 1: no contiguous run yet
    assert open_receipt(sealed(nothing), TOPIC, COLLECTOR.public_key()).covered([6, 7, 9]) == [9]


@pytest.mark.parametrize(
    ("low", "high", "ranges", "counter"),
    [
        (0, 3, (), 1),  # seq 0 does not exist
        (5, 3, (), 1),  # high below low - 1
        (1, 3, ((4, 6),), 1),  # adjacent to the run: would have been merged
        (1, 3, ((8, 9), (6, 7)), 1),  # not ascending
        (1, 3, ((8, 6),), 1),  # end before start
        (1, 3, tuple((10 * i, 10 * i) for i in range(1, MAX_RECEIPT_RANGES + 2)), 1),  # 33 ranges
        (1, 3, (), 0),  # counter starts at 1
        (1, 2**64, (), 1),  # over 64 bits
    ],
)
def test_impossible_receipts_cannot_be_built(
    low: int, high: int, ranges: tuple[tuple[int, int], ...], counter: int
) -> None:
    with pytest.raises(InvalidRecord, match="receipt"):
        Receipt("car-0001", low, high, ranges, T0, counter)


def test_sealing_for_another_topic_is_a_local_error() -> None:
    receipt = Receipt("car-0001", 1, 1, (), T0, 1)
    with pytest.raises(LocalProtocolError):
        seal_receipt(receipt, COLLECTOR, receipt_topic("car-0002"))
    with pytest.raises(LocalProtocolError):
        seal_receipt(receipt, COLLECTOR, "lw/v1/car-0001/config")


GOOD = {0: "car-0001", 1: 1, 2: 3, 3: [[5, 6]], 4: T0, 5: 7}


@pytest.mark.parametrize(
    ("message", "topic", "error", "reason"),
    [
        (sealed(Receipt("car-0001", 1, 1, (), T0, 1))[:40], TOPIC, TruncatedMessage, "truncated"),
        (b"\xd2" + b"\x00" * 4096, TOPIC, OversizedMessage, "oversized"),
        (sealed(Receipt("car-0001", 1, 1, (), T0, 1), key=FORGER), TOPIC, BadSignature, "bad_signature"),
        # a genuine receipt of another device replayed onto this device's topic
        (
            sealed(Receipt("car-0002", 1, 9, (), T0, 1), topic=receipt_topic("car-0002")),
            TOPIC,
            BadSignature,
            "bad_signature",
        ),
        (sealed(Receipt("car-0001", 1, 1, (), T0, 1)), "lw/v1/car-0001/config", TopicError, "bad_topic"),
        (raw_receipt({**GOOD, 6: 1}), TOPIC, SchemaError, "schema"),
        (raw_receipt({k: v for k, v in GOOD.items() if k != 5}), TOPIC, SchemaError, "schema"),
        (raw_receipt({**GOOD, 2: "3"}), TOPIC, SchemaError, "schema"),
        (raw_receipt({**GOOD, 3: [[5, 6, 7]]}), TOPIC, SchemaError, "schema"),
        (raw_receipt({**GOOD, 3: [[6, 5]]}), TOPIC, InvalidValue, "invalid_value"),
        (raw_receipt({**GOOD, 5: -1}), TOPIC, InvalidValue, "invalid_value"),
        (raw_receipt({**GOOD, 0: "car-0002"}), TOPIC, DeviceMismatch, "device_mismatch"),
        (raw_receipt({**GOOD, 3: [[True, 6]]}), TOPIC, InvalidValue, "invalid_value"),
    ],
)
def test_hostile_receipts_are_refused_with_a_reason(
    message: bytes, topic: str, error: type[Exception], reason: str
) -> None:
    with pytest.raises(error) as caught:
        open_receipt(message, topic, COLLECTOR.public_key())
    assert getattr(caught.value, "reason", None) == reason


# ------------------------------------------------------------------ the collector's ledger


def test_ledger_merges_seqs_into_ranges_and_counts_what_is_missing() -> None:
    ledger = SeqLedger()
    assert ledger.receipt_view() is None
    ledger.add([5, 6, 7, 10, 12, 11, 6])
    assert ledger.stored == [(5, 7), (10, 12)]
    assert ledger.receipt_view() == (5, 7, ((10, 12),))
    assert ledger.gaps() == [(8, 9)]
    assert ledger.missing() == 2
    ledger.add([8, 9, 3])  # fill the hole; a seq below the first seen one extends downwards
    assert ledger.receipt_view() == (3, 3, ((5, 12),))
    assert ledger.missing() == 1  # seq 4 has not arrived
    assert merge_ranges([(1, 2), (3, 4), (9, 9), (6, 7)]) == [(1, 4), (6, 7), (9, 9)]


def test_announced_skips_are_bridged_floor_jumps_are_no_loss_but_not_receipted() -> None:
    ledger = SeqLedger()
    ledger.add(range(1, 11))
    ledger.skip(11, 6)  # seqs reserved before a crash, never used
    ledger.add([17, 18])
    assert ledger.receipt_view() == (1, 18, ())
    assert ledger.missing() == 0
    ledger.floor(1_700_000_000_000)  # sequence file lost: jump to the clock
    ledger.add([1_700_000_000_000, 1_700_000_000_001])
    assert ledger.missing() == 0
    low, high, ranges = ledger.receipt_view() or (0, 0, ())
    assert (low, high) == (1, 18)  # the earlier run's outbox may still hold seqs above 18
    assert ranges == ((1_700_000_000_000, 1_700_000_000_001),)
    ledger.add([19])  # one of those arrives late: stored, still no loss
    assert ledger.receipt_view() == (1, 19, ((1_700_000_000_000, 1_700_000_000_001),))
    assert SeqLedger.from_json(ledger.as_json()) == ledger


def test_a_receipt_lists_the_highest_32_ranges() -> None:
    ledger = SeqLedger()
    ledger.add([1, *range(3, 200, 2)])  # 1, 3, 5, ...: every other seq missing
    low, high, ranges = ledger.receipt_view() or (0, 0, ())
    assert (low, high) == (1, 1)
    assert len(ranges) == MAX_RECEIPT_RANGES
    assert ranges[-1] == (199, 199)
    assert ranges[0] == (137, 137)
    assert ledger.missing() == 99  # 2, 4, ..., 198


def test_ledger_from_a_damaged_row_drops_what_it_cannot_trust() -> None:
    raw = {"stored": [[1, 5], [7, "x"], [0, 3], [9]], "skipped": "junk"}
    assert SeqLedger.from_json(raw) == SeqLedger([(1, 5)], [], [])
    assert SeqLedger.from_json(None) == SeqLedger()


# ------------------------------------------------------------------ the collector's receipt job, no broker


def test_receipt_job_merges_seeds_and_counts_gaps(database_url: str) -> None:
    engine = create_engine(database_url)
    migrate(engine)
    register(engine, FakeDevice("car-0001"))
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=0, max_clock_skew_s=315_360_000))
    device = FakeDevice("car-0001")
    for seq in (1, 2, 3, 6):  # stored before the ledger existed: the first round seeds from batches
        ingestor.handle(device.topic, device.sealed(seq), received_ms=T0 + 10_000)
    job = ReceiptPublisher(engine, None, None, clock_ms=lambda: T0 + 20_000)
    job.committed([("car-0001", 6)])
    assert job.run_once() == 1
    with Session(engine) as session:
        gaps = device_gaps(session, "car-0001")
        assert gaps is not None
        assert (gaps["low_seq"], gaps["high_seq"], gaps["missing"]) == (1, 6, 2)
        assert gaps["gaps"] == [{"first": 4, "last": 5}]
        assert [g["device_id"] for g in fleet_gaps(session)] == ["car-0001"]
    samples = {s.name: s.value for m in GapMetrics(engine).collect() for s in m.samples}
    assert samples == {
        "lienwatch_ingest_seq_missing": 2.0,
        "lienwatch_ingest_seq_gap_devices": 1.0,
        "lienwatch_ingest_seq_evicted_total": 0.0,  # no device announced an eviction
    }
    ingestor.handle(device.topic, device.sealed(4), received_ms=T0 + 30_000)
    ingestor.handle(device.topic, device.sealed(5), received_ms=T0 + 30_000)
    job.committed([("car-0001", 4), ("car-0001", 5)])
    job.run_once()
    with Session(engine) as session:
        assert session.get(SeqLedgerRecord, "car-0001").missing == 0  # type: ignore[union-attr]
        assert fleet_gaps(session) == []
    engine.dispose()


def test_receipt_counter_rises_strictly_and_receipts_verify(database_url: str) -> None:
    engine = create_engine(database_url)
    migrate(engine)
    clock = [T0]
    job = ReceiptPublisher(engine, COLLECTOR, None, clock_ms=lambda: clock[0])  # no broker: receipts wait in unsent
    job.committed([("car-0001", 1), ("car-0001", 2), ("car-0001", 4)])
    job.run_once()
    first = open_receipt(job.unsent["car-0001"], TOPIC, COLLECTOR.public_key())
    assert (first.low, first.high, first.ranges, first.counter) == (1, 2, ((4, 4),), T0)
    clock[0] -= 5_000  # the collector clock steps back: the counter still rises
    job.committed([("car-0001", 3)])
    job.run_once()
    second = open_receipt(job.unsent["car-0001"], TOPIC, COLLECTOR.public_key())
    assert (second.low, second.high, second.ranges, second.counter) == (1, 4, (), T0 + 1)
    assert job.run_once() == 0  # nothing new: no receipt signed
    engine.dispose()


# ------------------------------------------------------------------ the agent's outbox and gate


def make_outbox(tmp_path: Path, clock: list[int]) -> Outbox:
    return Outbox(tmp_path / "outbox.db", max_bytes=64 * 1024, clock_ms=lambda: clock[0])


def test_outbox_keeps_acknowledged_batches_until_a_receipt_and_offers_them_again(tmp_path: Path) -> None:
    clock = [T0]
    box = make_outbox(tmp_path, clock)
    for seq in range(1, 6):
        box.put(seq, b"m%d" % seq, priority=Priority.ROUTINE)
    for seq in (1, 2, 3, 4):
        assert box.mark_published(seq)
    assert [b.seq for b in box.pending(10)] == [5]  # acknowledged ones wait for a receipt
    clock[0] += 60_000
    assert [b.seq for b in box.pending(10, resend_before_ms=clock[0] - 60_000)] == [1, 2, 3, 4, 5]
    assert box.confirm(1, 2, [(4, 4)]) == 3
    assert [b.seq for b in box.pending(10, resend_before_ms=clock[0])] == [3, 5]
    assert box.awaiting_receipt() == 1
    assert box.expire_published(clock[0]) == 1  # no receipts in use: forgotten after the timeout
    assert [b.seq for b in box.pending(10, resend_before_ms=clock[0])] == [5]
    assert box.confirm(2**64 - 10, 2**64 - 1) == 0  # above what SQLite can hold: nothing, no crash
    box.close()


def test_outbox_eviction_keeps_alerts_that_wait_for_a_receipt(tmp_path: Path) -> None:
    clock = [T0]
    box = Outbox(tmp_path / "outbox.db", max_bytes=4096, clock_ms=lambda: clock[0])
    box.put(1, b"a" * 1000, priority=Priority.ALERT, alerts=1)
    box.mark_published(1)
    box.put(2, b"r" * 1000, priority=Priority.ROUTINE, fixes=1)
    box.put(3, b"r" * 1000, priority=Priority.ROUTINE, fixes=1)
    box.mark_published(3)  # acknowledged by the broker: likelier stored, so evicted before 2
    evicted = box.put(4, b"r" * 1000, priority=Priority.ROUTINE, fixes=1)
    assert evicted == [3]
    seqs = [row[0] for row in sqlite3.connect(tmp_path / "outbox.db").execute("SELECT seq FROM batches ORDER BY seq")]
    assert seqs == [1, 2, 4]
    # counted apart: the broker had it, so it is not a batch that never left the box
    assert (box.totals["evicted_acked_batches"], box.totals["evicted_batches"]) == (1, 0)
    assert box.unreported() == {"evicted_acked_batches": 1}
    assert box.put(5, b"r" * 1000, priority=Priority.ROUTINE, fixes=1) == [2]  # never sent: a real eviction
    assert box.totals["evicted_batches"] == 1
    box.close()


def test_an_outbox_file_from_before_receipts_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE batches (seq INTEGER PRIMARY KEY, priority INTEGER NOT NULL, fixes INTEGER NOT NULL,"
        " samples INTEGER NOT NULL, stats INTEGER NOT NULL, alerts INTEGER NOT NULL, size INTEGER NOT NULL,"
        " checksum BLOB NOT NULL, report TEXT NOT NULL, message BLOB NOT NULL);"
        "INSERT INTO batches VALUES (7, 0, 0, 0, 0, 0, 100, "
        f"x'{hashlib.sha256(b'old').hexdigest()}', '{{}}', x'6f6c64');"
    )
    old.commit()
    old.close()
    box = Outbox(path)
    assert [(b.seq, b.message, b.published_ms) for b in box.pending(5)] == [(7, b"old", None)]
    box.close()


def test_gate_refuses_forged_replayed_and_malformed_receipts_and_counts_them(tmp_path: Path) -> None:
    box = make_outbox(tmp_path, [T0])
    gate = ReceiptGate("car-0001", COLLECTOR.public_key(), box)
    assert not gate.ever_seen
    newer = sealed(Receipt("car-0001", 1, 9, (), T0, 20))
    older = sealed(Receipt("car-0001", 1, 5, (), T0 - 1, 19))
    assert gate.check(TOPIC, newer) is not None
    assert gate.check(TOPIC, newer) is None  # the retained message again after a reconnect
    cases = [
        (TOPIC, older, "stale_counter"),
        (TOPIC, sealed(Receipt("car-0001", 1, 99, (), T0, 21), key=FORGER), "bad_signature"),
        (TOPIC, newer[:-10], "truncated"),
        (TOPIC, b"\xd2" + b"\x00" * 5000, "oversized"),
        (receipt_topic("car-0002"), newer, "wrong_topic"),
    ]
    for topic, message, reason in cases:
        with pytest.raises(ReceiptRejectedError) as caught:
            gate.check(topic, message)
        assert caught.value.reason == reason
        assert gate.counters[f"receipts_rejected_{reason}"] == 1
    assert gate.counters["receipts_rejected"] == len(cases)
    assert gate.counters["receipts_accepted"] == 1
    assert gate.counters["receipts_unchanged"] == 1
    box.close()
    # The counter floor and "receipts seen" survive a restart (they live in the outbox file).
    box = make_outbox(tmp_path, [T0])
    again = ReceiptGate("car-0001", COLLECTOR.public_key(), box)
    assert again.ever_seen
    with pytest.raises(ReceiptRejectedError, match="below the newest accepted 20"):
        again.check(TOPIC, older)
    box.close()


def test_gaps_in_the_api(tmp_path: Path) -> None:
    key = "admin-key-0123456789abcdef"
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'c.db'}",
                        api_keys={hash_api_key(key): "admin"})  # fmt: skip
    engine = create_engine(settings.resolved_database_url)
    migrate(engine)
    register(engine, FakeDevice("car-0001"), FakeDevice("car-0002"))
    job = ReceiptPublisher(engine, None, None, clock_ms=lambda: T0)
    job.committed([("car-0001", s) for s in (1, 2, 5, 9)] + [("car-0002", 1), ("car-0002", 2)])
    job.run_once()
    headers = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(settings, engine=engine)) as client:
        fleet = client.get("/v1/devices/gaps", headers=headers).json()
        assert (fleet["missing"], fleet["devices_with_gaps"]) == (5, 1)
        assert [d["device_id"] for d in fleet["devices"]] == ["car-0001"]
        assert fleet["devices"][0]["gaps"] == [{"first": 3, "last": 4}, {"first": 6, "last": 8}]
        every = client.get("/v1/devices/gaps?all=true", headers=headers).json()["devices"]
        assert [d["device_id"] for d in every] == ["car-0001", "car-0002"]
        device = client.get("/v1/devices/car-0002", headers=headers).json()
        assert (device["seq_ledger"]["low_seq"], device["seq_ledger"]["high_seq"]) == (1, 2)
        assert device["seq_ledger"]["missing"] == 0
        assert client.get("/v1/devices/gaps").status_code == 401
    engine.dispose()


def test_announced_skips_and_floors_reach_the_ledger_through_the_ingest_hook(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    device = FakeDevice("car-0001")
    register(engine, device)
    job = ReceiptPublisher(engine, COLLECTOR, None, clock_ms=lambda: T0 + 50_000)
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=0, max_clock_skew_s=315_360_000), on_commit=[job.on_commit])
    floor = 1_700_000_000_000
    sent = [
        (1, {}),
        (2, {}),
        (19, {"seq_skipped_from": 3, "seq_skipped": 16}),  # a crash: 3..18 reserved, never used
        (floor, {"seq_floor": floor, "seq_file_lost": 1}),  # then the sequence file was lost
    ]
    for seq, counters in sent:
        ingestor.handle(device.topic, device.sealed(seq, counters=counters), received_ms=T0 + 10_000)
    job.committed([("car-0001", seq) for seq, _ in sent])
    job.run_once()
    receipt = open_receipt(job.unsent["car-0001"], TOPIC, COLLECTOR.public_key())
    assert (receipt.low, receipt.high, receipt.ranges) == (1, 19, ((floor, floor),))
    with Session(engine) as session:
        gaps = device_gaps(session, "car-0001")
    assert gaps is not None
    assert (gaps["missing"], gaps["skipped"], gaps["floor_jumps"]) == (0, 16, 1)
    engine.dispose()


def test_the_device_list_shows_the_ledger_count_of_missing_batches(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    device = FakeDevice("car-0001")
    register(engine, device, FakeDevice("car-0002"))
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=0, max_clock_skew_s=315_360_000))
    for seq in (1, 2, 3, 10):
        ingestor.handle(device.topic, device.sealed(seq), received_ms=T0 + 10_000)
    with Session(engine) as session:  # before the ledger merged the device: lowest..highest fallback
        assert {r["device_id"]: r["seq_gaps"] for r in device_rows(session, T0)} == {"car-0001": 6, "car-0002": 0}
    job = ReceiptPublisher(engine, None, None, clock_ms=lambda: T0)
    job.committed([("car-0001", 10)])
    job.on_commit(
        StoredBatch("car-0001", 10, device.batch(10, counters={"seq_skipped_from": 4, "seq_skipped": 6}), False, 4, T0)
    )  # the batch after a crash announced 4..9 as never used
    job.run_once()
    with Session(engine) as session:
        assert {r["device_id"]: r["seq_gaps"] for r in device_rows(session, T0)} == {"car-0001": 0, "car-0002": 0}
    engine.dispose()
