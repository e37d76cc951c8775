"""Signed receipts per device and the seq ledger they come from (docs/protocol.md section 14).

How this works
--------------
* The ingest calls :meth:`ReceiptPublisher.committed` (its commit listener) after every
  commit with the ``(device_id, seq)`` pairs stored or found already stored, and
  :meth:`ReceiptPublisher.on_commit` (an ingestor hook) with each stored batch, from which
  only the seq announcements are taken (``seq_skipped_from``/``seq_skipped``, ``seq_floor``).
  Both only queue; nothing here slows the ingest.
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
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from protocol import Receipt, receipt_topic, seal_receipt

from ..clock import ClockMs, wall_clock_ms
from ..ingest.ingestor import StoredBatch, StoredState
from ..ingest.seq_ledger import MAX_LISTED_GAPS, SeqLedger
from ..ingest.settings import MqttSettings
from ..storage.tables import BatchRecord, SeqLedgerRecord
from .publishing_worker import PublishingWorker
from .worker_loop import EXPECTED_ROUND_ERRORS

__all__ = ["GapMetrics", "ReceiptPublisher", "device_gaps", "fleet_gaps"]

log = logging.getLogger(__name__)

#: devices merged in one transaction
MERGE_CHUNK = 500


@dataclass(slots=True)
class _Pending:
    seqs: set[int] = field(default_factory=set)
    skips: list[tuple[int, int]] = field(default_factory=list)
    floors: list[int] = field(default_factory=list)


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
    """

    def __init__(
        self,
        engine: Engine,
        signing_key: Ed25519PrivateKey | None,
        mqtt_settings: MqttSettings | None,
        *,
        interval_s: float = 1.0,
        clock_ms: ClockMs = wall_clock_ms,
    ) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self.interval_s = interval_s
        self._clock_ms = clock_ms
        self.counters: Counter[str] = Counter()
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
        """Ingestor hook: remember the seq announcements of a newly stored batch."""
        if not isinstance(event, StoredBatch) or event.duplicate:
            return
        counters = event.batch.counters
        first, count, floor = counters.get("seq_skipped_from"), counters.get("seq_skipped"), counters.get("seq_floor")
        if not (first and count) and not floor:
            return
        with self._lock:
            pending = self._pending.setdefault(event.device_id, _Pending())
            if first and count:
                pending.skips.append((first, count))
            if floor:
                pending.floors.append(floor)

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
                    again = self._pending.setdefault(device_id, _Pending())
                    again.seqs |= pending.seqs
                    again.skips += pending.skips
                    again.floors += pending.floors
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
        for floor in pending.floors:
            ledger.floor(floor)
        row.ranges = ledger.as_json()
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
    return {
        "device_id": row.device_id,
        "low_seq": row.low_seq,
        "high_seq": row.high_seq,
        "missing": row.missing,
        "gaps": [{"first": a, "last": b} for a, b in gaps[:MAX_LISTED_GAPS]],
        "gap_ranges": len(gaps),
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
    """Devices with missing seqs, most missing first (every device with ``include_complete``)."""
    query = sa.select(SeqLedgerRecord)
    if not include_complete:
        query = query.where(SeqLedgerRecord.missing > 0)
    query = query.order_by(SeqLedgerRecord.missing.desc(), SeqLedgerRecord.device_id).limit(limit)
    return [_gap_row(row) for row in session.scalars(query)]


class GapMetrics(Collector):
    """``/metrics``: fleet-wide missing seqs, read from ``seq_ledgers`` at scrape time.

    Reading the table (not a per-process gauge) keeps the figures right when several
    collector processes share the stream.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterator[GaugeMetricFamily]:
        missing = GaugeMetricFamily(
            "lienwatch_ingest_seq_missing", "Batches missing between each device's lowest and highest stored seq"
        )
        devices = GaugeMetricFamily("lienwatch_ingest_seq_gap_devices", "Devices with at least one missing seq")
        try:
            with self.engine.connect() as conn:
                total, count = conn.execute(
                    sa.select(
                        sa.func.coalesce(sa.func.sum(SeqLedgerRecord.missing), 0),
                        sa.func.count().filter(SeqLedgerRecord.missing > 0),
                    )
                ).one()
        except sa.exc.SQLAlchemyError as exc:
            log.warning("gap metrics unavailable: %s", exc)
            return
        missing.add_metric([], float(total))
        devices.add_metric([], float(count))
        yield missing
        yield devices

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """No describe-time query (the registry calls it at registration)."""
        return []
