"""Evicted-seq announcements (issue 12, docs/protocol.md section 13 "Evicted seqs"), in process.

The counters that carry them (protocol), the outbox that keeps them until a stored batch
carries them (and across restarts), the sealer that puts them in the next batch, and the
collector's ledger and receipt job that bridge them as known losses. The broker tier is
tests/test_receipts_mqtt.py (``test_an_overflowing_outbox_...``).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from sqlalchemy.orm import Session

import edge.outbox
from collector.api.app import create_app
from collector.ingest.ingestor import Ingestor
from collector.ingest.seq_ledger import SeqLedger
from collector.jobs.receipts import GapMetrics, ReceiptPublisher, device_gaps, fleet_gaps
from collector.settings import Limits, Settings, hash_api_key
from collector.storage.database import create_engine, migrate
from edge.batcher import ClosedBatch
from edge.outbox import Outbox, Priority
from edge.sealing import BatchSealer
from edge.sequence import SequenceAllocator, provision_sequence
from protocol import (
    MAX_EVICTED_RANGES,
    MAX_EVICTED_SPAN,
    Batch,
    Fix,
    batch_topic,
    evicted_counters,
    evicted_ranges,
    open_batch,
    open_receipt,
    receipt_topic,
    seal_batch,
)
from protocol.errors import (
    REASONS,
    AnnouncementAboveSeq,
    AnnouncementMalformed,
    AnnouncementOversized,
    AnnouncementRefused,
    LocalProtocolError,
)
from tests.fake_devices import BOOT_A, T0, FakeDevice, register
from tests.test_receipts import COLLECTOR

DEVICE = FakeDevice("car-0001")
ROW = 200  # message bytes per outbox row; with the 96-byte overhead three rows fit in 1 KiB


# ------------------------------------------------------------------ the counters (protocol)


def test_announcement_round_trip_through_a_signed_batch() -> None:
    counters = evicted_counters([(3, 5), (9, 9)])
    assert counters == {
        "seq_evicted_0_from": 3, "seq_evicted_0_count": 3, "seq_evicted_1_from": 9, "seq_evicted_1_count": 1,
    }  # fmt: skip
    batch = Batch("car-0001", BOOT_A, 10, T0, counters={"evicted_batches": 4, **counters})
    keys = {"car-0001": DEVICE.key.public_key()}
    opened = open_batch(seal_batch(batch, DEVICE.key, DEVICE.topic), DEVICE.topic, keys)
    assert evicted_ranges(opened.counters, opened.seq) == ((3, 5), (9, 9))
    assert evicted_ranges({"evicted_batches": 4}, 10) == ()  # an agent without announcements
    assert evicted_ranges(evicted_counters([]), 10) == ()


@pytest.mark.parametrize(
    ("counters", "seq", "error"),
    [
        ({"seq_evicted_0_from": 3}, 10, AnnouncementMalformed),  # a from without its count
        ({"seq_evicted_1_from": 3, "seq_evicted_1_count": 1}, 10, AnnouncementMalformed),  # not numbered from 0
        ({"seq_evicted_from": 3, "seq_evicted_count": 1}, 10, AnnouncementMalformed),  # unknown name
        ({"seq_evicted_0_from": 3, "seq_evicted_0_count": 0}, 10, AnnouncementMalformed),  # empty range
        ({**evicted_counters([(5, 6)]), "seq_evicted_1_from": 2, "seq_evicted_1_count": 1}, 10, AnnouncementMalformed),
        ({"seq_evicted_0_from": 3, "seq_evicted_0_count": MAX_EVICTED_SPAN + 1}, 2**40, AnnouncementOversized),
        (
            {f"seq_evicted_{i}_{f}": 2 * i + 1 if f == "from" else 1 for i in range(17) for f in ("from", "count")},
            100,
            AnnouncementOversized,
        ),  # 17 ranges
        ({"seq_evicted_0_from": 8, "seq_evicted_0_count": 3}, 10, AnnouncementAboveSeq),  # 8..10 reaches seq 10
        ({"seq_evicted_0_from": 2**62, "seq_evicted_0_count": 1}, 10, AnnouncementAboveSeq),  # far above the batch
    ],
    ids=["no-count", "index-gap", "unknown-name", "count-0", "unordered", "span", "too-many", "own-seq", "above"],
)
def test_impossible_announcements_are_refused_with_a_reason(
    counters: dict[str, int], seq: int, error: type[AnnouncementRefused]
) -> None:
    with pytest.raises(error) as caught:
        evicted_ranges(counters, seq)
    assert caught.value.reason in REASONS
    assert isinstance(caught.value, AnnouncementRefused)


def test_the_sender_cannot_build_an_oversized_announcement() -> None:
    with pytest.raises(LocalProtocolError, match="at most 16"):
        evicted_counters([(2 * i + 1, 2 * i + 1) for i in range(MAX_EVICTED_RANGES + 1)])
    with pytest.raises(LocalProtocolError, match="longer than"):
        evicted_counters([(1, MAX_EVICTED_SPAN + 1)])
    assert len(evicted_counters([(2 * i + 1, 2 * i + 1) for i in range(MAX_EVICTED_RANGES)])) == 32


# ------------------------------------------------------------------ the outbox keeps them


def fill(box: Outbox, seq: int, priority: Priority = Priority.ROUTINE, **kw: object) -> list[int]:
    return box.put(seq, bytes([seq % 256]) * ROW, priority=priority, **kw)  # type: ignore[arg-type]


def test_evicted_seqs_are_coalesced_split_by_kept_alerts_and_survive_a_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=1024)
    for seq in (1, 2, 3):
        assert fill(box, seq) == []
    assert fill(box, 4) == [1]
    assert fill(box, 5) == [2]
    assert box.unannounced_evicted(16) == [(1, 2)]
    assert fill(box, 6, Priority.ALERT) == [3]
    assert fill(box, 7) == [4]
    assert fill(box, 8) == [5]
    assert fill(box, 9) == [7]  # 6 is an alert: never evicted, so it splits the ranges
    assert box.unannounced_evicted(16) == [(1, 5), (7, 7)]
    assert box.unannounced_evicted(1) == [(1, 5)]
    box.close()  # the agent dies right after evicting: nothing was announced yet
    again = Outbox(tmp_path / "outbox.db", max_bytes=1024)
    assert again.unannounced_evicted(16) == [(1, 5), (7, 7)]
    assert again.unreported()["evicted_batches"] == 6
    again.close()


def test_an_announcement_rides_in_its_batch_and_comes_back_when_that_batch_is_evicted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db", max_bytes=1024)
    for seq in range(1, 10):
        fill(box, seq, Priority.ALERT if seq == 6 else Priority.ROUTINE)
    pending = box.unannounced_evicted(16)
    assert pending == [(1, 5), (7, 7)]
    assert fill(box, 10, announced=pending) == [8]  # stored with the announcement: 8 makes room
    assert box.unannounced_evicted(16) == [(8, 8)]
    box.close()
    box = Outbox(tmp_path / "outbox.db", max_bytes=1024)  # a restart keeps it in batch 10's row
    assert box.unannounced_evicted(16) == [(8, 8)]
    assert fill(box, 11) == [9]
    assert fill(box, 12) == [10]  # the carrier itself is evicted: what it announced waits again
    assert box.unannounced_evicted(16) == [(1, 5), (7, 10)]
    pending = box.unannounced_evicted(16)
    assert fill(box, 13, announced=pending) == [11]
    assert box.confirm(13, 13) == 1  # the carrier was delivered (a receipt covers it): announced
    assert box.unannounced_evicted(16) == [(11, 11)]
    box.close()
    assert Outbox(tmp_path / "outbox.db", max_bytes=1024).unannounced_evicted(16) == [(11, 11)]


def test_a_long_run_comes_in_pieces_and_the_waiting_list_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "outbox.db"
    Outbox(path, max_bytes=1024).close()
    with sqlite3.connect(path) as db:  # a months-long outage at one batch a second
        db.execute("INSERT INTO evicted_seqs VALUES (1, ?)", (2 * MAX_EVICTED_SPAN + 10,))
    box = Outbox(path, max_bytes=1024)
    span = MAX_EVICTED_SPAN
    assert box.unannounced_evicted(16) == [(1, span), (span + 1, 2 * span), (2 * span + 1, 2 * span + 10)]
    assert evicted_ranges(evicted_counters(box.unannounced_evicted(16)), 2**40)  # the collector takes them
    box.close()
    monkeypatch.setattr(edge.outbox, "MAX_PENDING_EVICTED_RANGES", 2)
    box = Outbox(tmp_path / "small.db", max_bytes=1024)
    seq = 0
    for _ in range(4):  # routine, alert, routine, alert, ...: every eviction is its own range
        for priority in (Priority.ROUTINE, Priority.ALERT):
            seq += 1
            fill(box, seq, priority)
    for _ in range(3):
        seq += 1
        fill(box, seq)
    # routine 1, 3, 5, 7 evicted; then the four alerts alone fill the budget, so 9, 10 and 11
    # are evicted as they arrive
    assert box.unannounced_evicted(16) == [(7, 7), (9, 11)]
    assert box.unreported()["evicted_ranges_dropped"] == 3  # 1, 3 and 5 will show as missing
    box.close()


# ------------------------------------------------------------------ each evicted seq is counted once


class Chain:
    """The outbox with the agent's sealing steps, and a broker + collector that store what they are given.

    ``delivered`` holds what the collector stored: seq -> the counters the batch carried.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = [T0]
        self.box = self.open()
        self.carried: dict[int, dict[str, int]] = {}
        self.delivered: dict[int, dict[str, int]] = {}

    def open(self) -> Outbox:
        return Outbox(self.path, max_bytes=1024, clock_ms=lambda: self.clock[0])

    def restart(self) -> None:
        self.box.close()
        self.box = self.open()

    def store(self, seq: int) -> list[int]:
        """What :class:`BatchSealer` does: the batch carries the unreported counters and waiting ranges."""
        reported = self.box.unreported()
        announced = self.box.unannounced_evicted(MAX_EVICTED_RANGES)
        self.carried[seq] = {**reported, **evicted_counters(announced)}
        return fill(self.box, seq, fixes=1, reported=reported, announced=announced)

    def acked(self, seq: int, *, reaches_collector: bool = True) -> None:
        """The broker acknowledges ``seq`` (and loses it unless ``reaches_collector``)."""
        assert self.box.mark_published(seq)
        if reaches_collector:
            self.delivered[seq] = self.carried[seq]

    def announced(self) -> set[int]:
        seqs: set[int] = set()
        for seq, counters in self.delivered.items():
            for first, last in evicted_ranges(counters, seq):
                seqs.update(range(first, last + 1))
        return seqs

    def receipt(self, lost_before_ms: int | None = None) -> None:
        """The collector's receipt: what it stored plus what was announced, as contiguous from 1."""
        known = set(self.delivered) | self.announced()
        high = 0
        while high + 1 in known:
            high += 1
        ranges = [(s, s) for s in sorted(known) if s > high + 1]
        self.box.confirm(1, high, ranges, lost_before_ms=lost_before_ms)

    def drain(self, next_seq: int) -> int:
        """The link is back: everything is published, stored and receipted until nothing waits."""
        while True:
            for stored in self.box.pending(100, resend_before_ms=self.clock[0]):
                self.acked(stored.seq)
            self.receipt(lost_before_ms=self.clock[0] - 60_000)
            if (
                not self.box.unreported()
                and not self.box.unannounced_evicted(1)
                and not self.box.stats()["outbox_batches"]
            ):
                return next_seq
            self.store(next_seq)
            next_seq += 1

    def reported(self, key: str) -> int:
        return sum(counters.get(key, 0) for counters in self.delivered.values())


