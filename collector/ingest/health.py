"""What the ingest knows about its own health: the broker link, ingest lag, last message age.

:class:`BrokerLink` is a small thread-safe state object. The paho callbacks of
:class:`collector.ingest.service.IngestService` tell it about every connect attempt, refusal
and disconnect (and log each one); the paho thread tells it when a message is queued and the
worker when it is done with one. :meth:`BrokerLink.report` turns that into a
:class:`IngestHealth` (``ok`` / ``degraded`` with the reasons) that ``/healthz`` serves, and
:meth:`BrokerLink.register_metrics` exports the same figures on ``/metrics``:

* ``lienwatch_ingest_broker_connected`` (1 / 0),
* ``lienwatch_ingest_broker_connect_failures`` (connection attempts that failed or were refused),
* ``lienwatch_ingest_broker_disconnects`` (connections lost),
* ``lienwatch_ingest_lag_seconds`` (age of the oldest message received and not yet handled),
* ``lienwatch_ingest_last_message_age_seconds`` (since the last message; since the start
  while none came).

Time here is the host's monotonic clock: these are durations of this process, not
vehicle or collector-calendar times.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["BrokerLink", "IngestHealth"]

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]


@dataclass(frozen=True, slots=True)
class IngestHealth:
    """The ingest's part of ``/healthz``.

    Attributes:
        status: ``ok`` or ``degraded``.
        reasons: one sentence per problem (empty when ``ok``).
        broker: ``connected`` or ``disconnected``.
        lag_s: age of the oldest message received and not yet handled (0 when none waits).
        last_message_age_s: seconds since the last message (since start while none came).
    """

    status: str
    reasons: tuple[str, ...]
    broker: str
    lag_s: float
    last_message_age_s: float

    def as_dict(self) -> dict[str, object]:
        """JSON form (rounded durations)."""
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "broker": self.broker,
            "lag_s": round(self.lag_s, 3),
            "last_message_age_s": round(self.last_message_age_s, 3),
        }


class BrokerLink:
    """Connection state of one MQTT client and the age of what it received.

    Args:
        endpoint: ``host:port`` named in logs and reasons.
        lag_degraded_s: lag above which the ingest is degraded.
        silence_degraded_s: last message age above which the ingest is degraded.
        monotonic: the clock (tests drive it).
    """

    def __init__(
        self,
        endpoint: str,
        *,
        lag_degraded_s: float = 60.0,
        silence_degraded_s: float = 900.0,
        monotonic: Monotonic = time.monotonic,
    ) -> None:
        self.endpoint = endpoint
        self.lag_degraded_s = lag_degraded_s
        self.silence_degraded_s = silence_degraded_s
        self._now = monotonic
        self._lock = threading.Lock()
        self.connected = False
        self._since = monotonic()  # start of the current state (connected or not)
        self._last_problem = "not connected yet"
        self.failures = 0  # consecutive failed attempts since the last connect
        self._pending: deque[float] = deque()
        self._last_message: float | None = None
        self._started = self._since
        self._connected_gauge: Gauge | None = None
        self._failure_counter: Counter | None = None
        self._disconnect_counter: Counter | None = None

    # ------------------------------------------------------------ events (log + state)

    def attempt_failed(self, why: str) -> None:
        """A connection attempt did not reach the broker or was refused by it."""
        with self._lock:
            self.failures += 1
            self._last_problem = why
            n = self.failures
        if self._failure_counter is not None:
            self._failure_counter.inc()
        log.warning("broker %s: %s (attempt %d failed); retrying", self.endpoint, why, n)

    def up(self, detail: str) -> None:
        """The broker accepted the connection."""
        with self._lock:
            self.connected = True
            self._since = self._now()
            self.failures = 0
        if self._connected_gauge is not None:
            self._connected_gauge.set(1)
        log.info("broker %s: connected (%s)", self.endpoint, detail)

    def down(self, why: str, *, expected: bool = False) -> None:
        """The connection was lost (``expected``: we closed it)."""
        with self._lock:
            was = self.connected
            self.connected = False
            self._since = self._now()
            self._last_problem = why
        if self._connected_gauge is not None:
            self._connected_gauge.set(0)
        if was and not expected:
            if self._disconnect_counter is not None:
                self._disconnect_counter.inc()
            log.warning("broker %s: disconnected (%s); reconnecting", self.endpoint, why)
        elif was:
            log.info("broker %s: disconnected (%s)", self.endpoint, why)

    def queued(self) -> None:
        """A message was received and queued for the worker (paho thread)."""
        now = self._now()
        with self._lock:
            self._pending.append(now)
            self._last_message = now

    def handled(self) -> None:
        """The worker is done with the oldest queued message (stored, refused or duplicate)."""
        with self._lock:
            if self._pending:
                self._pending.popleft()

    # ------------------------------------------------------------ figures

    def lag_s(self) -> float:
        """Age of the oldest message received and not yet handled."""
        with self._lock:
            oldest = self._pending[0] if self._pending else None
        return 0.0 if oldest is None else max(0.0, self._now() - oldest)

    def last_message_age_s(self) -> float:
        """Seconds since the last message (since this object was made while none came)."""
        with self._lock:
            last = self._last_message if self._last_message is not None else self._started
        return max(0.0, self._now() - last)

    def report(self) -> IngestHealth:
        """``ok`` or ``degraded``, with a sentence per problem."""
        with self._lock:
            connected, since, problem, failures = self.connected, self._since, self._last_problem, self.failures
            got_any = self._last_message is not None
        now = self._now()
        reasons: list[str] = []
        if not connected:
            tail = f"; {failures} failed attempt(s)" if failures else ""
            reasons.append(f"broker {self.endpoint} not connected for {now - since:.0f} s: {problem}{tail}")
        lag = self.lag_s()
        if lag > self.lag_degraded_s:
            reasons.append(f"ingest lag {lag:.0f} s (above {self.lag_degraded_s:g} s)")
        age = self.last_message_age_s()
        if connected and age > self.silence_degraded_s:
            what = "last message" if got_any else "no message since start,"
            reasons.append(f"{what} {age:.0f} s ago (above {self.silence_degraded_s:g} s)")
        return IngestHealth(
            status="degraded" if reasons else "ok",
            reasons=tuple(reasons),
            broker="connected" if connected else "disconnected",
            lag_s=lag,
            last_message_age_s=age,
        )

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """Export the link's figures in ``registry`` (once per registry)."""
        r = registry
        self._connected_gauge = Gauge(
            "lienwatch_ingest_broker_connected", "1 while the ingest is connected to the broker", registry=r
        )
        self._connected_gauge.set(1 if self.connected else 0)
        self._failure_counter = Counter(
            "lienwatch_ingest_broker_connect_failures", "Broker connection attempts that failed", registry=r
        )
        self._disconnect_counter = Counter(
            "lienwatch_ingest_broker_disconnects", "Broker connections lost", registry=r
        )
        lag = Gauge("lienwatch_ingest_lag_seconds", "Age of the oldest message not yet handled", registry=r)
        lag.set_function(self.lag_s)
        age = Gauge("lienwatch_ingest_last_message_age_seconds", "Seconds since the last message", registry=r)
        age.set_function(self.last_message_age_s)
