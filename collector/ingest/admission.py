"""What the ingest admits *before* verifying a signature: bounded work for anyone who can publish.

How this works. Everything here runs before ``protocol.open_batch`` and uses only the
topic, the QoS and the size, so a flood costs a dictionary lookup per message:

* :class:`Admission` refuses QoS 0 messages (a device publishes at QoS 1; a QoS 0 message
  cannot be flow-controlled by the broker's Receive Maximum, so it could fill memory) and
  applies a per-device token bucket keyed on the topic's device id. The bucket is charged
  for every message that turned out to cost work without storing anything (refused,
  dead-lettered, duplicate): one token per started :data:`CHARGE_UNIT_BYTES` of payload
  (reading, copying and hashing a message costs in proportion to its size, so 1 MiB of
  junk costs 16 tokens, a 1 KiB replay one); a message that is stored costs nothing. So
  a genuine agent flushing a day of backlog is never throttled, while a topic flooded
  with junk or replays is refused after ``burst`` tokens' worth of them, at
  ``rate_per_s`` afterwards. Refused messages are counted, never queued and never
  written to the database.
* Device ids that are not registered (``known(id)`` is False: no active key) share ONE
  bucket, :data:`UNKNOWN_DEVICES`: their messages can never store anything, and per-id
  buckets would not bound a flood spread over many invented ids (an open broker, or an
  account allowed on many topics).
* :class:`DeadLetterQuota` bounds the dead-letter rows one device id (or the pool of
  messages without a device) may add per hour; beyond it a refusal is only counted.

Both are pure state machines fed with times (``now_s`` from a monotonic clock, ``now_ms``
from the collector clock), so tests drive them without sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

__all__ = [
    "CHARGE_UNIT_BYTES",
    "UNKNOWN_DEVICES",
    "Admission",
    "DeadLetterQuota",
    "Refusal",
    "TokenBucket",
    "device_of",
]

#: device ids tracked at once before idle buckets are forgotten
MAX_TRACKED_DEVICES = 100_000

#: a message that stored nothing costs one token per started unit of this many payload bytes
CHARGE_UNIT_BYTES = 64 << 10
#: the bucket every device id that is not registered shares (not a valid device id)
UNKNOWN_DEVICES = "<unregistered>"


class Refusal(StrEnum):
    """Why a message was not admitted (the metric label)."""

    QOS0 = "qos0"
    RATE_LIMITED = "rate_limited"
    OVERSIZED = "oversized"  # payload over [limits] max_message_bytes: never read


@dataclass(slots=True)
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up."""

    rate: float
    burst: float
    tokens: float = field(init=False)
    updated_s: float = 0.0

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self, now_s: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens at ``now_s``; False when there were fewer. The cost is spent
        either way (the work was done): the bucket goes into debt, down to ``-burst``, and
        refills from there."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now_s - self.updated_s) * self.rate)
        self.updated_s = now_s
        enough = self.tokens >= cost
        self.tokens = max(-self.burst, self.tokens - cost)
        return enough

    def has_token(self, now_s: float) -> bool:
        """True when :meth:`take` at ``now_s`` would succeed (nothing is spent)."""
        return self.tokens + max(0.0, now_s - self.updated_s) * self.rate >= 1.0

    def full_at(self, now_s: float) -> bool:
        """True when the bucket would be full at ``now_s`` (it can be forgotten)."""
        return self.tokens + max(0.0, now_s - self.updated_s) * self.rate >= self.burst


def device_of(topic: str) -> str:
    """The device level of ``lw/v1/{device}/...`` without validating anything else."""
    parts = topic.split("/", 3)
    return parts[2][:64] if len(parts) >= 3 else ""


class Admission:
    """Admits or refuses a received message before it is queued for verification.

    Args:
        rate_per_s: sustained messages per second per device id.
        burst: messages a device id may send at once after being quiet.
        known: is this device id registered? Those that are not share one bucket
            (:data:`UNKNOWN_DEVICES`). Default: every id has its own.
    """

    def __init__(self, rate_per_s: float, burst: int, known: Callable[[str], bool] | None = None) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._known = known
        self._buckets: dict[str, TokenBucket] = {}

    def bucket_of(self, topic: str) -> str:
        """The bucket a message on ``topic`` is charged to: its device id, or
        :data:`UNKNOWN_DEVICES` for an id that is not registered."""
        device = device_of(topic)
        return device if self._known is None or self._known(device) else UNKNOWN_DEVICES

    def check(self, topic: str, qos: int, now_s: float) -> Refusal | None:
        """``None`` to admit the message, else why it is refused (nothing is charged here)."""
        if qos == 0:
            return Refusal.QOS0
        bucket = self._buckets.get(self.bucket_of(topic))
        if bucket is None or bucket.has_token(now_s):
            return None
        return Refusal.RATE_LIMITED

    def charge(self, topic: str, now_s: float, size: int = 0) -> None:
        """Charge the topic's bucket for a message of ``size`` payload bytes that cost work and
        stored nothing: one token per started :data:`CHARGE_UNIT_BYTES` (at least one)."""
        device = self.bucket_of(topic)
        bucket = self._buckets.get(device)
        if bucket is None:
            if len(self._buckets) >= MAX_TRACKED_DEVICES:
                self._forget_idle(now_s)
            bucket = self._buckets[device] = TokenBucket(self.rate_per_s, float(self.burst))
            bucket.updated_s = now_s
        bucket.take(now_s, float(max(1, -(-size // CHARGE_UNIT_BYTES))))

    def _forget_idle(self, now_s: float) -> None:
        self._buckets = {d: b for d, b in self._buckets.items() if not b.full_at(now_s)}
        if len(self._buckets) >= MAX_TRACKED_DEVICES:  # a flood of distinct ids: start over
            self._buckets.clear()


class DeadLetterQuota:
    """At most ``per_hour`` dead-letter rows per device id per clock hour.

    Args:
        per_hour: rows per device id (messages without a device id share one pool) per hour.
    """

    def __init__(self, per_hour: int) -> None:
        self.per_hour = per_hour
        self._hour = -1
        self._used: dict[str, int] = {}

    def allow(self, device_id: str | None, now_ms: int) -> bool:
        """Count one row for ``device_id`` in the hour of ``now_ms``; False when over quota."""
        hour = now_ms // 3_600_000
        if hour != self._hour:
            self._hour = hour
            self._used.clear()
        key = device_id or ""
        used = self._used.get(key, 0)
        if used >= self.per_hour:
            return False
        if key not in self._used and len(self._used) >= MAX_TRACKED_DEVICES:
            key = ""  # too many distinct ids this hour: they share the anonymous pool
            used = self._used.get(key, 0)
            if used >= self.per_hour:
                return False
        self._used[key] = used + 1
        return True
