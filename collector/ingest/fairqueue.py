"""A bounded queue of received messages, served round-robin over devices.

How this works. The MQTT thread puts each admitted message under its device id (the
topic's device level); the worker takes a *group* of messages for one transaction. Each
device has its own FIFO; :meth:`FairQueue.take_group` takes one message of every device that
has one, in turn, until the group is full, so a device with a thousand messages waiting
gets one place per round like a device with one: a flooding device cannot push another
device's batch behind its own backlog. Within one device the order is kept.

The queue counts the payload bytes it holds; :meth:`FairQueue.put` waits while they would
exceed ``max_bytes`` (the MQTT thread then stops reading, the broker keeps the rest: QoS 1
flow control by Receive Maximum), so memory stays bounded whatever is published.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["FairQueue"]

_T = TypeVar("_T")


class FairQueue(Generic[_T]):
    """Per-key FIFOs served round-robin, bounded by the bytes they hold.

    Args:
        max_bytes: the most bytes held at once (a single item larger than this is still
            accepted when the queue is empty, so nothing can block forever).
        size: the size of an item in bytes.
    """

    def __init__(self, max_bytes: int, size: Callable[[_T], int]) -> None:
        self.max_bytes = max_bytes
        self._size = size
        self._lanes: dict[str, collections.deque[_T]] = {}
        self._turns: collections.deque[str] = collections.deque()  # keys with something queued
        self._bytes = 0
        self._count = 0
        self._lock = threading.Lock()
        self._items = threading.Condition(self._lock)  # the worker waits here
        self._room = threading.Condition(self._lock)  # the MQTT thread waits here
        self._want = 1  # items the waiting worker needs: fewer do not wake it
        self._full = False  # a put is waiting for room: the group cannot grow, stop lingering

    def __len__(self) -> int:
        return self._count

    @property
    def bytes(self) -> int:
        """Payload bytes held now."""
        return self._bytes

    def put(self, key: str, item: _T, stopping: threading.Event) -> bool:
        """Queue ``item`` under ``key``, waiting for room; False when ``stopping`` was set first."""
        size = self._size(item)
        with self._lock:
            while self._bytes and self._bytes + size > self.max_bytes:
                if stopping.is_set():
                    return False
                self._full = True
                self._items.notify()
                self._room.wait(0.2)
            self._full = False
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = collections.deque()
                self._turns.append(key)
            lane.append(item)
            self._bytes += size
            self._count += 1
            if self._count >= self._want:
                self._items.notify()
        return True

    def take_group(self, max_items: int, first_wait_s: float, linger_s: float) -> list[_T]:
        """Up to ``max_items`` items, round-robin over keys.

        Waits up to ``first_wait_s`` for a first item, then up to ``linger_s`` more for the
        group to fill (it returns at once when ``max_items`` are there, or when the queue is
        full by bytes: nothing more can arrive until this group is processed). The bytes of the
        taken items are freed by :meth:`release` once they are processed.
        """
        with self._lock:
            if not self._count and not self._items.wait_for(lambda: self._count > 0, first_wait_s):
                return []
            if self._count < max_items and linger_s > 0:
                self._want = max_items
                try:
                    self._items.wait_for(lambda: self._count >= max_items or self._full, linger_s)
                finally:
                    self._want = 1
            group: list[_T] = []
            while self._turns and len(group) < max_items:
                key = self._turns.popleft()
                lane = self._lanes[key]
                group.append(lane.popleft())
                if lane:
                    self._turns.append(key)
                else:
                    del self._lanes[key]
            self._count -= len(group)
            return group

    def release(self, items: list[_T]) -> None:
        """Free the bytes of processed ``items`` (wakes a waiting :meth:`put`)."""
        with self._lock:
            self._bytes -= sum(self._size(item) for item in items)
            self._room.notify_all()
