"""Constant bus load for benchmarks: N frames/s over SLCAN, optional 1-10 Hz NMEA.

How this works: :class:`LoadPattern` (sans-I/O) decides which frames make up the load:
``mapped_share`` of them are real DBC messages of a car driving steadily (encoded with
cantools), the rest carry unknown 11-bit ids and a 32-bit sequence number in their first
four bytes, so a reader can count losses. :func:`run_load` paces it in wall time: every
couple of milliseconds it writes, in one ``write``, the frames owed since the channel
was opened. Frames the pty cannot take (host reading too slowly) are counted as dropped,
never queued without bound. At the end (``--seconds`` after the host opened the channel,
or SIGTERM/SIGINT) it prints one JSON object with what it sent.
"""

from __future__ import annotations

import json
import math
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from .gnss import GnssReceiver, Truth
from .pty import PtyLink
from .route import EARTH_RADIUS_M
from .scenario import DEFAULT_BACKGROUND_IDS
from .slcan import SlcanAdapter, encode_frame
from .vehicle import CanCatalog

__all__ = ["LoadPattern", "LoadReport", "run_load"]

_TICK_S = 0.002
_MAX_BACKLOG_S = 0.05  # after a stall, owe at most this much load
_STEADY_DRIVE = {
    "ENGINE_RPM": 2150.0,
    "COOLANT_TEMP": 88.0,
    "THROTTLE_POS": 22.0,
    "IGNITION_STATE": 2,
    "ENGINE_RUNNING": 1,
    "SPEED_KPH": 50.0,
    "SPEED_VALID": 1,
    "BELT_FL": 1,
    "LOCK_STATE": 0,
    "BATTERY_VOLTAGE": 14.1,
    "BATTERY_CURRENT": 8.0,
    "ODOMETER_KM": 23_456.7,
    "SOC_DISPLAYED": 80.0,
    "HV_VOLTAGE": 390.0,
}


class LoadPattern:
    """Which frame comes next: mapped DBC messages at ``mapped_share``, unknown ids otherwise.

    Args:
        catalog: DBC messages for the mapped share (None: unknown ids only).
        mapped_share: fraction 0-1 of frames that are DBC messages.
        unknown_ids: 11-bit ids not in the DBC.
    """

    def __init__(
        self,
        catalog: CanCatalog | None,
        mapped_share: float = 0.05,
        unknown_ids: tuple[int, ...] = DEFAULT_BACKGROUND_IDS,
    ) -> None:
        if not 0.0 <= mapped_share <= 1.0:
            raise ValueError(f"mapped_share {mapped_share} is outside [0, 1]")
        if mapped_share > 0 and (catalog is None or not catalog.messages):
            raise ValueError("a mapped share needs a DBC with messages")
        if catalog is not None and set(unknown_ids) & catalog.frame_ids:
            raise ValueError(f"unknown ids {sorted(set(unknown_ids) & catalog.frame_ids)} are DBC messages")
        self.catalog = catalog
        self.mapped_share = mapped_share
        self._unknown = [f"t{ident:03X}8" for ident in unknown_ids]
        self._credit = 0.0
        self._sequence = 0
        self._mapped_index = 0
        self.frames = 0

    def lines(self, count: int) -> list[tuple[bytes, bool]]:
        """The next ``count`` SLCAN lines, each with whether it is a mapped DBC message."""
        out: list[tuple[bytes, bool]] = []
        unknown = self._unknown
        for _ in range(count):
            self._credit += self.mapped_share
            if self._credit >= 1.0 and self.catalog is not None:
                self._credit -= 1.0
                spec = self.catalog.messages[self._mapped_index % len(self.catalog.messages)]
                self._mapped_index += 1
                values = dict(_STEADY_DRIVE, ODOMETER_KM=_STEADY_DRIVE["ODOMETER_KM"] + self.frames * 1e-5)
                out.append((encode_frame(self.catalog.encode(spec.name, values)), True))
            else:
                self._sequence = (self._sequence + 1) & 0xFFFFFFFF
                head = unknown[self._sequence % len(unknown)]
                out.append((f"{head}{self._sequence:08X}005AA5FF\r".encode("ascii"), False))
            self.frames += 1
        return out


@dataclass
class LoadReport:
    """What the load generator did (printed as JSON by ``lienwatch sim load``)."""

    fps_target: float
    frames_sent: int
    frames_mapped: int
    frames_dropped: int
    seconds: float
    gnss_epochs: int
    gnss_bytes: int
    reason: str

    def as_dict(self) -> dict[str, object]:
        """JSON-ready."""
        achieved = self.frames_sent / self.seconds if self.seconds > 0 else 0.0
        return {
            "fps_target": self.fps_target,
            "fps_achieved": round(achieved, 1),
            "frames_sent": self.frames_sent,
            "frames_mapped": self.frames_mapped,
            "frames_dropped": self.frames_dropped,
            "seconds": round(self.seconds, 3),
            "gnss_epochs": self.gnss_epochs,
            "gnss_bytes": self.gnss_bytes,
            "reason": self.reason,
        }


