"""Numbering, signing and durably storing closed batches (the engine thread's last step).

Every closed batch gets the next persisted sequence number, is sealed as a COSE_Sign1
(:func:`protocol.seal_batch`) and put in the outbox, together with the counters the outbox
has not reported yet, the lowest evicted seq ranges no stored batch announces yet
(:func:`protocol.evicted_counters`, docs/protocol.md section 13) and, in the first batch of
a boot, the boot report (skipped sequence numbers, a lost sequence file). A batch too large
to seal is split in two halves that get new numbers; the skipped number is announced like
any other skipped range.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import MAX_EVICTED_RANGES, Batch, batch_topic, evicted_counters, seal_batch
from protocol.errors import LocalProtocolError

from .batcher import ClosedBatch
from .observation_clock import host_wall_ms
from .outbox import Outbox
from .sequence import SequenceAllocator
from .structured_log import log_event

__all__ = ["BatchSealer"]

log = logging.getLogger("lienwatch.agent")


class BatchSealer:
    """Number, sign and store closed batches for one device and boot.

    Args:
        device_id: the device (COSE ``kid``).
        boot_id: 16 bytes identifying this run.
        key: the device's signing key.
        sequence: the persisted sequence allocator.
        outbox: the durable queue.
        stored: called after each stored batch (wakes the uplink).
        boot_counters: counters sent once, in the first batch stored in this run.
        counters: where ``batches_stored`` and ``seal_failures`` are counted (the agent's).
        wall_ms: host wall clock, epoch milliseconds (a batch's ``created_ms``).
    """

    def __init__(
        self,
        device_id: str,
        boot_id: bytes,
        key: Ed25519PrivateKey,
        sequence: SequenceAllocator,
        outbox: Outbox,
        *,
        stored: Callable[[], None],
        boot_counters: Mapping[str, int],
        counters: dict[str, int],
        wall_ms: Callable[[], int] = host_wall_ms,
    ) -> None:
        self.device_id = device_id
        self.boot_id = boot_id
        self._key = key
        self._sequence = sequence
        self._outbox = outbox
        self._stored = stored
        self._boot_counters = dict(boot_counters)
        self._wall_ms = wall_ms
        self.counters = counters
        for name in ("batches_stored", "seal_failures"):
            counters.setdefault(name, 0)

    def store(self, closed: ClosedBatch) -> int | None:
        """Number, sign and durably store one closed batch; return its sequence number."""
        if closed.empty and not self._boot_counters:
            return None
        reported = {**self._outbox.unreported()}
        announced = self._outbox.unannounced_evicted(MAX_EVICTED_RANGES)
        counters = {**reported, **evicted_counters(announced), **self._boot_counters}
        seq = self._sequence.next()
        batch = Batch(
            device_id=self.device_id,
            boot_id=self.boot_id,
            seq=seq,
            created_ms=self._wall_ms(),
            fixes=closed.fixes,
            samples=closed.samples,
            alerts=closed.alerts,
            stats=closed.stats,
            counters=counters,
        )
        try:
            message = seal_batch(batch, self._key, batch_topic(self.device_id))
        except LocalProtocolError as exc:
            self.counters["seal_failures"] += 1
            log_event(log, logging.ERROR, "seal_failed", seq=seq, error=str(exc))
            total = len(closed.fixes) + len(closed.samples) + len(closed.alerts) + len(closed.stats)
            if total > 1:  # too large: the skipped number is harmless, the halves get new ones
                first, second = closed.split()
                self.store(first)
                self.store(second)
            return None
        evicted = self._outbox.put(
            seq,
            message,
            priority=closed.priority,
            fixes=len(closed.fixes),
            samples=len(closed.samples),
            stats=len(closed.stats),
            alerts=len(closed.alerts),
            reported=reported,
            announced=announced,
        )
        self._boot_counters.clear()
        self.counters["batches_stored"] += 1
        if evicted:
            log_event(log, logging.WARNING, "outbox_evicted", seqs=evicted[:20], count=len(evicted))
        for note in self._outbox.events:
            log_event(log, logging.ERROR, "outbox_corruption", detail=note)
        self._outbox.events.clear()
        self._stored()
        return seq
