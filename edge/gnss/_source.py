"""pyserial adapter around :class:`NmeaDecoder`: any serial URL, reopened with backoff when it goes away.

How this works: ``read(timeout)`` (from :class:`~edge.device_source.DeviceSource`) is the
only blocking call. While the port is open it reads whatever bytes are waiting (at least
one, so it wakes up as soon as the receiver speaks), feeds them to the decoder and returns
as soon as an epoch completes. When a read fails (a closed pty gives EIO, an unplugged USB
adapter ENODEV/EIO, a socket peer hangs up) the port is closed, the open epoch is flushed
and returned, and the next open is tried at once, then after ``backoff_initial_s``,
doubling up to ``backoff_max_s``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType

import serial

from edge.backoff import Backoff
from edge.config import GnssSettings
from edge.device_source import CounterNames, DeviceLost, DeviceSource
from edge.errors import ConfigError

from ._decoder import GnssCounters, GnssRecord, NmeaDecoder
from .errors import PortUnavailable

__all__ = ["GnssSource", "source_from_config"]

#: Largest single read; a burst larger than this is simply read in several calls.
MAX_READ = 65_536


class GnssSource(DeviceSource[serial.SerialBase, GnssRecord]):
    """NMEA receiver on any pyserial URL (``/dev/ttyS1``, a pty path, ``socket://``, ``loop://``).

    The port is opened lazily by :meth:`read` (or eagerly by :meth:`open`), so an agent can
    start before its receiver is plugged in. Reopening, backoff and the port counters are
    :class:`~edge.device_source.DeviceSource`'s.

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
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.poll_s = poll_s
        self._port_timeout: float | None = None
        self._last_port_error: PortUnavailable | None = None
        super().__init__(
            f"GNSS port {url!r}",
            self.decoder.counters,
            _COUNTER_NAMES,
            backoff=Backoff(backoff_initial_s, backoff_max_s),
            reopen=reopen,
            retry_at_once=True,
            clock=clock,
            sleep=sleep,
        )

    @property
    def counters(self) -> GnssCounters:
        """The decoder's counters, which also hold the port counters."""
        return self.decoder.counters

    @property
    def port(self) -> serial.SerialBase | None:
        """The open pyserial port, or None (useful to write into ``loop://`` in tests)."""
        return self._device

    @property
    def last_port_error(self) -> PortUnavailable | None:
        """Why the last open failed (kept after a later success, for diagnostics)."""
        return self._last_port_error

    def open(self) -> None:
        """Open the port now.

        Raises:
            PortUnavailable: the URL cannot be opened (counted in ``open_failures``).
            ConfigError: the URL's scheme is unknown to pyserial.
        """
        if self._device is None:
            error = self._try_open()
            if error is not None:
                raise error

    def close(self) -> None:
        """Close the port; the pending epoch is discarded (call ``decoder.flush()`` first to keep it)."""
        super().close()

    def __enter__(self) -> GnssSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- DeviceSource --------------------------------------------------------------------

    def _open_internal(self) -> serial.SerialBase:
        try:
            port = serial.serial_for_url(self.url, baudrate=self.baud, timeout=self.poll_s)
        except ValueError as exc:
            raise ConfigError(f"GNSS url {self.url!r} is not a valid pyserial URL: {exc}") from exc
        except (serial.SerialException, OSError) as exc:
            self._last_port_error = PortUnavailable(f"cannot open GNSS port {self.url!r}: {exc}")
            raise self._last_port_error from exc
        self._port_timeout = self.poll_s
        return port

    def _read_internal(self, device: serial.SerialBase, deadline: float) -> list[GnssRecord]:
        try:
            waiting = device.in_waiting
            if not waiting:
                wait = max(0.0, min(self.poll_s, deadline - self._clock()))
                if wait != self._port_timeout:
                    device.timeout = self._port_timeout = wait
            data = device.read(min(max(waiting, 1), MAX_READ))
        except (serial.SerialException, OSError, ValueError, TypeError) as exc:
            # TypeError/ValueError: pyserial internals touching a descriptor closed under them.
            raise DeviceLost(str(exc)) from exc
        return self.decoder.feed(data) if data else []

    def _close_internal(self, device: serial.SerialBase) -> None:
        device.close()

    def _records_at_loss(self) -> list[GnssRecord]:
        return self.decoder.flush()


_COUNTER_NAMES = CounterNames(
    open_failures="open_failures", reopens="port_reopens", losses="port_losses", reopen_attempts="reopen_attempts"
)


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
