"""Signed webhooks for risk level changes, delivered from a persisted outbox.

How this works
--------------
A level change is written as ``webhook_deliveries`` rows (one per configured URL) in the
same transaction as its ``risk_events`` row (:func:`enqueue_risk_change`, called by
:func:`collector.risk.assessment.reassess_loan`). Nothing is sent from inside that
transaction: a :class:`WebhookSender` later picks due rows, POSTs them with httpx and marks
each one delivered (2xx), or schedules a retry with exponential backoff, or gives up after
``max_attempts`` (status ``failed``, kept for inspection). Because the queue is the
database, a restart loses nothing: the next sender picks up where the last one stopped.
Delivery is at-least-once; receivers deduplicate on ``X-LienWatch-Event-Id``.

Signature: ``X-LienWatch-Signature: t=<unix seconds>,v1=<hex>`` where ``hex`` is
HMAC-SHA256 with the shared secret over ``f"{t}.".encode() + body`` (the exact bytes
sent). Receivers recompute it, compare in constant time and refuse timestamps more than
five minutes away from their clock (replay window); :func:`verify_signature` does exactly
that and is what a receiver written in Python can import.

:class:`WebhookWorker` is the thin thread around a sender: wake on :meth:`~WebhookWorker.wake`
or every ``interval_s``; the sender itself takes ``now_ms`` as an argument so tests drive
retries without waiting.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx
import sqlalchemy as sa
from sqlalchemy.orm import Session

from ..clock import ClockMs, wall_clock_ms
from ..errors import CollectorError
from ..storage.tables import WebhookDelivery
from .redaction import redact_coordinates
from .worker_loop import WorkerLoop

__all__ = [
    "EVENT_HEADER",
    "SIGNATURE_HEADER",
    "DeliveryRound",
    "RetryPolicy",
    "WebhookError",
    "WebhookSender",
    "WebhookSignatureError",
    "WebhookWorker",
    "check_webhook_url",
    "enqueue_risk_change",
    "event_body",
    "sign_body",
    "verify_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-LienWatch-Signature"
EVENT_HEADER = "X-LienWatch-Event-Id"
ATTEMPT_HEADER = "X-LienWatch-Delivery-Attempt"
MAX_SIGNATURE_HEADER = 512
DEFAULT_TOLERANCE_S = 300


class LevelChange(Protocol):
    """What a webhook event carries: a risk level change (:class:`collector.risk.engine.RiskChange`)."""

    @property
    def time_ms(self) -> int:
        """When the change was evaluated, epoch ms."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (the event's ``data``)."""


class WebhookError(CollectorError):
    """A webhook could not be configured, queued or sent."""


class WebhookSignatureError(WebhookError):
    """A signature header is malformed, stale, or does not match the body.

    ``reason`` is a short slug: ``malformed``, ``stale`` or ``mismatch``.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def check_webhook_url(url: str) -> str:
    """Return ``url`` if it is an absolute http(s) URL of at most 2048 characters."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or len(url) > 2048:
        raise WebhookError(f"webhook URL {url!r:.100} must be an absolute http(s) URL of at most 2048 characters")
    return url


def sign_body(body: bytes, secret: bytes, timestamp_s: int) -> str:
    """The ``X-LienWatch-Signature`` value for ``body`` sent at ``timestamp_s``."""
    digest = hmac.new(secret, str(timestamp_s).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp_s},v1={digest}"