def test_a_report_in_an_acknowledged_batch_evicted_before_its_receipt_is_counted_once(tmp_path: Path) -> None:
    chain = Chain(tmp_path / "outbox.db")
    for seq in (1, 2, 3):
        chain.store(seq)
    assert chain.store(4) == [1]  # never sent: a real loss
    assert chain.store(5) == [2]  # 5 carries the report of 1 (and announces it)
    assert chain.carried[5]["evicted_batches"] == 1
    chain.acked(5)  # the broker has it, and the collector stores it with its report
    assert chain.store(6) == [5]  # the acknowledged row goes first, before its receipt came
    chain.restart()
    chain.drain(7)
    # 1 and 2 never left the box, 5 did and was stored: each counted once, in one counter
    assert (chain.reported("evicted_batches"), chain.reported("evicted_acked_batches")) == (2, 1)
    assert chain.reported("evicted_fixes") == 2
    assert chain.announced() == {1, 2}  # 5 was stored: not announced as a loss
    assert set(range(1, max(chain.delivered) + 1)) - set(chain.delivered) == {1, 2}


def test_an_acknowledged_batch_the_broker_lost_is_announced_and_its_report_sent_again(tmp_path: Path) -> None:
    chain = Chain(tmp_path / "outbox.db")
    for seq in (1, 2, 3):
        chain.store(seq)
    chain.store(4)
    chain.store(5)
    chain.acked(5, reaches_collector=False)  # acknowledged, then lost by the broker (a crash)
    assert chain.store(6) == [5]
    chain.restart()
    for stored in chain.box.pending(100):
        chain.acked(stored.seq)
    chain.receipt(lost_before_ms=chain.clock[0] - 60_000)  # too early to call 5 lost
    assert chain.box.unannounced_evicted(16) == []
    assert chain.box.unreported() == {"evicted_acked_batches": 1}  # what 5 carried is not back yet
    chain.clock[0] += 61_000
    chain.restart()  # the wait survives a restart
    chain.drain(7)  # a receipt over a minute after 5's PUBACK still lacks it: 5 is lost
    assert (chain.reported("evicted_batches"), chain.reported("evicted_acked_batches")) == (2, 1)
    assert chain.reported("evicted_fixes") == 2
    assert chain.announced() == {1, 2, 5}
    assert set(range(1, max(chain.delivered) + 1)) - set(chain.delivered) == {1, 2, 5}


