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

import logging
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import can

from edge.backoff import Backoff
from edge.config import CanSettings
from edge.device_source import CounterNames, DeviceLost, DeviceSource, DeviceUnavailable
from edge.errors import ConfigError, DeviceError
from protocol import SignalSample

from ._decoder import CanCounters, SignalDecoder

__all__ = [
    "SAMPLE_DBC",
    "SAMPLE_MAP",
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

class CanSource(DeviceSource[can.BusABC, SignalSample]):
    """Canonical samples from a live CAN interface, surviving adapter loss.

    Not thread-safe: one thread calls :meth:`read`. Reopening, backoff and the bus counters
    are :class:`~edge.device_source.DeviceSource`'s.

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
        if interface == "slcan":
            bus_kwargs.setdefault("sleep_after_open", 0)
        self._bus_kwargs = bus_kwargs
        self._where = f"CAN interface {interface!r} channel {channel!r}"
        self._time_ms: Callable[[float], int] | None = None
        super().__init__(self._where, decoder.counters, _COUNTER_NAMES, backoff=backoff or Backoff())
        self._try_open()

    @property
    def counters(self) -> CanCounters:
        """The decoder's counters, including this adapter's bus counters."""
        return self.decoder.counters

    @property
    def is_open(self) -> bool:
        """True while the bus is open."""
        return self._device is not None

    @property
    def last_error(self) -> str | None:
        """Text of the last open or read failure (None when the last open succeeded)."""
        return None if self.last_failure is None else str(self.last_failure)

    def read(self, timeout: float = 1.0, time_ms: Callable[[float], int] | None = None) -> list[SignalSample]:
        """Receive frames until some yield samples or ``timeout`` seconds pass.

        Args:
            timeout: longest wait in seconds (0 polls once).
            time_ms: optional clock mapping: receives ``msg.timestamp`` (seconds, host
                clock) and returns the observation time in epoch milliseconds.

        Returns:
            The samples of the first frame that produced any (often one frame's worth),
            or an empty list on timeout or while the bus is down.

        Raises:
            DeviceError: the source was closed.
        """
        if self.at_end:
            raise DeviceError(f"CAN source on {self.channel!r} is closed")
        self._time_ms = time_ms
        return super().read(timeout)

    def __enter__(self) -> CanSource:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- DeviceSource --------------------------------------------------------------------

    def _open_internal(self) -> can.BusABC:
        kwargs = dict(self._bus_kwargs)
        if self.bitrate is not None:
            kwargs["bitrate"] = self.bitrate
        try:
            return can.Bus(
                interface=self.interface, channel=self.channel, can_filters=self.decoder.can_filters, **kwargs
            )
        except can.CanInterfaceNotImplementedError as exc:
            raise ConfigError(f"{self._where}: not available in python-can: {exc}") from exc
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{self._where}: invalid settings {kwargs!r}: {exc}") from exc
        except (can.CanError, OSError) as exc:
            raise DeviceUnavailable(f"{self._where}: cannot open: {exc}") from exc

    def _read_internal(self, device: can.BusABC, deadline: float) -> list[SignalSample]:
        try:
            msg = device.recv(timeout=max(0.0, deadline - self._clock()))
        except (can.CanOperationError, OSError) as exc:
            raise DeviceLost(f"{self._where}: read failed: {exc}") from exc
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            # python-can's slcan parser raises these on a garbled line; the line is gone.
            self.counters.malformed_frames += 1
            logger.debug("malformed frame from %s: %s", self.channel, exc)
            return []
        if msg is None:
            return []
        stamp = self._time_ms(msg.timestamp) if self._time_ms is not None else None
        return self.decoder.decode(msg, stamp)

    def _close_internal(self, device: can.BusABC) -> None:
        device.shutdown()


_COUNTER_NAMES = CounterNames(open_failures="bus_open_failures", reopens="bus_reopens", losses="bus_errors")


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