def verify_signature(
    header: str, body: bytes, secret: bytes, now_s: int, *, tolerance_s: int = DEFAULT_TOLERANCE_S
) -> int:
    """Check a signature header against ``body``; return its timestamp.

    Several ``v1=`` entries are allowed (secret rotation: one per active secret); one match
    is enough.

    Raises:
        WebhookSignatureError: malformed header, timestamp outside ``tolerance_s``, or no match.
    """
    if not isinstance(header, str) or len(header) > MAX_SIGNATURE_HEADER:
        limit = MAX_SIGNATURE_HEADER
        raise WebhookSignatureError(f"signature header must be text of at most {limit} chars", "malformed")
    timestamp: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise WebhookSignatureError(f"signature part {part!r:.40} is not key=value", "malformed")
        if key == "t":
            if timestamp is not None or not value.isdigit() or len(value) > 12:
                raise WebhookSignatureError(f"signature timestamp {value!r:.20} must be one unix time", "malformed")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        raise WebhookSignatureError("signature header needs t= and at least one v1=", "malformed")
    if abs(now_s - timestamp) > tolerance_s:
        skew = abs(now_s - timestamp)
        raise WebhookSignatureError(
            f"signature timestamp {timestamp} is {skew} s from now, tolerance {tolerance_s} s", "stale"
        )
    expected = sign_body(body, secret, timestamp).split("v1=", 1)[1]
    if not any(hmac.compare_digest(expected, c) for c in candidates):
        raise WebhookSignatureError("no v1 signature matches the body", "mismatch")
    return timestamp


