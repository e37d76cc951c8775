"""Signed receipts per device and the seq ledger they come from (docs/protocol.md section 14).

How this works
--------------
* The ingest calls :meth:`ReceiptPublisher.committed` (its commit listener) after every
  commit with the ``(device_id, seq)`` pairs stored or found already stored, and
  :meth:`ReceiptPublisher.on_commit` (an ingestor hook) with each stored batch, from which
  only the seq announcements are taken (``seq_skipped_from``/``seq_skipped``, ``seq_floor``,
  and the evicted ranges ``seq_evicted_{i}_from``/``_count``, checked by
  :func:`protocol.evicted_ranges`: a refused one is counted by reason and ignored, the batch
  stays stored). Both only queue; nothing here slows the ingest.
* Evicted ranges are also taken from a duplicate (a re-sent copy of a stored batch: the
  same device-signed bytes): when a round was lost (collector crash after the commit), the
  copy brings them back; when they are known already it is counted ``replayed`` and
  changes nothing.
* Once per ``receipt_interval_s`` a round takes what was queued and, for up to
  :data:`MERGE_CHUNK` devices per transaction (in device order, so collectors never
  deadlock): reads each device's ``seq_ledgers`` row (``FOR UPDATE`` on PostgreSQL, so the
  collectors of one group merge into one row; a device without a row is seeded from its
  ``batches``), merges the new seqs and announcements, recomputes ``missing``, signs a
  receipt with counter ``max(last + 1, now_ms)`` (strictly increasing, also after the table
  is restored from an older backup) and stores it; after the commit the receipt is
  published retained at QoS 1 on ``lw/v1/{device}/receipt``. One round per interval means
  at most one receipt per device per interval however many batches arrive.
* A receipt only ever claims what a commit already stored, so a receipt lost on the way
  (broker restart, disconnect) costs only a re-send: the device publishes the batch again,
  the ingest finds a duplicate, the listener fires and a fresh receipt follows. A device
  whose receipt could not be published (not connected) is retried next round.
* Without a signing key (or with ``[downlink] receipts = false``) the ledger and the gap
  counts are kept all the same; nothing is published.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry
from prometheus_client import Counter as PromCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from protocol import Receipt, evicted_ranges, receipt_topic, seal_receipt
from protocol.errors import AnnouncementRefused

from ..clock import ClockMs, wall_clock_ms
from ..ingest.ingestor import StoredBatch, StoredState
from ..ingest.seq_ledger import MAX_LISTED_GAPS, SeqLedger
from ..ingest.settings import MqttSettings
from ..storage.tables import BatchRecord, SeqLedgerRecord
from .publishing_worker import PublishingWorker
from .worker_loop import EXPECTED_ROUND_ERRORS

__all__ = ["GapMetrics", "ReceiptPublisher", "device_gaps", "fleet_gap_totals", "fleet_gaps"]

log = logging.getLogger(__name__)

#: devices merged in one transaction
MERGE_CHUNK = 500


@dataclass(slots=True)
class _Pending:
    seqs: set[int] = field(default_factory=set)
    skips: list[tuple[int, int]] = field(default_factory=list)
    floors: list[int] = field(default_factory=list)
    #: (ranges, from a duplicate) of each evicted-seq announcement
    evictions: list[tuple[tuple[tuple[int, int], ...], bool]] = field(default_factory=list)

    def absorb(self, other: _Pending) -> None:
        """Take ``other``'s queued work too (a round that failed gives its work back)."""
        self.seqs |= other.seqs
        self.skips += other.skips
        self.floors += other.floors
        self.evictions += other.evictions


def _seed(session: Session, devices: Sequence[str]) -> dict[str, SeqLedger]:
    """Ledgers built from every stored batch of ``devices`` (their first round after 0008)."""
    ledgers = {device_id: SeqLedger() for device_id in devices}
    if not devices:
        return ledgers
    query = (
        sa.select(BatchRecord.device_id, BatchRecord.seq)
        .where(BatchRecord.device_id.in_(devices))
        .execution_options(yield_per=10_000)
    )
    chunks: dict[str, list[int]] = {device_id: [] for device_id in devices}
    for device_id, seq in session.execute(query):
        chunk = chunks[device_id]
        chunk.append(seq)
        if len(chunk) >= 10_000:
            ledgers[device_id].add(chunk)
            chunk.clear()
    for device_id, chunk in chunks.items():
        ledgers[device_id].add(chunk)
    return ledgers


