"""A fleet load generator: N devices publishing signed one-minute batches of 1 Hz fixes over MQTT.

How this works. :class:`FleetKeys` derives every device's Ed25519 key from one seed
(``sha256(seed / device id)``), so a fleet of any size is "bulk-provisioned" without a key
store: :meth:`FleetKeys.write_public_keys` writes the public keys as JSON lines
(``device_id``, ``public_key_pem``) for the collector's registry, and a rerun with the same
seed signs with the same keys. :class:`FleetGenerator` (sans-I/O) builds message ``i``:
device ``i mod N``, its next sequence number, 60 fixes at 1 Hz ending at the given time
along a straight drive from a per-device start point, and now and then (``alert_share``) a
raised alert; the boot id is drawn once per run and device. :func:`run_fleet` publishes
them at QoS 1 at ``rate`` batches per second for ``duration_s`` seconds (paced on the wall
clock, every few milliseconds the messages owed so far), then waits for the broker's
acknowledgements and returns a :class:`FleetReport`. Its time is bounded: it stops at the
duration (or ``stop``), and waits at most ``ack_timeout_s`` more for acknowledgements.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion

from protocol import Alert, Batch, Fix, Severity, batch_topic, seal_batch

from .errors import SimError

__all__ = ["FleetError", "FleetGenerator", "FleetKeys", "FleetReport", "run_fleet"]

_TICK_S = 0.005
MAX_DEVICES = 10_000_000
MAX_RATE = 1_000_000.0


class FleetError(SimError):
    """A fleet option is out of range, or the broker cannot be reached."""

    reason = "fleet"


@dataclass(frozen=True)
class FleetKeys:
    """Deterministic device keys: ``{prefix}-{index:07d}`` signs with ``sha256(seed/device_id)``.

    Args:
        devices: fleet size.
        seed: any text; the same seed gives the same keys.
        prefix: device id prefix (``[A-Za-z0-9_-]``).
    """

    devices: int
    seed: str = "lienwatch-fleet"
    prefix: str = "fleet"

    def __post_init__(self) -> None:
        if not 1 <= self.devices <= MAX_DEVICES:
            raise FleetError(f"--devices {self.devices} is outside 1..{MAX_DEVICES}")

    def device_id(self, index: int) -> str:
        return f"{self.prefix}-{index:07d}"

    def private_key(self, index: int) -> Ed25519PrivateKey:
        material = hashlib.sha256(f"{self.seed}/{self.device_id(index)}".encode()).digest()
        return Ed25519PrivateKey.from_private_bytes(material)

    def write_public_keys(self, path: Path) -> int:
        """Write one JSON line per device: ``{"device_id": ..., "public_key_pem": ...}``."""
        with path.open("w", encoding="utf-8") as out:
            for index in range(self.devices):
                pem = (
                    self.private_key(index)
                    .public_key()
                    .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
                )
                out.write(json.dumps({"device_id": self.device_id(index), "public_key_pem": pem.decode()}) + "\n")
        return self.devices


@dataclass
class FleetGenerator:
    """Builds the fleet's signed batches in order (sans-I/O; keys are derived once per device).

    Args:
        keys: the fleet's keys.
        fixes: fixes per batch (one per second; 60 = one-minute batches).
        alert_share: fraction of batches that also carry a raised alert (0..1).
        first_seq: sequence number of every device's first batch.
    """

    keys: FleetKeys
    fixes: int = 60
    alert_share: float = 0.01
    first_seq: int = 1
    _cache: dict[int, tuple[Ed25519PrivateKey, bytes]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.fixes <= 3600:
            raise FleetError(f"--fixes {self.fixes} is outside 1..3600")
        if not 0.0 <= self.alert_share <= 1.0:
            raise FleetError(f"--alert-share {self.alert_share} is outside 0..1")

    def _device(self, index: int) -> tuple[Ed25519PrivateKey, bytes]:
        known = self._cache.get(index)
        if known is None:
            known = self._cache[index] = (self.keys.private_key(index), os.urandom(16))
        return known

    def message(self, i: int, end_ms: int) -> tuple[str, bytes, bool]:
        """Message ``i`` of the run: (topic, signed bytes, carries an alert); fixes end at ``end_ms``."""
        index = i % self.keys.devices
        seq = self.first_seq + i // self.keys.devices
        key, boot_id = self._device(index)
        device_id = self.keys.device_id(index)
        # A per-device start point and heading (stable across runs), driving on at 8-20 m/s.
        h = hashlib.sha256(device_id.encode()).digest()
        lat0 = -40.0 + 80.0 * h[0] / 255 + h[1] / 25_500
        lon0 = -170.0 + 340.0 * h[2] / 255 + h[3] / 25_500
        heading = 2 * math.pi * h[4] / 256
        speed = 8.0 + 12.0 * h[5] / 255
        start_ms = end_ms - self.fixes * 1000
        metres0 = (seq - 1) * self.fixes * speed
        track = []
        for k in range(self.fixes):
            metres = metres0 + k * speed
            lat = lat0 + metres * math.cos(heading) / 111_320
            lon = lon0 + metres * math.sin(heading) / (111_320 * max(0.2, math.cos(math.radians(lat0))))
            track.append(
                Fix(start_ms + (k + 1) * 1000, round(lat, 7), round(((lon + 180) % 360) - 180, 7),
                    speed_mps=speed, course_deg=round(math.degrees(heading), 1), hdop=0.9, sats_used=11,
                    mean_snr=37.0)
            )  # fmt: skip
        alert = int.from_bytes(hashlib.sha256(f"{device_id}/{seq}".encode()).digest()[:4]) < self.alert_share * 2**32
        alerts = (
            (Alert("towing_suspected", Severity.HIGH, end_ms, f"{device_id}-{seq}", evidence={"speed_mps": speed}),)
            if alert
            else ()
        )
        topic = batch_topic(device_id)
        batch = Batch(device_id, boot_id, seq, end_ms, fixes=tuple(track), alerts=alerts)
        return topic, seal_batch(batch, key, topic), alert


@dataclass
class FleetReport:
    """What a fleet run did (printed as JSON by ``lienwatch sim fleet``)."""

    devices: int
    published: int = 0
    acknowledged: int = 0
    alerts: int = 0
    bytes: int = 0
    seconds: float = 0.0
    reason: str = "duration"

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "rate": round(self.rate, 1)}


def run_fleet(
    generator: FleetGenerator,
    *,
    host: str,
    port: int,
    rate: float,
    duration_s: float,
    client_id: str = "lw-sim-fleet",
    ack_timeout_s: float = 30.0,
    stop: threading.Event | None = None,
) -> FleetReport:
    """Publish ``rate`` batches/s of ``generator`` for ``duration_s`` seconds at QoS 1.

    Raises:
        FleetError: bad rate or duration, or the broker refused the connection.
    """
    if not 0 < rate <= MAX_RATE:
        raise FleetError(f"--rate {rate} is outside (0, {MAX_RATE:g}] batches per second")
    if not 0 <= duration_s <= 86_400:
        raise FleetError(f"--duration {duration_s} is outside 0..86400 seconds")
    stop = stop or threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    try:
        client.connect(host, port)
    except OSError as exc:
        raise FleetError(f"cannot reach the broker at {host}:{port}: {exc}") from exc
    client.loop_start()
    report = FleetReport(generator.keys.devices)
    infos: list[mqtt.MQTTMessageInfo] = []
    total = math.ceil(duration_s * rate)
    started = time.monotonic()
    try:
        while report.published < total:
            if stop.is_set():
                report.reason = "stopped"
                break
            owed = min(int((time.monotonic() - started) * rate) + 1, total)
            now_ms = time.time_ns() // 1_000_000
            while report.published < owed:
                topic, payload, alert = generator.message(report.published, now_ms)
                infos.append(client.publish(topic, payload, qos=1))
                report.published += 1
                report.alerts += alert
                report.bytes += len(payload)
            if report.published < total:
                stop.wait(_TICK_S)
        report.seconds = time.monotonic() - started
        deadline = time.monotonic() + ack_timeout_s
        for info in infos:
            info.wait_for_publish(max(0.0, deadline - time.monotonic()))
        report.acknowledged = sum(info.is_published() for info in infos)
    finally:
        client.disconnect()
        client.loop_stop()
    return report
