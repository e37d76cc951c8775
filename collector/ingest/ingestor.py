"""The ingest core: one received MQTT message in, one committed database transaction out.

How this works. :meth:`Ingestor.handle` is called (from one worker thread, see
collector.ingest.service) with the topic and raw bytes of a message:

1. size limit, then the topic (``lw/v1/{device}/batch`` or ``.../state``);
2. ``protocol.open_batch`` / ``open_state`` against the active keys of the registry
   (:class:`~collector.ingest.registry.KeyCache`; an unknown kid forces one re-read, so a device
   added a moment ago is accepted and a revoked one is refused);
3. collector-side checks (times not in the future beyond ``limits.max_clock_skew_s``);
4. one transaction: the ledger row keyed on (device_id, seq) is inserted with
   ``ON CONFLICT DO NOTHING RETURNING id`` (SQLite and PostgreSQL): no row back means a
   duplicate, which only bumps a counter. Otherwise fixes, samples, alerts, daily stats
   and the latest per-device state are written in the same transaction. Latest-state
   updates carry ``WHERE stored_time < :new`` so late data never moves them backwards.

Anything wrong with the message lands in ``dead_letters`` (the first
``limits.dead_letter_keep_bytes`` of the raw bytes with the full size and SHA-256, topic,
reason slug, detail, time; at most ``limits.dead_letters_per_device_hour`` rows per device
id and hour, beyond that only counted) and ``handle`` returns normally, so the caller acknowledges it and the
stream keeps flowing. A database that cannot be reached is *not* the message's fault:
``handle`` raises :class:`~collector.errors.DatabaseUnavailableError` and the caller must not
acknowledge; it retries the same message later.

After a commit the ``on_commit`` hooks are called with what was stored
(:class:`StoredBatch` / :class:`StoredState`); a hook that raises is logged and counted,
never un-commits anything.
"""

from __future__ import annotations

import collections
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from protocol import Batch, DeviceState, open_batch, open_state, parse_topic
from protocol.errors import REASONS, BadSignature, ProtocolError, UnknownDevice
from protocol.topics import TopicKind

from ..clock import ClockMs, wall_clock_ms
from ..errors import CollectorError, DatabaseUnavailableError, StorageError
from ..json_values import json_ready
from ..storage.database import is_transient
from ..storage.tables import Base
from .admission import DeadLetterQuota
from .metrics import IngestMetrics
from .registry import KeyCache
from .settings import Limits

