"""The MQTT adapter of the ingest: paho-mqtt 2.x, MQTT 5, QoS 1, manual acknowledgements.

How the ack path works (the one thing here that must not be got wrong):

* The client connects with a stable client id, ``clean_start=False`` and a session
  expiry interval, so the broker keeps the session (subscriptions and every QoS 1 message
  not yet acknowledged) while this process is down, and resends them when it is back.
* It subscribes to ``$share/{group}/lw/v1/+/batch`` (collectors in one group split the
  stream) and ``lw/v1/+/state`` (every collector sees every state; applying one is
  idempotent).
* paho runs with ``manual_ack=True``. Its network thread only puts each message on a
  queue; one worker thread takes them in arrival order, calls
  :meth:`collector.ingest.ingestor.Ingestor.handle` (verify + one transaction), and only after the
  commit calls ``client.ack(mid, qos)``. Acks therefore leave in order, each after its
  commit. Dead-lettered messages are acknowledged too: the broker's in-flight window
  (MQTT 5 Receive Maximum) would otherwise fill and delivery would silently stall. A
  PUBACK with a failure reason code is never sent: the broker would drop the message.
* If the database is unreachable, the worker keeps the message unacknowledged and retries
  it with exponential backoff; nothing behind it is acknowledged either.
* A message received on an earlier connection is never acknowledged on a later one (its
  packet id may name another message now); the broker redelivers it, and the redelivered
  copy is stored as a duplicate and acknowledged.
* Before anything is queued, :class:`collector.ingest.admission.Admission` refuses QoS 0
  messages (never queued, never acknowledged: there is nothing to acknowledge) and
  messages of a device id whose token bucket is empty (acknowledged at once, counted,
  not stored); the bucket is charged by the worker for every message that stored nothing
  (dead letter, duplicate, stale state). The queue holds at most ``queue_max_bytes`` of
  payload: when it is full the paho thread waits, so the broker keeps the rest (QoS 1 flow
  control by Receive Maximum), and memory stays bounded whatever is published.
* :meth:`IngestService.stop` lets the worker finish the message it is in (commit, ack),
  leaves the rest unacknowledged (the broker redelivers them) and disconnects normally,
  which keeps the session.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..clock import wall_clock_ms
from ..errors import DatabaseUnavailableError, StorageError
from .admission import Admission, Refusal
from .health import BrokerLink
from .ingestor import Ingestor, IngestResult, Outcome
from .memory import release_large_buffers
from .settings import Limits, MqttSettings

#: refused messages whose dead-letter rows are committed together
DEAD_LETTER_GROUP = 200

__all__ = ["CommitListener", "IngestService", "batch_subscription", "make_mqtt_client", "state_subscription"]

#: called after each successful commit with the (device_id, seq) pairs stored or found duplicate
CommitListener = Callable[[Sequence[tuple[str, int]]], None]

log = logging.getLogger(__name__)


def batch_subscription(group: str) -> str:
    """The shared subscription the collectors of ``group`` split batches with."""
    return f"$share/{group}/lw/v1/+/batch"


def state_subscription() -> str:
    """Device state topics (not shared: every collector applies them, idempotently)."""
    return "lw/v1/+/state"


def make_mqtt_client(settings: MqttSettings, client_id: str, *, manual_ack: bool) -> mqtt.Client:
    """An MQTT 5 paho client with the broker credentials and TLS of ``[mqtt]``.

    Reconnects by itself (1 s .. 30 s backoff) once ``connect_async`` + ``loop_start`` ran.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    if settings.username is not None:
        client.username_pw_set(settings.username, settings.password)
    if settings.tls:
        client.tls_set(
            ca_certs=str(settings.ca_file) if settings.ca_file else None,
            certfile=str(settings.cert_file) if settings.cert_file else None,
            keyfile=str(settings.key_file) if settings.key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client


@dataclass(frozen=True, slots=True)
class _Delivery:
    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int
    received_ms: int
    received_at: float


class IngestService:
    """Subscribes to the device topics and feeds an :class:`Ingestor`, acking after commit.

    Args:
        ingestor: the verification and storage core.
        settings: ``[mqtt]``.
        limits: ``[limits]`` (database retry backoff).
    """

    def __init__(self, ingestor: Ingestor, settings: MqttSettings, limits: Limits | None = None) -> None:
        self.ingestor = ingestor
        ingestor.defer_dead_letters = True
        self.settings = settings
        self.limits = limits or Limits()
        #: Set once the subscriptions are granted (after each connect).
        self.ready = threading.Event()
        self._queue: queue.Queue[_Delivery] = queue.Queue()
        self.admission = Admission(self.limits.device_rate_per_s, self.limits.device_burst)
        self._admission_lock = threading.Lock()
        self._room = threading.Condition()
        self._queued_bytes = 0
        self.refused: dict[str, int] = {r.value: 0 for r in Refusal}
        self._stopping = threading.Event()
        self._generation = 0
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._sub_mid: int | None = None
        self.acked = 0
        self.unacked_old_connection = 0
        #: broker connection state, ingest lag and last message age (``/healthz``, ``/metrics``)
        self.link = BrokerLink(
            f"{settings.host}:{settings.port}",
            lag_degraded_s=self.limits.lag_degraded_s,
            silence_degraded_s=self.limits.silence_degraded_s,
        )
        self.link.register_metrics(ingestor.metrics.registry)
        self._commit_listeners: list[CommitListener] = []
        self.client = self._make_client()

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener`` (on the worker thread) after each successful commit with the
        ``(device_id, seq)`` pairs it stored or found already stored (duplicates). A listener
        that raises is logged; it never un-commits or delays the acknowledgement.
        """
        self._commit_listeners.append(listener)

    def _notify_committed(self, result: IngestResult) -> None:
        if result.outcome not in (Outcome.STORED, Outcome.DUPLICATE) or result.device_id is None:
            return
        if result.seq is None:
            return
        pairs = [(result.device_id, result.seq)]
        for listener in self._commit_listeners:
            try:
                listener(pairs)
            except Exception:  # a listener's bug must not stop the ingest
                log.exception("commit listener %r failed", listener)

    # ------------------------------------------------------------ paho side

    def _make_client(self) -> mqtt.Client:
        client = make_mqtt_client(self.settings, self.settings.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_disconnect = self._on_disconnect
        return client

    def _on_connect(self, client: mqtt.Client, _userdata: Any, flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self.link.attempt_failed(f"broker refused the connection: {reason}")
            return
        with self._lock:
            self._generation += 1
        self.link.up(f"as {self.settings.client_id}, session present: {flags.session_present}")
        result, mid = client.subscribe(
            [
                (batch_subscription(self.settings.group), SubscribeOptions(qos=1)),
                (state_subscription(), SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB)),
            ]
        )
        self._sub_mid = mid
        if result != mqtt.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", mqtt.error_string(result))

    def _on_connect_fail(self, _client: mqtt.Client, _userdata: Any) -> None:
        # paho says only that the TCP/TLS connection could not be made; it retries with backoff
        self.link.attempt_failed("cannot connect (connection refused, unreachable or TLS failure)")

    def _on_subscribe(self, _client: mqtt.Client, _userdata: Any, mid: int, reasons: Any, _props: Any) -> None:
        if mid != self._sub_mid:
            return
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            log.error("broker refused subscriptions: %s", ", ".join(failed))
            return
        log.info("subscribed to %s and %s", batch_subscription(self.settings.group), state_subscription())
        self.ready.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.ready.clear()
        self.link.down(str(reason), expected=self._stopping.is_set())

    def _on_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # brokers check UTF-8, but never trust it
            topic = repr(message._topic)
        with self._admission_lock:
            refusal = self.admission.check(topic, message.qos, time.monotonic())
        if refusal is not None:
            self.refused[refusal.value] += 1
            self.ingestor.metrics.refused.labels(refusal.value).inc()
            if message.qos > 0:
                client.ack(message.mid, message.qos)
                with self._lock:
                    self.acked += 1
            return
        size = len(message.payload)
        with self._room:  # back-pressure: the broker keeps what does not fit
            while self._queued_bytes and self._queued_bytes + size > self.limits.queue_max_bytes:
                if self._stopping.is_set():
                    return  # not acknowledged: redelivered on the next session
                self._room.wait(0.2)
            self._queued_bytes += size
        self.link.queued()
        self._queue.put(
            _Delivery(
                topic=topic,
                payload=bytes(message.payload),
                mid=message.mid,
                qos=message.qos,
                generation=self._generation,
                received_ms=wall_clock_ms(),
                received_at=time.monotonic(),
            )
        )
        self.ingestor.metrics.queue_depth.inc()

    # ------------------------------------------------------------ worker side

    def _work(self) -> None:
        # Refused messages are held (unacknowledged) until their dead-letter rows commit in
        # one transaction: when the queue runs dry, when DEAD_LETTER_GROUP are held, or
        # before the next acknowledgement (acks stay in arrival order, each after its commit).
        held: list[_Delivery] = []
        while True:
            try:
                delivery = self._queue.get(timeout=0.05 if held else 0.2)
            except queue.Empty:
                if held and not self._flush_held(held):
                    return
                if self._stopping.is_set():
                    return
                continue
            if self._stopping.is_set():
                return  # left unacknowledged: the broker redelivers it
            self.ingestor.metrics.queue_depth.dec()
            result = self._process(delivery)
            self.link.handled()
            with self._room:
                self._queued_bytes -= len(delivery.payload)
                self._room.notify_all()
            if result is None:
                return
            self.ingestor.metrics.latency.observe(time.monotonic() - delivery.received_at)
            self._notify_committed(result)
            if result.outcome in (Outcome.DEAD_LETTERED, Outcome.DUPLICATE, Outcome.STATE_STALE):
                with self._admission_lock:
                    self.admission.charge(delivery.topic, time.monotonic())
            if result.outcome is Outcome.DEAD_LETTERED:
                held.append(dataclasses.replace(delivery, payload=b""))  # only what the ack needs
                if len(held) >= DEAD_LETTER_GROUP and not self._flush_held(held):
                    return
                continue
            if held and not self._flush_held(held):
                return
            self._ack(delivery)

    def _flush_held(self, held: list[_Delivery]) -> bool:
        """Commit the deferred dead letters, then acknowledge ``held`` in order. False = stopping."""
        delay = self.limits.db_retry_initial_s
        while True:
            try:
                self.ingestor.flush_dead_letters()
                break
            except (DatabaseUnavailableError, StorageError) as exc:
                self.ingestor.metrics.db_retries.inc()
                self.ingestor.counters["db_retries"] += 1
                log.warning("database trouble, dead letters kept unacknowledged; retrying in %.1f s: %s", delay, exc)
            if self._stopping.wait(delay):
                return False
            delay = min(delay * 2, self.limits.db_retry_max_s)
        for delivery in held:
            self._ack(delivery)
        held.clear()
        return True

    def _process(self, delivery: _Delivery) -> IngestResult | None:
        """Handle one message; on a database outage retry with backoff. None = stopping."""
        delay = self.limits.db_retry_initial_s
        while True:
            try:
                return self.ingestor.handle(delivery.topic, delivery.payload, received_ms=delivery.received_ms)
            except (DatabaseUnavailableError, StorageError) as exc:
                self.ingestor.metrics.db_retries.inc()
                self.ingestor.counters["db_retries"] += 1
                log.warning("database trouble, message kept unacknowledged; retrying in %.1f s: %s", delay, exc)
            if self._stopping.wait(delay):
                return None
            delay = min(delay * 2, self.limits.db_retry_max_s)

    def _ack(self, delivery: _Delivery) -> None:
        if delivery.qos == 0:
            return
        with self._lock:
            current = delivery.generation == self._generation
        if not current:
            self.unacked_old_connection += 1
            return
        self.client.ack(delivery.mid, delivery.qos)
        self.acked += 1

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect (asynchronously; paho reconnects by itself) and start the worker."""
        s = self.settings
        release_large_buffers()  # message buffers up to 1 MiB go back to the system when freed
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry_s
        props.ReceiveMaximum = s.receive_maximum
        self._worker = threading.Thread(target=self._work, name="lw-ingest-worker", daemon=True)
        self._worker.start()
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=props)
        self.client.loop_start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the message in hand (commit + ack), then disconnect keeping the session."""
        self._stopping.set()
        if self._worker is not None:
            self._worker.join(timeout)
            if self._worker.is_alive():
                log.error("ingest worker did not finish within %.0f s", timeout)
        self.client.disconnect()
        self.client.loop_stop()
        self.ready.clear()

    def __enter__(self) -> IngestService:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
