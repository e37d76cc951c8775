"""The ingest core: one received MQTT message in, one committed database transaction out.

How this works. :meth:`Ingestor.handle_group` is called (from one worker thread, see
collector.ingest.service) with a group of received messages (topic, raw bytes); :meth:`Ingestor.handle`
is a group of one.

1. Every message is checked on its own, before anything is written: size limit, then the
   topic (``lw/v1/{device}/batch`` or ``.../state``), then ``protocol.open_batch`` /
   ``open_state`` against the active keys of the registry
   (:class:`~collector.ingest.registry.KeyCache`; an unknown kid forces one re-read, so a device
   added a moment ago is accepted and a revoked one is refused), then collector-side checks
   (times not in the future beyond ``limits.max_clock_skew_s``). A message that fails is
   marked for the dead letters; the others of the group are unaffected.
2. ONE transaction for the whole group: the ledger rows keyed on (device_id, seq) are
   inserted in one executemany with ``ON CONFLICT DO NOTHING RETURNING id, device_id, seq``
   (SQLite and PostgreSQL): a key not returned was stored before, and its stored boot id,
   creation time and size tell a plain duplicate (a counter) from a ``seq_conflict`` (dead
   letter, kept whole). The same key twice in one group is compared in memory. The fixes
   of every new batch go in one ``COPY`` (PostgreSQL) or one executemany (SQLite); samples
   and alerts in one executemany each; ``device_status`` gets one UPDATE per device (device
   order, so several collectors never deadlock) that only moves times forward, so late data
   never moves them backwards. State messages are applied in the same transaction, and
   the dead-letter rows of the group are written in it too.
3. If the database refuses the group (a value it cannot store; not an outage), the group
   is split and every message is stored in a transaction of its own, so only the message
   at fault is dead-lettered (``store_failed``).

Dead letters keep the first ``limits.dead_letter_keep_bytes`` of the raw bytes with the
full size and SHA-256, topic, reason slug, detail, time; at most
``limits.dead_letters_per_device_hour`` rows per device id and hour, beyond that only
counted. ``handle_group`` returns normally for them, so the caller acknowledges them and
the stream keeps flowing. A database that cannot be reached is *not* the messages' fault:
``handle_group`` raises :class:`~collector.errors.DatabaseUnavailableError` and the caller
must not acknowledge any of them; it retries the same group later.

After the commit the ``on_commit`` hooks are called, in message order, with what was
stored (:class:`StoredBatch` / :class:`StoredState`); a hook that raises is logged and
counted, never un-commits anything.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import repeat
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from protocol import Batch, ColumnarBatch, DeviceState, open_batch_columns, open_state, parse_topic
from protocol.errors import REASONS, BadSignature, ProtocolError, UnknownDevice
from protocol.topics import TopicKind

from ..clock import ClockMs, wall_clock_ms
from ..errors import CollectorError, DatabaseUnavailableError, StorageError
from ..json_values import json_ready
from ..storage.database import is_transient
from ..storage.tables import Base, UInt64
from .admission import DeadLetterQuota
from .metrics import IngestMetrics
from .registry import KeyCache
from .settings import Limits

__all__ = [
    "DEAD_LETTER_REASONS",
    "CommitHook",
    "IngestResult",
    "Ingestor",
    "Message",
    "Outcome",
    "StoredBatch",
    "StoredState",
]

log = logging.getLogger(__name__)

#: Every reason a dead letter can carry: the protocol's refusals and the collector's own.
DEAD_LETTER_REASONS: tuple[str, ...] = tuple(
    sorted({*REASONS, "time_in_future", "seq_conflict", "store_failed", "internal_error"})
)

_batches = Base.metadata.tables["batches"]
_fixes = Base.metadata.tables["fixes"]
_samples = Base.metadata.tables["samples"]
_alerts = Base.metadata.tables["alerts"]
_stats = Base.metadata.tables["daily_stats"]
_status = Base.metadata.tables["device_status"]
_dead = Base.metadata.tables["dead_letters"]

_FIX_COLUMNS = ("batch_id", "device_id", "time_ms", "lat", "lon", "alt_m", "speed_mps", "course_deg", "mode",
                "hdop", "sats_used", "mean_snr")  # fmt: skip
#: PostgreSQL types of _FIX_COLUMNS, in order (binary COPY sends exactly these)
_FIX_COPY_TYPES = ("int8", "varchar", "int8", "float8", "float8", "float8", "float8", "float8", "int2", "float8",
                   "int2", "float8")  # fmt: skip
_LEDGER_COLUMNS = ("device_id", "seq", "boot_id", "created_ms", "received_ms", "fix_count", "sample_count",
                   "alert_count", "stats_count", "first_time_ms", "last_time_ms", "counters",
                   "message_bytes")  # fmt: skip
_LEDGER_INSERT_PG = (
    f"INSERT INTO batches ({', '.join(_LEDGER_COLUMNS)}) "
    "SELECT * FROM unnest(%s::varchar[], %s::int8[], %s::bytea[], %s::int8[], %s::int8[], %s::int4[], %s::int4[], "
    "%s::int4[], %s::int4[], %s::int8[], %s::int8[], %s::json[], %s::int4[]) "
    "ON CONFLICT (device_id, seq) DO NOTHING RETURNING id, device_id, seq"
)
_UINT64 = UInt64()
MAX_TOPIC_CHARS = 1024
MAX_DETAIL_CHARS = 2000
_T = TypeVar("_T")


class Outcome(StrEnum):
    """What :meth:`Ingestor.handle` did with a message (every outcome is acknowledged)."""

    STORED = "stored"
    DUPLICATE = "duplicate"
    DEAD_LETTERED = "dead_lettered"  # including ``seq_conflict``: same (device, seq), other content
    STATE_APPLIED = "state_applied"
    STATE_STALE = "state_stale"


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The outcome of one message.

    Attributes:
        outcome: :class:`Outcome`.
        topic: the topic it came on.
        device_id: the device, when the topic named a valid one.
        seq: the batch sequence number (batches that opened).
        reason: dead-letter reason slug.
        detail: dead-letter detail message.
    """

    outcome: Outcome
    topic: str
    device_id: str | None = None
    seq: int | None = None
    reason: str | None = None
    detail: str = ""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """Passed to ``on_commit`` hooks after a batch transaction committed.

    Attributes:
        device_id: the sending device.
        seq: the batch sequence number.
        batch: the verified batch (its fixes column by column: :class:`protocol.ColumnarBatch`;
            ``batch.to_batch()`` gives the :class:`protocol.Fix` records).
        duplicate: True when (device_id, seq) was already stored (nothing new was written).
        batch_id: the ledger row id (of the earlier row for a duplicate: ``None``).
        received_ms: collector clock when the message arrived.
    """

    device_id: str
    seq: int
    batch: ColumnarBatch | Batch
    duplicate: bool
    batch_id: int | None
    received_ms: int


