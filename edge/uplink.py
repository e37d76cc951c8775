"""MQTT uplink (batches and state, QoS 1) and downlink (signed configurations).

How this works
--------------
One thread owns the paho client and calls ``client.loop()`` itself, so every paho
callback, every publish and every outbox read for publishing happen on that thread (no
locking around paho). A fresh paho client is made for every connection attempt: the Last
Will (a signed ``online: false`` state) is signed at connect time, and paho's own
in-flight bookkeeping never survives a connection. The outbox is the only truth about
what still has to go: after every (re)connect the thread publishes the oldest stored
batches again, at most ``inflight`` unacknowledged at a time, and deletes a batch from the
outbox only when its PUBACK arrives with a success reason code. A PUBACK with a failure
code (>= 0x80) keeps the batch and defers it with the backoff. Connection failures wait
an exponentially growing delay with jitter (half fixed, half random) before retrying.

With end-to-end receipts (:mod:`edge.receipts`) a successful PUBACK only stamps the row;
the row is deleted when a signed receipt on ``lw/v1/{device}/receipt`` covers it, and a row
stamped longer than ``receipt_timeout_s`` ago is published again (or, in ``auto`` mode while
no receipt was ever accepted, deleted: an old collector sends none). Receipts are checked
on this thread, like everything else paho delivers.

The downlink is a subscription to ``lw/v1/{device}/config``. Messages are handed to a
callback (the agent queues them for its engine thread); :class:`ConfigGate` decides
whether one is acceptable: signature by the collector key over the topic (so a config for
another device, replayed here, fails), and a version strictly newer than the last one
accepted, persisted across restarts.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from protocol import DeviceConfig, batch_topic, config_topic, receipt_topic, state_topic
from protocol.errors import ProtocolError

from .backoff import Backoff
from .config import MqttSettings
from .downlink_trust import DownlinkTrust
from .errors import InputError, UsageError
from .outbox import Outbox
from .receipts import ReceiptGate, ReceiptMode, ReceiptRejectedError
from .sequence import write_atomically

__all__ = ["ConfigGate", "DownlinkRejectedError", "Uplink", "UplinkError"]

log = logging.getLogger("lienwatch.uplink")


#: PUBACK reason code 0x10 (MQTT 5): accepted, but nobody was subscribed, so nothing was delivered.
NO_MATCHING_SUBSCRIBERS = 0x10


class UplinkError(UsageError):
    """The uplink was used wrongly (started twice, bad settings)."""

    reason = "uplink_error"


class DownlinkRejectedError(InputError):
    """A configuration message was refused; ``reason`` says why (a stable slug)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ----------------------------------------------------------------------------- downlink