def event_body(event_id: str, change: LevelChange) -> bytes:
    """The JSON body of a ``risk.level_changed`` event (compact, keys sorted)."""
    document: dict[str, Any] = {
        "id": event_id,
        "type": "risk.level_changed",
        "created_ms": change.time_ms,
        "data": redact_coordinates(change.as_dict()),  # leaves the collector: no precise position
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def enqueue_risk_change(
    session: Session, event_id: str, change: LevelChange, urls: Sequence[str], *, now_ms: int
) -> list[WebhookDelivery]:
    """Queue one delivery of ``change`` per URL (in the caller's transaction)."""
    body = event_body(event_id, change)
    rows = [
        WebhookDelivery(
            event_id=event_id,
            url=check_webhook_url(url),
            body=body,
            status="pending",
            attempts=0,
            next_attempt_ms=now_ms,
            created_ms=now_ms,
        )
        for url in dict.fromkeys(urls)
    ]
    session.add_all(rows)
    return rows


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff: ``initial_s * factor**(attempt-1)``, capped at ``max_s``.

    Defaults: 2 s, 4 s, 8 s ... up to 1 h between attempts, 12 attempts (about 3.5 h in all).
    """

    initial_s: float = 2.0
    factor: float = 2.0
    max_s: float = 3600.0
    max_attempts: int = 12
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s:
            raise WebhookError(f"retry initial_s={self.initial_s} must be > 0 and <= max_s={self.max_s}")
        if self.factor < 1 or not 1 <= self.max_attempts <= 1000 or not 0 < self.timeout_s <= 120:
            raise WebhookError("retry factor must be >= 1, max_attempts in 1..1000, timeout_s in (0, 120]")

    def delay_ms(self, attempts: int) -> int:
        """Wait after the ``attempts``-th failed attempt, in ms."""
        return int(min(self.max_s, self.initial_s * self.factor ** max(0, attempts - 1)) * 1000)


@dataclass(frozen=True, slots=True)
class DeliveryRound:
    """What one :meth:`WebhookSender.deliver_due` call did."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0


class WebhookSender:
    """Delivers due outbox rows (sans threads: call :meth:`deliver_due` with the time)."""

    def __init__(
        self,
        session_factory: Callable[[], Session],
        secret: bytes,
        *,
        client: httpx.Client | None = None,
        policy: RetryPolicy | None = None,
    ) -> None:
        if not isinstance(secret, bytes) or len(secret) < 16:
            raise WebhookError("webhook secret must be at least 16 bytes")
        self._sessions = session_factory
        self._secret = secret
        self.policy = policy or RetryPolicy()
        self._own_client = client is None
        self._client = client or httpx.Client(timeout=self.policy.timeout_s, follow_redirects=False)
        self.counters: Counter[str] = Counter()

    def close(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._own_client:
            self._client.close()

    def pending(self) -> int:
        """Deliveries still waiting (due or not)."""
        with self._sessions() as session:
            return int(
                session.scalar(
                    sa.select(sa.func.count()).select_from(WebhookDelivery).where(WebhookDelivery.status == "pending")
                )
                or 0
            )

    def next_due_ms(self) -> int | None:
        """When the next pending delivery is due, if any."""
        with self._sessions() as session:
            value = session.scalar(
                sa.select(sa.func.min(WebhookDelivery.next_attempt_ms)).where(WebhookDelivery.status == "pending")
            )
            return int(value) if value is not None else None

    def deliver_due(self, now_ms: int, *, limit: int = 50) -> DeliveryRound:
        """Send every pending delivery due at ``now_ms`` (oldest first, at most ``limit``)."""
        delivered = retried = failed = 0
        with self._sessions() as session:
            rows = session.scalars(
                sa.select(WebhookDelivery)
                .where(WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_ms <= now_ms)
                .order_by(WebhookDelivery.next_attempt_ms, WebhookDelivery.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                outcome = self._attempt(row, now_ms)
                session.commit()  # one row at a time: a crash repeats at most one delivery
                if outcome == "delivered":
                    delivered += 1
                elif outcome == "failed":
                    failed += 1
                else:
                    retried += 1
        return DeliveryRound(delivered, retried, failed)

    def _attempt(self, row: WebhookDelivery, now_ms: int) -> str:
        row.attempts += 1
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_body(row.body, self._secret, now_ms // 1000),
            EVENT_HEADER: row.event_id,
            ATTEMPT_HEADER: str(row.attempts),
            "User-Agent": "lienwatch-webhooks/1",
        }
        error: str | None
        try:
            response = self._client.post(row.url, content=row.body, headers=headers)
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
            self.counters["transport_error"] += 1
        else:
            if 200 <= response.status_code < 300:
                row.status = "delivered"
                row.delivered_ms = now_ms
                row.last_error = None
                self.counters["delivered"] += 1
                return "delivered"
            error = f"HTTP {response.status_code}"
            self.counters[f"http_{response.status_code // 100}xx"] += 1
        row.last_error = error
        if row.attempts >= self.policy.max_attempts:
            row.status = "failed"
            self.counters["failed"] += 1
            log.warning(
                "webhook %s to %s failed for good after %d attempts: %s", row.event_id, row.url, row.attempts, error
            )
            return "failed"
        row.next_attempt_ms = now_ms + self.policy.delay_ms(row.attempts)
        self.counters["retried"] += 1
        return "retried"


class WebhookWorker:
    """A thread (on the shared :class:`~collector.jobs.worker_loop.WorkerLoop`) that runs a
    :class:`WebhookSender` until stopped."""

    def __init__(
        self,
        sender: WebhookSender,
        *,
        interval_s: float = 1.0,
        clock_ms: ClockMs = wall_clock_ms,
    ) -> None:
        self.sender = sender
        self.interval_s = interval_s
        self._clock_ms = clock_ms
        self._loop = WorkerLoop("lienwatch-webhooks", self._round, on_error=self._failed)

    def start(self) -> None:
        """Start the delivery thread.

        Raises:
            WorkerLoopError: already started.
        """
        self._loop.start()

    def wake(self) -> None:
        """Deliver now instead of at the next interval (call after queuing)."""
        self._loop.wake()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread and wait for it (pending rows stay queued in the database)."""
        self._loop.stop(timeout)

    def _round(self) -> float:
        self.sender.deliver_due(self._clock_ms())
        return self.interval_s

    def _failed(self, exc: Exception) -> float:
        key = "database_error" if isinstance(exc, sa.exc.SQLAlchemyError) else "errors"
        self.sender.counters[key] += 1
        log.error("webhook delivery round failed; retrying next interval", exc_info=exc)
        return self.interval_s
