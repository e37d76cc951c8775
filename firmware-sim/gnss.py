"""A simulated multi-constellation GNSS receiver: truth in, NMEA epochs out.

How this works: the receiver is told the true position and the sky conditions (jamming
in dB, sky blocked) at each epoch time, and answers with what a real module would
print. Satellites follow smooth, seeded elevation/azimuth tracks; their C/N0 depends on
elevation minus the jamming level; a satellite counts as used above a C/N0 threshold and
a fix needs four used satellites. The reported position is truth plus a first-order
Gauss-Markov error (correlated over about a minute, like a parked receiver wandering a
few metres) that grows with HDOP. Time gaps between epochs (time acceleration) just
decorrelate the error more. The receiver can be stopped and restarted (boot banner,
time to first fix, optionally the 1980 default date before the first fix).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from .nmea import CONSTELLATIONS, Epoch, Satellite, encode_epoch, encode_txt

__all__ = ["DEFAULT_DATE_MS", "GnssReceiver", "SkyConditions", "Truth"]

#: What a receiver reports before it knows the time: the GPS epoch, 1980-01-06.
DEFAULT_DATE_MS = 315_964_800_000
_METERS_PER_DEG_LAT = 111_320.0
_CORRELATION_S = 60.0
_TRACK_MIN_SNR = 12  # below this the satellite is not tracked (empty SNR field)
_USE_MIN_SNR = 24  # below this it is tracked but not used in the solution
_USE_MIN_ELEVATION = 8
_MIN_USED_FOR_FIX = 4
_VISIBLE_PER_SYSTEM = {"GP": 10, "GL": 7, "GA": 8, "GB": 12}
_ID_RANGE = {"GP": (1, 32), "GL": (65, 96), "GA": (1, 36), "GB": (1, 63)}


@dataclass(frozen=True, slots=True)
class Truth:
    """Where the antenna really is and how it moves."""

    lat: float
    lon: float
    altitude_m: float = 4.0
    speed_kmh: float = 0.0
    course_deg: float = 0.0


@dataclass(frozen=True, slots=True)
class SkyConditions:
    """What the environment does to the signals.

    Attributes:
        jam_db: C/N0 loss in dB applied to every satellite (0 = clean sky).
        blocked: no satellite visible at all (garage, tunnel).
    """

    jam_db: float = 0.0
    blocked: bool = False


_CLEAR_SKY = SkyConditions()


@dataclass(frozen=True, slots=True)
class _Orbit:
    talker: str
    svid: int
    base_elevation: float
    amplitude: float
    period_s: float
    phase: float
    base_azimuth: float
    azimuth_rate: float  # degrees per second

    def at(self, t_s: float) -> tuple[float, float]:
        elevation = self.base_elevation + self.amplitude * math.sin(2 * math.pi * t_s / self.period_s + self.phase)
        azimuth = (self.base_azimuth + self.azimuth_rate * t_s) % 360.0
        return elevation, azimuth


class GnssReceiver:
    """Receiver state: sky geometry, position error process, power/boot state.

    Args:
        seed: makes satellites and noise reproducible.
        noise_m: one-sigma horizontal position error at nominal geometry (metres).
        talkers: constellations tracked, subset of ``GP GL GA GB``.
        geoid_sep_m: geoid separation printed in GGA.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        noise_m: float = 2.0,
        talkers: tuple[str, ...] = tuple(CONSTELLATIONS),
        geoid_sep_m: float = 9.0,
    ) -> None:
        for talker in talkers:
            if talker not in CONSTELLATIONS:
                raise ValueError(f"constellation {talker!r} is not one of {sorted(CONSTELLATIONS)}")
        if not 0.0 <= noise_m <= 1000.0:
            raise ValueError(f"noise_m {noise_m} is outside 0-1000 m")
        self.talkers = talkers
        self.noise_m = noise_m
        self.geoid_sep_m = geoid_sep_m
        self._rng = random.Random(seed)
        self._orbits = self._make_orbits(random.Random(seed ^ 0x5EED))
        self._error_north = 0.0
        self._error_east = 0.0
        self._last_epoch_ms: int | None = None
        self._running = True
        self._first_fix_ms: int | None = None  # no fix before this time (after a restart)
        self._boot_ms: int | None = None
        self._cold = False
        self._banner_due = False

    @staticmethod
    def _make_orbits(rng: random.Random) -> list[_Orbit]:
        orbits: list[_Orbit] = []
        for talker in CONSTELLATIONS:
            low, high = _ID_RANGE[talker]
            orbits.extend(
                _Orbit(
                    talker=talker,
                    svid=svid,
                    base_elevation=rng.uniform(20.0, 60.0),
                    amplitude=rng.uniform(10.0, 25.0),
                    period_s=rng.uniform(40_000.0, 90_000.0),
                    phase=rng.uniform(0.0, 2 * math.pi),
                    base_azimuth=rng.uniform(0.0, 360.0),
                    azimuth_rate=rng.uniform(-0.004, 0.004),
                )
                for svid in sorted(rng.sample(range(low, high + 1), _VISIBLE_PER_SYSTEM[talker]))
            )
        return orbits

    @property
    def running(self) -> bool:
        """False between :meth:`stop` and :meth:`restart`."""
        return self._running

    def stop(self) -> None:
        """Power the receiver down: no output until :meth:`restart`."""
        self._running = False

    def restart(self, time_ms: int, *, ttff_ms: int = 3000, cold: bool = False) -> None:
        """Power the receiver up at ``time_ms``; first fix ``ttff_ms`` later.

        With ``cold`` the receiver has lost its clock: until the first fix it reports the
        1980-01-06 default date plus the time since boot.
        """
        self._running = True
        self._boot_ms = time_ms
        self._first_fix_ms = time_ms + ttff_ms
        self._cold = cold
        self._banner_due = True
        self._last_epoch_ms = None

    def satellites(self, time_ms: int, sky: SkyConditions) -> tuple[Satellite, ...]:
        """Satellites in view at ``time_ms`` with their C/N0 and use flags."""
        if sky.blocked:
            return ()
        t_s = time_ms / 1000.0
        result = []
        used_per_system: dict[str, int] = {}
        for orbit in self._orbits:
            if orbit.talker not in self.talkers:
                continue
            elevation, azimuth = orbit.at(t_s)
            if elevation < 5.0:
                continue
            snr_value = 27.0 + 0.28 * elevation + self._rng.uniform(-1.5, 1.5) - sky.jam_db
            snr = round(snr_value) if snr_value >= _TRACK_MIN_SNR else None
            used = (
                snr is not None
                and snr >= _USE_MIN_SNR
                and elevation >= _USE_MIN_ELEVATION
                and used_per_system.get(orbit.talker, 0) < 12
            )
            if used:
                used_per_system[orbit.talker] = used_per_system.get(orbit.talker, 0) + 1
            result.append(
                Satellite(orbit.talker, orbit.svid, min(90, round(elevation)), round(azimuth) % 360, snr, used)
            )
        return tuple(result)

    def _advance_error(self, time_ms: int, sigma: float) -> None:
        dt_s = 1.0 if self._last_epoch_ms is None else max(0.0, (time_ms - self._last_epoch_ms) / 1000.0)
        phi = 0.0 if self._last_epoch_ms is None else math.exp(-dt_s / _CORRELATION_S)
        spread = sigma * math.sqrt(1.0 - phi * phi)
        self._error_north = phi * self._error_north + self._rng.gauss(0.0, spread)
        self._error_east = phi * self._error_east + self._rng.gauss(0.0, spread)
        self._last_epoch_ms = time_ms

    def epoch(self, time_ms: int, truth: Truth, sky: SkyConditions = _CLEAR_SKY) -> Epoch | None:
        """The receiver's view at ``time_ms``, or None while it is stopped."""
        if not self._running:
            return None
        sats = self.satellites(time_ms, sky)
        used = sum(1 for sat in sats if sat.used)
        booting = self._first_fix_ms is not None and time_ms < self._first_fix_ms
        reported_ms: int | None = time_ms
        if booting and self._cold and self._boot_ms is not None:
            reported_ms = DEFAULT_DATE_MS + (time_ms - self._boot_ms)
        if booting or used < _MIN_USED_FOR_FIX:
            # no solution: nothing is "used", whatever the signal levels say
            sats = tuple(Satellite(s.talker, s.svid, s.elevation, s.azimuth, s.snr, False) for s in sats)
            return Epoch(time_ms=reported_ms, fix=False, satellites=sats)
        hdop = round(0.5 + 6.0 / used, 2)
        self._advance_error(time_ms, self.noise_m * max(1.0, hdop / 0.8))
        lat = truth.lat + self._error_north / _METERS_PER_DEG_LAT
        lon = truth.lon + self._error_east / (_METERS_PER_DEG_LAT * max(0.01, math.cos(math.radians(truth.lat))))
        speed = truth.speed_kmh
        if speed > 0.0:
            speed = max(0.0, speed + self._rng.gauss(0.0, 0.15))
        return Epoch(
            time_ms=time_ms,
            fix=True,
            lat=max(-90.0, min(90.0, lat)),
            lon=(lon + 180.0) % 360.0 - 180.0,
            altitude_m=truth.altitude_m + 1.5 * self._error_north,  # vertical error is larger than horizontal
            geoid_sep_m=self.geoid_sep_m,
            speed_kmh=speed,
            course_deg=truth.course_deg % 360.0,
            hdop=hdop,
            pdop=round(hdop * 1.7, 2),
            vdop=round(hdop * 1.4, 2),
            satellites=sats,
        )

    def sentences(
        self, time_ms: int, truth: Truth, sky: SkyConditions = _CLEAR_SKY, *, with_gsv: bool = True
    ) -> list[bytes]:
        """NMEA lines for the epoch at ``time_ms`` (boot banner first after a restart)."""
        epoch = self.epoch(time_ms, truth, sky)
        if epoch is None:
            return []
        lines = []
        if self._banner_due:
            self._banner_due = False
            lines.append(encode_txt("LienWatch SIM GNSS 1.0 (multi-GNSS)"))
        lines.extend(encode_epoch(epoch, self.talkers, with_gsv=with_gsv))
        return lines