@dataclass(frozen=True, slots=True)
class StoredState:
    """Passed to ``on_commit`` hooks after a device state message committed.

    Attributes:
        device_id: the device.
        state: the verified state message.
        applied: False when a newer state was already stored (the message changed nothing).
        received_ms: collector clock when the message arrived.
    """

    device_id: str
    state: DeviceState
    applied: bool
    received_ms: int


CommitHook = Callable[[StoredBatch | StoredState], None]


@dataclass(frozen=True, slots=True)
class Message:
    """One received MQTT message for :meth:`Ingestor.handle_group`.

    Attributes:
        topic: the topic it was published on.
        payload: the raw bytes.
        received_ms: collector clock at receipt (now when ``None``).
    """

    topic: str
    payload: bytes
    received_ms: int | None = None


class _RefusedError(CollectorError):
    """Internal: the message is refused with a reason slug and a detail message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _observation_times(batch: ColumnarBatch) -> list[int]:
    fix_times = batch.fixes.time_ms
    times = [*fix_times[:1], *fix_times[-1:]]  # fixes are in time order
    times += [s.time_ms for s in batch.samples]
    times += [a.time_ms for a in batch.alerts]
    times += [d.time_ms for d in batch.stats]
    return times


class Ingestor:
    """Verifies, stores and dead-letters messages; idempotent on (device_id, seq).

    Args:
        engine: a migrated collector database (SQLite or PostgreSQL).
        limits: ``[limits]`` of the settings.
        metrics: where to count (a fresh registry when ``None``).
        on_commit: hooks called after each committed batch or state message.
        clock_ms: wall clock, epoch milliseconds (injected in tests).
    """

    def __init__(
        self,
        engine: Engine,
        limits: Limits | None = None,
        *,
        metrics: IngestMetrics | None = None,
        on_commit: Iterable[CommitHook] = (),
        clock_ms: ClockMs = wall_clock_ms,
    ) -> None:
        if engine.dialect.name not in ("sqlite", "postgresql"):
            raise StorageError(f"database dialect {engine.dialect.name!r} is not supported (sqlite, postgresql)")
        self.engine = engine
        self.limits = limits or Limits()
        self.metrics = metrics or IngestMetrics()
        self.on_commit: list[CommitHook] = list(on_commit)
        self.keys = KeyCache(self.limits.key_cache_ttl_s, wall_ms=clock_ms)
        self.dead_letter_quota = DeadLetterQuota(self.limits.dead_letters_per_device_hour)
        self.counters: collections.Counter[str] = collections.Counter()
        self._clock_ms = clock_ms
        self._insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        columns = ", ".join(_FIX_COLUMNS)
        self._fix_insert_sql = f"INSERT INTO fixes ({columns}) VALUES ({', '.join(['?'] * len(_FIX_COLUMNS))})"
        self._fix_copy_sql = f"COPY fixes ({columns}) FROM STDIN (FORMAT BINARY)"

    # ------------------------------------------------------------ entry points

    def handle(self, topic: str, payload: bytes, *, received_ms: int | None = None) -> IngestResult:
        """Verify and store one message (a group of one); return what happened.

        Args:
            topic: the MQTT topic it was published on.
            payload: the raw message bytes.
            received_ms: collector clock at receipt (now when ``None``).

        Raises:
            DatabaseUnavailableError: the database cannot be reached; do not acknowledge, retry.
        """
        return self.handle_group([Message(topic, payload, received_ms)])[0]

    def handle_group(self, messages: Sequence[Message]) -> list[IngestResult]:
        """Verify ``messages``, store them in ONE transaction; return one result per message, in order.

        Every message is verified before anything is written; refused ones become dead-letter
        rows of the same transaction. If the database refuses the group (a value it cannot
        store), the group is split and each message is stored in a transaction of its own,
        so only the message at fault is dead-lettered (``store_failed``).

        Raises:
            DatabaseUnavailableError: the database cannot be reached; acknowledge none of
                them, retry the whole group.
            StorageError: the database refused even the dead letter.
        """
        items = [self._prepare(i, m) for i, m in enumerate(messages)]
        try:
            return self._commit_isolating(items)
        except sa.exc.SQLAlchemyError as exc:
            what = f"{len(items)} message(s), the first on {items[0].topic[:120]!r}" if items else "nothing"
            if is_transient(exc):
                raise DatabaseUnavailableError(f"database unreachable while handling {what}: {exc}") from exc
            raise StorageError(f"cannot dead-letter {what}: {exc}") from exc

    @staticmethod
    def _kind_label(topic: object) -> str:
        last = topic.rsplit("/", 1)[-1] if isinstance(topic, str) else ""
        return last if last in ("batch", "state") else "other"

    # ------------------------------------------------------------ verification (no writes)

    def _prepare(self, index: int, message: Message) -> _Item:
        received_ms = self._clock_ms() if message.received_ms is None else message.received_ms
        topic_text = message.topic if isinstance(message.topic, str) else repr(message.topic)
        item = _Item(index, topic_text, message.payload, received_ms)
        self.metrics.received.labels(self._kind_label(message.topic)).inc()
        self.counters["received"] += 1
        try:
            self._verify(item, message.topic)
        except _RefusedError as refused:
            item.refuse(refused.reason, refused.detail)
        except sa.exc.SQLAlchemyError as exc:
            if is_transient(exc):
                raise DatabaseUnavailableError(
                    f"database unreachable while verifying a message on {topic_text[:120]!r}: {exc}"
                ) from exc
            item.refuse("store_failed", f"database refused it: {exc}")
        except Exception as exc:  # one poisoned message must never stop the stream
            log.exception("unexpected error on a message on %s", topic_text[:120])
            item.refuse("internal_error", f"{type(exc).__name__}: {exc}")
        return item

    def _verify(self, item: _Item, topic: object) -> None:
        payload = item.payload
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise _RefusedError("invalid_envelope", f"payload on {topic!r:.120} is {type(payload).__name__}, not bytes")
        payload = item.payload = bytes(payload)
        if len(payload) > self.limits.max_message_bytes:
            limit = self.limits.max_message_bytes
            raise _RefusedError(
                "oversized", f"message on {topic!r:.120} is {len(payload)} bytes, over the {limit}-byte limit"
            )
        if not isinstance(topic, str):
            raise _RefusedError("bad_topic", f"topic {topic!r:.120} is not text")
        try:
            parsed = parse_topic(topic)
        except ProtocolError as exc:
            raise _RefusedError(exc.reason, str(exc)) from exc
        if parsed.kind is TopicKind.BATCH:
            batch = self._open(open_batch_columns, payload, topic)
            self._check_times(batch, item.received_ms)
            item.batch = batch
        elif parsed.kind is TopicKind.STATE:
            state = self._open(open_state, payload, topic)
            limit = item.received_ms + self.limits.max_clock_skew_s * 1000
            if state.time_ms > limit:
                raise _RefusedError(
                    "time_in_future",
                    f"state of {state.device_id} has time {state.time_ms} ms, more than "
                    f"{self.limits.max_clock_skew_s} s after the collector clock {item.received_ms} ms",
                )
            item.state = state
        else:
            raise _RefusedError("bad_topic", f"topic {topic!r:.120} is downlink only; the collector does not ingest it")

    def _open(self, opener: Callable[[bytes, str, Mapping[str, Any]], _T], payload: bytes, topic: str) -> _T:
        """Run ``open_batch``/``open_state``; re-read the registry once on an unknown kid."""
        if self.keys.stale():
            with self.engine.connect() as conn:
                self.keys.refresh(conn)
        try:
            return opener(payload, topic, self.keys.keys)
        except UnknownDevice as exc:
            with self.engine.connect() as conn:
                if self.keys.refresh(conn, force=True):
                    try:
                        return opener(payload, topic, self.keys.keys)
                    except ProtocolError as again:
                        raise _RefusedError(again.reason, str(again)) from again
                revoked = self.keys.revoked_at(conn, parse_topic(topic).device_id)
            detail = str(exc) if revoked is None else f"{exc} (its key was revoked at {revoked} ms)"
            raise _RefusedError(exc.reason, detail) from exc
        except BadSignature as exc:
            retired = self._open_retiring(opener, payload, topic)
            if retired is None:
                raise _RefusedError(exc.reason, str(exc)) from exc
            return retired
        except ProtocolError as exc:
            raise _RefusedError(exc.reason, str(exc)) from exc

    def _open_retiring(
        self, opener: Callable[[bytes, str, Mapping[str, Any]], _T], payload: bytes, topic: str
    ) -> _T | None:
        """A message the active key does not verify, tried with the device's key in a rotation's
        overlap window (registry.DeviceRegistry.rotate); None when there is none or it fails too."""
        device_id = parse_topic(topic).device_id
        retiring = self.keys.retiring.get(device_id)
        if retiring is None or self._clock_ms() >= retiring[1]:
            return None
        try:
            opened = opener(payload, topic, {device_id: retiring[0]})
        except ProtocolError:
            return None
        self.counters["verified_by_retiring_key"] += 1
        return opened

    def _check_times(self, batch: ColumnarBatch, received_ms: int) -> None:
        limit = received_ms + self.limits.max_clock_skew_s * 1000
        latest = max([batch.created_ms, *_observation_times(batch)])
        if latest > limit:
            raise _RefusedError(
                "time_in_future",
                f"batch {batch.device_id}/{batch.seq} has time {latest} ms, more than "
                f"{self.limits.max_clock_skew_s} s after the collector clock {received_ms} ms",
            )

    # ------------------------------------------------------------ the group transaction

    def _commit_isolating(self, items: list[_Item]) -> list[IngestResult]:
        """Commit ``items`` together; if the database refuses the group, one by one."""
        try:
            return self._commit_group(items)
        except Exception as exc:
            if isinstance(exc, sa.exc.SQLAlchemyError) and is_transient(exc):
                raise
            if len(items) > 1:
                log.warning("a group of %d messages was refused (%s); storing them one by one", len(items), exc)
                self.counters["group_splits"] += 1
                return [result for item in items for result in self._commit_isolating([item])]
            item = items[0]
            if item.refused is not None:
                raise  # the dead letter itself failed
            if isinstance(exc, sa.exc.SQLAlchemyError):
                log.warning("storing message on %s failed: %s", item.topic[:120], exc)
                item.refuse("store_failed", f"database refused it: {exc}")
            else:
                log.exception("unexpected error storing a message on %s", item.topic[:120])
                item.refuse("internal_error", f"{type(exc).__name__}: {exc}")
            return self._commit_group([item])

    def _commit_group(self, items: list[_Item]) -> list[IngestResult]:
        batches = [item for item in items if item.batch is not None]
        states = [item for item in items if item.state is not None]
        started = time.perf_counter()
        with self.engine.begin() as conn:
            devices = {item.batch.device_id for item in batches if item.batch is not None}
            devices |= {item.state.device_id for item in states if item.state is not None}
            if devices:
                conn.execute(
                    self._insert(_status).on_conflict_do_nothing(index_elements=["device_id"]),
                    [{"device_id": d} for d in sorted(devices)],  # one order: no deadlock between collectors
                )
            if batches:
                self._store_batches(conn, batches)
            for item in states:
                self._apply_state(conn, item)
            dead_rows = [row for item in items if (row := self._dead_row(item)) is not None]
            if dead_rows:
                conn.execute(_dead.insert(), dead_rows)
        self.metrics.db_seconds.observe(time.perf_counter() - started)
        return [self._finish(item) for item in items]

    def _store_batches(self, conn: Connection, items: list[_Item]) -> None:
        first: dict[tuple[str, int], _Item] = {}
        for item in sorted(items, key=_ledger_key):
            key = _ledger_key(item)
            if key in first:
                item.twin = first[key]  # the same (device, seq) twice in one group
            else:
                first[key] = item
        fresh = list(first.values())
        inserted = self._insert_ledger(conn, [_ledger_row(item) for item in fresh])
        known = [item for item in fresh if _ledger_key(item) not in inserted]
        stored: dict[tuple[str, int], Any] = {}
        if known:
            keys = [_ledger_key(item) for item in known]
            rows = conn.execute(
                sa.select(_batches.c.device_id, _batches.c.seq, _batches.c.boot_id, _batches.c.created_ms,
                          _batches.c.message_bytes)
                .where(sa.tuple_(_batches.c.device_id, _batches.c.seq).in_(keys))
            ).mappings()  # fmt: skip
            stored = {(row["device_id"], row["seq"]): row for row in rows}
        for item in fresh:
            key = _ledger_key(item)
            item.batch_id = inserted.get(key)
            if item.batch_id is None:
                item.conflict = _conflict(stored[key], item)
        for item in items:
            if item.twin is not None:
                twin = item.twin
                mine = _ledger_row(twin)
                item.conflict = twin.conflict or _conflict(mine, item)
        new = [item for item in fresh if item.batch_id is not None]
        self._store_records(conn, new)
        self._update_status(conn, items)

    def _insert_ledger(self, conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[str, int], int]:
        """Insert the ledger rows that are new; return (device_id, seq) -> id of those inserted."""
        if conn.dialect.name == "postgresql":
            # One statement with an array per column: its text never changes, so the driver
            # parses it once and the server prepares it (SQLAlchemy's multi-row VALUES is a new
            # text of a few thousand characters for every group size, parsed again each time).
            columns = [[row[name] for row in rows] for name in _LEDGER_COLUMNS]
            seq, counters = _LEDGER_COLUMNS.index("seq"), _LEDGER_COLUMNS.index("counters")
            columns[seq] = [_UINT64.process_bind_param(v, conn.dialect) for v in columns[seq]]
            columns[counters] = [json.dumps(c) for c in columns[counters]]  # SQLAlchemy's JSON text
            with conn.connection.cursor() as cursor:  # type: ignore[attr-defined]
                cursor.execute(_LEDGER_INSERT_PG, columns)
                return {(d, q + 2**64 if q < 0 else q): i for i, d, q in cursor.fetchall()}  # UInt64
        result = conn.execute(
            self._insert(_batches)
            .on_conflict_do_nothing(index_elements=["device_id", "seq"])
            .returning(_batches.c.id, _batches.c.device_id, _batches.c.seq),
            rows,
        )
        return {(device_id, seq): batch_id for batch_id, device_id, seq in result}

    def _store_records(self, conn: Connection, items: list[_Item]) -> None:
        fixes: list[tuple[Any, ...]] = []
        samples: list[dict[str, Any]] = []
        alerts: list[dict[str, Any]] = []
        for item in items:
            batch, batch_id = item.batch, item.batch_id
            assert batch is not None
            device = batch.device_id
            f = batch.fixes
            fixes += zip(repeat(batch_id), repeat(device), f.time_ms, f.lat, f.lon, f.alt_m, f.speed_mps, f.course_deg,
                         map(int, f.mode), f.hdop, f.sats_used, f.mean_snr)  # fmt: skip
            samples += [
                {"batch_id": batch_id, "device_id": device, "name": s.name, "time_ms": s.time_ms, "value": s.value}
                for s in batch.samples
            ]
            alerts += [
                {
                    "batch_id": batch_id,
                    "device_id": device,
                    "rule": a.rule,
                    "severity": int(a.severity),
                    "state": int(a.state),
                    "time_ms": a.time_ms,
                    "episode": a.episode,
                    "evidence": json_ready(a.evidence),
                }
                for a in batch.alerts
            ]
        if fixes:
            # The bulk of every group goes straight to the driver: one COPY on PostgreSQL, the
            # DB-API executemany on SQLite (SQLAlchemy's per-row parameter processing cost
            # more than the insert itself; see bench/ingest_bench.py).
            if conn.dialect.name == "postgresql":
                with conn.connection.cursor() as cursor, cursor.copy(self._fix_copy_sql) as copy:  # type: ignore[attr-defined]
                    copy.set_types(_FIX_COPY_TYPES)  # binary COPY: a quarter of the text format's client CPU
                    for row in fixes:
                        copy.write_row(row)
            else:
                conn.exec_driver_sql(self._fix_insert_sql, fixes)
        if samples:
            conn.execute(_samples.insert(), samples)
        if alerts:
            conn.execute(_alerts.insert(), alerts)
        for item in items:
            assert item.batch is not None
            for d in item.batch.stats:
                self._store_stats(conn, item.batch.device_id, item.batch_id, d)

    def _store_stats(self, conn: Connection, device: str, batch_id: int | None, d: Any) -> None:
        values = {
            "batch_id": batch_id,
            "time_ms": d.time_ms,
            "distance_m": d.distance_m,
            "driving_s": d.driving_s,
            "harsh_accel": d.harsh_accel,
            "harsh_brake": d.harsh_brake,
            "odometer_km": d.odometer_km,
            "final": d.final,
            "energy_used_kwh": d.energy_used_kwh,
            "energy_charged_kwh": d.energy_charged_kwh,
            "charging_sessions": d.charging_sessions,
            "soh_percent": d.soh_percent,
        }
        stmt = self._insert(_stats).values(device_id=device, day=d.day, **values)
        newer = sa.or_(
            _stats.c.time_ms < stmt.excluded.time_ms,
            sa.and_(_stats.c.time_ms == stmt.excluded.time_ms, stmt.excluded.final, sa.not_(_stats.c.final)),
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=["device_id", "day"], set_={k: stmt.excluded[k] for k in values}, where=newer
            )
        )

    @staticmethod
    def _update_status(conn: Connection, items: list[_Item]) -> None:
        """One UPDATE per device of the group (in device order), plus newest fix and counters."""
        per_device: dict[str, _DeviceDelta] = {}
        for item in items:
            assert item.batch is not None
            batch = item.batch
            delta = per_device.setdefault(batch.device_id, _DeviceDelta(batch.device_id))
            if item.conflict is not None:
                delta.conflicts += 1
            elif item.batch_id is None:
                delta.duplicates += 1
            else:
                delta.add(batch, item.received_ms)
        deltas = [per_device[d] for d in sorted(per_device)]
        conn.execute(_STATUS_COUNTS, [d.counts() for d in deltas])
        with_fix = [d.fix() for d in deltas if d.fix_ms is not None]
        if with_fix:
            conn.execute(_STATUS_FIX, with_fix)
        with_counters = [d.device_counters() for d in deltas if d.counters_ms is not None]
        if with_counters:
            conn.execute(_STATUS_COUNTERS, with_counters)

    def _apply_state(self, conn: Connection, item: _Item) -> None:
        state = item.state
        assert state is not None
        item.applied = (
            conn.execute(
                _status.update()
                .where(_status.c.device_id == state.device_id, _state_is_newer(state))
                .values(
                    online=state.online,
                    state_time_ms=state.time_ms,
                    state_boot_id=state.boot_id,
                    state_connection=state.connection,
                )
            ).rowcount
            > 0
        )
        conn.execute(
            _status.update()
            .where(_status.c.device_id == state.device_id)
            .values(last_received_ms=_forward(_status.c.last_received_ms, item.received_ms))
        )

    # ------------------------------------------------------------ after the commit

    def _finish(self, item: _Item) -> IngestResult:
        """Count, run the hooks and build the result of one committed item."""
        if item.refused is not None or item.conflict is not None:
            return self._count_dead_letter(item)
        if item.state is not None:
            state = item.state
            label = "applied" if item.applied else "stale"
            self.metrics.states.labels(label).inc()
            self.counters[f"states_{label}"] += 1
            self._run_hooks(StoredState(state.device_id, state, item.applied, item.received_ms))
            outcome = Outcome.STATE_APPLIED if item.applied else Outcome.STATE_STALE
            return IngestResult(outcome, item.topic, state.device_id)
        batch = item.batch
        assert batch is not None
        duplicate = item.batch_id is None
        if duplicate:
            self.metrics.duplicates.inc()
            self.counters["duplicates"] += 1
        else:
            self.metrics.stored.inc()
            self.metrics.fixes_stored.inc(len(batch.fixes))
            self.counters["stored"] += 1
            self.counters["fixes_stored"] += len(batch.fixes)
        self._run_hooks(StoredBatch(batch.device_id, batch.seq, batch, duplicate, item.batch_id, item.received_ms))
        outcome = Outcome.DUPLICATE if duplicate else Outcome.STORED
        return IngestResult(outcome, item.topic, batch.device_id, batch.seq)

    # ------------------------------------------------------------ dead letters and hooks

    def _dead_row(self, item: _Item) -> dict[str, Any] | None:
        """The dead-letter row of a refused or conflicting item (None: not refused, or over quota)."""
        if item.conflict is not None:
            reason, detail, keep_whole = "seq_conflict", item.conflict, True
        elif item.refused is not None:
            (reason, detail), keep_whole = item.refused, False
        else:
            return None
        raw = item.raw()
        device_id = item.device_id()
        item.over_quota = not self.dead_letter_quota.allow(device_id, item.received_ms)
        if item.over_quota:
            return None  # refused all the same; only the row is not written (bounded storage per sender)
        return {
            "received_ms": item.received_ms,
            "topic": item.topic[:MAX_TOPIC_CHARS],
            "device_id": device_id,
            "reason": reason[:64],
            "detail": detail[:MAX_DETAIL_CHARS],
            "payload": raw if keep_whole else raw[: self.limits.dead_letter_keep_bytes],
            "payload_bytes": len(raw),
            "payload_sha256": hashlib.sha256(raw).hexdigest(),
        }

    def _count_dead_letter(self, item: _Item) -> IngestResult:
        if item.conflict is not None:
            reason, detail = "seq_conflict", item.conflict
            self.metrics.seq_conflicts.inc()
            self.counters["seq_conflicts"] += 1
        else:
            assert item.refused is not None
            reason, detail = item.refused
        self.metrics.dead_letters.labels(reason).inc()
        self.counters["dead_letters"] += 1
        self.counters[f"dead_letter:{reason}"] += 1
        if item.over_quota:
            self.metrics.dead_letters_over_quota.inc()
            self.counters["dead_letters_over_quota"] += 1
        log.info("dead-lettered a message on %s: %s: %s", item.topic[:120], reason, detail[:200])
        return IngestResult(Outcome.DEAD_LETTERED, item.topic, item.device_id(), reason=reason, detail=detail)

    def _run_hooks(self, event: StoredBatch | StoredState) -> None:
        for hook in self.on_commit:
            try:
                hook(event)
            except Exception:  # committed already: a hook cannot undo it
                log.exception("on_commit hook %r failed for device %s", hook, event.device_id)
                self.metrics.hook_errors.inc()
                self.counters["hook_errors"] += 1


@dataclass(slots=True)
class _Item:
    """One message of a group on its way through verification and the transaction."""

    index: int
    topic: str
    payload: Any
    received_ms: int
    batch: ColumnarBatch | None = None
    state: DeviceState | None = None
    refused: tuple[str, str] | None = None  # (reason slug, detail)
    conflict: str | None = None  # seq_conflict detail
    batch_id: int | None = None
    twin: _Item | None = None  # an earlier item of the group with the same (device, seq)
    applied: bool = False
    over_quota: bool = False

    def refuse(self, reason: str, detail: str) -> None:
        self.refused = (reason, detail)
        self.batch = self.state = None

    def raw(self) -> bytes:
        payload = self.payload
        return bytes(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else repr(payload).encode()

    def device_id(self) -> str | None:
        try:
            return parse_topic(self.topic).device_id
        except ProtocolError:
            return None


def _ledger_key(item: _Item) -> tuple[str, int]:
    assert item.batch is not None
    return (item.batch.device_id, item.batch.seq)


def _ledger_row(item: _Item) -> dict[str, Any]:
    batch = item.batch
    assert batch is not None
    times = _observation_times(batch)
    return {
        "device_id": batch.device_id,
        "seq": batch.seq,
        "boot_id": batch.boot_id,
        "created_ms": batch.created_ms,
        "received_ms": item.received_ms,
        "fix_count": len(batch.fixes),
        "sample_count": len(batch.samples),
        "alert_count": len(batch.alerts),
        "stats_count": len(batch.stats),
        "first_time_ms": min(times) if times else None,
        "last_time_ms": max(times) if times else None,
        "counters": dict(batch.counters),
        "message_bytes": len(item.payload),
    }


def _conflict(stored: Mapping[str, Any], item: _Item) -> str | None:
    """Compare a batch whose (device, seq) is already stored with the stored one.

    Ed25519 signatures are deterministic, so a redelivery is the same bytes: same boot
    id, creation time and size. Anything else is another batch under a used number (a
    wiped or replaced box restarting its sequence): a conflict, described for the
    dead letter. Returns ``None`` for a plain duplicate.
    """
    batch = item.batch
    assert batch is not None
    size = len(item.payload)
    mine = {"boot_id": batch.boot_id, "created_ms": batch.created_ms, "message_bytes": size}
    if all(stored[k] == v for k, v in mine.items()):
        return None
    return (
        f"seq {batch.seq} of {batch.device_id} is stored with other content (stored boot "
        f"{stored['boot_id'].hex()}, created {stored['created_ms']} ms, {stored['message_bytes']} bytes; this "
        f"boot {batch.boot_id.hex()}, created {batch.created_ms} ms, {size} bytes): "
        "the box reused sequence numbers (wiped or replaced?)"
    )


@dataclass(slots=True)
class _DeviceDelta:
    """What one group adds to one device's ``device_status`` row."""

    device_id: str
    batches: int = 0
    fixes: int = 0
    samples: int = 0
    alerts: int = 0
    duplicates: int = 0
    conflicts: int = 0
    seen_ms: int | None = None
    received_ms: int | None = None
    fix_ms: int | None = None
    fix_lat: float | None = None
    fix_lon: float | None = None
    fix_speed: float | None = None
    counters_ms: int | None = None
    counters: dict[str, Any] | None = None

    def add(self, batch: ColumnarBatch, received_ms: int) -> None:
        self.batches += 1
        self.fixes += len(batch.fixes)
        self.samples += len(batch.samples)
        self.alerts += len(batch.alerts)
        seen = max([batch.created_ms, *_observation_times(batch)])
        self.seen_ms = seen if self.seen_ms is None else max(self.seen_ms, seen)
        self.received_ms = received_ms if self.received_ms is None else max(self.received_ms, received_ms)
        fixes = batch.fixes  # the newest is the last: fixes are in time order (FixColumns validates it)
        if fixes and (self.fix_ms is None or fixes.time_ms[-1] > self.fix_ms):
            self.fix_ms, self.fix_lat, self.fix_lon = fixes.time_ms[-1], fixes.lat[-1], fixes.lon[-1]
            self.fix_speed = fixes.speed_mps[-1]
        if self.counters_ms is None or batch.created_ms > self.counters_ms:
            self.counters_ms, self.counters = batch.created_ms, dict(batch.counters)

    def counts(self) -> dict[str, Any]:
        return {
            "p_device": self.device_id,
            "p_batches": self.batches,
            "p_fixes": self.fixes,
            "p_samples": self.samples,
            "p_alerts": self.alerts,
            "p_duplicates": self.duplicates,
            "p_conflicts": self.conflicts,
            "p_seen": self.seen_ms,
            "p_received": self.received_ms,
        }

    def fix(self) -> dict[str, Any]:
        return {"p_device": self.device_id, "p_fix_ms": self.fix_ms, "p_lat": self.fix_lat, "p_lon": self.fix_lon,
                "p_speed": self.fix_speed}  # fmt: skip

    def device_counters(self) -> dict[str, Any]:
        return {"p_device": self.device_id, "p_counters_ms": self.counters_ms, "p_counters": self.counters}