def test_without_receipts_an_evicted_acknowledged_batch_is_forgotten_with_its_timeout(tmp_path: Path) -> None:
    chain = Chain(tmp_path / "outbox.db")
    for seq in (1, 2, 3, 4, 5):
        chain.store(seq)  # 4 evicts 1, 5 (carrying 1's report) evicts 2
    chain.acked(5)
    assert chain.store(6) == [5]
    chain.clock[0] += 61_000
    assert chain.box.expire_published(chain.clock[0] - 60_000) == 0  # no row: 5 was evicted already
    # PUBACK is delivery when no collector sends receipts: 5 and its report count as delivered
    assert chain.box.unreported() == {"evicted_acked_batches": 1}
    assert chain.box.unannounced_evicted(16) == []  # 1 went with 5, 2 rides in 6
    with sqlite3.connect(chain.path) as db:
        assert db.execute("SELECT COUNT(*) FROM evicted_acked").fetchone() == (0,)
    chain.box.close()


def test_acknowledged_evictions_waiting_for_a_receipt_are_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(edge.outbox, "MAX_EVICTED_ACKED", 2)
    chain = Chain(tmp_path / "outbox.db")
    for seq in (1, 2, 3):
        chain.store(seq)
        chain.acked(seq, reaches_collector=False)  # no collector answers for a long time
    for seq in (4, 5, 6):
        assert chain.store(seq) == [seq - 3]
    # 1, 2 and 3 wait for a receipt; over the bound the oldest, 1, is taken as lost
    assert chain.box.unannounced_evicted(16) == [(1, 1)]
    with sqlite3.connect(chain.path) as db:
        assert db.execute("SELECT seq FROM evicted_acked ORDER BY seq").fetchall() == [(2,), (3,)]
    assert (chain.carried[5], chain.carried[6]) == ({"evicted_acked_batches": 1},) * 2
    assert chain.box.unreported() == {"evicted_acked_batches": 1}  # 3's, for the next batch
    chain.box.close()


