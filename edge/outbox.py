"""The durable outbox: signed batches wait here until the broker acknowledges them.

How this works
--------------
* One SQLite file in WAL mode. A batch is inserted (with its sequence number, priority,
  record counts and a SHA-256 of the message) in one transaction committed with
  ``synchronous=FULL`` *before* anything publishes it; the publisher deletes the row only
  on a successful PUBACK (those deletes run with ``synchronous=NORMAL``: losing one after
  a power cut means one harmless duplicate under QoS 1).
* The store is bounded by bytes. When an insert goes over the budget, rows are evicted in
  the same transaction, lowest priority first and oldest first: routine telemetry
  (fixes/samples only), then daily statistics. Batches that carry an alert are never
  evicted; if only they are left, the budget is exceeded and that is counted.
* Every eviction and every corruption found is added to *unreported* counters kept in the
  same file. The agent copies them into the counters of the next batch it closes and
  passes them back to :meth:`Outbox.put`, which subtracts them in the same transaction
  that stores that batch, so a report is neither lost nor sent twice.
* End-to-end receipts (docs/protocol.md section 14): when the uplink runs with receipts,
  a PUBACK does not delete the row, it stamps ``published_ms`` (:meth:`Outbox.mark_published`);
  the row goes when a signed receipt from the collector covers its seq
  (:meth:`Outbox.confirm`). A row stamped longer ago than the receipt timeout is handed out
  again by :meth:`Outbox.pending` (``resend_before_ms``) and re-published. Rows waiting for
  a receipt are still rows: they count against the budget and are evicted by the same
  priorities (alerts never); within a priority, a row the broker already acknowledged goes
  before one it never saw (it is the likelier to be stored already) and is counted apart as
  ``evicted_acked_batches`` (not in ``evicted_batches``, the count of batches that never
  left the box: a gap the collector sees for one of those is a real loss). Whether a receipt was
  ever accepted, and the newest receipt counter, are kept in ``meta`` so they survive
  restarts.
* Such an acknowledged row may well be stored upstream already, with the counters and
  evicted ranges it carried. So its eviction does not give them back: its seq and report go,
  in the eviction's transaction, to table ``evicted_acked`` until its fate is known. A
  receipt that covers it says the collector has it: the entry is dropped (giving its report
  back would count every eviction in it twice). A receipt that still lacks it one receipt
  timeout after its PUBACK (when the row would have been published again) says the broker
  lost it: its report goes back to the unreported counters and its seq, with the ranges it
  announced, to ``evicted_seqs``. Without receipts (``expire_published``) a PUBACK is
  delivery and the entry is dropped with its timeout. So each evicted seq is counted once, in
  ``evicted_batches`` or ``evicted_acked_batches``, also across restarts.
* Evicted seqs are announced (docs/protocol.md section 13, "Evicted seqs"): every evicted
  row's seq goes, in the eviction's transaction, into ``evicted_seqs`` (coalesced inclusive
  ranges). The agent puts the lowest of them into the counters of the next batch it closes
  (:meth:`Outbox.unannounced_evicted`) and passes them to :meth:`Outbox.put`, which moves
  them, in the transaction that stores that batch, into the batch row's ``report``. When
  that row is evicted in turn, the ranges it carried go back to ``evicted_seqs`` with its
  own seq (for a row the broker acknowledged: once a receipt shows it lost, above); when it
  is delivered (receipt, or PUBACK without receipts) they are gone with it. So a restart at
  any point neither loses an announcement nor needs one resent.
  At most :data:`MAX_PENDING_EVICTED_RANGES` ranges wait; beyond that the lowest are dropped
  and counted (``evicted_ranges_dropped``): their seqs then show as missing upstream.
* Corruption: on open, ``PRAGMA quick_check``; a file that fails it (or is not a database
  at all) is moved aside with its -wal/-shm files and a fresh one is started. Each row's
  checksum is verified before the row is handed out; a bad row moves to a quarantine
  table. Either case is counted (``outbox_quarantined_files``, ``outbox_corrupt_rows``)
  and reported; neither is a crash. A database error at run time is handled the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import threading
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import TypeVar

from protocol import MAX_EVICTED_SPAN

from .errors import DeviceError
from .observation_clock import host_wall_ms

__all__ = ["Outbox", "OutboxError", "Priority", "StoredBatch"]

_T = TypeVar("_T")
#: bytes counted per row on top of the message (row header, index entry, checksum)
ROW_OVERHEAD = 96
#: largest integer SQLite stores (seqs above it cannot be in the file)
_SQLITE_MAX = 2**63 - 1
#: evicted seq ranges waiting for their announcement at most (the lowest beyond are dropped)
MAX_PENDING_EVICTED_RANGES = 4096
#: evicted acknowledged rows waiting to learn their fate at most (the oldest beyond are taken as lost)
MAX_EVICTED_ACKED = 4096
#: key of a row's ``report`` holding the evicted ranges that row announces
_ANNOUNCED = "seq_evicted"
REPORT_KEYS = (
    "evicted_batches",
    "evicted_acked_batches",
    "evicted_fixes",
    "evicted_samples",
    "evicted_stats",
    "outbox_corrupt_rows",
    "outbox_quarantined_files",
    "outbox_over_budget",
    "evicted_ranges_dropped",
)
Range = tuple[int, int]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    seq INTEGER PRIMARY KEY,
    priority INTEGER NOT NULL,
    fixes INTEGER NOT NULL,
    samples INTEGER NOT NULL,
    stats INTEGER NOT NULL,
    alerts INTEGER NOT NULL,
    size INTEGER NOT NULL,
    checksum BLOB NOT NULL,
    report TEXT NOT NULL,
    message BLOB NOT NULL,
    published_ms INTEGER
);
CREATE INDEX IF NOT EXISTS batches_eviction ON batches (priority, seq);
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    message BLOB
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS evicted_seqs (first INTEGER PRIMARY KEY, last INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS evicted_acked (seq INTEGER PRIMARY KEY, report TEXT NOT NULL, published_ms INTEGER NOT NULL);
"""


