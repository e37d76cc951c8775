"""Everything ``lienwatch collector serve`` runs besides the HTTP server, built from Settings.

How this works
--------------
:class:`CollectorRuntime` assembles the long-running parts and starts/stops them in an order
that loses nothing:

* the MQTT ingest (:class:`~collector.ingest.service.IngestService`) with the risk worker's
  ``on_commit`` hook, so every stored batch or applied state message queues its device's loan
  for reassessment (unless ``ingest=False``, i.e. ``--api-only``);
* the :class:`~collector.risk.worker.RiskWorker` (those devices soon, every loan every
  ``[risk] reassess_interval_s``), which wakes the webhook worker on each level change;
* the :class:`~collector.jobs.webhooks.WebhookWorker` delivering the persisted outbox (when a
  ``[webhooks] secret`` is configured);
* the retention job (:class:`~collector.jobs.periodic.PeriodicJob`, first run one
  ``[retention] interval_s`` after start);
* the promise-to-pay check (a :class:`~collector.jobs.periodic.PeriodicJob` every ``[cases]
  promise_check_interval_s``: broken promises escalate their case);
* the :class:`~collector.jobs.downlink.ConfigPublisher` (when ``[downlink] signing_key`` is set);
* the :class:`~collector.jobs.receipts.ReceiptPublisher` (with the ingest): the per-device seq
  ledger behind the gap counts, and signed receipts when ``[downlink] signing_key`` is set and
  ``[downlink] receipts`` is on. ``/metrics`` reads the gap counts from the ledger table;
* on PostgreSQL, the day partitions of ``fixes``/``samples`` from yesterday to
  :data:`PARTITION_DAYS_AHEAD` days ahead, created at start (before the ingest) and hourly
  (collector.storage.partitions).

Start order: workers first, the ingest last (so no hook fires into a stopped worker). Stop
order: the ingest first (it finishes the message in hand, commits and acks it), then the
workers, each finishing its current round; queued work stays in the database (webhook and
downlink outboxes) or is redone by the next start's first full risk run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import APIRouter, FastAPI
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from .api.app import create_app
from .cases.store import check_promises
from .clock import ClockMs, wall_clock_ms
from .ingest.ingestor import Ingestor
from .ingest.metrics import IngestMetrics
from .ingest.service import IngestService
from .jobs.downlink import ConfigPublisher, load_signing_key
from .jobs.periodic import PeriodicJob
from .jobs.receipts import GapMetrics, ReceiptPublisher
from .jobs.retention import RetentionPolicy, run_retention
from .jobs.webhooks import RetryPolicy, WebhookSender, WebhookWorker
from .risk.worker import RiskWorker
from .settings import Settings
from .storage.partitions import DAY_MS, PARTITIONED_TABLES, ensure_partitions

__all__ = ["CollectorRuntime", "wall_clock_ms"]

log = logging.getLogger(__name__)

#: day partitions (PostgreSQL) kept ready ahead of the collector clock
PARTITION_DAYS_AHEAD = 7

_RETENTION_LOCK = 0x4C57_0002  # "LW" + 2: advisory lock held by the collector running retention


class CollectorRuntime:
    """The ingest and background workers of one collector process.

    Args:
        settings: the collector settings.
        engine: a migrated database.
        ingest: run the MQTT ingest (False for ``--api-only``).
        clock_ms: the collector clock (risk evaluation, webhooks, retention, signing).
        metrics: the ingest metrics (their registry also carries the risk metrics and is
            what ``/metrics`` serves).

    Raises:
        ConfigError: the downlink signing key cannot be loaded.
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        *,
        ingest: bool = True,
        clock_ms: ClockMs = wall_clock_ms,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.clock_ms = clock_ms
        self.metrics = metrics or IngestMetrics()

        hooks = settings.webhooks
        self.webhooks: WebhookWorker | None = None
        if hooks.secret is not None:
            policy = RetryPolicy(
                initial_s=hooks.retry_initial_s,
                max_s=hooks.retry_max_s,
                max_attempts=hooks.max_attempts,
                timeout_s=hooks.timeout_s,
            )
            sender = WebhookSender(lambda: Session(engine), hooks.secret.encode(), policy=policy)
            self.webhooks = WebhookWorker(sender, interval_s=hooks.poll_interval_s, clock_ms=clock_ms)

        self.risk = RiskWorker(
            engine,
            settings.risk,
            webhook_urls=settings.webhooks.urls,
            interval_s=settings.risk.reassess_interval_s,
            clock_ms=clock_ms,
            on_change=self._wake_webhooks,
            registry=self.metrics.registry,
            cases=settings.cases,
        )

        self.retention: PeriodicJob | None = None
        if settings.retention.enabled:
            r = settings.retention
            self.retention_policy = RetentionPolicy(r.fix_days, r.fix_mode, r.record_years)
            self.retention = PeriodicJob("retention", r.interval_s, self.run_retention)

        # broken promises to pay escalate their case (collector.cases.store.check_promises)
        self.promises = PeriodicJob("promises", settings.cases.promise_check_interval_s, self.run_promise_check)

        self.signing_key: Ed25519PrivateKey | None = None
        self.publisher: ConfigPublisher | None = None
        if settings.downlink.signing_key is not None:
            self.signing_key = load_signing_key(settings.downlink.signing_key)
            self.publisher = ConfigPublisher(
                engine,
                self.signing_key,
                settings.mqtt,
                resync_interval_s=settings.downlink.resync_interval_s,
                publish_timeout_s=settings.downlink.publish_timeout_s,
                clock_ms=clock_ms,
            )

        self.metrics.registry.register(GapMetrics(engine))
        self.partitions: PeriodicJob | None = None
        if engine.dialect.name == "postgresql":
            self.partitions = PeriodicJob("partitions", 3600.0, self.ensure_partitions)
        self.ingest: IngestService | None = None
        self.receipts: ReceiptPublisher | None = None
        if ingest:
            self.receipts = ReceiptPublisher(
                engine,
                self.signing_key if settings.downlink.receipts else None,
                settings.mqtt,
                interval_s=settings.downlink.receipt_interval_s,
                clock_ms=clock_ms,
                registry=self.metrics.registry,
            )
            commit_hooks = [self.risk.on_commit, self.receipts.on_commit]
            ingestor = Ingestor(engine, settings.limits, metrics=self.metrics, on_commit=commit_hooks)
            self.ingest = IngestService(ingestor, settings.mqtt, settings.limits)
            self.ingest.add_commit_listener(self.receipts.committed)
        self._started: list[Any] = []

    def ensure_partitions(self) -> dict[str, list[str]]:
        """Create the missing day partitions from yesterday to PARTITION_DAYS_AHEAD days ahead."""
        now = self.clock_ms()
        with self.engine.begin() as conn:
            return {
                table: ensure_partitions(conn, table, now - DAY_MS, now + PARTITION_DAYS_AHEAD * DAY_MS)
                for table in PARTITIONED_TABLES
            }

    def _wake_webhooks(self, _changes: object) -> None:
        if self.webhooks is not None:
            self.webhooks.wake()

    def run_retention(self) -> dict[str, Any]:
        """One retention run now (what the periodic job calls); returns its report.

        On PostgreSQL a transaction-scoped advisory lock makes concurrent runs of several
        collectors skip instead of summarising the same fixes twice.
        """
        with Session(self.engine) as session:
            if self.engine.dialect.name == "postgresql":
                locked = session.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": _RETENTION_LOCK})
                if not locked.scalar():
                    return {"skipped": "another collector is running retention"}
            report = run_retention(session, self.clock_ms(), self.retention_policy)
            session.commit()
        return report.as_dict()

    def run_promise_check(self) -> dict[str, int]:
        """One promise-to-pay check now (what the periodic job calls); returns its counts."""
        with Session(self.engine) as session:
            counts = check_promises(session, self.clock_ms(), self.settings.cases, self.settings.contact)
            session.commit()
        return counts

    def create_app(self, routers: Iterable[APIRouter] = ()) -> FastAPI:
        """The HTTP API wired to this runtime (settings, clock, signing key, config publisher)."""
        return create_app(
            self.settings,
            engine=self.engine,
            metrics_registry=self.metrics.registry,
            routers=routers,
            clock_ms=self.clock_ms,
            signing_key=self.signing_key,
            config_publisher=self.publisher.submit if self.publisher is not None else None,
            ingest_health=self.ingest.link.report if self.ingest is not None else None,
        )

    def start(self) -> None:
        """Start the workers, then the ingest."""
        if self.partitions is not None:
            log.info("day partitions: %s", self.ensure_partitions())  # before the first row lands
        parts = [
            self.partitions, self.risk, self.webhooks, self.retention, self.promises, self.publisher, self.receipts,
            self.ingest,
        ]
        for part in parts:
            if part is not None:
                part.start()
                self._started.append(part)
        log.info(
            "collector running: ingest=%s webhooks=%s retention=%s downlink=%s",
            self.ingest is not None,
            self.webhooks is not None,
            self.retention is not None,
            self.publisher is not None,
        )

    def stop(self) -> None:
        """Stop the ingest first (it commits and acks the message in hand), then the workers."""
        for part in reversed(self._started):
            try:
                part.stop()
            except Exception:  # stop the rest whatever one of them does
                log.exception("stopping %s failed", type(part).__name__)
        self._started.clear()

    def __enter__(self) -> CollectorRuntime:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
