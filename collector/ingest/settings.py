"""Settings of the ingest path: ``[mqtt]`` (the broker connection) and ``[limits]``.

They are sections of the one :class:`collector.settings.Settings` (which loads and
validates them with the rest); they are defined here, beside their first user, so the
ingest depends on nothing above it.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError, check_range

__all__ = ["Limits", "MqttSettings"]

_MQTT_GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"lw-collector-{host}"


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[mqtt]``: how the ingest connects to the broker.

    Attributes:
        host: broker host.
        port: broker port.
        group: shared-subscription group; every collector in one group splits the stream.
        client_id: stable client id of this process (persistent session); unique per process.
        keepalive_s: MQTT keepalive.
        session_expiry_s: how long the broker keeps the session (and its unacked messages)
            while this collector is away.
        receive_maximum: in-flight window granted to the broker (MQTT 5 Receive Maximum):
            the most unacknowledged messages the broker sends at once; a group commit
            can only group what is in flight, and the fair queue can only reorder it.
        tls: connect with TLS.
        ca_file: CA bundle for TLS (system default when unset).
        cert_file: client certificate for mutual TLS.
        key_file: client key for mutual TLS.
        username: MQTT user name.
        password: MQTT password.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    group: str = "collectors"
    client_id: str = field(default_factory=_default_client_id)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86_400
    receive_maximum: int = 1000
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs or tracebacks

    def __post_init__(self) -> None:
        check_range("mqtt.port", self.port, 1, 65_535)
        check_range("mqtt.keepalive_s", self.keepalive_s, 5, 3_600)
        check_range("mqtt.session_expiry_s", self.session_expiry_s, 60, 2**32 - 1)
        check_range("mqtt.receive_maximum", self.receive_maximum, 1, 65_535)
        if not _MQTT_GROUP.fullmatch(self.group):
            raise ConfigError(f"mqtt.group {self.group!r} must match [A-Za-z0-9_-]{{1,64}}")
        if not _MQTT_GROUP.fullmatch(self.client_id):
            raise ConfigError(f"mqtt.client_id {self.client_id!r} must match [A-Za-z0-9_-]{{1,64}}")


@dataclass(frozen=True, slots=True)
class Limits:
    """``[limits]``: what the ingest accepts and how it behaves under trouble.

    Attributes:
        max_message_bytes: messages above this size are dead-lettered before decoding.
        max_clock_skew_s: observation or batch times further than this in the future
            (collector clock) are dead-lettered as ``time_in_future``.
        dead_letter_keep_bytes: raw bytes kept per dead letter (the head; the original size
            and the SHA-256 of the whole message are recorded). Authenticated
            ``seq_conflict`` batches are kept whole.
        key_cache_ttl_s: how often (at most) the ingest checks the registry version; a
            revoke takes effect within this time. 0 checks before every message.
        db_retry_initial_s: first backoff when the database is unreachable.
        db_retry_max_s: backoff ceiling.
        sqlite_busy_timeout_ms: SQLite ``busy_timeout``.
        dead_letters_per_device_hour: dead-letter rows one device id may add per hour
            (messages without a device id share one pool); more are only counted.
        device_rate_per_s: refused, dead-lettered or duplicate messages per second one
            device id may cost before its messages are refused before verification (token
            bucket, collector.ingest.admission; one token per started 64 KiB of payload, so
            1 MiB of junk costs 16; stored messages cost nothing); refused ones are
            acknowledged and counted, not stored.
        device_burst: bucket size of that rate limit (tokens).
        queue_max_bytes: bytes of received messages waiting for the worker; the MQTT
            thread waits (the broker holds the rest) when it is full.
        group_max_messages: messages the worker stores in one transaction (group commit).
        group_max_wait_ms: how long the worker waits for a group to fill once it has a
            first message (it stores at once when the group is full); bounds the latency
            group commit adds.
        lag_degraded_s: ``/healthz`` says degraded when the oldest message received and
            not yet handled is older than this.
        silence_degraded_s: ``/healthz`` says degraded when no message came for this long
            while connected (a fleet sends heartbeats; set it above their interval).
    """

    max_message_bytes: int = 1 << 20
    max_clock_skew_s: int = 86_400
    dead_letter_keep_bytes: int = 4096
    key_cache_ttl_s: float = 1.0
    db_retry_initial_s: float = 0.2
    db_retry_max_s: float = 10.0
    sqlite_busy_timeout_ms: int = 10_000
    dead_letters_per_device_hour: int = 1000
    device_rate_per_s: float = 5.0
    device_burst: int = 300
    queue_max_bytes: int = 16 << 20
    group_max_messages: int = 250
    group_max_wait_ms: int = 20
    lag_degraded_s: float = 60.0
    silence_degraded_s: float = 900.0

    def __post_init__(self) -> None:
        check_range("limits.max_message_bytes", self.max_message_bytes, 64, 64 << 20)
        check_range("limits.max_clock_skew_s", self.max_clock_skew_s, 0, 10 * 365 * 86_400)
        check_range("limits.dead_letter_keep_bytes", self.dead_letter_keep_bytes, 0, 64 << 20)
        check_range("limits.key_cache_ttl_s", self.key_cache_ttl_s, 0, 3_600)
        check_range("limits.db_retry_initial_s", self.db_retry_initial_s, 0.001, 60)
        check_range("limits.db_retry_max_s", self.db_retry_max_s, self.db_retry_initial_s, 3_600)
        check_range("limits.sqlite_busy_timeout_ms", self.sqlite_busy_timeout_ms, 0, 600_000)
        check_range("limits.dead_letters_per_device_hour", self.dead_letters_per_device_hour, 1, 1_000_000)
        check_range("limits.device_rate_per_s", self.device_rate_per_s, 0.01, 100_000)
        check_range("limits.device_burst", self.device_burst, 1, 1_000_000)
        check_range("limits.queue_max_bytes", self.queue_max_bytes, self.max_message_bytes, 1 << 34)
        check_range("limits.group_max_messages", self.group_max_messages, 1, 10_000)
        check_range("limits.group_max_wait_ms", self.group_max_wait_ms, 0, 10_000)
        check_range("limits.lag_degraded_s", self.lag_degraded_s, 0.1, 86_400)
        check_range("limits.silence_degraded_s", self.silence_degraded_s, 1, 30 * 86_400)
