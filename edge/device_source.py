"""One base for the sources that read a device which may come and go (python-can's ``BusABC`` style).

How this works: a subclass implements three small methods: ``_open_internal`` (open the
device, raising :class:`DeviceUnavailable` when it is not there *yet*, or
:class:`~edge.errors.ConfigError` when it never can be), ``_read_internal`` (records from an
open device until a deadline, raising :class:`DeviceLost` when the device fails under it) and
``_close_internal``. :meth:`DeviceSource.read` owns the rest, once for every source: lazy or
eager opening, reopening with :class:`~edge.backoff.Backoff` after a failed open or a lost
device, the open/reopen/loss counters (each source names its own counter fields, which are
part of the state message), logging, and the end of a source that must not reopen.
Clock and sleep are injected so the backoff schedule is testable without waiting.
"""

from __future__ import annotations

import contextlib
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from .backoff import Backoff
from .errors import DeviceError

__all__ = ["CounterNames", "DeviceLost", "DeviceSource", "DeviceUnavailable"]

DeviceT = TypeVar("DeviceT")
RecordT = TypeVar("RecordT")


class DeviceUnavailable(DeviceError):  # noqa: N818 - named for the condition, like PortUnavailable
    """The device cannot be opened now (absent, busy, refused); the source tries again later."""

    reason = "device_unavailable"


class DeviceLost(DeviceError):  # noqa: N818 - named for the condition
    """An open device failed while being read (unplugged, closed under us); the source reopens it."""

    reason = "device_lost"


@dataclass(frozen=True, slots=True)
class CounterNames:
    """The fields of a source's counters object that :class:`DeviceSource` increments.

    Attributes:
        open_failures: failed opens.
        reopens: successful opens after the first.
        losses: open devices that failed.
        reopen_attempts: opens tried after the first attempt (None: not counted).
    """

    open_failures: str
    reopens: str
    losses: str
    reopen_attempts: str | None = None


class DeviceSource(ABC, Generic[DeviceT, RecordT]):
    """Records from a device that may disappear and come back.

    Args:
        what: names the device in messages (``GNSS port '/dev/ttyS1'``).
        counters: the source's counters object (a dataclass with the fields named below).
        names: which counter fields to increment.
        backoff: reopen delays.
        reopen: reopen after the device is lost; if False the source ends instead.
        retry_at_once: after a loss, try the first reopen at once (then back off).
        clock: monotonic clock in seconds.
        sleep: sleep function used while waiting to reopen.
    """

    def __init__(
        self,
        what: str,
        counters: object,
        names: CounterNames,
        *,
        backoff: Backoff,
        reopen: bool = True,
        retry_at_once: bool = False,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._what = what
        self._source_counters = counters
        self._names = names
        self._backoff = backoff
        self.reopen = reopen
        self._retry_at_once = retry_at_once
        self._clock = clock
        self._sleep = sleep
        self._device: DeviceT | None = None
        self._opened_before = False
        self._failed_opens = 0
        self._ended = False
        self._closed = False
        self._next_open = clock()
        #: The last failure to open or read (None once an open succeeded).
        self.last_failure: DeviceError | None = None

    # -- to implement --------------------------------------------------------------------

    @abstractmethod
    def _open_internal(self) -> DeviceT:
        """Open the device. Raises DeviceUnavailable (try later) or ConfigError (never works)."""

    @abstractmethod
    def _read_internal(self, device: DeviceT, deadline: float) -> list[RecordT]:
        """Records read before ``deadline`` (clock seconds), possibly none. Raises DeviceLost."""

    @abstractmethod
    def _close_internal(self, device: DeviceT) -> None:
        """Release the device (errors are ignored: it may already be gone)."""

    def _records_at_loss(self) -> list[RecordT]:
        """Records still pending when the device is lost (a half-read epoch, flushed)."""
        return []

    # -- the shared part -----------------------------------------------------------------

    @property
    def at_end(self) -> bool:
        """True once the device closed for good (``reopen=False``) or :meth:`close` was called."""
        return self._ended or self._closed

    def read(self, timeout: float = 1.0) -> list[RecordT]:
        """Wait up to ``timeout`` seconds for records; never raises on device trouble (it reopens).

        Returns as soon as some records are ready, or an empty list when the time is up or
        the source is at its end.
        """
        if self.at_end:
            return []
        deadline = self._clock() + max(0.0, timeout)
        while True:
            now = self._clock()
            device = self._device
            if device is None:
                if self._ended:
                    return []
                if now >= self._next_open:
                    self._try_open()
                    continue
                if now >= deadline:
                    return []
                self._sleep(min(self._next_open, deadline) - now)
                continue
            try:
                records = self._read_internal(device, deadline)
            except DeviceLost as exc:
                records = self._lose(exc)
                if records:
                    return records
                continue
            if records or self._clock() >= deadline:
                return records

    def close(self) -> None:
        """Release the device (idempotent)."""
        self._closed = True
        self._release()

    def _count(self, name: str | None) -> None:
        if name is not None:
            setattr(self._source_counters, name, getattr(self._source_counters, name) + 1)

    def _try_open(self) -> DeviceUnavailable | None:
        """One attempt to open; on failure the next is scheduled and the error returned."""
        if self._opened_before or self._failed_opens:
            self._count(self._names.reopen_attempts)
        try:
            device = self._open_internal()
        except DeviceUnavailable as error:
            self._failed_opens += 1
            self._count(self._names.open_failures)
            self.last_failure = error
            if not self.reopen and not self._opened_before:
                self._ended = True
            delay = self._backoff.next_delay()
            self._next_open = self._clock() + delay
            self._log.log(
                logging.WARNING if self._failed_opens == 1 else logging.DEBUG,
                "%s (attempt %d, next in %.2f s)",
                error,
                self._failed_opens,
                delay,
            )
            return error
        self._device = device
        self._backoff.reset()
        self._failed_opens = 0
        self.last_failure = None
        if self._opened_before:
            self._count(self._names.reopens)
            self._log.info("%s reopened", self._what)
        self._opened_before = True
        return None

    def _lose(self, exc: DeviceLost) -> list[RecordT]:
        self._count(self._names.losses)
        self.last_failure = exc
        self._log.warning("%s lost: %s", self._what, exc)
        self._release()
        records = self._records_at_loss()
        if not self.reopen:
            self._ended = True
        elif self._retry_at_once:
            self._next_open = self._clock()
        else:
            self._next_open = self._clock() + self._backoff.next_delay()
        return records

    def _release(self) -> None:
        device, self._device = self._device, None
        if device is not None:
            with contextlib.suppress(Exception):  # the device is already gone; closing may fail too
                self._close_internal(device)

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(type(self).__module__)
