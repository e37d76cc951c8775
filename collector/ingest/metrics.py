"""Prometheus metrics of the ingest, kept in a registry of their own.

Each :class:`IngestMetrics` owns a ``CollectorRegistry`` (not the process-global one), so
tests and several ingestors in one process never collide; ``collector.api.app`` serves the
registry it is given at ``/metrics``.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["IngestMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class IngestMetrics:
    """The ingest's counters and histograms.

    Attributes:
        registry: the registry all of them are registered in.
        received: messages handed to the ingest, by topic kind (``batch``, ``state``, ``other``).
        stored: batches stored (first delivery).
        fixes_stored: fixes stored.
        duplicates: batches already in the ledger (acknowledged, no effect).
        dead_letters: messages dead-lettered, by reason.
        refused: messages refused before verification, by reason (``qos0``, ``rate_limited``).
        dead_letters_over_quota: refusals only counted (the device's dead-letter quota was used).
        seq_conflicts: batches whose (device, seq) was stored with other content
            (also dead-lettered with reason ``seq_conflict``).
        states: state messages, by result (``applied``, ``stale``).
        latency: seconds from receipt (paho callback) to commit.
        db_seconds: seconds spent in one database transaction (one group of messages).
        db_retries: retries after the database was unreachable.
        hook_errors: on_commit hooks that raised.
        queue_depth: messages received but not yet committed.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.received = Counter("lienwatch_ingest_messages_received", "Messages received", ["kind"], registry=r)
        self.stored = Counter("lienwatch_ingest_batches_stored", "Batches stored (first delivery)", registry=r)
        self.fixes_stored = Counter("lienwatch_ingest_fixes_stored", "GNSS fixes stored", registry=r)
        self.duplicates = Counter("lienwatch_ingest_duplicates", "Batches already stored (redeliveries)", registry=r)
        self.dead_letters = Counter(
            "lienwatch_ingest_dead_letters", "Messages dead-lettered, by reason", ["reason"], registry=r
        )
        self.refused = Counter(
            "lienwatch_ingest_refused",
            "Messages refused before verification (QoS 0, device rate limit): not queued, not stored",
            ["reason"],
            registry=r,
        )
        self.dead_letters_over_quota = Counter(
            "lienwatch_ingest_dead_letters_over_quota",
            "Refused messages not written to dead_letters (the device id's hourly quota was used up)",
            registry=r,
        )
        self.seq_conflicts = Counter(
            "lienwatch_ingest_seq_conflicts", "Batches reusing a stored (device, seq) with other content", registry=r
        )
        self.states = Counter("lienwatch_ingest_states", "Device state messages, by result", ["result"], registry=r)
        self.latency = Histogram(
            "lienwatch_ingest_latency_seconds", "Receipt to commit", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.db_seconds = Histogram(
            "lienwatch_ingest_db_seconds", "Database time per transaction (group)", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.db_retries = Counter("lienwatch_ingest_db_retries", "Retries while the database was down", registry=r)
        self.hook_errors = Counter("lienwatch_ingest_hook_errors", "on_commit hooks that raised", registry=r)
        self.queue_depth = Gauge("lienwatch_ingest_queue_depth", "Messages received, not yet committed", registry=r)
