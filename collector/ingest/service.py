"""The MQTT adapter of the ingest: paho-mqtt 2.x, MQTT 5, QoS 1, manual acknowledgements.

How the ack path works (the one thing here that must not be got wrong):

* The client connects with a stable client id, ``clean_start=False`` and a session
  expiry interval, so the broker keeps the session (subscriptions and every QoS 1 message
  not yet acknowledged) while this process is down, and resends them when it is back.
* It subscribes to ``$share/{group}/lw/v1/+/batch`` (collectors in one group split the
  stream) and ``lw/v1/+/state`` (every collector sees every state; applying one is
  idempotent).
* paho runs with ``manual_ack=True``. Its network thread only puts each message on a
  :class:`~collector.ingest.fairqueue.FairQueue` (one FIFO per device, served round-robin,
  bounded in bytes); one worker thread takes a *group* (up to ``limits.group_max_messages``,
  waiting at most ``limits.group_max_wait_ms`` for it to fill), calls
  :meth:`collector.ingest.ingestor.Ingestor.handle_group` (verify each, ONE transaction for
  all), and only after that commit calls ``client.ack(mid, qos)`` for them. Acks leave in
  arrival order, each after its commit: a message stored early (round-robin) waits for
  the acks of the messages received before it. Dead-lettered messages are acknowledged
  too (their rows are in the same transaction): the broker's in-flight window (MQTT 5
  Receive Maximum) would otherwise fill and delivery would silently stall. A PUBACK with
  a failure reason code is never sent: the broker would drop the message.
* Fairness: the round-robin means a device with a backlog (a flood of new batches, or of
  forged / duplicate messages until its admission bucket is empty) gets one place per
  round in a group, like a device with one batch; so another device's batch waits at
  most one group behind whatever is already received. What is still at the broker is
  behind at most ``mqtt.receive_maximum`` messages in flight, i.e. about
  ``receive_maximum / throughput`` seconds (0.5 s at 1,000 and 2,000 batches/s), plus
  whatever the broker queued for this session before it: a flood faster than this client
  can read (Mosquitto has no per-client rate limit) delays every device by seconds
  before ``on_message`` (docs/security.md section 4).
* After each commit the listeners added with :meth:`IngestService.add_commit_listener` get
  the (device_id, seq) of every batch the group stored or found already stored.
* If the database is unreachable, the worker keeps the group unacknowledged and retries
  it with exponential backoff; nothing behind it is acknowledged either.
* A message received on an earlier connection is never acknowledged on a later one (its
  packet id may name another message now); the broker redelivers it, and the redelivered
  copy is stored as a duplicate and acknowledged.
* Before anything is queued, :class:`collector.ingest.admission.Admission` refuses QoS 0
  messages (never queued, never acknowledged: there is nothing to acknowledge) and
  messages of a device id whose token bucket is empty (acknowledged at once, counted,
  not stored); the bucket is charged by the worker for every message that stored nothing
  (dead letter, duplicate, stale state), by its size (one token per started 64 KiB), so a
  device pushing 1 MiB junk is refused on this thread after a few groups instead of
  having hundreds of them copied, hashed and dead-lettered. The queue holds at most ``queue_max_bytes`` of
  payload: when it is full the paho thread waits, so the broker keeps the rest (QoS 1 flow
  control by Receive Maximum), and memory stays bounded whatever is published.
* :meth:`IngestService.stop` lets the worker finish the group it is in (commit, ack),
  leaves the rest unacknowledged (the broker redelivers them) and disconnects normally,
  which keeps the session.
"""

from __future__ import annotations

import logging
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
from .admission import UNKNOWN_DEVICES, Admission, Refusal, device_of
from .fairqueue import FairQueue
from .health import BrokerLink
from .ingestor import Ingestor, IngestResult, Message, Outcome
from .memory import release_large_buffers
from .mqtt_read import IngestClient
from .settings import Limits, MqttSettings

__all__ = [
    "CommitListener",
    "IngestService",
    "batch_subscription",
    "configure_mqtt_client",
    "make_mqtt_client",
    "state_subscription",
]

#: Called after each commit with the (device_id, seq) of every batch stored or found
#: already stored in it (the receipts are built from these).
CommitListener = Callable[[Sequence[tuple[str, int]]], None]

#: outcomes that cost work and stored nothing: they charge the device's admission bucket
_CHARGED = (Outcome.DEAD_LETTERED, Outcome.DUPLICATE, Outcome.STATE_STALE)

