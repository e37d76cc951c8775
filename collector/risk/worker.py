"""Keeps every loan's risk state current: soon after new device data, and periodically.

How this works
--------------
One thread owns reassessment in a collector process, fed two ways:

* :meth:`RiskWorker.on_commit` is registered as an ``Ingestor.on_commit`` hook. It only
  notes the device in a set and wakes the thread, so the ingest worker never waits for a
  risk evaluation and a failing evaluation can never hold up, un-commit or drop a batch.
  Duplicates and state messages that changed nothing are ignored.
* every ``interval_s`` (and once at start) every loan is reassessed: days past due grow and
  a device that stopped talking goes "offline for more than 48 h" with time alone, without
  any new message arriving.

Evaluation time is the collector clock (injected in tests). A round that fails (database
down, a bug) is logged and counted, the devices it held go back into the set and the round
is retried after ``retry_s``; the periodic run catches up with anything missed even if the
process died between an ingest commit and the evaluation. Reassessing is idempotent
(:func:`collector.risk.assessment.reassess_loan` writes with a compare-and-set on the level and
records an event only on a real change), so several collector processes may run it side by
side. Level changes are passed to ``on_change`` after they committed (serve wakes the webhook
worker with it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..cases.settings import CaseSettings
from ..clock import ClockMs, wall_clock_ms
from ..jobs.worker_loop import WorkerLoop
from ..storage.tables import LoanRecord
from .assessment import reassess_loan_as_configured
from .engine import RiskChange
from .settings import RiskSettings

__all__ = ["RiskWorker"]

log = logging.getLogger(__name__)

#: Loans per transaction in a periodic run (a long book never holds one huge transaction).
CHUNK = 200


class RiskWorker:
    """Reassesses the loans of devices that sent data, and every loan periodically.

    Args:
        engine: the collector database.
        risk: ``[risk]`` (thresholds, grace days) of the collector settings.
        webhook_urls: ``[webhooks] urls``: level changes queue a delivery to each.
        interval_s: time between runs over every loan (``[risk] reassess_interval_s``).
        retry_s: wait after a failed round.
        clock_ms: collector clock, epoch ms.
        on_change: called with the level changes of a round after they committed.
        registry: Prometheus registry for the ``lienwatch_risk_*`` metrics (none when None).
        cases: ``[cases]``: SLAs of the cases reassessment opens.
    """

    def __init__(
        self,
        engine: Engine,
        risk: RiskSettings | None = None,
        *,
        webhook_urls: Sequence[str] = (),
        interval_s: float = 60.0,
        retry_s: float = 1.0,
        clock_ms: ClockMs = wall_clock_ms,
        on_change: Callable[[list[RiskChange]], None] | None = None,
        registry: CollectorRegistry | None = None,
        cases: CaseSettings | None = None,
    ) -> None:
        self.engine = engine
        self.cases = cases or CaseSettings()
        self.risk = risk or RiskSettings()
        self.webhook_urls = tuple(webhook_urls)
        self.interval_s = interval_s
        self.retry_s = retry_s
        self.on_change = on_change
        self.counters: Counter[str] = Counter()
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._full_due = True
        self._next_full = 0.0
        self._loop = WorkerLoop("lw-risk", self._round, on_error=self._failed)
        #: Set after each round (successful or not); tests wait on it.
        self.round_done = threading.Event()
        self._metrics: dict[str, Any] = {}
        if registry is not None:
            r = registry
            self._metrics = {
                "reassessed": PromCounter(
                    "lienwatch_risk_reassessments", "Loans reassessed, by trigger", ["trigger"], registry=r
                ),
                "changes": PromCounter("lienwatch_risk_level_changes", "Risk level changes recorded", registry=r),
                "errors": PromCounter("lienwatch_risk_errors", "Reassessment rounds that failed", registry=r),
                "pending": Gauge("lienwatch_risk_pending_devices", "Devices waiting for reassessment", registry=r),
            }

    # ------------------------------------------------------------ inputs

    def on_commit(self, event: object) -> None:
        """``Ingestor.on_commit`` hook: queue the device's loan for reassessment (never blocks)."""
        device_id = getattr(event, "device_id", None)
        if not isinstance(device_id, str):
            return
        if getattr(event, "duplicate", False) or getattr(event, "applied", True) is False:
            return  # nothing new was stored
        self.notify([device_id])

    def notify(self, device_ids: Iterable[str]) -> None:
        """Reassess the loans of ``device_ids`` soon."""
        with self._lock:
            self._pending.update(device_ids)
            if "pending" in self._metrics:
                self._metrics["pending"].set(len(self._pending))
        self._loop.wake()

    def request_full_run(self) -> None:
        """Reassess every loan soon (instead of at the next interval)."""
        with self._lock:
            self._full_due = True
        self._loop.wake()

    # ------------------------------------------------------------ the work

    def run_once(self) -> list[RiskChange]:
        """One round: every loan if a full run is due, else the loans of the pending devices.

        Raises:
            sqlalchemy.exc.SQLAlchemyError, CollectorError: the round failed; what it held is
                queued again (the caller retries).
        """
        with self._lock:
            devices, self._pending = self._pending, set()
            full, self._full_due = self._full_due, False
            if "pending" in self._metrics:
                self._metrics["pending"].set(0)
        now = self._clock_ms()
        try:
            changes = self._reassess(now, None if full else devices)
        except BaseException:
            with self._lock:
                self._pending |= devices
                self._full_due = self._full_due or full
            raise
        trigger = "periodic" if full else "ingest"
        self.counters[f"rounds_{trigger}"] += 1
        self.counters["level_changes"] += len(changes)
        if "changes" in self._metrics:
            self._metrics["changes"].inc(len(changes))
        return changes

    def _reassess(self, now_ms: int, devices: set[str] | None) -> list[RiskChange]:
        if devices is not None and not devices:
            return []
        query = sa.select(LoanRecord.loan_id).order_by(LoanRecord.loan_id)
        if devices is not None:
            query = query.where(LoanRecord.device_id.in_(sorted(devices)))
        with Session(self.engine) as session:
            loan_ids = list(session.scalars(query))
        changes: list[RiskChange] = []
        for start in range(0, len(loan_ids), CHUNK):
            with Session(self.engine) as session:
                for loan_id in loan_ids[start : start + CHUNK]:
                    if session.get(LoanRecord, loan_id) is None:
                        continue  # removed by retention meanwhile
                    _, change = reassess_loan_as_configured(
                        session, loan_id, now_ms, self.risk, self.webhook_urls, cases=self.cases
                    )
                    if change is not None:
                        changes.append(change)
                session.commit()
        trigger = "ingest" if devices is not None else "periodic"
        self.counters[f"loans_{trigger}"] += len(loan_ids)
        if "reassessed" in self._metrics:
            self._metrics["reassessed"].labels(trigger).inc(len(loan_ids))
        return changes

    # ------------------------------------------------------------ thread

    def start(self) -> None:
        """Start the thread (its first round reassesses every loan).

        Raises:
            WorkerLoopError: already started.
        """
        self._next_full = time.monotonic() + self.interval_s
        self._loop.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the current round (pending devices are caught up by the next start's full run)."""
        self._loop.stop(timeout)

    def _round(self) -> float:
        if time.monotonic() >= self._next_full:
            self.request_full_run()
            self._next_full = time.monotonic() + self.interval_s
        changes = self.run_once()
        self.round_done.set()
        if changes:
            self._report(changes)
        return self._next_full - time.monotonic()

    def _failed(self, exc: Exception) -> float:
        # A bad round must not end risk evaluation: count, log, retry.
        self.counters["errors"] += 1
        if "errors" in self._metrics:
            self._metrics["errors"].inc()
        log.error("risk reassessment round failed; retrying in %.1f s", self.retry_s, exc_info=exc)
        self.round_done.set()
        return self.retry_s

    def _report(self, changes: list[RiskChange]) -> None:
        for change in changes:
            log.info(
                "loan %s risk %s -> %s (%s)",
                change.loan_id,
                change.old_level.label,
                change.new_level.label,
                change.next_step.label,
            )
        if self.on_change is not None:
            try:
                self.on_change(changes)
            except Exception:  # a notification callback must not stop risk evaluation
                log.exception("risk on_change callback failed")
                self.counters["callback_errors"] += 1