# ------------------------------------------------------------------ the sealer sends them


def sealer(tmp_path: Path, outbox: Outbox) -> BatchSealer:
    provision_sequence(tmp_path / "sequence")
    sequence = SequenceAllocator(tmp_path / "sequence", committed_high=outbox.committed_high, block=4)
    return BatchSealer(DEVICE.device_id, BOOT_A, DEVICE.key, sequence, outbox, stored=lambda: None,
                       boot_counters={}, counters={}, wall_ms=lambda: T0)  # fmt: skip


def closed(i: int) -> ClosedBatch:
    return ClosedBatch(fixes=tuple(Fix(T0 + i * 1000 + j, 31.2, 121.4 + j * 1e-5) for j in range(20)))


def counters_of(outbox: Outbox) -> dict[int, dict[str, int]]:
    keys = {DEVICE.device_id: DEVICE.key.public_key()}
    topic = batch_topic(DEVICE.device_id)
    return {b.seq: dict(open_batch(b.message, topic, keys).counters) for b in outbox.pending(100)}


def test_the_next_batch_announces_what_was_evicted_also_after_a_restart(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=2048)
    seal = sealer(tmp_path, outbox)
    i = 0
    while not outbox.unannounced_evicted(16):  # the link is down: nothing leaves, the outbox overflows
        i += 1
        seal.store(closed(i))
    evicted = outbox.unannounced_evicted(16)
    outbox.close()  # killed right after the eviction
    outbox = Outbox(tmp_path / "outbox.db", max_bytes=2048)
    seal = sealer(tmp_path, outbox)
    seq = seal.store(closed(i + 1))
    assert seq is not None
    stored = counters_of(outbox)
    assert evicted_ranges(stored[seq], seq) == tuple(evicted)
    assert min(stored) > evicted[-1][1]  # the evicted ones are gone, the carrier is kept
    outbox.close()