#: a rate-limited device id is named in the log at most this often (seconds)
RATE_LIMIT_LOG_INTERVAL_S = 60.0
#: device ids remembered for that; beyond it the memory starts over
_RATE_LIMIT_LOG_MAX_IDS = 10_000

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
    return configure_mqtt_client(client, settings)


def configure_mqtt_client(client: mqtt.Client, settings: MqttSettings) -> mqtt.Client:
    """Set the broker credentials, TLS and reconnect backoff of ``[mqtt]`` on ``client``."""
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
    order: int  # arrival order: acks leave in it


def _payload_size(delivery: _Delivery) -> int:
    return len(delivery.payload)


class IngestService:
    """Subscribes to the device topics and feeds an :class:`Ingestor`, acking after commit.

    Args:
        ingestor: the verification and storage core.
        settings: ``[mqtt]``.
        limits: ``[limits]`` (database retry backoff).
    """

    def __init__(self, ingestor: Ingestor, settings: MqttSettings, limits: Limits | None = None) -> None:
        self.ingestor = ingestor
        self.settings = settings
        self.limits = limits or Limits()
        #: Set once the subscriptions are granted (after each connect).
        self.ready = threading.Event()
        self._queue: FairQueue[_Delivery] = FairQueue(self.limits.queue_max_bytes, _payload_size)
        keys = ingestor.keys  # replaced whole on each reload: safe to read from the paho thread
        self.admission = Admission(
            self.limits.device_rate_per_s, self.limits.device_burst, known=lambda device: device in keys.keys
        )
        self._admission_lock = threading.Lock()
        self.refused: dict[str, int] = {r.value: 0 for r in Refusal}
        self._refused_qos0 = ingestor.metrics.refused.labels(Refusal.QOS0.value)
        self._rate_limit_logged: dict[str, float] = {}  # device id -> when it was last named (paho thread)
        self._stopping = threading.Event()
        self._generation = 0
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._sub_mid: int | None = None
        self._listeners: list[CommitListener] = []
        self._arrivals = 0  # order given to the next queued message (paho thread only)
        self._next_ack = 0  # order of the next message to acknowledge (worker only)
        self._committed: dict[int, _Delivery] = {}  # committed, waiting for an earlier ack
        self.acked = 0
        self.groups = 0
        self.unacked_old_connection = 0
        #: broker connection state, ingest lag and last message age (``/healthz``, ``/metrics``)
        self.link = BrokerLink(
            f"{settings.host}:{settings.port}",
            lag_degraded_s=self.limits.lag_degraded_s,
            silence_degraded_s=self.limits.silence_degraded_s,
        )
        self.link.register_metrics(ingestor.metrics.registry)
        self.client = self._make_client()

    @property
    def queued_bytes(self) -> int:
        """Payload bytes received and not yet processed."""
        return self._queue.bytes

    def add_commit_listener(self, listener: CommitListener) -> None:
        """Call ``listener`` after each commit with the (device_id, seq) of the batches it stored
        or found already stored (in message order; never with an empty list).

        It runs on the worker thread before the group's acks go out: keep it short (hand the
        pairs to another thread). An exception is logged and counted, never un-commits.
        """
        self._listeners.append(listener)

    # ------------------------------------------------------------ paho side

    def _make_client(self) -> IngestClient:
        client = IngestClient(
            self.settings.client_id, screen=self._screen, max_payload_bytes=self.limits.max_message_bytes
        )
        configure_mqtt_client(client, self.settings)
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

    def _screen(self, raw_topic: bytes, qos: int, size: int) -> bool:
        """Admit a PUBLISH from its header alone (paho thread, before its payload is read):
        this thread's time per message is what a flood costs every other device, since the
        broker delivers in order. A refused one is skipped unread and, at QoS 1,
        acknowledged by the client; every refusal is counted here."""
        if qos == 0:
            self._refuse(Refusal.QOS0)
            return False
        topic = raw_topic.decode("utf-8", "backslashreplace")  # brokers check UTF-8, never trust it
        now = time.monotonic()
        with self._admission_lock:
            if size > self.limits.max_message_bytes:
                # never read, so never dead-lettered: charged and counted like one
                self.admission.charge(topic, now, size)
                refusal: Refusal | None = Refusal.OVERSIZED
            else:
                refusal = self.admission.check(topic, qos, now)
        if refusal is None:
            return True
        self._refuse(refusal)
        if refusal is Refusal.RATE_LIMITED:
            self._name_rate_limited(self.admission.bucket_of(topic), device_of(topic), now)
        with self._lock:
            self.acked += 1
        return False

    def _refuse(self, refusal: Refusal) -> None:
        self.refused[refusal.value] += 1
        if refusal is Refusal.QOS0:
            self._refused_qos0.inc()
        else:
            self.ingestor.metrics.refused.labels(refusal.value).inc()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        # admitted by _screen: QoS 1, within the size limit, the device's bucket not empty
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = repr(message._topic)
        delivery = _Delivery(
            topic=topic,
            payload=bytes(message.payload),
            mid=message.mid,
            qos=message.qos,
            generation=self._generation,
            received_ms=wall_clock_ms(),
            received_at=time.monotonic(),
            order=self._arrivals,
        )
        # back-pressure: while the queue is full the broker keeps what does not fit
        if not self._queue.put(device_of(topic), delivery, self._stopping):
            return  # stopping: not acknowledged, redelivered on the next session
        self._arrivals += 1
        self.link.queued()
        self.ingestor.metrics.queue_depth.inc()

    def _name_rate_limited(self, bucket: str, device: str, now: float) -> None:
        """Log which device id is refused for its rate (the metric has no device label): on a
        broker without per-client limits the remedy is revoking that id's broker account.
        Unregistered ids share a bucket and one line a minute."""
        last = self._rate_limit_logged.get(bucket)
        if last is not None and now - last < RATE_LIMIT_LOG_INTERVAL_S:
            return
        if len(self._rate_limit_logged) >= _RATE_LIMIT_LOG_MAX_IDS:
            self._rate_limit_logged.clear()
        self._rate_limit_logged[bucket] = now
        if bucket == UNKNOWN_DEVICES:
            log.warning(
                "messages of unregistered device ids (%r and others) are over their shared admission rate limit: "
                "refused before verification (docs/security.md section 4)",
                device,
            )
            return
        log.warning(
            "device id %r is over its admission rate limit: its messages are refused before verification "
            "(docs/security.md section 4; revoke its broker account unless it is a genuine agent)",
            device,
        )

    # ------------------------------------------------------------ worker side

    def _work(self) -> None:
        limits = self.limits
        while not self._stopping.is_set():
            group = self._queue.take_group(limits.group_max_messages, 0.2, limits.group_max_wait_ms / 1000)
            if not group:
                continue
            self.ingestor.metrics.queue_depth.dec(len(group))
            results = None if self._stopping.is_set() else self._process(group)
            now = time.monotonic()
            if results is not None:
                # charged before the room is released: the MQTT thread, waiting for that room,
                # must see the device's bucket already charged for what it just cost
                with self._admission_lock:
                    for delivery, result in zip(group, results, strict=True):
                        if result.outcome in _CHARGED:
                            self.admission.charge(delivery.topic, now, len(delivery.payload))
            self._queue.release(group)
            if results is None:
                return  # stopping: left unacknowledged, the broker redelivers them
            for _ in group:
                self.link.handled()
            self.groups += 1
            for delivery in group:
                self.ingestor.metrics.latency.observe(now - delivery.received_at)
            self._notify(results)
            self._ack_in_order(group)

    def _process(self, group: list[_Delivery]) -> list[IngestResult] | None:
        """Handle one group; on a database outage retry it with backoff. None = stopping."""
        messages = [Message(d.topic, d.payload, d.received_ms) for d in group]
        delay = self.limits.db_retry_initial_s
        while True:
            try:
                return self.ingestor.handle_group(messages)
            except (DatabaseUnavailableError, StorageError) as exc:
                self.ingestor.metrics.db_retries.inc()
                self.ingestor.counters["db_retries"] += 1
                log.warning(
                    "database trouble, %d message(s) kept unacked; retrying in %.1f s: %s", len(group), delay, exc
                )
            if self._stopping.wait(delay):
                return None
            delay = min(delay * 2, self.limits.db_retry_max_s)

    def _notify(self, results: list[IngestResult]) -> None:
        pairs = [
            (r.device_id, r.seq)
            for r in results
            if r.outcome in (Outcome.STORED, Outcome.DUPLICATE) and r.device_id is not None and r.seq is not None
        ]
        if not pairs:
            return
        for listener in self._listeners:
            try:
                listener(pairs)
            except Exception:  # committed already: a listener cannot undo it
                log.exception("commit listener %r failed", listener)
                self.ingestor.metrics.hook_errors.inc()
                self.ingestor.counters["hook_errors"] += 1

    def _ack_in_order(self, group: list[_Delivery]) -> None:
        """Acknowledge every committed message whose predecessors are all acknowledged."""
        for delivery in group:
            self._committed[delivery.order] = delivery
        while self._next_ack in self._committed:
            self._ack(self._committed.pop(self._next_ack))
            self._next_ack += 1

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
        """Finish the group in hand (commit + ack), then disconnect keeping the session."""
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
