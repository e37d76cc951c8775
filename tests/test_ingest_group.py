"""Group commit (collector.ingest.ingestor.Ingestor.handle_group) and the fair queue.

The group tests run on SQLite and PostgreSQL through the ``engine`` fixture, no broker:
a group mixes good batches with forged, truncated, replayed and conflicting ones and a
state message; only the bad ones are dead-lettered, the rest is stored in one transaction.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from collector.ingest.fairqueue import FairQueue
from collector.ingest.ingestor import Ingestor, Message, Outcome, StoredBatch, StoredState
from collector.settings import Limits
from collector.storage.database import create_engine, migrate
from protocol import seal_batch, state_topic
from tests.fake_devices import BOOT_B, NOW, T0, FakeDevice, count, dead_letters, register, status_row


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    db = create_engine(database_url)
    migrate(db)
    yield db
    db.dispose()


def stored_keys(engine: sa.Engine) -> list[tuple[str, int]]:
    with engine.connect() as conn:
        return sorted((d, s) for d, s in conn.execute(sa.text("SELECT device_id, seq FROM batches")))


def test_a_group_stores_the_good_and_dead_letters_only_the_bad(engine: sa.Engine) -> None:
    a, b, ghost = FakeDevice("car-a"), FakeDevice("car-b"), FakeDevice("ghost")
    register(engine, a, b)
    events: list[StoredBatch | StoredState] = []
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), on_commit=[events.append], clock_ms=lambda: NOW)
    assert ingest.handle(a.topic, a.sealed(1)).outcome is Outcome.STORED  # stored before the group
    other_boot = seal_batch(a.batch(1).__class__(a.device_id, BOOT_B, 1, T0 + 9_000, fixes=a.batch(1).fixes),
                            a.key, a.topic)  # fmt: skip
    good_b2 = b.sealed(2, t0=T0 + 60_000, fixes=5)
    group = [
        Message(a.topic, a.sealed(2, t0=T0 + 60_000)),  # new
        Message(b.topic, seal_batch(b.batch(1), a.key, b.topic)),  # forged: a's key on b's topic
        Message(a.topic, a.sealed(1)),  # replay of a stored batch: duplicate
        Message(b.topic, good_b2),  # new
        Message(ghost.topic, ghost.sealed(1)),  # unknown device
        Message(b.topic, good_b2),  # the same batch twice in one group: duplicate
        Message(a.topic, other_boot),  # a used seq with other content: seq_conflict
        Message(b.topic, good_b2[: len(good_b2) // 2]),  # truncated
        Message(state_topic(b.device_id), b.state(True, T0)),  # state
        Message(a.topic, b"\xd2" + b"\x00" * (1 << 20)),  # oversized
        Message(a.topic, a.sealed(3, t0=T0 + 120_000)),  # new
    ]
    results = ingest.handle_group(group)
    assert [r.outcome for r in results] == [
        Outcome.STORED, Outcome.DEAD_LETTERED, Outcome.DUPLICATE, Outcome.STORED, Outcome.DEAD_LETTERED,
        Outcome.DUPLICATE, Outcome.DEAD_LETTERED, Outcome.DEAD_LETTERED, Outcome.STATE_APPLIED,
        Outcome.DEAD_LETTERED, Outcome.STORED,
    ]  # fmt: skip
    assert [r.reason for r in results if r.reason] == [
        "bad_signature", "unknown_device", "seq_conflict", "truncated", "oversized"
    ]  # fmt: skip
    assert stored_keys(engine) == [("car-a", 1), ("car-a", 2), ("car-a", 3), ("car-b", 2)]
    assert count(engine, "fixes") == 3 + 3 + 3 + 5
    assert [d["reason"] for d in dead_letters(engine)] == [
        "bad_signature", "unknown_device", "seq_conflict", "truncated", "oversized"
    ]  # fmt: skip
    row_a, row_b = status_row(engine, "car-a"), status_row(engine, "car-b")
    assert (row_a["batches_stored"], row_a["duplicates"], row_a["seq_conflicts"], row_a["fixes_stored"]) == (3, 1, 1, 9)
    assert (row_b["batches_stored"], row_b["duplicates"], row_b["online"]) == (1, 1, True)
    assert row_a["last_fix_ms"] == T0 + 120_000 + 2_000  # the newest fix of the group, not the last message's
    assert ingest.counters["stored"] == 4
    assert ingest.counters["dead_letters"] == 5
    # hooks: in message order, after the commit, for stored, duplicate and state messages
    assert [(type(e).__name__, e.device_id) for e in events[1:]] == [
        ("StoredBatch", "car-a"), ("StoredBatch", "car-a"), ("StoredBatch", "car-b"), ("StoredBatch", "car-b"),
        ("StoredState", "car-b"), ("StoredBatch", "car-a"),
    ]  # fmt: skip


class RefusingIngestor(Ingestor):
    """Its database "refuses" (IntegrityError) any transaction holding a batch of ``bad_device``."""

    bad_device = "car-bad"

    def _store_records(self, conn: sa.Connection, items: list) -> None:  # type: ignore[type-arg]
        if any(item.batch.device_id == self.bad_device for item in items):
            raise sa.exc.IntegrityError("INSERT", {}, Exception("value out of range (simulated)"))
        super()._store_records(conn, items)


def test_a_group_the_database_refuses_is_split_and_only_the_culprit_dead_lettered(engine: sa.Engine) -> None:
    good, bad = FakeDevice("car-good"), FakeDevice("car-bad")
    register(engine, good, bad)
    ingest = RefusingIngestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    group = [
        Message(good.topic, good.sealed(1)),
        Message(bad.topic, bad.sealed(1)),
        Message(good.topic, good.sealed(2)),
    ]
    results = ingest.handle_group(group)
    assert [r.outcome for r in results] == [Outcome.STORED, Outcome.DEAD_LETTERED, Outcome.STORED]
    assert results[1].reason == "store_failed"
    assert stored_keys(engine) == [("car-good", 1), ("car-good", 2)]
    assert [(d["reason"], d["device_id"]) for d in dead_letters(engine)] == [("store_failed", "car-bad")]
    assert ingest.counters["group_splits"] == 1
    assert ingest.counters["received"] == 3  # verified once, not again for the split


def test_one_group_of_many_devices_updates_each_status_row_once(engine: sa.Engine) -> None:
    cars = [FakeDevice(f"car-{i}") for i in range(20)]
    register(engine, *cars)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    group = [Message(c.topic, c.sealed(seq, t0=T0 + seq * 60_000)) for seq in (1, 2) for c in cars]
    assert {r.outcome for r in ingest.handle_group(group)} == {Outcome.STORED}
    assert count(engine, "batches") == 40
    for c in cars:
        row = status_row(engine, c.device_id)
        assert (row["batches_stored"], row["fixes_stored"]) == (2, 6)
        assert row["last_fix_ms"] == T0 + 2 * 60_000 + 2_000


# ------------------------------------------------------------------ the fair queue


def test_fair_queue_serves_devices_round_robin_and_keeps_each_devices_order() -> None:
    q: FairQueue[tuple[str, int]] = FairQueue(1 << 20, lambda item: 1)
    stop = threading.Event()
    for i in range(1000):
        q.put("flood", ("flood", i), stop)
    q.put("quiet", ("quiet", 0), stop)
    group = q.take_group(10, 0.0, 0.0)
    assert group[:2] == [("flood", 0), ("quiet", 0)]  # the quiet device waits one turn, not 1,000
    assert [i for d, i in group if d == "flood"] == list(range(9))
    assert len(q) == 1000 - 9
    q.release(group)
    assert q.bytes == 1000 - 9


def test_fair_queue_is_bounded_in_bytes_and_put_gives_up_when_stopping() -> None:
    q: FairQueue[bytes] = FairQueue(100, len)
    stop = threading.Event()
    assert q.put("a", b"x" * 60, stop)
    stop.set()
    assert not q.put("b", b"y" * 60, stop)  # would exceed the bound: waits, gives up on stop
    assert len(q) == 1
    stop.clear()
    waiting = threading.Thread(target=q.put, args=("b", b"y" * 60, stop))
    waiting.start()
    group = q.take_group(5, 1.0, 0.0)
    assert group == [b"x" * 60]
    assert waiting.is_alive()  # the bytes are freed by release, not by take
    q.release(group)
    waiting.join(5)
    assert not waiting.is_alive()
    assert q.bytes == 60
    assert q.take_group(5, 0.0, 0.0) == [b"y" * 60]
    assert q.take_group(5, 0.01, 0.0) == []


def test_the_worker_does_not_linger_for_a_fuller_group_when_the_queue_is_full_by_bytes() -> None:
    """Under 1 MiB junk the queue fills by bytes with a few messages, and the MQTT thread waits
    for room: lingering for a 250-message group would only hold reading up (a flood test saw
    another device's batch wait 0.5-1 s more on a loaded machine)."""
    q: FairQueue[bytes] = FairQueue(100, len)
    stop = threading.Event()
    assert q.put("a", b"x" * 60, stop)
    waiting = threading.Thread(target=q.put, args=("b", b"y" * 60, stop), daemon=True)
    waiting.start()
    try:
        started = time.monotonic()
        group = q.take_group(250, 1.0, 5.0)  # would linger 5 s for 250 messages
        assert group == [b"x" * 60]
        assert time.monotonic() - started < 2.0
        q.release(group)
        waiting.join(5)
        assert q.take_group(250, 0.0, 0.0) == [b"y" * 60]
    finally:
        stop.set()  # a failed check never leaves the put waiting


def test_oversized_single_item_is_accepted_into_an_empty_queue() -> None:
    q: FairQueue[bytes] = FairQueue(10, len)
    assert q.put("a", b"z" * 50, threading.Event())
    assert q.take_group(1, 0.0, 0.0) == [b"z" * 50]
