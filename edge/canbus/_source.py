"""The python-can adapter around :class:`~edge.canbus.SignalDecoder`.

How this works: :class:`CanSource` owns one ``can.Bus`` (any interface python-can knows:
``socketcan`` on a T-BOX, ``slcan`` for USB/serial adapters, ``virtual`` in tests) opened
with the decoder's ``can_filters`` (kernel filters on socketcan, python-can's software
filter elsewhere; the decoder still checks ids). ``read()`` receives frames until one
yields samples or the timeout ends. If the driver fails while reading (an SLCAN adapter
unplugged, its serial port gone), the bus is shut down, the failure counted, and the
bus reopened on later ``read()`` calls with exponential backoff; a frame the driver
cannot parse (a garbled SLCAN line) is counted and skipped. Only settings that can never
work (unknown interface, invalid bitrate) raise.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import can

from edge.config import CanSettings
from edge.errors import ConfigError, DeviceError
from protocol import SignalSample

from ._decoder import CanCounters, SignalDecoder

__all__ = [
    "SAMPLE_DBC",
    "SAMPLE_MAP",
    "Backoff",
    "CanSource",
    "decoder_from_config",
    "source_from_config",
]

logger = logging.getLogger(__name__)

_DATA_DIR = Path(__file__).resolve().parent.parent / "data"
#: The documented sample DBC of a generic car (see docs/signals.md).
SAMPLE_DBC = _DATA_DIR / "generic_car.dbc"
#: The sample signal map for :data:`SAMPLE_DBC`.
SAMPLE_MAP = _DATA_DIR / "generic_car_map.toml"

@dataclass(slots=True)
class Backoff:
    """Exponential reopen delays: ``initial_s``, doubled per failure, capped at ``max_s``.

    Attributes:
        initial_s: first delay in seconds.
        max_s: longest delay in seconds.
        factor: growth per consecutive failure.
    """

    initial_s: float = 0.1
    max_s: float = 5.0
    factor: float = 2.0
    _failures: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.max_s or self.factor < 1:
            raise ConfigError(
                "backoff needs 0 < initial_s <= max_s and factor >= 1, "
                f"got {self.initial_s}, {self.max_s}, {self.factor}"
            )

    def next_delay(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        delay = min(self.max_s, self.initial_s * self.factor**self._failures)
        self._failures += 1
        return delay

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a successful open)."""
        self._failures = 0