# ------------------------------------------------------------------ the collector's ledger


def test_the_ledger_bridges_evicted_seqs_as_known_losses() -> None:
    ledger = SeqLedger()
    ledger.add(range(1, 6))
    ledger.add(range(10, 13))
    assert ledger.receipt_view() == (1, 5, ((10, 12),))
    assert ledger.missing() == 4
    assert ledger.evict([(6, 9)]) == 4
    assert ledger.receipt_view() == (1, 12, ())  # the contiguous mark runs past the hole
    assert (ledger.missing(), ledger.evicted_lost(), ledger.evicted_total()) == (0, [(6, 9)], 4)
    assert ledger.evict([(6, 9)]) == 0  # a repetition changes nothing
    ledger.add([7])  # a copy the broker had acknowledged before the eviction lands after all
    assert (ledger.evicted_lost(), ledger.evicted_total()) == ([(6, 6), (8, 9)], 4)
    assert SeqLedger.from_json(ledger.as_json()) == ledger
    old_row = {k: v for k, v in ledger.as_json().items() if k != "evicted"}  # written before this change
    assert SeqLedger.from_json(old_row).evicted == []


def announcing(seq: int, ranges: list[tuple[int, int]]) -> bytes:
    return DEVICE.sealed(seq, counters=evicted_counters(ranges))