__all__ = [
    "DEAD_LETTER_REASONS",
    "CommitHook",
    "IngestResult",
    "Ingestor",
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
        batch: the verified batch.
        duplicate: True when (device_id, seq) was already stored (nothing new was written).
        batch_id: the ledger row id (of the earlier row for a duplicate: ``None``).
        received_ms: collector clock when the message arrived.
    """

    device_id: str
    seq: int
    batch: Batch
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


class _RefusedError(CollectorError):
    """Internal: the message is refused with a reason slug and a detail message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _observation_times(batch: Batch) -> list[int]:
    times = [f.time_ms for f in batch.fixes[:1]] + [f.time_ms for f in batch.fixes[-1:]]
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
        #: When True, dead-letter rows wait in memory until :meth:`flush_dead_letters` writes
        #: them in one transaction (the MQTT service sets it and acknowledges refused
        #: messages only after that commit: one commit per group instead of per message).
        self.defer_dead_letters = False
        self._pending_dead: list[dict[str, Any]] = []
        self.counters: collections.Counter[str] = collections.Counter()
        self._clock_ms = clock_ms
        self._insert = sqlite.insert if engine.dialect.name == "sqlite" else postgresql.insert
        columns = ", ".join(_FIX_COLUMNS)
        self._fix_insert_sql = f"INSERT INTO fixes ({columns}) VALUES ({', '.join(['?'] * len(_FIX_COLUMNS))})"
        self._fix_copy_sql = f"COPY fixes ({columns}) FROM STDIN"

    # ------------------------------------------------------------ entry point

    def handle(self, topic: str, payload: bytes, *, received_ms: int | None = None) -> IngestResult:
        """Verify and store one message; return what happened.

        Args:
            topic: the MQTT topic it was published on.
            payload: the raw message bytes.
            received_ms: collector clock at receipt (now when ``None``).

        Raises:
            DatabaseUnavailableError: the database cannot be reached; do not acknowledge, retry.
        """
        received_ms = self._clock_ms() if received_ms is None else received_ms
        kind = self._kind_label(topic)
        self.metrics.received.labels(kind).inc()
        self.counters["received"] += 1
        try:
            try:
                return self._handle(topic, payload, received_ms)
            except _RefusedError as refused:
                return self._dead_letter(topic, payload, received_ms, refused.reason, refused.detail)
            except sa.exc.SQLAlchemyError as exc:
                if is_transient(exc):
                    raise
                log.warning("storing message on %s failed: %s", topic[:120], exc)
                return self._dead_letter(topic, payload, received_ms, "store_failed", f"database refused it: {exc}")
            except Exception as exc:  # one poisoned message must never stop the stream
                log.exception("unexpected error on a message on %s", topic[:120])
                return self._dead_letter(topic, payload, received_ms, "internal_error", f"{type(exc).__name__}: {exc}")
        except sa.exc.SQLAlchemyError as exc:
            if is_transient(exc):
                raise DatabaseUnavailableError(
                    f"database unreachable while handling a message on {topic[:120]!r}: {exc}"
                ) from exc
            raise StorageError(f"cannot dead-letter a message on {topic[:120]!r}: {exc}") from exc

    @staticmethod
    def _kind_label(topic: str) -> str:
        last = topic.rsplit("/", 1)[-1] if isinstance(topic, str) else ""
        return last if last in ("batch", "state") else "other"

    def _handle(self, topic: str, payload: bytes, received_ms: int) -> IngestResult:
        if not isinstance(payload, (bytes, bytearray, memoryview)):
            raise _RefusedError("invalid_envelope", f"payload on {topic!r:.120} is {type(payload).__name__}, not bytes")
        payload = bytes(payload)
        if len(payload) > self.limits.max_message_bytes:
            limit = self.limits.max_message_bytes
            raise _RefusedError(
                "oversized", f"message on {topic!r:.120} is {len(payload)} bytes, over the {limit}-byte limit"
            )
        try:
            parsed = parse_topic(topic)
        except ProtocolError as exc:
            raise _RefusedError(exc.reason, str(exc)) from exc
        if parsed.kind is TopicKind.BATCH:
            return self._handle_batch(topic, payload, received_ms)
        if parsed.kind is TopicKind.STATE:
            return self._handle_state(topic, payload, received_ms)
        raise _RefusedError("bad_topic", f"topic {topic!r:.120} is downlink only; the collector does not ingest it")

    # ------------------------------------------------------------ verification

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

    def _check_times(self, batch: Batch, received_ms: int) -> None:
        limit = received_ms + self.limits.max_clock_skew_s * 1000
        latest = max([batch.created_ms, *_observation_times(batch)])
        if latest > limit:
            raise _RefusedError(
                "time_in_future",
                f"batch {batch.device_id}/{batch.seq} has time {latest} ms, more than "
                f"{self.limits.max_clock_skew_s} s after the collector clock {received_ms} ms",
            )

    # ------------------------------------------------------------ batches

    def _handle_batch(self, topic: str, payload: bytes, received_ms: int) -> IngestResult:
        batch = self._open(open_batch, payload, topic)
        self._check_times(batch, received_ms)
        started = time.perf_counter()
        conflict: str | None = None
        with self.engine.begin() as conn:
            batch_id = self._insert_ledger(conn, batch, received_ms, len(payload))
            self._ensure_status(conn, batch.device_id)
            if batch_id is None:
                conflict = self._seq_conflict(conn, batch, len(payload))
                counter = _status.c.duplicates if conflict is None else _status.c.seq_conflicts
                conn.execute(
                    _status.update()
                    .where(_status.c.device_id == batch.device_id)
                    .values({counter.key: counter + 1})
                )
            else:
                self._store_records(conn, batch, batch_id)
                self._update_status(conn, batch, received_ms)
        self.metrics.db_seconds.observe(time.perf_counter() - started)
        if conflict is not None:
            self.metrics.seq_conflicts.inc()
            self.counters["seq_conflicts"] += 1
            # Authenticated content with nowhere else to go: kept whole, never cut to the head.
            return self._dead_letter(topic, payload, received_ms, "seq_conflict", conflict, keep_whole=True)
        duplicate = batch_id is None
        if duplicate:
            self.metrics.duplicates.inc()
            self.counters["duplicates"] += 1
        else:
            self.metrics.stored.inc()
            self.metrics.fixes_stored.inc(len(batch.fixes))
            self.counters["stored"] += 1
            self.counters["fixes_stored"] += len(batch.fixes)
        self._run_hooks(StoredBatch(batch.device_id, batch.seq, batch, duplicate, batch_id, received_ms))
        outcome = Outcome.DUPLICATE if duplicate else Outcome.STORED
        return IngestResult(outcome, topic, batch.device_id, batch.seq)

    def _insert_ledger(self, conn: Connection, batch: Batch, received_ms: int, size: int) -> int | None:
        times = _observation_times(batch)
        stmt = (
            self._insert(_batches)
            .values(
                device_id=batch.device_id,
                seq=batch.seq,
                boot_id=batch.boot_id,
                created_ms=batch.created_ms,
                received_ms=received_ms,
                fix_count=len(batch.fixes),
                sample_count=len(batch.samples),
                alert_count=len(batch.alerts),
                stats_count=len(batch.stats),
                first_time_ms=min(times) if times else None,
                last_time_ms=max(times) if times else None,
                counters=dict(batch.counters),
                message_bytes=size,
            )
            .on_conflict_do_nothing(index_elements=["device_id", "seq"])
            .returning(_batches.c.id)
        )
        batch_id: int | None = conn.execute(stmt).scalar()
        return batch_id

    @staticmethod
    def _seq_conflict(conn: Connection, batch: Batch, size: int) -> str | None:
        """Compare a batch whose (device, seq) is already stored with the stored one.

        Ed25519 signatures are deterministic, so a redelivery is the same bytes: same boot
        id, creation time and size. Anything else is another batch under a used number (a
        wiped or replaced box restarting its sequence): a conflict, described for the
        dead letter. Returns ``None`` for a plain duplicate.
        """
        stored = (
            conn.execute(
                sa.select(_batches.c.boot_id, _batches.c.created_ms, _batches.c.message_bytes).where(
                    _batches.c.device_id == batch.device_id, _batches.c.seq == batch.seq
                )
            )
            .mappings()
            .one()
        )
        mine = {"boot_id": batch.boot_id, "created_ms": batch.created_ms, "message_bytes": size}
        if all(stored[k] == v for k, v in mine.items()):
            return None
        return (
            f"seq {batch.seq} of {batch.device_id} is stored with other content (stored boot "
            f"{stored['boot_id'].hex()}, created {stored['created_ms']} ms, {stored['message_bytes']} bytes; this "
            f"boot {batch.boot_id.hex()}, created {batch.created_ms} ms, {size} bytes): "
            "the box reused sequence numbers (wiped or replaced?)"
        )

    def _ensure_status(self, conn: Connection, device_id: str) -> None:
        conn.execute(
            self._insert(_status).values(device_id=device_id).on_conflict_do_nothing(index_elements=["device_id"])
        )

    def _store_records(self, conn: Connection, batch: Batch, batch_id: int) -> None:
        device = batch.device_id
        if batch.fixes:
            # The bulk of every batch goes straight to the driver: COPY on PostgreSQL, the
            # DB-API executemany on SQLite (SQLAlchemy's per-row parameter processing cost
            # more than the insert itself; see bench/ingest_bench.py).
            rows = [
                (batch_id, device, f.time_ms, f.lat, f.lon, f.alt_m, f.speed_mps, f.course_deg, int(f.mode),
                 f.hdop, f.sats_used, f.mean_snr)
                for f in batch.fixes
            ]  # fmt: skip
            if conn.dialect.name == "postgresql":
                with conn.connection.cursor() as cursor, cursor.copy(self._fix_copy_sql) as copy:  # type: ignore[attr-defined]
                    for row in rows:
                        copy.write_row(row)
            else:
                conn.exec_driver_sql(self._fix_insert_sql, rows)
        if batch.samples:
            conn.execute(
                _samples.insert(),
                [
                    {"batch_id": batch_id, "device_id": device, "name": s.name, "time_ms": s.time_ms, "value": s.value}
                    for s in batch.samples
                ],
            )
        if batch.alerts:
            conn.execute(
                _alerts.insert(),
                [
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
                ],
            )
        for d in batch.stats:
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

    def _update_status(self, conn: Connection, batch: Batch, received_ms: int) -> None:
        device = batch.device_id
        seen = max([batch.created_ms, *_observation_times(batch)])
        conn.execute(
            _status.update()
            .where(_status.c.device_id == device)
            .values(
                batches_stored=_status.c.batches_stored + 1,
                fixes_stored=_status.c.fixes_stored + len(batch.fixes),
                samples_stored=_status.c.samples_stored + len(batch.samples),
                alerts_stored=_status.c.alerts_stored + len(batch.alerts),
                last_seen_ms=_forward(_status.c.last_seen_ms, seen),
                last_received_ms=_forward(_status.c.last_received_ms, received_ms),
            )
        )
        if batch.fixes:
            newest = batch.fixes[-1]  # fixes are in time order (Batch validates it)
            conn.execute(
                _status.update()
                .where(
                    _status.c.device_id == device,
                    sa.or_(_status.c.last_fix_ms.is_(None), _status.c.last_fix_ms < newest.time_ms),
                )
                .values(
                    last_fix_ms=newest.time_ms,
                    last_lat=newest.lat,
                    last_lon=newest.lon,
                    last_speed_mps=newest.speed_mps,
                )
            )
        conn.execute(
            _status.update()
            .where(
                _status.c.device_id == device,
                sa.or_(_status.c.counters_time_ms.is_(None), _status.c.counters_time_ms < batch.created_ms),
            )
            .values(counters_time_ms=batch.created_ms, device_counters=dict(batch.counters))
        )

    # ------------------------------------------------------------ device state

    def _handle_state(self, topic: str, payload: bytes, received_ms: int) -> IngestResult:
        state = self._open(open_state, payload, topic)
        limit = received_ms + self.limits.max_clock_skew_s * 1000
        if state.time_ms > limit:
            raise _RefusedError(
                "time_in_future",
                f"state of {state.device_id} has time {state.time_ms} ms, more than "
                f"{self.limits.max_clock_skew_s} s after the collector clock {received_ms} ms",
            )
        started = time.perf_counter()
        newer = _state_is_newer(state)
        with self.engine.begin() as conn:
            self._ensure_status(conn, state.device_id)
            applied = (
                conn.execute(
                    _status.update()
                    .where(_status.c.device_id == state.device_id, newer)
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
                .values(last_received_ms=_forward(_status.c.last_received_ms, received_ms))
            )
        self.metrics.db_seconds.observe(time.perf_counter() - started)
        label = "applied" if applied else "stale"
        self.metrics.states.labels(label).inc()
        self.counters[f"states_{label}"] += 1
        self._run_hooks(StoredState(state.device_id, state, applied, received_ms))
        return IngestResult(Outcome.STATE_APPLIED if applied else Outcome.STATE_STALE, topic, state.device_id)

    # ------------------------------------------------------------ dead letters and hooks

    def _dead_letter(
        self, topic: object, payload: object, received_ms: int, reason: str, detail: str, *, keep_whole: bool = False
    ) -> IngestResult:
        topic_text = topic if isinstance(topic, str) else repr(topic)
        raw = bytes(payload) if isinstance(payload, (bytes, bytearray, memoryview)) else repr(payload).encode()
        device_id: str | None
        try:
            device_id = parse_topic(topic_text).device_id
        except ProtocolError:
            device_id = None
        self.metrics.dead_letters.labels(reason).inc()
        self.counters["dead_letters"] += 1
        self.counters[f"dead_letter:{reason}"] += 1
        if not self.dead_letter_quota.allow(device_id, received_ms):
            # Refused all the same; only the row is not written (bounded storage per sender).
            self.metrics.dead_letters_over_quota.inc()
            self.counters["dead_letters_over_quota"] += 1
            return IngestResult(Outcome.DEAD_LETTERED, topic_text, device_id, reason=reason, detail=detail)
        row = {
            "received_ms": received_ms,
            "topic": topic_text[:MAX_TOPIC_CHARS],
            "device_id": device_id,
            "reason": reason[:64],
            "detail": detail[:MAX_DETAIL_CHARS],
            "payload": raw if keep_whole else raw[: self.limits.dead_letter_keep_bytes],
            "payload_bytes": len(raw),
            "payload_sha256": hashlib.sha256(raw).hexdigest(),
        }
        if self.defer_dead_letters:
            self._pending_dead.append(row)
        else:
            with self.engine.begin() as conn:
                conn.execute(_dead.insert(), [row])
        log.info("dead-lettered a message on %s: %s: %s", topic_text[:120], reason, detail[:200])
        return IngestResult(Outcome.DEAD_LETTERED, topic_text, device_id, reason=reason, detail=detail)

    @property
    def pending_dead_letters(self) -> int:
        """Dead-letter rows waiting for :meth:`flush_dead_letters`."""
        return len(self._pending_dead)

    def flush_dead_letters(self) -> int:
        """Write the deferred dead-letter rows in one transaction; return how many.

        Raises:
            DatabaseUnavailableError: the database cannot be reached (the rows are kept).
            StorageError: the database refused them.
        """
        if not self._pending_dead:
            return 0
        try:
            with self.engine.begin() as conn:
                conn.execute(_dead.insert(), self._pending_dead)
        except sa.exc.SQLAlchemyError as exc:
            if is_transient(exc):
                raise DatabaseUnavailableError(f"database unreachable while writing dead letters: {exc}") from exc
            raise StorageError(f"cannot write {len(self._pending_dead)} dead letters: {exc}") from exc
        written, self._pending_dead = len(self._pending_dead), []
        return written

    def _run_hooks(self, event: StoredBatch | StoredState) -> None:
        for hook in self.on_commit:
            try:
                hook(event)
            except Exception:  # committed already: a hook cannot undo it
                log.exception("on_commit hook %r failed for device %s", hook, event.device_id)
                self.metrics.hook_errors.inc()
                self.counters["hook_errors"] += 1


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