class CanSource:
    """Canonical samples from a live CAN interface, surviving adapter loss.

    Not thread-safe: one thread calls :meth:`read`.

    Args:
        interface: python-can interface name (``socketcan``, ``slcan``, ``virtual``, ...).
        channel: interface channel (``can0``, a serial/pty path, a virtual channel name).
        bitrate: bus bitrate in bit/s, if the interface sets one (CAN here is 500 kbit/s).
        decoder: the DBC + signal map decoder; its filters are passed to the bus.
        backoff: reopen delays after the bus is lost (default 0.1 s doubling to 5 s).
        **bus_kwargs: passed to ``can.Bus`` (for ``slcan``, ``sleep_after_open``
            defaults to 0 instead of python-can's 2 s).

    Raises:
        ConfigError: the interface is unknown or the settings are invalid. A bus that
            merely cannot be opened yet (adapter absent) does not raise: see
            :attr:`is_open` and :attr:`last_error`; :meth:`read` keeps trying.
    """

    def __init__(
        self,
        interface: str,
        channel: str,
        *,
        bitrate: int | None = None,
        decoder: SignalDecoder,
        backoff: Backoff | None = None,
        **bus_kwargs: Any,
    ) -> None:
        if not isinstance(interface, str) or not interface:
            raise ConfigError(f"CAN interface must be a non-empty string, got {interface!r}")
        if bitrate is not None and (isinstance(bitrate, bool) or not isinstance(bitrate, int) or bitrate <= 0):
            raise ConfigError(f"CAN bitrate must be a positive int (bit/s), got {bitrate!r}")
        self.interface = interface
        self.channel = channel
        self.bitrate = bitrate
        self.decoder = decoder
        self._backoff = backoff or Backoff()
        if interface == "slcan":
            bus_kwargs.setdefault("sleep_after_open", 0)
        self._bus_kwargs = bus_kwargs
        self._bus: can.BusABC | None = None
        self._opens = 0
        self._next_open_at = 0.0
        self._closed = False
        #: Text of the last open or read failure (None when the last open succeeded).
        self.last_error: str | None = None
        self._try_open()

    @property
    def counters(self) -> CanCounters:
        """The decoder's counters, including this adapter's bus counters."""
        return self.decoder.counters

    @property
    def is_open(self) -> bool:
        """True while the bus is open."""
        return self._bus is not None

    def _try_open(self) -> bool:
        kwargs = dict(self._bus_kwargs)
        if self.bitrate is not None:
            kwargs["bitrate"] = self.bitrate
        where = f"CAN interface {self.interface!r} channel {self.channel!r}"
        try:
            bus = can.Bus(
                interface=self.interface, channel=self.channel, can_filters=self.decoder.can_filters, **kwargs
            )
        except can.CanInterfaceNotImplementedError as exc:
            raise ConfigError(f"{where}: not available in python-can: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{where}: invalid settings {kwargs!r}: {exc}") from exc
        except (can.CanError, OSError) as exc:
            self.counters.bus_open_failures += 1
            delay = self._backoff.next_delay()
            self._next_open_at = time.monotonic() + delay
            self.last_error = f"{where}: cannot open: {exc}"
            logger.warning("%s; retrying in %.1f s", self.last_error, delay)
            return False
        self._bus = bus
        self._backoff.reset()
        self.last_error = None
        if self._opens:
            self.counters.bus_reopens += 1
            logger.info("%s reopened", where)
        self._opens += 1
        return True

    def _lose_bus(self, exc: BaseException) -> None:
        self.counters.bus_errors += 1
        self.last_error = f"CAN interface {self.interface!r} channel {self.channel!r}: read failed: {exc}"
        bus, self._bus = self._bus, None
        if bus is not None:
            with contextlib.suppress(Exception):  # the adapter is already gone; shutdown may fail too
                bus.shutdown()
        delay = self._backoff.next_delay()
        self._next_open_at = time.monotonic() + delay
        logger.warning("%s; reopening in %.1f s", self.last_error, delay)

    def read(self, timeout: float = 1.0, time_ms: Callable[[float], int] | None = None) -> list[SignalSample]:
        """Receive frames until some yield samples or ``timeout`` seconds pass.

        Args:
            timeout: longest wait in seconds (0 polls once).
            time_ms: optional clock mapping: receives ``msg.timestamp`` (seconds, host
                clock) and returns the observation time in epoch milliseconds.

        Returns:
            The samples of the first frame that produced any (often one frame's worth),
            or an empty list on timeout or while the bus is down.
        """
        if self._closed:
            raise DeviceError(f"CAN source on {self.channel!r} is closed")
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            now = time.monotonic()
            bus = self._bus
            if bus is None:
                if now < self._next_open_at:
                    wait = min(deadline, self._next_open_at) - now
                    if wait > 0:
                        time.sleep(wait)
                    if time.monotonic() >= deadline:
                        return []
                    continue
                if not self._try_open():
                    continue
                bus = self._bus
                assert bus is not None
            try:
                msg = bus.recv(timeout=max(0.0, deadline - time.monotonic()))
            except (can.CanOperationError, OSError) as exc:
                self._lose_bus(exc)
                continue
            except (ValueError, IndexError, UnicodeDecodeError) as exc:
                # python-can's slcan parser raises these on a garbled line; the line is gone.
                self.counters.malformed_frames += 1
                logger.debug("malformed frame from %s: %s", self.channel, exc)
                if time.monotonic() >= deadline:
                    return []
                continue
            if msg is None:
                return []
            stamp = time_ms(msg.timestamp) if time_ms is not None else None
            samples = self.decoder.decode(msg, stamp)
            if samples or time.monotonic() >= deadline:
                return samples

    def close(self) -> None:
        """Shut the bus down (idempotent)."""
        self._closed = True
        bus, self._bus = self._bus, None
        if bus is not None:
            with contextlib.suppress(Exception):
                bus.shutdown()

    def __enter__(self) -> CanSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def decoder_from_config(settings: CanSettings) -> SignalDecoder:
    """Build the decoder from ``agent.toml``'s ``[can]`` section (parsed by :mod:`edge.config`).

    Raises:
        DbcError, SignalMapError: the files are unreadable or do not match.
    """
    return SignalDecoder.from_files(list(settings.dbc), settings.signal_map)


def source_from_config(settings: CanSettings) -> CanSource:
    """Build the CAN source from ``agent.toml``'s ``[can]`` section.

    Raises:
        ConfigError: ``interface`` or ``channel`` is missing, or python-can rejects the
            interface settings.
        DbcError, SignalMapError: see :func:`decoder_from_config`.
    """
    decoder = decoder_from_config(settings)
    if settings.interface is None or settings.channel is None:
        raise ConfigError(
            f"[can]: 'interface' and 'channel' must be strings, got {settings.interface!r}, {settings.channel!r}"
        )
    options: dict[str, Any] = dict(settings.bus_options)  # python-can's own keyword arguments, passed through
    return CanSource(settings.interface, settings.channel, bitrate=settings.bitrate, decoder=decoder, **options)