def test_the_receipt_job_bridges_announced_evictions_and_shows_them_apart(database_url: str) -> None:
    engine = create_engine(database_url)
    migrate(engine)
    register(engine, DEVICE)
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=0, max_clock_skew_s=315_360_000))
    registry = CollectorRegistry()
    job = ReceiptPublisher(engine, COLLECTOR, None, clock_ms=lambda: T0, registry=registry)
    ingestor.on_commit.append(job.on_commit)
    for seq in (1, 2, 3, 9):
        ingestor.handle(DEVICE.topic, DEVICE.sealed(seq), received_ms=T0)
    ingestor.handle(DEVICE.topic, announcing(10, [(4, 8)]), received_ms=T0)
    job.committed([("car-0001", s) for s in (1, 2, 3, 9, 10)])
    job.run_once()
    receipt = open_receipt(job.unsent["car-0001"], receipt_topic("car-0001"), COLLECTOR.public_key())
    assert (receipt.low, receipt.high, receipt.ranges) == (1, 10, ())
    with Session(engine) as session:
        gaps = device_gaps(session, "car-0001")
        assert gaps is not None
        assert (gaps["missing"], gaps["evicted"], gaps["evicted_announced"]) == (0, 5, 5)
        assert gaps["evicted_ranges"] == [{"first": 4, "last": 8}]
        assert [g["device_id"] for g in fleet_gaps(session)] == ["car-0001"]  # listed for its losses
    samples = {(s.name, s.labels.get("device_id")): s.value for m in GapMetrics(engine).collect() for s in m.samples}
    assert samples[("lienwatch_ingest_seq_evicted_total", None)] == 5.0
    assert samples[("lienwatch_ingest_device_seq_evicted_total", "car-0001")] == 5.0
    assert samples[("lienwatch_ingest_seq_missing", None)] == 0.0
    # the same batch again (a replay, or a re-send): acknowledged as a duplicate, changes nothing
    ingestor.handle(DEVICE.topic, announcing(10, [(4, 8)]), received_ms=T0)
    job.committed([("car-0001", 10)])
    # a batch announcing a range at or above its own seq: the batch is stored, the announcement refused
    ingestor.handle(DEVICE.topic, announcing(11, [(11, 20)]), received_ms=T0)
    job.committed([("car-0001", 11)])
    job.run_once()
    value = registry.get_sample_value
    assert value("lienwatch_ingest_evicted_announcements_total", {"result": "applied"}) == 1.0
    assert value("lienwatch_ingest_evicted_announcements_total", {"result": "replayed"}) == 1.0
    assert value("lienwatch_ingest_evicted_announcements_total", {"result": "announcement_above_seq"}) == 1.0
    assert job.counters["evicted_announcements_announcement_above_seq"] == 1
    with Session(engine) as session:
        gaps = device_gaps(session, "car-0001")
        assert gaps is not None
        assert (gaps["high_seq"], gaps["missing"], gaps["evicted"]) == (11, 0, 5)
    engine.dispose()


def test_an_announcement_lost_with_a_collector_round_comes_back_with_the_resent_copy(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    register(engine, DEVICE)
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=0, max_clock_skew_s=315_360_000))
    for seq in (1, 2):
        ingestor.handle(DEVICE.topic, DEVICE.sealed(seq), received_ms=T0)
    ingestor.handle(DEVICE.topic, announcing(5, [(3, 4)]), received_ms=T0)  # stored; the collector dies
    job = ReceiptPublisher(engine, COLLECTOR, None, clock_ms=lambda: T0)  # the restarted collector
    ingestor.on_commit.append(job.on_commit)
    ingestor.handle(DEVICE.topic, announcing(5, [(3, 4)]), received_ms=T0)  # no receipt came: re-sent
    job.committed([("car-0001", 5)])
    job.run_once()
    receipt = open_receipt(job.unsent["car-0001"], receipt_topic("car-0001"), COLLECTOR.public_key())
    assert (receipt.low, receipt.high) == (1, 5)
    engine.dispose()


def test_gaps_api_gives_missing_and_evicted_totals(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    register(engine, DEVICE)
    ingestor = Ingestor(engine, Limits(key_cache_ttl_s=0, max_clock_skew_s=315_360_000))
    job = ReceiptPublisher(engine, None, None, clock_ms=lambda: T0)
    ingestor.on_commit.append(job.on_commit)
    for seq in (1, 4):
        ingestor.handle(DEVICE.topic, DEVICE.sealed(seq), received_ms=T0)
    ingestor.handle(DEVICE.topic, announcing(8, [(5, 6)]), received_ms=T0)
    job.committed([("car-0001", s) for s in (1, 4, 8)])
    job.run_once()
    key = "admin-key-0123456789abcdef"
    settings = Settings(data_dir=tmp_path, database_url=f"sqlite:///{tmp_path / 'c.db'}",
                        api_keys={hash_api_key(key): "admin"})  # fmt: skip
    with TestClient(create_app(settings, engine=engine)) as client:
        fleet = client.get("/v1/devices/gaps", headers={"Authorization": f"Bearer {key}"}).json()
    assert {k: fleet[k] for k in ("missing", "devices_with_gaps", "evicted", "devices_with_evictions")} == {
        "missing": 3, "devices_with_gaps": 1, "evicted": 2, "devices_with_evictions": 1,
    }  # fmt: skip  # 2, 3 and 7 are unknown; 5 and 6 the device said it evicted
    assert fleet["devices"][0]["gaps"] == [{"first": 2, "last": 3}, {"first": 7, "last": 7}]
    engine.dispose()