def _drive_east(start: tuple[float, float], speed_kmh: float, elapsed_s: float) -> Truth:
    meters = speed_kmh / 3.6 * elapsed_s
    lat, lon = start
    dlon = math.degrees(meters / (EARTH_RADIUS_M * math.cos(math.radians(lat))))
    return Truth(lat, lon + dlon, 4.0, speed_kmh, 90.0)


def run_load(
    *,
    can_link: str | Path,
    fps: float,
    mapped_share: float = 0.05,
    seconds: float | None = None,
    gnss_link: str | Path | None = None,
    gnss_hz: float = 10.0,
    open_timeout: float = 60.0,
    stop: threading.Event | None = None,
    ready_out: TextIO | None = None,
    clock: Callable[[], float] = time.time,
) -> LoadReport:
    """Serve a constant load until ``seconds`` after the host opened the channel, or ``stop``.

    Args:
        can_link: symlink path of the SLCAN pty.
        fps: frames per second while the channel is open (0-20,000).
        mapped_share: fraction of DBC messages among them.
        seconds: how long to load after the first ``O`` (None: until stopped).
        gnss_link: also publish an NMEA receiver there (real-time clock, driving east at 50 km/h).
        gnss_hz: its epoch rate (1-10).
        open_timeout: give up if no host opens the channel within this many seconds.
        stop: set it to end the run.
        ready_out: a JSON line goes there once the links exist.
        clock: wall clock.
    """
    if not 0.0 < fps <= 20_000.0:
        raise ValueError(f"fps {fps} is outside (0, 20000]")
    if not 1.0 <= gnss_hz <= 10.0:
        raise ValueError(f"gnss_hz {gnss_hz} is outside [1, 10]")
    stop = stop or threading.Event()
    pattern = LoadPattern(CanCatalog() if mapped_share > 0 else None, mapped_share)
    adapter = SlcanAdapter()
    can = PtyLink(can_link, max_pending=64 * 1024)
    gnss = PtyLink(gnss_link, max_pending=8 * 1024) if gnss_link is not None else None
    receiver = GnssReceiver(seed=1, noise_m=1.5)
    grid_ms = round(1000 / gnss_hz)
    sent = dropped = epochs = mapped = 0
    opened_at: float | None = None
    credit = 0.0
    reason = "stopped"
    started = last = clock()
    next_epoch_ms = (int(started * 1000) // grid_ms + 1) * grid_ms
    try:
        can.plug()
        if gnss is not None:
            gnss.plug()
        if ready_out is not None:
            ready = {"type": "ready", "can_link": str(can.link_path), "can_device": can.device}
            if gnss is not None:
                ready.update(gnss_link=str(gnss.link_path), gnss_device=gnss.device)
            ready_out.write(json.dumps(ready) + "\n")
            ready_out.flush()
        while not stop.is_set():
            now = clock()
            if opened_at is None and now - started > open_timeout:
                reason = "never_opened"
                break
            if opened_at is not None and seconds is not None and now - opened_at >= seconds:
                reason = "finished"
                break
            if adapter.is_open:
                opened_at = opened_at if opened_at is not None else now
                credit = min(credit + (now - last) * fps, fps * _MAX_BACKLOG_S + 1)
                count = int(credit)
                if count:
                    credit -= count
                    lines = pattern.lines(count)
                    room = can.room()
                    fitting, size = 0, 0
                    for line, _ in lines:
                        if size + len(line) > room:
                            break
                        size += len(line)
                        fitting += 1
                    if fitting:
                        can.write(b"".join(line for line, _ in lines[:fitting]))
                        mapped += sum(1 for _, is_mapped in lines[:fitting] if is_mapped)
                    sent += fitting
                    if fitting < count:
                        dropped += count - fitting
                        adapter.note_overrun()
            last = now
            if gnss is not None and now * 1000 >= next_epoch_ms:
                truth = _drive_east((31.2400, 121.4000), 50.0, now - started)
                gnss.write(b"".join(receiver.sentences(next_epoch_ms, truth)))
                epochs += 1
                next_epoch_ms = max(next_epoch_ms + grid_ms, (int(now * 1000) // grid_ms) * grid_ms)
            readers = [can.fileno()] + ([gnss.fileno()] if gnss is not None else [])
            writers = [link.fileno() for link in (can, gnss) if link is not None and link.pending]
            readable, writable, _ = select.select(readers, writers, [], _TICK_S)
            if can.fileno() in readable:
                data = can.read()
                if data:
                    can.write(adapter.feed(data).reply)
            if gnss is not None and gnss.fileno() in readable:
                gnss.read()
            for link in (can, gnss):
                if link is not None and link.fileno() in writable:
                    link.flush()
    finally:
        can.close()
        if gnss is not None:
            gnss.close()
    return LoadReport(
        fps_target=fps,
        frames_sent=sent,
        frames_mapped=mapped,
        frames_dropped=dropped,
        seconds=(last - opened_at) if opened_at is not None else 0.0,
        gnss_epochs=epochs,
        gnss_bytes=gnss.counters["bytes_written"] if gnss is not None else 0,
        reason=reason,
    )
