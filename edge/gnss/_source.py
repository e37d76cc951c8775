"""pyserial adapter around :class:`NmeaDecoder`: any serial URL, reopened with backoff when it goes away.

How this works: ``read(timeout)`` is the only blocking call. While the port is open it reads
whatever bytes are waiting (at least one, so it wakes up as soon as the receiver speaks),
feeds them to the decoder and returns as soon as an epoch completes. When a read fails
(a closed pty gives EIO, an unplugged USB adapter ENODEV/EIO, a socket peer hangs up) the
port is closed, the open epoch is flushed and returned, and the next open is tried at once,
then after ``backoff_initial_s``, doubling up to ``backoff_max_s``. Clock and sleep are
injected so the backoff schedule is testable without waiting.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from types import TracebackType

import serial

from edge.config import GnssSettings
from edge.errors import ConfigError

from ._decoder import GnssCounters, GnssRecord, NmeaDecoder
from .errors import PortUnavailable

__all__ = ["GnssSource", "source_from_config"]

log = logging.getLogger("edge.gnss")

#: Largest single read; a burst larger than this is simply read in several calls.
MAX_READ = 65_536


class GnssSource:
    """NMEA receiver on any pyserial URL (``/dev/ttyS1``, a pty path, ``socket://``, ``loop://``).

    The port is opened lazily by :meth:`read` (or eagerly by :meth:`open`), so an agent can
    start before its receiver is plugged in.

    Args:
        url: pyserial URL or device path.
        baud: line speed (ignored by ``socket://`` and ``loop://``).
        decoder: the decoder to feed (a new :class:`NmeaDecoder` by default).
        reopen: reopen the port after it disappears; if False, the source ends instead
            (:attr:`at_end`), which is what a command-line reader of a capture wants.
        backoff_initial_s: wait before the second attempt to reopen; it doubles on each failure.
        backoff_max_s: longest wait between two attempts.
        poll_s: longest single blocking read on the port (bounds how late ``read`` returns).
        clock: monotonic clock in seconds.
        sleep: sleep function used while waiting to reopen.
    """

    def __init__(
        self,
        url: str,
        baud: int = 9600,
        *,
        decoder: NmeaDecoder | None = None,
        reopen: bool = True,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
        poll_s: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(url, str) or not url:
            raise ConfigError(f"GNSS url {url!r} must be a non-empty pyserial URL or device path")
        if isinstance(baud, bool) or not isinstance(baud, int) or not 50 <= baud <= 4_000_000:
            raise ConfigError(f"GNSS baud {baud!r} must be an integer within 50..4000000")
        if not 0 < backoff_initial_s <= backoff_max_s <= 3600:
            raise ConfigError(
                f"reopen backoff {backoff_initial_s!r}..{backoff_max_s!r} s must satisfy 0 < initial <= max <= 3600"
            )
        if not 0 < poll_s <= 10:
            raise ConfigError(f"poll_s={poll_s!r} must be within (0, 10] seconds")
        self.url = url
        self.baud = baud
        self.decoder = decoder or NmeaDecoder()
        self.reopen = reopen
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.poll_s = poll_s
        self.last_port_error: PortUnavailable | None = None
        self._clock = clock
        self._sleep = sleep
        self._port: serial.SerialBase | None = None
        self._port_timeout: float | None = None
        self._opened_before = False
        self._ended = False
        self._closed = False
        self._next_open = clock()
        self._backoff = backoff_initial_s

    @property
    def counters(self) -> GnssCounters:
        """The decoder's counters, which also hold the port counters."""
        return self.decoder.counters

    @property
    def port(self) -> serial.SerialBase | None:
        """The open pyserial port, or None (useful to write into ``loop://`` in tests)."""
        return self._port

    @property
    def at_end(self) -> bool:
        """True once the port closed for good (``reopen=False``) or :meth:`close` was called."""
        return self._ended or self._closed

    def open(self) -> None:
        """Open the port now.

        Raises:
            PortUnavailable: the URL cannot be opened (counted in ``open_failures``).
            ConfigError: the URL's scheme is unknown to pyserial.
        """
        if self._port is None:
            error = self._try_open()
            if error is not None:
                raise error

    def read(self, timeout: float = 1.0) -> list[GnssRecord]:
        """Wait up to ``timeout`` seconds (plus at most ``poll_s``) for completed epochs.

        Returns as soon as at least one record is ready, or an empty list when the time is up
        or the source is at its end. Never raises on port trouble: it reopens with backoff.
        """
        if self.at_end:
            return []
        deadline = self._clock() + max(0.0, timeout)
        while True:
            now = self._clock()
            port = self._port
            if port is None:
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
                waiting = port.in_waiting
                if not waiting:
                    wait = max(0.0, min(self.poll_s, deadline - now))
                    if wait != self._port_timeout:
                        port.timeout = self._port_timeout = wait
                data = port.read(min(max(waiting, 1), MAX_READ))
            except (serial.SerialException, OSError, ValueError, TypeError) as exc:
                # TypeError/ValueError: pyserial internals touching a descriptor closed under them.
                records = self._lose_port(exc)
                if records:
                    return records
                continue
            if data:
                records = self.decoder.feed(data)
                if records:
                    return records
            elif self._clock() >= deadline:
                return []

    def close(self) -> None:
        """Close the port; the pending epoch is discarded (call ``decoder.flush()`` first to keep it)."""
        self._closed = True
        self._close_port()

    def __enter__(self) -> GnssSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- private -------------------------------------------------------------------------

    def _try_open(self) -> PortUnavailable | None:
        counters = self.counters
        if self._opened_before or counters.open_failures:
            counters.reopen_attempts += 1
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=self.poll_s)
        except ValueError as exc:
            raise ConfigError(f"GNSS url {self.url!r} is not a valid pyserial URL: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            counters.open_failures += 1
            error = PortUnavailable(f"cannot open GNSS port {self.url!r}: {exc}")
            self.last_port_error = error
            if not self.reopen and not self._opened_before:
                self._ended = True
            self._next_open = self._clock() + self._backoff
            log.log(
                logging.WARNING if counters.open_failures == 1 else logging.DEBUG,
                "%s (attempt %d, next in %.2f s)",
                error,
                counters.open_failures,
                self._backoff,
            )
            self._backoff = min(self._backoff * 2, self.backoff_max_s)
            return error
        self._port = port
        self._port_timeout = self.poll_s
        if self._opened_before:
            counters.port_reopens += 1
            log.info("GNSS port %s reopened", self.url)
        self._opened_before = True
        self._backoff = self.backoff_initial_s
        return None

    def _lose_port(self, exc: BaseException) -> list[GnssRecord]:
        self.counters.port_losses += 1
        log.warning("GNSS port %s lost: %s", self.url, exc)
        self._close_port()
        records = self.decoder.flush()
        if self.reopen:
            self._next_open = self._clock()  # first retry at once, then back off
        else:
            self._ended = True
        return records

    def _close_port(self) -> None:
        port, self._port = self._port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()


def source_from_config(settings: GnssSettings) -> GnssSource:
    """Build the agent's GNSS source from the ``[gnss]`` section of agent.toml (parsed by :mod:`edge.config`).

    Raises:
        ConfigError: the decoder refuses a setting (e.g. an ``earliest_date`` before GPS time).
    """
    try:
        decoder = NmeaDecoder(earliest_date=settings.earliest_date, max_sentence=settings.max_sentence)
    except ValueError as exc:
        raise ConfigError(f"[gnss] {exc}") from exc
    return GnssSource(
        settings.url,
        settings.baud,
        decoder=decoder,
        backoff_initial_s=settings.backoff_initial_s,
        backoff_max_s=settings.backoff_max_s,
    )