class ConfigGate:
    """Accepts only collector-signed configurations for this device with a newer version.

    The last accepted message is kept (signed, as received) in ``state_file`` and checked
    again at start, so the version floor survives restarts and cannot be edited locally.
    Its version is also written to ``floor_file``, kept elsewhere (beside the device key):
    when ``state_file`` is lost, the floor is not, and an older genuine configuration
    replayed on the config topic is still refused as ``stale_version``.

    The collector's key can be rotated: a configuration may announce the next key, which is
    then trusted too until it signs a configuration and replaces the old one
    (:class:`~edge.downlink_trust.DownlinkTrust`; the promotions are kept in
    ``{floor_file or state_file}.keys``).

    Args:
        device_id: this device.
        public_key: the collector's Ed25519 public key (``agent.toml``).
        state_file: where the last accepted configuration message is kept.
        floor_file: where the version floor is kept as well (None: nowhere else).
    """

    def __init__(
        self, device_id: str, public_key: Ed25519PublicKey, state_file: Path, floor_file: Path | None = None
    ) -> None:
        self.device_id = device_id
        self.topic = config_topic(device_id)
        self.state_file = Path(state_file)
        self.floor_file = Path(floor_file) if floor_file is not None else None
        beside = self.floor_file or self.state_file
        self.trust = DownlinkTrust(public_key, self.topic, beside.with_name(f"{beside.name}.keys"))
        self._by_next: bytes | None = None
        self._floor = self._read_floor()
        self.counters: dict[str, int] = {"config_accepted": 0, "config_rejected": 0, "config_unchanged": 0}
        self.last_rejection: str | None = None
        self.current: DeviceConfig | None = None
        self._current_message: bytes | None = None
        self._load()
        self.counters.update(self.trust.counters)

    def _load(self) -> None:
        try:
            message = self.state_file.read_bytes()
        except FileNotFoundError:
            return
        try:
            self.current, _ = self.trust.open(message)
            self._current_message = message
            self.trust.held(self.current, message)
        except ProtocolError as exc:
            aside = self.state_file.with_name(f"{self.state_file.name}.corrupt-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.state_file.replace(aside)
            self.counters["config_state_lost"] = 1
            self.last_rejection = f"stored configuration {self.state_file} failed verification ({exc}); moved aside"
            log.warning("config_state_lost", extra={"fields": {"reason": exc.reason, "detail": str(exc)}})

    def _read_floor(self) -> int:
        if self.floor_file is None:
            return 0
        try:
            value, crc = self.floor_file.read_text(encoding="ascii").strip().split(" ")
            if f"{zlib.crc32(value.encode()):08x}" == crc:
                return max(0, int(value))
            problem = "bad checksum"
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            problem = str(exc)
        self.counters["config_floor_unreadable"] = 1
        log.warning("config_floor_unreadable", extra={"fields": {"file": str(self.floor_file), "error": problem}})
        return 0

    @property
    def version(self) -> int:
        """Version floor: the last accepted configuration's, or the kept floor (0 if none)."""
        return max(self.current.version if self.current else 0, self._floor)

    def _reject(self, reason: str, message: str) -> DownlinkRejectedError:
        self.counters["config_rejected"] += 1
        key = f"config_rejected_{reason}"
        self.counters[key] = self.counters.get(key, 0) + 1
        self.last_rejection = message
        return DownlinkRejectedError(reason, message)

    def check(self, topic: str, message: bytes) -> DeviceConfig | None:
        """Verify a received configuration; return it if it should be applied.

        Returns:
            The configuration, or None when it is exactly the one already applied (a
            retained message seen again after a reconnect).

        Raises:
            DownlinkRejectedError: wrong topic, bad signature/encoding, other device, old version.
        """
        if topic != self.topic:
            raise self._reject("wrong_topic", f"configuration on {topic!r:.120}, expected {self.topic}")
        if message == self._current_message:
            self.counters["config_unchanged"] += 1
            return None
        try:
            config, by_next = self.trust.open(message)
        except ProtocolError as exc:
            raise self._reject(exc.reason, f"configuration on {topic} refused: {exc}") from exc
        # A version equal to the kept floor is the configuration that was lost with
        # state_file: the collector signs each version once, so taking it again is no rollback.
        held = self.current.version if self.current else 0
        if config.version <= held or config.version < self._floor:
            raise self._reject(
                "stale_version", f"configuration version {config.version} is not newer than {self.version}"
            )
        self._by_next = message if by_next else None
        return config

    def commit(self, config: DeviceConfig, message: bytes) -> None:
        """Record ``config`` (already applied) as the new floor, durably."""
        write_atomically(self.state_file, message)
        if self.floor_file is not None:
            value = str(config.version)
            try:
                write_atomically(self.floor_file, f"{value} {zlib.crc32(value.encode()):08x}\n".encode())
            except OSError as exc:  # the configuration stands; only the second copy is missing
                self.counters["config_floor_unwritable"] = self.counters.get("config_floor_unwritable", 0) + 1
                fields = {"file": str(self.floor_file), "error": str(exc)}
                log.warning("config_floor_unwritable", extra={"fields": fields})
            self._floor = max(self._floor, config.version)
        self.trust.accepted(config, message, by_next=self._by_next == message)
        self._by_next = None
        self.counters.update(self.trust.counters)
        self.current = config
        self._current_message = message
        self.counters["config_accepted"] += 1

    def refuse(self, reason: str, message: str) -> DownlinkRejectedError:
        """Count a configuration that verified but could not be applied (bad body)."""
        return self._reject(reason, message)


# ----------------------------------------------------------------------------- uplink


class Uplink:
    """Publishes the outbox over MQTT 5 (QoS 1) and receives configuration messages.

    Args:
        settings: the [mqtt] settings.
        device_id: this device (topics are derived from it).
        outbox: where batches wait; rows are deleted on successful PUBACK.
        make_state: ``make_state(online)`` returns a sealed DeviceState message for the
            state topic (called at each connect for the birth message and the Last Will).
        on_config: called with (topic, payload) for each message on the config topic, on
            the uplink thread; must not block.
        rng: randomness for jitter (tests pass a seeded one).
        on_connecting: called before each connection attempt, before the Last Will is
            made (the agent moves to a new state connection counter there, so the will and
            the birth message of one connection carry the same, never reused, counter).
        receipts: the receipt gate (None: no collector key, receipts off).
        receipt_mode: what a PUBACK does to the outbox row (see :mod:`edge.receipts`).
        receipt_timeout_s: a broker-acknowledged batch no receipt covered after this long
            is published again (or, in ``auto`` mode before any receipt, forgotten).
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        device_id: str,
        outbox: Outbox,
        make_state: Callable[[bool], bytes],
        on_config: Callable[[str, bytes], None] | None = None,
        rng: random.Random | None = None,
        on_connecting: Callable[[], None] | None = None,
        receipts: ReceiptGate | None = None,
        receipt_mode: ReceiptMode = ReceiptMode.AUTO,
        receipt_timeout_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.receipts = receipts
        self.receipt_mode = receipt_mode if receipts is not None else ReceiptMode.OFF
        self.receipt_timeout_ms = int(receipt_timeout_s * 1000)
        self._next_receipt_check = 0.0
        self._on_connecting = on_connecting
        self.device_id = device_id
        self.outbox = outbox
        self._make_state = make_state
        self._on_config = on_config
        self._rng = rng or random.Random()
        self._backoff = Backoff(settings.backoff_min_s, settings.backoff_max_s)
        self.batch_topic = batch_topic(device_id)
        self.state_topic = state_topic(device_id)
        self.config_topic = config_topic(device_id)
        self.receipt_topic = receipt_topic(device_id)
        self.connected = threading.Event()
        #: set once the broker acknowledged the config subscription (cleared on disconnect)
        self.downlink_ready = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._client: mqtt.Client | None = None
        self._ready = False
        self._attempt = 0
        self._next_attempt = 0.0
        self._inflight: dict[int, int] = {}  # mid -> seq
        self._deferred: dict[int, float] = {}  # seq -> monotonic time it may go again
        self._dirty = True
        self._drain_deadline: float | None = None
        self._final_state_mid: int | None = None
        self._final_state_acked = threading.Event()
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "mqtt_connects",
                "mqtt_connect_failures",
                "mqtt_disconnects",
                "batches_published",
                "batches_acked",
                "puback_failures",
                "puback_no_subscribers",
                "config_messages",
                "receipt_messages",
                "batches_receipted",
                "batches_resent",
                "batches_expired_unreceipted",
            ),
            0,
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the network thread (connects in the background)."""
        if self._thread is not None:
            raise UplinkError("uplink already started")
        self._thread = threading.Thread(target=self._run, name="lw-uplink", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Tell the uplink that the outbox has something new."""
        self._dirty = True
        self._wake.set()

    @property
    def alive(self) -> bool:
        """True while the network thread runs (False before start and after stop or a crash)."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def inflight(self) -> int:
        """Batches published and not yet acknowledged."""
        return len(self._inflight)

    def stop(self, grace_s: float = 0.0, *, timeout: float = 30.0) -> bool:
        """Drain for up to ``grace_s``, publish the offline state, disconnect, join the thread.

        Returns:
            True if the outbox was empty and nothing was in flight when the uplink stopped.
        """
        thread = self._thread
        if thread is None:
            return False
        self._drain_deadline = time.monotonic() + grace_s
        self._stop.set()
        self._wake.set()
        thread.join(timeout=timeout + grace_s)
        self._thread = None
        return not self._inflight and self.outbox.stats()["outbox_batches"] == 0

    # ------------------------------------------------------------------ thread

    def _run(self) -> None:
        try:
            while True:
                now = time.monotonic()
                if self._stop.is_set() and self._done_draining(now):
                    break
                if self._client is None:
                    if self._stop.is_set() and (self._drain_deadline is None or now >= self._drain_deadline):
                        break
                    if now < self._next_attempt:
                        self._wake.wait(min(0.2, self._next_attempt - now))
                        self._wake.clear()
                        continue
                    self._connect()
                    continue
                rc = self._client.loop(timeout=0.05)
                if rc != mqtt.MQTT_ERR_SUCCESS and self._client is not None:
                    self._lost(f"loop returned {rc}")
                    continue
                if self._ready:
                    self._release_deferred(now)
                    self._check_receipt_timeouts(now)
                    if self._dirty:
                        self._pump()
            self._forget_unreceipted()
            self._say_goodbye()
        except Exception:  # the thread must never die silently
            log.exception("uplink_crashed")
            raise
        finally:
            self._shutdown_client()

    def _say_goodbye(self) -> None:
        """Clean shutdown: replace the retained birth message with a signed offline state."""
        client = self._client
        if client is None or not self._ready:
            return
        info = client.publish(self.state_topic, self._make_state(False), qos=1, retain=True)
        self._final_state_mid = info.mid
        deadline = time.monotonic() + 2.0
        while not self._final_state_acked.is_set() and time.monotonic() < deadline and self._client is not None:
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                break

    def _done_draining(self, now: float) -> bool:
        assert self._drain_deadline is not None
        if now >= self._drain_deadline:
            return True
        if not self._ready:
            return False
        if self._inflight or self.outbox.pending(1, exclude=self._deferred):
            return False
        # With receipts in use, the grace also waits for the receipts of what was published.
        return self._resend_cutoff_ms() is None or self.outbox.awaiting_receipt() == 0

    def _connect(self) -> None:
        s = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=s.client_id, protocol=mqtt.MQTTv5, reconnect_on_failure=False
        )
        client.connect_timeout = 10.0
        client.max_inflight_messages_set(s.inflight + 2)  # +2: birth and final state messages
        client.max_queued_messages_set(0)
        if s.tls:
            client.tls_set(
                ca_certs=str(s.ca_file) if s.ca_file else None,
                certfile=str(s.cert_file) if s.cert_file else None,
                keyfile=str(s.key_file) if s.key_file else None,
            )
        if s.username is not None:
            client.username_pw_set(s.username, s.password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        if self._on_connecting is not None:
            self._on_connecting()
        try:
            client.will_set(self.state_topic, self._make_state(False), qos=1, retain=True)
            client.connect(s.host, s.port, keepalive=s.keepalive_s, clean_start=True)
        except (OSError, ValueError) as exc:
            self.counters["mqtt_connect_failures"] += 1
            self._schedule_retry(f"connect to {s.host}:{s.port} failed: {exc}")
            with contextlib.suppress(Exception):
                client.socket_close()  # type: ignore[attr-defined]
            return
        self._client = client

    def _schedule_retry(self, why: str) -> None:
        delay = self._backoff.delay(self._attempt, self._rng)
        self._attempt += 1
        self._next_attempt = time.monotonic() + delay
        log.info("mqtt_retry", extra={"fields": {"attempt": self._attempt, "delay_s": round(delay, 3), "why": why}})

    def _lost(self, why: str) -> None:
        was_ready = self._ready
        self._shutdown_client()
        if was_ready:
            self.counters["mqtt_disconnects"] += 1
        else:
            self.counters["mqtt_connect_failures"] += 1
        self._schedule_retry(why)

    def _shutdown_client(self) -> None:
        client, self._client = self._client, None
        self._ready = False
        self.connected.clear()
        self.downlink_ready.clear()
        self._inflight.clear()
        self._dirty = True
        if client is not None:
            with contextlib.suppress(Exception):
                client.disconnect()
            with contextlib.suppress(Exception):
                client.loop(timeout=0.01)

    # ------------------------------------------------------------------ paho callbacks (uplink thread)

    def _on_connect(self, client: mqtt.Client, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure:
            log.warning("mqtt_refused", extra={"fields": {"reason": str(reason)}})
            self._lost(f"CONNACK {reason}")
            return
        self._ready = True
        self._attempt = 0
        self._dirty = True
        self.counters["mqtt_connects"] += 1
        client.publish(self.state_topic, self._make_state(True), qos=1, retain=True)
        topics = [(self.config_topic, 1)] if self._on_config is not None else []
        if self.receipts is not None:
            topics.append((self.receipt_topic, 1))
        if topics:
            client.subscribe(topics)
        self.connected.set()
        log.info("mqtt_connected", extra={"fields": {"host": self.settings.host, "port": self.settings.port}})

    def _on_disconnect(self, _c: Any, _u: Any, _flags: Any, reason: ReasonCode, _p: Any) -> None:
        if self._client is not None:
            self._lost(f"disconnected: {reason}")

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: ReasonCode, _p: Any) -> None:
        if mid == self._final_state_mid:
            self._final_state_acked.set()
            return
        seq = self._inflight.pop(mid, None)
        if seq is None:
            return
        self._dirty = True
        # 0x10 "No matching subscribers" is a success code in MQTT 5, but the broker has
        # dropped the message: no collector is subscribed right now (e.g. Mosquitto does not
        # restore shared subscriptions after a restart until the collector resubscribes).
        # Keep the batch and publish it again later.
        no_subscribers = reason.value == NO_MATCHING_SUBSCRIBERS
        if reason.is_failure or no_subscribers:
            self.counters["puback_no_subscribers" if no_subscribers else "puback_failures"] += 1
            delay = self._backoff.delay(min(self._attempt + 3, 10), self._rng)
            self._deferred[seq] = time.monotonic() + delay
            log.warning(
                "puback_failure", extra={"fields": {"seq": seq, "reason": str(reason), "retry_in_s": round(delay, 1)}}
            )
            return
        self.counters["batches_acked"] += 1
        if self.receipt_mode is ReceiptMode.OFF:
            self.outbox.ack(seq)
        else:
            self.outbox.mark_published(seq)

    def _on_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        if all(not r.is_failure for r in reasons):
            self.downlink_ready.set()
        else:
            log.error("config_subscription_refused", extra={"fields": {"reasons": [str(r) for r in reasons]}})

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        if message.topic == self.receipt_topic and self.receipts is not None:
            self._on_receipt(message.topic, bytes(message.payload))
            return
        if message.topic != self.config_topic or self._on_config is None:
            self.counters["unexpected_messages"] = self.counters.get("unexpected_messages", 0) + 1
            log.warning("unexpected_message", extra={"fields": {"topic": message.topic[:120]}})
            return
        self.counters["config_messages"] += 1
        self._on_config(message.topic, bytes(message.payload))

    def _on_receipt(self, topic: str, payload: bytes) -> None:
        assert self.receipts is not None
        self.counters["receipt_messages"] += 1
        try:
            receipt = self.receipts.check(topic, payload)
        except ReceiptRejectedError as exc:
            log.warning("receipt_rejected", extra={"fields": {"reason": exc.reason, "detail": str(exc)[:300]}})
            return
        if receipt is None or self.receipt_mode is ReceiptMode.OFF:
            return
        # an evicted acknowledged batch this receipt lacks after the timeout was lost by the broker
        deleted = self.outbox.confirm(
            receipt.low, receipt.high, receipt.ranges, lost_before_ms=self._resend_cutoff_ms()
        )
        self.counters["batches_receipted"] += deleted

    # ------------------------------------------------------------------ publishing

    def _resend_cutoff_ms(self) -> int | None:
        """Acknowledged batches stamped at or before this are published again (None: never)."""
        if self.receipt_mode is ReceiptMode.OFF:
            return None
        if self.receipt_mode is ReceiptMode.AUTO and self.receipts is not None and not self.receipts.ever_seen:
            return None
        return self.outbox.now_ms() - self.receipt_timeout_ms

    def _forget_unreceipted(self) -> None:
        """Clean stop in ``auto`` mode before any receipt: what the broker acknowledged is done (as before receipts)."""
        if self.receipt_mode is ReceiptMode.OFF or self._resend_cutoff_ms() is not None:
            return
        self.counters["batches_expired_unreceipted"] += self.outbox.expire_published(self.outbox.now_ms())

    def _check_receipt_timeouts(self, now: float) -> None:
        """Once a second: re-publish (or, before any receipt in ``auto`` mode, forget) stale rows."""
        if self.receipt_mode is ReceiptMode.OFF or now < self._next_receipt_check:
            return
        self._next_receipt_check = now + 1.0
        if self._resend_cutoff_ms() is not None:
            self._dirty = True  # _pump picks up what timed out
            return
        expired = self.outbox.expire_published(self.outbox.now_ms() - self.receipt_timeout_ms)
        self.counters["batches_expired_unreceipted"] += expired

    def _release_deferred(self, now: float) -> None:
        if self._deferred:
            for seq in [s for s, t in self._deferred.items() if t <= now]:
                del self._deferred[seq]
                self._dirty = True

    def _pump(self) -> None:
        client = self._client
        assert client is not None
        self._dirty = False
        room = self.settings.inflight - len(self._inflight)
        if room <= 0:
            return
        exclude = set(self._inflight.values()) | set(self._deferred)
        cutoff = self._resend_cutoff_ms()
        for stored in self.outbox.pending(room, exclude=exclude, resend_before_ms=cutoff):
            info = client.publish(self.batch_topic, stored.message, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                self._dirty = True
                return
            self._inflight[info.mid] = stored.seq
            self.counters["batches_published"] += 1
            if stored.published_ms is not None:
                self.counters["batches_resent"] += 1
