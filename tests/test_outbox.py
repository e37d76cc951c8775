"""The durable outbox: ordering, acks, bounded size with priority eviction, corruption."""

from __future__ import annotations

import contextlib
import hashlib
import sqlite3
from pathlib import Path

import pytest

from edge.outbox import ROW_OVERHEAD, Outbox, OutboxError, Priority, StoredBatch


def _msg(seq: int, size: int = 100) -> bytes:
    return bytes([seq % 251]) * size


def test_put_pending_ack_oldest_first(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for seq in (3, 1, 2):
        assert box.put(seq, _msg(seq), priority=Priority.ROUTINE, fixes=1) == []
    assert [b.seq for b in box.pending(10)] == [1, 2, 3]
    assert box.pending(2) == [StoredBatch(1, _msg(1), Priority.ROUTINE), StoredBatch(2, _msg(2), Priority.ROUTINE)]
    assert [b.seq for b in box.pending(10, exclude={1, 3})] == [2]
    assert box.pending(0) == []
    assert box.ack(2) is True
    assert box.ack(2) is False
    assert [b.seq for b in box.pending(10)] == [1, 3]
    assert box.stats() == {"outbox_batches": 2, "outbox_bytes": 2 * (100 + ROW_OVERHEAD)}
    box.close()


def test_rows_and_high_water_mark_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(1, b"a", priority=Priority.ALERT, alerts=1)
    box.put(2, b"b", priority=Priority.ROUTINE)
    box.ack(2)
    box.close()
    again = Outbox(tmp_path / "o.db")
    assert [(b.seq, b.message, b.priority) for b in again.pending(5)] == [(1, b"a", Priority.ALERT)]
    assert again.committed_high == 2
    again.close()


def test_wal_mode_is_used(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(1, b"x", priority=Priority.ROUTINE)
    mode = sqlite3.connect(tmp_path / "o.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    box.close()


def test_duplicate_sequence_number_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(1, b"x", priority=Priority.ROUTINE)
    with pytest.raises(OutboxError, match="sequence number 1 is already in the outbox"):
        box.put(1, b"y", priority=Priority.ROUTINE)
    assert [b.message for b in box.pending(5)] == [b"x"]
    box.close()


def test_full_outbox_evicts_routine_oldest_first_never_alerts(tmp_path: Path) -> None:
    row = 1000 + ROW_OVERHEAD
    box = Outbox(tmp_path / "o.db", max_bytes=4 * row)
    box.put(1, _msg(1, 1000), priority=Priority.ALERT, alerts=1)
    box.put(2, _msg(2, 1000), priority=Priority.ROUTINE, fixes=60, samples=5)
    box.put(3, _msg(3, 1000), priority=Priority.STATS, stats=1)
    box.put(4, _msg(4, 1000), priority=Priority.ROUTINE, fixes=60)
    assert box.put(5, _msg(5, 1000), priority=Priority.ALERT, alerts=2) == [2]
    assert box.put(6, _msg(6, 1000), priority=Priority.ROUTINE, fixes=10) == [4]
    assert box.put(7, _msg(7, 1000), priority=Priority.ALERT, alerts=1) == [6]
    assert box.put(8, _msg(8, 1000), priority=Priority.ALERT, alerts=1) == [3]  # then statistics
    assert [b.seq for b in box.pending(10)] == [1, 5, 7, 8]
    assert box.unreported() == {
        "evicted_batches": 4,
        "evicted_fixes": 130,
        "evicted_samples": 5,
        "evicted_stats": 1,
    }
    # only alerts left: the budget is exceeded rather than an alert dropped, and that is counted
    assert box.put(9, _msg(9, 1000), priority=Priority.ALERT, alerts=1) == []
    assert [b.seq for b in box.pending(10)] == [1, 5, 7, 8, 9]
    assert box.unreported()["outbox_over_budget"] == 1
    box.close()


def test_reported_counters_are_subtracted_in_the_same_transaction(tmp_path: Path) -> None:
    row = 1000 + ROW_OVERHEAD
    box = Outbox(tmp_path / "o.db", max_bytes=2 * row)
    box.put(1, _msg(1, 1000), priority=Priority.ROUTINE, fixes=7)
    box.put(2, _msg(2, 1000), priority=Priority.ALERT, alerts=1)
    assert box.put(3, _msg(3, 1000), priority=Priority.ALERT, alerts=1) == [1]
    report = box.unreported()
    assert report == {"evicted_batches": 1, "evicted_fixes": 7}
    box.put(4, b"r", priority=Priority.ALERT, alerts=1, reported=report)  # over budget: only alerts
    assert box.unreported() == {"outbox_over_budget": 1}
    # a routine batch that cannot fit evicts itself, and the report it carried goes back
    again = box.unreported()
    assert box.put(5, b"s", priority=Priority.ROUTINE, fixes=2, reported=again) == [5]
    assert box.unreported() == {"outbox_over_budget": 2, "evicted_batches": 1, "evicted_fixes": 2}
    box.close()
    reopened = Outbox(tmp_path / "o.db", max_bytes=2 * row)
    assert reopened.unreported() == {"outbox_over_budget": 2, "evicted_batches": 1, "evicted_fixes": 2}
    reopened.close()


def test_an_evicted_report_goes_back_to_unreported(tmp_path: Path) -> None:
    row = 1000 + ROW_OVERHEAD
    box = Outbox(tmp_path / "o.db", max_bytes=2 * row)
    box.put(1, _msg(1, 1000), priority=Priority.ROUTINE, fixes=3)
    box.put(2, _msg(2, 1000), priority=Priority.ROUTINE, fixes=4)
    assert box.put(3, _msg(3, 1000), priority=Priority.ROUTINE, fixes=5) == [1]
    report = box.unreported()
    assert report == {"evicted_batches": 1, "evicted_fixes": 3}
    assert box.put(4, _msg(4, 1000), priority=Priority.ROUTINE, fixes=6, reported=report) == [2]
    assert box.unreported() == {"evicted_batches": 1, "evicted_fixes": 4}
    # batch 4 carried the first report; evicting it puts that report back
    assert box.put(5, _msg(5, 1000), priority=Priority.ROUTINE, fixes=1) == [3]
    assert box.put(6, _msg(6, 1000), priority=Priority.ROUTINE, fixes=1) == [4]
    assert box.unreported() == {"evicted_batches": 4, "evicted_fixes": 3 + 4 + 5 + 6}
    box.close()


def test_corrupt_row_is_quarantined_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    for seq in (1, 2, 3):
        box.put(seq, _msg(seq), priority=Priority.ROUTINE)
    box.close()
    raw = sqlite3.connect(tmp_path / "o.db")
    raw.execute("UPDATE batches SET message = ? WHERE seq = 2", (b"bit rot",))
    raw.execute("UPDATE batches SET checksum = ? WHERE seq = 3", (b"short",))
    raw.commit()
    raw.close()
    box = Outbox(tmp_path / "o.db")
    assert [b.seq for b in box.pending(10)] == [1]
    assert box.quarantined() == [(2, "checksum mismatch"), (3, "checksum mismatch")]
    assert box.unreported() == {"outbox_corrupt_rows": 2}
    assert box.events == [
        "outbox row seq=2 quarantined: checksum mismatch",
        "outbox row seq=3 quarantined: checksum mismatch",
    ]
    box.close()


def test_row_with_wrong_types_is_quarantined(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(1, b"ok", priority=Priority.ROUTINE)
    box.put(2, b"x", priority=Priority.ROUTINE)
    with contextlib.closing(sqlite3.connect(tmp_path / "o.db")) as db, db:  # damage the file, as another writer might
        db.execute("UPDATE batches SET message = 'text', checksum = ? WHERE seq = 2", (hashlib.sha256(b"x").digest(),))
        db.execute("UPDATE batches SET priority = 9 WHERE seq = 1")
    assert box.pending(5) == []
    assert [reason for _, reason in box.quarantined()] == ["unknown priority 9", "message or checksum is not a blob"]
    box.close()


@pytest.mark.parametrize("damage", ["garbage", "truncate", "header"])
def test_corrupt_file_is_moved_aside_and_a_fresh_one_started(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    for seq in range(1, 300):
        box.put(seq, _msg(seq, 3000), priority=Priority.ROUTINE)
    box.close()
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 100)
    elif damage == "truncate":  # a torn write after power loss
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(data[:16] + b"\xff" * 84 + data[100:])
    box = Outbox(path)
    assert box.unreported() == {"outbox_quarantined_files": 1}
    assert box.pending(5) == []
    assert len(box.events) == 1
    assert "moved aside" in box.events[0]
    assert len([p for p in tmp_path.glob("o.db.corrupt-*") if p.name[-1].isdigit()]) == 1
    box.put(1000, b"fresh", priority=Priority.ALERT)
    assert [b.seq for b in box.pending(5)] == [1000]
    box.close()


def test_runtime_database_error_quarantines_and_retries(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put(1, b"x", priority=Priority.ROUTINE)

    class Broken:
        def execute(self, *_args: object) -> None:
            raise sqlite3.DatabaseError("database disk image is malformed")

        def close(self) -> None:
            pass

    box._db = Broken()  # type: ignore[assignment]
    box.put(2, b"y", priority=Priority.ROUTINE)
    assert [b.seq for b in box.pending(5)] == [2]
    assert box.unreported() == {"outbox_quarantined_files": 1}
    assert "at run time" in box.events[0]
    box.close()


def test_bad_budget_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OutboxError, match="max_bytes=10"):
        Outbox(tmp_path / "o.db", max_bytes=10)
    with pytest.raises(OutboxError):
        StoredBatch(0, b"", Priority.ROUTINE)