def _param(name: str, type_: Any = sa.BigInteger) -> sa.BindParameter[Any]:
    return sa.bindparam(name, type_=type_)


def _forward_param(column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[Any]:
    """SQL for "max(column, :name)"; a NULL parameter leaves the column as it is."""
    value = sa.cast(_param(name), sa.BigInteger)
    return sa.case((sa.or_(column.is_(None), column < value), value), else_=column)


_s = _status.c
_STATUS_COUNTS = (
    _status.update()
    .where(_s.device_id == _param("p_device", sa.String))
    .values(
        batches_stored=_s.batches_stored + _param("p_batches"),
        fixes_stored=_s.fixes_stored + _param("p_fixes"),
        samples_stored=_s.samples_stored + _param("p_samples"),
        alerts_stored=_s.alerts_stored + _param("p_alerts"),
        duplicates=_s.duplicates + _param("p_duplicates"),
        seq_conflicts=_s.seq_conflicts + _param("p_conflicts"),
        last_seen_ms=_forward_param(_s.last_seen_ms, "p_seen"),
        last_received_ms=_forward_param(_s.last_received_ms, "p_received"),
    )
)
_STATUS_FIX = (
    _status.update()
    .where(
        _s.device_id == _param("p_device", sa.String),
        sa.or_(_s.last_fix_ms.is_(None), _s.last_fix_ms < _param("p_fix_ms")),
    )
    .values(
        last_fix_ms=_param("p_fix_ms"),
        last_lat=_param("p_lat", sa.Double),
        last_lon=_param("p_lon", sa.Double),
        last_speed_mps=_param("p_speed", sa.Double),
    )
)
_STATUS_COUNTERS = (
    _status.update()
    .where(
        _s.device_id == _param("p_device", sa.String),
        sa.or_(_s.counters_time_ms.is_(None), _s.counters_time_ms < _param("p_counters_ms")),
    )
    .values(counters_time_ms=_param("p_counters_ms"), device_counters=_param("p_counters", _s.device_counters.type))
)


def _state_is_newer(state: DeviceState) -> sa.ColumnElement[bool]:
    """SQL condition: ``state`` may replace the device's stored state (docs/protocol.md section 5).

    A state with a connection counter wins over a strictly older connection, and its offline
    message (Last Will, clean stop) ends the same connection's online one; every other
    repetition is stale, so a replayed will of an earlier connection changes nothing.
    Once a device has sent a counted state, legacy states (no counter) are stale. Legacy
    devices keep the version-1 rule: newer device time wins and, within one boot, offline
    beats online (a legacy will can be replayed; only the broker ACL protects them).
    """
    status = _status.c
    if state.connection is not None:
        newer_connection = sa.or_(status.state_connection.is_(None), status.state_connection < state.connection)
        if state.online:
            return newer_connection
        ends_this_connection = sa.and_(status.state_connection == state.connection, status.online.is_(True))
        return sa.or_(newer_connection, ends_this_connection)
    newer = sa.and_(
        status.state_connection.is_(None),
        sa.or_(status.state_time_ms.is_(None), status.state_time_ms < state.time_ms),
    )
    if not state.online:
        legacy_will = sa.and_(status.state_boot_id == state.boot_id, status.online.is_(True))
        newer = sa.or_(newer, sa.and_(status.state_connection.is_(None), legacy_will))
    return newer


def _forward(column: sa.ColumnElement[Any], value: int) -> sa.ColumnElement[Any]:
    """SQL for "max(column, value)" that treats NULL as "no value yet" (portable)."""
    return sa.case((sa.or_(column.is_(None), column < value), sa.literal(value, sa.BigInteger)), else_=column)