class ReceiptPublisher:
    """Keeps the seq ledger and publishes signed receipts, from its own MQTT 5 client and thread.

    Args:
        engine: the collector database.
        signing_key: the collector's Ed25519 private key; None keeps the ledger only.
        mqtt_settings: ``[mqtt]`` (the client id gets a ``-receipts`` suffix).
        interval_s: one round per interval: at most one receipt per device per interval.
        clock_ms: collector clock (injected in tests).
        registry: where the evicted-announcement counters go (``/metrics``); None keeps them
            in :attr:`counters` only.
    """

    def __init__(
        self,
        engine: Engine,
        signing_key: Ed25519PrivateKey | None,
        mqtt_settings: MqttSettings | None,
        *,
        interval_s: float = 1.0,
        clock_ms: ClockMs = wall_clock_ms,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self.interval_s = interval_s
        self._clock_ms = clock_ms
        self.counters: Counter[str] = Counter()
        self._announcements = PromCounter(
            "lienwatch_ingest_evicted_announcements",
            "Evicted-seq announcements of stored batches, by result (applied, replayed, or the refusal reason)",
            ["result"],
            registry=registry,
        )
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        #: device -> its newest signed receipt not yet handed to the broker
        self.unsent: dict[str, bytes] = {}
        self._worker = PublishingWorker(
            "receipts", mqtt_settings if signing_key is not None else None, self.run_once, interval_s=interval_s,
            counters=self.counters, logger=log, title="receipt publisher", round_name="receipt round",
        )
        self.connected = self._worker.connected
        self.client = self._worker.client

    # ------------------------------------------------------------ inputs (ingest worker thread)

    def committed(self, pairs: Sequence[tuple[str, int]]) -> None:
        """The ingest's commit listener: these (device, seq) are stored."""
        with self._lock:
            for device_id, seq in pairs:
                self._pending.setdefault(device_id, _Pending()).seqs.add(seq)

    def on_commit(self, event: StoredBatch | StoredState) -> None:
        """Ingestor hook: remember the seq announcements of a stored batch.

        Skips and floors count from the first delivery only; evicted ranges from a duplicate
        too (see the module notes).
        """
        if not isinstance(event, StoredBatch):
            return
        counters = event.batch.counters
        try:
            evicted = evicted_ranges(counters, event.seq)
        except AnnouncementRefused as exc:
            self._count_announcement(exc.reason)
            log.warning("device %s batch %d: evicted-seq announcement refused: %s", event.device_id, event.seq, exc)
            evicted = ()
        first, count, floor = counters.get("seq_skipped_from"), counters.get("seq_skipped"), counters.get("seq_floor")
        if event.duplicate:
            first = count = floor = None
        if not (first and count) and not floor and not evicted:
            return
        with self._lock:
            pending = self._pending.setdefault(event.device_id, _Pending())
            if first and count:
                pending.skips.append((first, count))
            if floor:
                pending.floors.append(floor)
            if evicted:
                pending.evictions.append((evicted, event.duplicate))

    def _count_announcement(self, result: str) -> None:
        """Count one announcement by result (from the ingest thread and the round thread)."""
        with self._lock:
            self.counters[f"evicted_announcements_{result}"] += 1
        self._announcements.labels(result).inc()

    # ------------------------------------------------------------ the work

    def run_once(self) -> int:
        """Merge what was queued into the ledger, sign and publish receipts. Returns devices merged.

        Database errors propagate (the thread logs them); what was not merged is queued again
        for the next round.
        """
        with self._lock:
            work, self._pending = self._pending, {}
        merged = len(work)
        devices = sorted(work)  # one lock order for every collector process: no deadlock
        try:
            for i in range(0, len(devices), MERGE_CHUNK):
                chunk = devices[i : i + MERGE_CHUNK]
                self.unsent.update(self._merge(chunk, work))
                for device_id in chunk:
                    del work[device_id]
        except BaseException:
            with self._lock:  # keep what was not merged for the next round
                for device_id, pending in work.items():
                    self._pending.setdefault(device_id, _Pending()).absorb(pending)
            raise
        self._publish_unsent()
        return merged

    def _merge(self, devices: Sequence[str], work: dict[str, _Pending]) -> dict[str, bytes]:
        """One transaction: merge ``devices``' queued seqs into their rows; their signed receipts."""
        now = self._clock_ms()
        signed: dict[str, bytes] = {}
        with Session(self.engine) as session:
            query = (
                sa.select(SeqLedgerRecord)
                .where(SeqLedgerRecord.device_id.in_(devices))
                .order_by(SeqLedgerRecord.device_id)
                .with_for_update()
            )
            rows = {r.device_id: r for r in session.scalars(query)}
            seeded = _seed(session, [d for d in devices if d not in rows])
            for device_id in devices:
                row = rows.get(device_id)
                if row is None:
                    ledger = seeded[device_id]
                    row = SeqLedgerRecord(device_id=device_id, ranges={}, receipt_counter=0, updated_ms=now)
                    session.add(row)
                else:
                    ledger = SeqLedger.from_json(row.ranges)
                message = self._apply(device_id, ledger, row, work[device_id], now)
                if message is not None:
                    signed[device_id] = message
            session.commit()
        self.counters["devices_merged"] += len(devices)
        return signed

    def _apply(
        self, device_id: str, ledger: SeqLedger, row: SeqLedgerRecord, pending: _Pending, now: int
    ) -> bytes | None:
        ledger.add(pending.seqs)
        for first, count in pending.skips:
            ledger.skip(first, count)
        for ranges, duplicate in pending.evictions:
            new = ledger.evict(ranges)
            self._count_announcement("applied" if new or not duplicate else "replayed")
        for floor in pending.floors:
            ledger.floor(floor)
        row.ranges = ledger.as_json()
        row.evicted = ledger.evicted_total()
        row.low_seq = ledger.stored[0][0] if ledger.stored else None
        row.high_seq = ledger.highest
        row.missing = ledger.missing()
        row.updated_ms = now
        return self._sign(device_id, ledger, row, now)

    def _sign(self, device_id: str, ledger: SeqLedger, row: SeqLedgerRecord, now: int) -> bytes | None:
        view = ledger.receipt_view()
        if self.signing_key is None or view is None:
            return None
        counter = max(int(row.receipt_counter or 0) + 1, now)
        low, high, ranges = view
        receipt = Receipt(device_id, low, high, ranges, now, counter)
        row.receipt_counter = counter
        row.receipt_ms = now
        return seal_receipt(receipt, self.signing_key, receipt_topic(device_id))

    def _publish_unsent(self) -> None:
        if self.client is None or not self.connected.is_set():
            return
        for device_id in list(self.unsent):
            info = self.client.publish(receipt_topic(device_id), self.unsent[device_id], qos=1, retain=True)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self.counters["publish_failed"] += 1
                return  # the connection is in trouble: the next round retries
            del self.unsent[device_id]
            self.counters["published"] += 1

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect (paho reconnects by itself) and start the round thread.

        Raises:
            WorkerLoopError: already started.
        """
        self._worker.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Run a last round (what was committed gets its ledger entry), then disconnect."""
        self._worker.stop(timeout, before_disconnect=self._last_round)

    def _last_round(self) -> None:
        try:
            self.run_once()
        except EXPECTED_ROUND_ERRORS as exc:
            log.warning("last receipt round failed: %s", exc)


# ------------------------------------------------------------------ reading the ledger


def _gap_row(row: SeqLedgerRecord) -> dict[str, Any]:
    ledger = SeqLedger.from_json(row.ranges)
    gaps = ledger.gaps()
    lost = ledger.evicted_lost()
    return {
        "device_id": row.device_id,
        "low_seq": row.low_seq,
        "high_seq": row.high_seq,
        "missing": row.missing,
        "gaps": [{"first": a, "last": b} for a, b in gaps[:MAX_LISTED_GAPS]],
        "gap_ranges": len(gaps),
        "evicted": sum(b - a + 1 for a, b in lost),
        "evicted_ranges": [{"first": a, "last": b} for a, b in lost[:MAX_LISTED_GAPS]],
        "evicted_announced": row.evicted,
        "skipped": sum(b - a + 1 for a, b in ledger.skipped),
        "floor_jumps": len(ledger.floor_gaps),
        "receipt_counter": row.receipt_counter or None,
        "receipt_ms": row.receipt_ms,
    }


def device_gaps(session: Session, device_id: str) -> dict[str, Any] | None:
    """The seq ledger of one device (None before its first batch was merged)."""
    row = session.get(SeqLedgerRecord, device_id)
    return None if row is None else _gap_row(row)


def fleet_gaps(session: Session, *, limit: int = 100, include_complete: bool = False) -> list[dict[str, Any]]:
    """Devices with missing or evicted seqs, most missing first (every device with ``include_complete``)."""
    query = sa.select(SeqLedgerRecord)
    if not include_complete:
        query = query.where((SeqLedgerRecord.missing > 0) | (SeqLedgerRecord.evicted > 0))
    order = (SeqLedgerRecord.missing.desc(), SeqLedgerRecord.evicted.desc(), SeqLedgerRecord.device_id)
    query = query.order_by(*order).limit(limit)
    return [_gap_row(row) for row in session.scalars(query)]


def fleet_gap_totals(session: Session) -> dict[str, int]:
    """Fleet totals: missing seqs, devices with some, announced evicted seqs, devices with some."""
    total, count, evicted, evicted_devices = session.execute(
        sa.select(
            sa.func.coalesce(sa.func.sum(SeqLedgerRecord.missing), 0),
            sa.func.count().filter(SeqLedgerRecord.missing > 0),
            sa.func.coalesce(sa.func.sum(SeqLedgerRecord.evicted), 0),
            sa.func.count().filter(SeqLedgerRecord.evicted > 0),
        )
    ).one()
    return {
        "missing": int(total),
        "devices_with_gaps": int(count),
        "evicted": int(evicted),
        "devices_with_evictions": int(evicted_devices),
    }


#: devices listed with their own evicted-seq series in ``/metrics`` (the most evicted first)
MAX_EVICTED_SERIES = 1000


class GapMetrics(Collector):
    """``/metrics``: fleet-wide missing seqs and evicted seqs, read from ``seq_ledgers`` at scrape time.

    Reading the table (not a per-process gauge) keeps the figures right when several
    collector processes share the stream. Evicted seqs are counters (an announced range
    never shrinks): the fleet total, and per device for the :data:`MAX_EVICTED_SERIES`
    devices with the most (a bound on the series a scrape returns).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        missing = GaugeMetricFamily(
            "lienwatch_ingest_seq_missing", "Batches missing between each device's lowest and highest stored seq"
        )
        devices = GaugeMetricFamily("lienwatch_ingest_seq_gap_devices", "Devices with at least one missing seq")
        evicted = CounterMetricFamily(
            "lienwatch_ingest_seq_evicted", "Seqs devices announced as evicted from their full outboxes (known losses)"
        )
        per_device = CounterMetricFamily(
            "lienwatch_ingest_device_seq_evicted",
            f"Seqs one device announced as evicted (the {MAX_EVICTED_SERIES} devices with the most)",
            labels=["device_id"],
        )
        try:
            with Session(self.engine) as session:
                totals = fleet_gap_totals(session)
                top = session.execute(
                    sa.select(SeqLedgerRecord.device_id, SeqLedgerRecord.evicted)
                    .where(SeqLedgerRecord.evicted > 0)
                    .order_by(SeqLedgerRecord.evicted.desc(), SeqLedgerRecord.device_id)
                    .limit(MAX_EVICTED_SERIES)
                ).all()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("gap metrics unavailable: %s", exc)
            return
        missing.add_metric([], float(totals["missing"]))
        devices.add_metric([], float(totals["devices_with_gaps"]))
        evicted.add_metric([], float(totals["evicted"]))
        for device_id, count in top:
            per_device.add_metric([device_id], float(count))
        yield missing
        yield devices
        yield evicted
        yield per_device

    def describe(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        """No describe-time query (the registry calls it at registration)."""
        return []