class OutboxError(DeviceError):
    """The outbox cannot store or hand out batches (the disk failed, not the data)."""

    reason = "outbox_error"


class Priority(IntEnum):
    """Eviction order: lower goes first; ALERT is never evicted."""

    ROUTINE = 0
    STATS = 1
    ALERT = 2


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A signed batch waiting for its PUBACK."""

    seq: int
    message: bytes
    priority: Priority
    published_ms: int | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.seq < 2**64 or not isinstance(self.message, bytes):
            raise OutboxError(f"stored batch seq {self.seq} / message type {type(self.message).__name__} is invalid")


def _report_of(text: object) -> dict[str, int]:
    """The counters a stored row carries upstream (its ``report`` column)."""
    try:
        raw = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    return {k: v for k, v in raw.items() if k in REPORT_KEYS and isinstance(v, int) and v > 0}


def _announced_of(text: object) -> list[Range]:
    """The evicted ranges a stored row announces (its ``report``'s ``seq_evicted``)."""
    try:
        raw = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return []
    ranges = raw.get(_ANNOUNCED) if isinstance(raw, dict) else None
    if not isinstance(ranges, list):
        return []
    return [
        (r[0], r[1])
        for r in ranges
        if isinstance(r, list) and len(r) == 2 and all(type(v) is int for v in r) and 1 <= r[0] <= r[1] <= _SQLITE_MAX
    ]


class Outbox:
    """A bounded, durable, priority-evicting queue of signed batches (thread-safe).

    Args:
        path: the SQLite file (its folder is created).
        max_bytes: byte budget of stored messages (plus a per-row overhead).
        clock_ms: host clock, epoch milliseconds (quarantine timestamps only).

    Attributes:
        events: human-readable notes of corruption handled (for logs and the state message).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        clock_ms: Callable[[], int] = host_wall_ms,
    ) -> None:
        if max_bytes < 1024:
            raise OutboxError(f"outbox max_bytes={max_bytes} must be at least 1024")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._clock_ms = clock_ms
        self._lock = threading.RLock()
        self.events: list[str] = []
        self.totals: dict[str, int] = dict.fromkeys(("stored", "acked", "receipted", *REPORT_KEYS), 0)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._open_checked()

    # ------------------------------------------------------------------ open / recover

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def _open_checked(self) -> sqlite3.Connection:
        reason = "unknown"
        db: sqlite3.Connection | None = None
        try:
            db = self._connect()
            row = db.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                reason = f"quick_check: {row[0] if row else 'no answer'}"
                db.close()
            else:
                db.executescript(_SCHEMA)
                self._upgrade(db)
                return db
        except sqlite3.DatabaseError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if db is not None:
                with contextlib.suppress(Exception):
                    db.close()
        return self._quarantine_file(reason)

    @staticmethod
    def _upgrade(db: sqlite3.Connection) -> None:
        """Add ``published_ms`` to a file written before receipts (NULL: never acknowledged)."""
        columns = {row[1] for row in db.execute("PRAGMA table_info(batches)")}
        if "published_ms" not in columns:
            db.execute("ALTER TABLE batches ADD COLUMN published_ms INTEGER")

    def _quarantine_file(self, reason: str) -> sqlite3.Connection:
        stamp = self._clock_ms()
        moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.replace(Path(f"{moved}{suffix}"))
        self.events.append(f"outbox file {self.path} failed its check ({reason}); moved aside to {moved}")
        self.totals["outbox_quarantined_files"] += 1
        db = self._connect()
        db.executescript(_SCHEMA)
        self._bump(db, {"outbox_quarantined_files": 1})
        return db

    def _guard(self, action: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``action``; on a database error, quarantine the file and try once more."""
        with self._lock:
            try:
                return action(self._db)
            except sqlite3.DatabaseError as exc:
                with contextlib.suppress(Exception):
                    self._db.close()
                self._db = self._quarantine_file(f"{type(exc).__name__} at run time: {exc}")
                try:
                    return action(self._db)
                except sqlite3.Error as again:
                    raise OutboxError(f"outbox {self.path} fails even after a fresh start: {again}") from again

    @staticmethod
    @contextlib.contextmanager
    def _transaction(db: sqlite3.Connection, *, durable: bool) -> Iterator[None]:
        db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    @staticmethod
    def _bump(db: sqlite3.Connection, deltas: Mapping[str, int]) -> None:
        for key, delta in deltas.items():
            if delta:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = value + ?",
                    (key, delta, delta),
                )

    # ------------------------------------------------------------------ public API

    def put(
        self,
        seq: int,
        message: bytes,
        *,
        priority: Priority,
        fixes: int = 0,
        samples: int = 0,
        stats: int = 0,
        alerts: int = 0,
        reported: Mapping[str, int] | None = None,
        announced: Sequence[Range] = (),
    ) -> list[int]:
        """Store a signed batch durably, evicting routine rows if over budget.

        Args:
            seq: the batch's sequence number (unique).
            message: the sealed COSE_Sign1 bytes.
            priority: eviction class of this batch.
            fixes: number of fixes in it (for eviction counters).
            samples: number of samples in it.
            stats: number of daily-stats records in it.
            alerts: number of alerts in it.
            reported: counters this batch carries upstream (from :meth:`unreported`);
                they are subtracted from the unreported counters in the same transaction,
                and added back if this batch is itself evicted later (once the broker
                acknowledged it: only if a receipt shows it lost, see :meth:`confirm`).
            announced: evicted seq ranges this batch announces (from :meth:`unannounced_evicted`);
                they leave the waiting ranges in the same transaction and come back like
                ``reported`` if this batch is itself evicted later.

        Returns:
            The sequence numbers evicted to make room (possibly including ``seq``).

        Raises:
            OutboxError: a duplicate ``seq`` or an unusable disk.
        """
        digest = hashlib.sha256(message).digest()
        carried = {k: int(v) for k, v in (reported or {}).items() if k in REPORT_KEYS and v}
        row_report: dict[str, object] = dict(carried)
        if announced:
            row_report[_ANNOUNCED] = [[first, last] for first, last in announced]
        report = json.dumps(row_report, sort_keys=True)
        size = len(message) + ROW_OVERHEAD

        def action(db: sqlite3.Connection) -> list[int]:
            evicted: list[int] = []
            counts = dict.fromkeys(REPORT_KEYS, 0)
            with self._transaction(db, durable=True):
                try:
                    db.execute(
                        "INSERT INTO batches (seq, priority, fixes, samples, stats, alerts, size, checksum, report,"
                        " message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (seq, int(priority), fixes, samples, stats, alerts, size, digest, report, message),
                    )
                except sqlite3.IntegrityError as exc:
                    raise OutboxError(f"sequence number {seq} is already in the outbox") from exc
                self._remove_evicted(db, announced)
                total = db.execute("SELECT COALESCE(SUM(size), 0) FROM batches").fetchone()[0]
                while total > self.max_bytes:
                    victim = db.execute(
                        "SELECT seq, size, fixes, samples, stats, report, published_ms FROM batches WHERE priority < ? "
                        "ORDER BY priority, published_ms IS NULL, seq LIMIT 1",
                        (int(Priority.ALERT),),
                    ).fetchone()
                    if victim is None:
                        counts["outbox_over_budget"] += 1
                        break
                    db.execute("DELETE FROM batches WHERE seq = ?", (victim[0],))
                    evicted.append(victim[0])
                    total -= victim[1]
                    if victim[6] is not None:
                        # The broker acknowledged it: the collector probably stored it, report and
                        # announcement included. Its seq and report wait for a receipt to tell.
                        counts["evicted_acked_batches"] += 1
                        db.execute(
                            "INSERT OR REPLACE INTO evicted_acked (seq, report, published_ms) VALUES (?, ?, ?)",
                            (victim[0], victim[5], victim[6]),
                        )
                        continue
                    counts["evicted_batches"] += 1
                    counts["evicted_fixes"] += victim[2]
                    counts["evicted_samples"] += victim[3]
                    counts["evicted_stats"] += victim[4]
                    self._give_back(db, victim[0], victim[5], counts)
                if evicted:
                    self._bound_evicted_acked(db, counts)
                    counts["evicted_ranges_dropped"] += self._bound_evicted(db)
                deltas = {k: v - int(carried.get(k, 0)) for k, v in counts.items()}
                self._bump(db, deltas)
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('high_seq', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = MAX(value, excluded.value)",
                    (seq,),
                )
            self.totals["stored"] += 1
            for key, value in counts.items():
                self.totals[key] += value
            return evicted

        return self._guard(action)

    @classmethod
    def _give_back(cls, db: sqlite3.Connection, seq: int, report: object, counts: dict[str, int]) -> None:
        """A batch that will never reach the collector: its seq is lost, and what it carried waits again.

        Its report goes back to the unreported counters (in ``counts``) and the ranges it
        announced, with its own seq, to ``evicted_seqs``.
        """
        for key, value in _report_of(report).items():
            counts[key] += value
        cls._add_evicted(db, [(seq, seq), *_announced_of(report)])

    @classmethod
    def _settle_lost(cls, db: sqlite3.Connection, rows: Iterable[tuple[int, str]], counts: dict[str, int]) -> None:
        """Evicted acknowledged rows the collector did not get: give back what they carried."""
        for seq, report in rows:
            db.execute("DELETE FROM evicted_acked WHERE seq = ?", (seq,))
            cls._give_back(db, seq, report, counts)

    @classmethod
    def _bound_evicted_acked(cls, db: sqlite3.Connection, counts: dict[str, int]) -> None:
        """Over :data:`MAX_EVICTED_ACKED` waiting (no receipts for a long time), take the oldest as lost."""
        over = db.execute("SELECT COUNT(*) FROM evicted_acked").fetchone()[0] - MAX_EVICTED_ACKED
        if over > 0:
            oldest = db.execute("SELECT seq, report FROM evicted_acked ORDER BY seq LIMIT ?", (over,)).fetchall()
            cls._settle_lost(db, oldest, counts)

    @staticmethod
    def _add_evicted(db: sqlite3.Connection, ranges: Iterable[Range]) -> None:
        """Merge ``ranges`` into ``evicted_seqs`` (overlapping and adjacent ones become one)."""
        for low, high in ranges:
            touching = db.execute(
                "SELECT first, last FROM evicted_seqs WHERE first <= ? AND last >= ?",
                (min(high + 1, _SQLITE_MAX), low - 1),
            ).fetchall()
            first, last = low, high
            for start, end in touching:
                first, last = min(first, start), max(last, end)
                db.execute("DELETE FROM evicted_seqs WHERE first = ?", (start,))
            db.execute("INSERT INTO evicted_seqs (first, last) VALUES (?, ?)", (first, last))

    @staticmethod
    def _remove_evicted(db: sqlite3.Connection, ranges: Iterable[Range]) -> None:
        """Take ``ranges`` out of ``evicted_seqs`` (they ride in a stored batch now)."""
        for first, last in ranges:
            touching = db.execute(
                "SELECT first, last FROM evicted_seqs WHERE first <= ? AND last >= ?", (last, first)
            ).fetchall()
            for start, end in touching:
                db.execute("DELETE FROM evicted_seqs WHERE first = ?", (start,))
                if start < first:
                    db.execute("INSERT INTO evicted_seqs (first, last) VALUES (?, ?)", (start, first - 1))
                if end > last:
                    db.execute("INSERT INTO evicted_seqs (first, last) VALUES (?, ?)", (last + 1, end))

    @staticmethod
    def _bound_evicted(db: sqlite3.Connection) -> int:
        """Drop the lowest waiting ranges over :data:`MAX_PENDING_EVICTED_RANGES`; how many went."""
        count = db.execute("SELECT COUNT(*) FROM evicted_seqs").fetchone()[0]
        over = count - MAX_PENDING_EVICTED_RANGES
        if over > 0:
            db.execute(
                "DELETE FROM evicted_seqs WHERE first IN (SELECT first FROM evicted_seqs ORDER BY first LIMIT ?)",
                (over,),
            )
        return max(int(over), 0)

    def unannounced_evicted(self, limit: int) -> list[Range]:
        """Up to ``limit`` evicted seq ranges no stored batch announces yet, lowest first.

        A run longer than :data:`protocol.MAX_EVICTED_SPAN` comes as several adjacent ranges.
        """
        if limit <= 0:
            return []

        def action(db: sqlite3.Connection) -> list[Range]:
            out: list[Range] = []
            for low, last in db.execute("SELECT first, last FROM evicted_seqs ORDER BY first LIMIT ?", (limit,)):
                first = int(low)
                while first <= last and len(out) < limit:
                    end = min(int(last), first + MAX_EVICTED_SPAN - 1)
                    out.append((first, end))
                    first = end + 1
            return out

        return self._guard(action)

    def pending(
        self, limit: int, *, exclude: Container[int] = (), resend_before_ms: int | None = None
    ) -> list[StoredBatch]:
        """Up to ``limit`` batches to publish, oldest (lowest seq) first, skipping ``exclude``.

        A batch is to publish when the broker never acknowledged it, or (``resend_before_ms``
        given) when its acknowledgement is older than that and no receipt covered it since.

        Rows whose checksum does not match are moved to the quarantine table and counted.
        """
        if limit <= 0:
            return []
        cutoff = -1 if resend_before_ms is None else resend_before_ms

        def action(db: sqlite3.Connection) -> list[StoredBatch]:
            out: list[StoredBatch] = []
            bad: list[tuple[int, bytes | None, str]] = []
            offset = 0
            while len(out) < limit:
                rows = db.execute(
                    "SELECT seq, priority, checksum, message, published_ms FROM batches "
                    "WHERE published_ms IS NULL OR published_ms <= ? ORDER BY seq LIMIT ? OFFSET ?",
                    (cutoff, limit * 2 + 16, offset),
                ).fetchall()
                if not rows:
                    break
                offset += len(rows)
                for seq, priority, checksum, message, published_ms in rows:
                    if seq in exclude:
                        continue
                    problem = self._row_problem(priority, checksum, message)
                    if problem:
                        bad.append((seq, message if isinstance(message, bytes) else None, problem))
                        continue
                    out.append(StoredBatch(seq, bytes(message), Priority(priority), published_ms))
                    if len(out) == limit:
                        break
            if bad:
                self._quarantine_rows(db, bad)
            return out

        return self._guard(action)

    @staticmethod
    def _row_problem(priority: object, checksum: object, message: object) -> str | None:
        if not isinstance(message, bytes) or not isinstance(checksum, bytes):
            return "message or checksum is not a blob"
        if hashlib.sha256(message).digest() != checksum:
            return "checksum mismatch"
        if priority not in (0, 1, 2):
            return f"unknown priority {priority!r}"
        return None

    def _quarantine_rows(self, db: sqlite3.Connection, bad: list[tuple[int, bytes | None, str]]) -> None:
        now = self._clock_ms()
        with self._transaction(db, durable=True):
            for seq, message, problem in bad:
                db.execute("INSERT INTO quarantine VALUES (?, ?, ?, ?)", (seq, problem, now, message))
                db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            self._bump(db, {"outbox_corrupt_rows": len(bad)})
        self.totals["outbox_corrupt_rows"] += len(bad)
        self.events.extend(f"outbox row seq={seq} quarantined: {problem}" for seq, _, problem in bad)

    def ack(self, seq: int) -> bool:
        """Delete a batch the broker acknowledged; False if it was not (or no longer) stored."""

        def action(db: sqlite3.Connection) -> bool:
            with self._transaction(db, durable=False):
                cursor = db.execute("DELETE FROM batches WHERE seq = ?", (seq,))
            return cursor.rowcount > 0

        deleted = self._guard(action)
        if deleted:
            self.totals["acked"] += 1
        return deleted

    def now_ms(self) -> int:
        """The outbox's clock (host wall clock, epoch ms): what ``published_ms`` stamps are in."""
        return self._clock_ms()

    def mark_published(self, seq: int) -> bool:
        """Keep a batch the broker acknowledged until a receipt covers it; stamp the time.

        Returns:
            False if it was not (or no longer) stored (a receipt came first).
        """
        now = self._clock_ms()

        def action(db: sqlite3.Connection) -> bool:
            with self._transaction(db, durable=False):
                cursor = db.execute("UPDATE batches SET published_ms = ? WHERE seq = ?", (now, seq))
            return cursor.rowcount > 0

        marked = self._guard(action)
        if marked:
            self.totals["acked"] += 1
        return marked

    def confirm(
        self, low: int, high: int, ranges: Iterable[tuple[int, int]] = (), *, lost_before_ms: int | None = None
    ) -> int:
        """Delete every batch whose seq is in ``low .. high`` or in one of ``ranges`` (a receipt).

        An evicted row the broker had acknowledged (table ``evicted_acked``) that the receipt
        covers was stored by the collector, with the counters and ranges it carried: it is
        forgotten. One it does not cover although it was acknowledged at or before
        ``lost_before_ms`` (the receipt timeout: it would be published again now) is taken as
        lost by the broker: its seq is announced and its report goes back to the unreported
        counters, so neither is counted twice nor lost.

        Args:
            low: first seq of the receipt's contiguous run.
            high: last seq of it.
            ranges: further stored runs, inclusive.
            lost_before_ms: host epoch ms; None (no receipts in use) takes nothing as lost.

        Returns:
            How many rows were deleted.
        """
        spans = [
            (start, min(end, _SQLITE_MAX)) for start, end in [(low, high), *ranges] if start <= min(end, _SQLITE_MAX)
        ]

        def action(db: sqlite3.Connection) -> tuple[int, dict[str, int]]:
            deleted = 0
            counts = dict.fromkeys(REPORT_KEYS, 0)
            # not durable: lost to a power cut, the next receipt does the same again
            with self._transaction(db, durable=False):
                for start, end in spans:
                    cursor = db.execute("DELETE FROM batches WHERE seq BETWEEN ? AND ?", (start, end))
                    deleted += cursor.rowcount
                    db.execute("DELETE FROM evicted_acked WHERE seq BETWEEN ? AND ?", (start, end))
                if lost_before_ms is not None:
                    lost = db.execute(
                        "SELECT seq, report FROM evicted_acked WHERE published_ms <= ? ORDER BY seq", (lost_before_ms,)
                    ).fetchall()
                    if lost:
                        self._settle_lost(db, lost, counts)
                        counts["evicted_ranges_dropped"] += self._bound_evicted(db)
                        self._bump(db, counts)
            return deleted, counts

        deleted, counts = self._guard(action)
        self.totals["receipted"] += deleted
        for key, value in counts.items():
            self.totals[key] += value
        return deleted

    def expire_published(self, before_ms: int) -> int:
        """Delete batches acknowledged by the broker at or before ``before_ms`` (no receipts in use).

        Without receipts a PUBACK is delivery: evicted acknowledged rows of that age (and the
        counters and ranges they carried) are taken as delivered too.

        Returns:
            How many rows were deleted.
        """

        def action(db: sqlite3.Connection) -> int:
            with self._transaction(db, durable=False):
                cursor = db.execute("DELETE FROM batches WHERE published_ms <= ?", (before_ms,))
                db.execute("DELETE FROM evicted_acked WHERE published_ms <= ?", (before_ms,))
            return cursor.rowcount

        return self._guard(action)

    def awaiting_receipt(self) -> int:
        """Batches the broker acknowledged that no receipt covered yet."""
        query = "SELECT COUNT(*) FROM batches WHERE published_ms IS NOT NULL"
        return int(self._guard(lambda db: db.execute(query).fetchone()[0]))

    def meta_value(self, key: str) -> int | None:
        """A value of the ``meta`` table (``receipt_counter``, ``receipts_seen``), None if unset."""
        row = self._guard(lambda db: db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        return None if row is None else int(row[0])

    def set_meta(self, key: str, value: int) -> None:
        """Store ``value`` under ``key`` in the ``meta`` table (durably)."""

        def action(db: sqlite3.Connection) -> None:
            with self._transaction(db, durable=True):
                db.execute(
                    "INSERT INTO meta (key, value) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (key, value),
                )

        self._guard(action)

    def unreported(self) -> dict[str, int]:
        """Eviction and corruption counters not yet carried upstream by a stored batch."""

        def action(db: sqlite3.Connection) -> dict[str, int]:
            rows = db.execute(
                f"SELECT key, value FROM meta WHERE key IN ({','.join('?' * len(REPORT_KEYS))})", REPORT_KEYS
            ).fetchall()
            return {key: int(value) for key, value in rows if value > 0}

        return self._guard(action)

    @property
    def committed_high(self) -> int:
        """The highest sequence number ever committed to this file (0 if none)."""

        def action(db: sqlite3.Connection) -> int:
            row = db.execute("SELECT value FROM meta WHERE key = 'high_seq'").fetchone()
            stored = db.execute("SELECT COALESCE(MAX(seq), 0) FROM batches").fetchone()[0]
            return max(int(row[0]) if row else 0, int(stored))

        return self._guard(action)

    def totals_snapshot(self) -> dict[str, int]:
        """A copy of :attr:`totals` taken under the outbox lock (the uplink thread updates them too)."""
        with self._lock:
            return dict(self.totals)

    def stats(self) -> dict[str, int]:
        """Rows and bytes currently stored (``outbox_batches``, ``outbox_bytes``)."""

        def action(db: sqlite3.Connection) -> dict[str, int]:
            count, size = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM batches").fetchone()
            return {"outbox_batches": int(count), "outbox_bytes": int(size)}

        return self._guard(action)

    def quarantined(self) -> list[tuple[int | None, str]]:
        """(seq, reason) of every quarantined row, oldest first."""
        return self._guard(lambda db: db.execute("SELECT seq, reason FROM quarantine ORDER BY rowid").fetchall())

    def close(self) -> None:
        """Checkpoint the WAL and close the file."""
        with self._lock:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
