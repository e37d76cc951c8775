"""The agent side of end-to-end receipts (docs/protocol.md section 14).

How this works
--------------
The collector publishes, retained at QoS 1 on ``lw/v1/{device}/receipt``, a receipt signed
with its key: the seqs it has committed. :class:`ReceiptGate` verifies one (signature over
the topic, strict decoding, this device) and refuses a receipt whose counter is below the
newest one accepted (a replay of an old receipt), then the uplink deletes the outbox rows
the receipt covers. Every refusal is counted by reason (``receipts_rejected_{reason}``) and
raises :class:`ReceiptRejectedError`; nothing is deleted for it.

Receipt modes (``[downlink] receipts``):

* ``auto`` (default): a batch acknowledged by the broker stays in the outbox until a
  receipt covers it. If no receipt was **ever** accepted (an old collector that does not
  send them), the batch is deleted one ``receipt_timeout_s`` after its PUBACK, so the agent
  behaves as before (never re-sends, outbox does not grow). Once a receipt was accepted
  (remembered in the outbox file), un-receipted batches are re-published after
  ``receipt_timeout_s`` instead.
* ``required``: always keep and re-send until receipted (a fleet known to run a collector
  with receipts; protects the very first batches of a new box too).
* ``off``: delete on PUBACK (the behaviour before receipts).

Without ``[downlink] collector_public_key`` receipts cannot be verified: mode ``off``.
"""

from __future__ import annotations

from enum import StrEnum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protocol import Receipt, open_receipt, receipt_topic
from protocol.errors import ProtocolError

from .errors import InputError
from .outbox import Outbox

__all__ = ["ReceiptGate", "ReceiptMode", "ReceiptRejectedError"]

_COUNTER_KEY = "receipt_counter"
_SEEN_KEY = "receipts_seen"


class ReceiptMode(StrEnum):
    """How the outbox treats a PUBACK (see the module docstring)."""

    AUTO = "auto"
    REQUIRED = "required"
    OFF = "off"


class ReceiptRejectedError(InputError):
    """A receipt message was refused; ``reason`` is a stable slug."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ReceiptGate:
    """Accepts only collector-signed receipts for this device with a counter not older than the last.

    The newest accepted counter and the fact that a receipt was ever accepted live in the
    outbox file's ``meta`` table (the receipts are about that file's rows).

    Args:
        device_id: this device.
        public_key: the collector's Ed25519 public key.
        outbox: where the counter floor is kept.
    """

    def __init__(self, device_id: str, public_key: Ed25519PublicKey, outbox: Outbox) -> None:
        self.topic = receipt_topic(device_id)
        self._key = public_key
        self._outbox = outbox
        self._counter = outbox.meta_value(_COUNTER_KEY) or 0
        self._last_message: bytes | None = None
        self.counters: dict[str, int] = {"receipts_accepted": 0, "receipts_rejected": 0, "receipts_unchanged": 0}

    @property
    def ever_seen(self) -> bool:
        """True once any receipt was accepted by this outbox file (across restarts)."""
        return self._counter > 0 or bool(self._outbox.meta_value(_SEEN_KEY))

    def _reject(self, reason: str, message: str) -> ReceiptRejectedError:
        self.counters["receipts_rejected"] += 1
        key = f"receipts_rejected_{reason}"
        self.counters[key] = self.counters.get(key, 0) + 1
        return ReceiptRejectedError(reason, message)

    def check(self, topic: str, message: bytes) -> Receipt | None:
        """Verify a received receipt and record its counter.

        Returns:
            The receipt, or None when it is the one accepted last (the retained message seen
            again after a reconnect).

        Raises:
            ReceiptRejectedError: wrong topic, bad bytes or signature, other device, or a
                counter below the newest accepted (``stale_counter``).
        """
        if topic != self.topic:
            raise self._reject("wrong_topic", f"receipt on {topic!r:.120}, expected {self.topic}")
        if message == self._last_message:
            self.counters["receipts_unchanged"] += 1
            return None
        try:
            receipt = open_receipt(message, topic, self._key)
        except ProtocolError as exc:
            raise self._reject(exc.reason, f"receipt on {topic} refused: {exc}") from exc
        if receipt.counter < self._counter:
            raise self._reject(
                "stale_counter", f"receipt counter {receipt.counter} is below the newest accepted {self._counter}"
            )
        if receipt.counter > self._counter:
            self._outbox.set_meta(_COUNTER_KEY, receipt.counter)
            if self._counter == 0:
                self._outbox.set_meta(_SEEN_KEY, 1)
            self._counter = receipt.counter
        self._last_message = message
        self.counters["receipts_accepted"] += 1
        return receipt
