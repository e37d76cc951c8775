"""NMEA 0183 (4.10 style) sentence encoding: pure functions, values in, bytes out.

The receiver talks like a multi-constellation module (u-blox M8/M9 style): ``GN``
talker for RMC, VTG, GGA and one GSA per constellation (with the 4.10 system id), and
GSV per constellation (``GP`` GPS, ``GL`` GLONASS, ``GA`` Galileo, ``GB`` BeiDou) with
the 4.10 signal id. Every sentence ends in ``*HH\\r\\n`` with a correct checksum unless
it is deliberately corrupted by :func:`corrupt_sentence`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = [
    "CONSTELLATIONS",
    "Epoch",
    "Satellite",
    "corrupt_sentence",
    "encode_epoch",
    "encode_gga",
    "encode_gsa",
    "encode_gsv",
    "encode_rmc",
    "encode_txt",
    "encode_vtg",
    "format_date",
    "format_latitude",
    "format_longitude",
    "format_time",
    "nmea_checksum",
    "sentence",
]

#: talker -> (GSA system id, GSV signal id) per NMEA 4.10.
CONSTELLATIONS: dict[str, tuple[int, int]] = {"GP": (1, 1), "GL": (2, 1), "GA": (3, 7), "GB": (4, 1)}

_KMH_PER_KNOT = 1.852
_MINUTE_UNITS = 100_000  # ddmm.mmmmm: minutes carried with five decimals (about 2 cm)


@dataclass(frozen=True, slots=True)
class Satellite:
    """One satellite as the receiver reports it in GSV/GSA.

    Attributes:
        talker: constellation talker id (``GP``, ``GL``, ``GA``, ``GB``).
        svid: NMEA satellite id (GPS 1-32, GLONASS 65-96, Galileo 1-36, BeiDou 1-63).
        elevation: degrees above the horizon, 0-90.
        azimuth: degrees from true north, 0-359.
        snr: carrier-to-noise in dB-Hz, or None when the satellite is not tracked.
        used: whether the satellite is used in the navigation solution.
    """

    talker: str
    svid: int
    elevation: int
    azimuth: int
    snr: int | None
    used: bool

    def __post_init__(self) -> None:
        if self.talker not in CONSTELLATIONS:
            raise ValueError(f"satellite talker {self.talker!r} is not one of {sorted(CONSTELLATIONS)}")
        if not 1 <= self.svid <= 99:
            raise ValueError(f"satellite id {self.svid} is outside 1-99")
        if not 0 <= self.elevation <= 90 or not 0 <= self.azimuth <= 359:
            raise ValueError(f"satellite {self.svid}: elevation {self.elevation} / azimuth {self.azimuth} out of range")
        if self.snr is not None and not 0 <= self.snr <= 99:
            raise ValueError(f"satellite {self.svid}: snr {self.snr} outside 0-99 dB-Hz")
        if self.used and self.snr is None:
            raise ValueError(f"satellite {self.svid} is used but not tracked")


@dataclass(frozen=True, slots=True)
class Epoch:
    """Everything one receiver epoch reports.

    Attributes:
        time_ms: the UTC time the receiver reports (epoch milliseconds), or None when it
            does not know the time yet (fields left empty).
        fix: whether a position solution exists; position fields are ignored when False.
        lat, lon: WGS-84 degrees.
        altitude_m: height above mean sea level.
        geoid_sep_m: geoid separation (WGS-84 ellipsoid minus MSL).
        speed_kmh, course_deg: over ground.
        hdop, pdop, vdop: dilutions of precision of the solution.
        satellites: every satellite in view.
    """

    time_ms: int | None
    fix: bool
    lat: float = 0.0
    lon: float = 0.0
    altitude_m: float = 0.0
    geoid_sep_m: float = 0.0
    speed_kmh: float = 0.0
    course_deg: float = 0.0
    hdop: float = 99.99
    pdop: float = 99.99
    vdop: float = 99.99
    satellites: tuple[Satellite, ...] = ()

    def __post_init__(self) -> None:
        if self.fix:
            if not -90.0 <= self.lat <= 90.0 or not -180.0 <= self.lon <= 180.0:
                raise ValueError(f"epoch position {self.lat}, {self.lon} is not a WGS-84 coordinate")
            if self.time_ms is None:
                raise ValueError("an epoch with a fix must carry a time")
        if self.speed_kmh < 0 or not 0.0 <= self.course_deg < 360.0:
            raise ValueError(f"epoch speed {self.speed_kmh} km/h / course {self.course_deg} out of range")


def nmea_checksum(body: str) -> int:
    """XOR of every character between ``$`` and ``*``."""
    value = 0
    for byte in body.encode("ascii"):
        value ^= byte
    return value


def sentence(body: str) -> bytes:
    """Frame a sentence body (without ``$``) as ``$BODY*HH\\r\\n``."""
    return f"${body}*{nmea_checksum(body):02X}\r\n".encode("ascii")


def format_time(time_ms: int | None) -> str:
    """``hhmmss.ss`` in UTC (empty when the time is unknown)."""
    if time_ms is None:
        return ""
    day_ms = time_ms % 86_400_000
    hours, rest = divmod(day_ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}{minutes:02d}{seconds:02d}.{millis // 10:02d}"


def format_date(time_ms: int | None) -> str:
    """``ddmmyy`` in UTC (empty when the time is unknown)."""
    if time_ms is None:
        return ""
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).strftime("%d%m%y")


def _degrees_minutes(value: float, degree_digits: int) -> str:
    units = round(abs(value) * 60 * _MINUTE_UNITS)  # integer arithmetic: never prints 60.00000 minutes
    degrees, minute_units = divmod(units, 60 * _MINUTE_UNITS)
    whole, frac = divmod(minute_units, _MINUTE_UNITS)
    return f"{degrees:0{degree_digits}d}{whole:02d}.{frac:05d}"


def format_latitude(lat: float) -> tuple[str, str]:
    """``(ddmm.mmmmm, N|S)``."""
    return _degrees_minutes(lat, 2), ("N" if lat >= 0 else "S")


def format_longitude(lon: float) -> tuple[str, str]:
    """``(dddmm.mmmmm, E|W)``."""
    return _degrees_minutes(lon, 3), ("E" if lon >= 0 else "W")


def _position_fields(epoch: Epoch) -> str:
    lat, ns = format_latitude(epoch.lat)
    lon, ew = format_longitude(epoch.lon)
    return f"{lat},{ns},{lon},{ew}"


def encode_rmc(epoch: Epoch) -> bytes:
    """``$GNRMC``: time, status, position, speed (knots), course, date, mode, nav status."""
    hhmmss, ddmmyy = format_time(epoch.time_ms), format_date(epoch.time_ms)
    if not epoch.fix:
        return sentence(f"GNRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N,V")
    knots = epoch.speed_kmh / _KMH_PER_KNOT
    return sentence(f"GNRMC,{hhmmss},A,{_position_fields(epoch)},{knots:.3f},{epoch.course_deg:.2f},{ddmmyy},,,A,V")


def encode_vtg(epoch: Epoch) -> bytes:
    """``$GNVTG``: course over ground and speed in knots and km/h."""
    if not epoch.fix:
        return sentence("GNVTG,,T,,M,,N,,K,N")
    knots = epoch.speed_kmh / _KMH_PER_KNOT
    return sentence(f"GNVTG,{epoch.course_deg:.2f},T,,M,{knots:.3f},N,{epoch.speed_kmh:.3f},K,A")


def _used_count(epoch: Epoch) -> int:
    return sum(1 for sat in epoch.satellites if sat.used)


def encode_gga(epoch: Epoch) -> bytes:
    """``$GNGGA``: time, position, quality, satellites used, HDOP, altitude, geoid separation."""
    hhmmss = format_time(epoch.time_ms)
    if not epoch.fix:
        return sentence(f"GNGGA,{hhmmss},,,,,0,00,99.99,,,,,,")
    used = min(_used_count(epoch), 99)
    return sentence(
        f"GNGGA,{hhmmss},{_position_fields(epoch)},1,{used:02d},{epoch.hdop:.2f},"
        f"{epoch.altitude_m:.1f},M,{epoch.geoid_sep_m:.1f},M,,"
    )


def encode_gsa(epoch: Epoch, talkers: tuple[str, ...]) -> list[bytes]:
    """One ``$GNGSA`` per constellation: mode, fix type, up to 12 used ids, DOPs, system id."""
    lines = []
    for talker in talkers:
        system_id = CONSTELLATIONS[talker][0]
        used = (sat for sat in epoch.satellites if sat.talker == talker and sat.used and epoch.fix)
        ids = [f"{sat.svid:02d}" for sat in used][:12]
        ids += [""] * (12 - len(ids))
        fix_type = "3" if epoch.fix else "1"
        dops = f"{epoch.pdop:.2f},{epoch.hdop:.2f},{epoch.vdop:.2f}" if epoch.fix else "99.99,99.99,99.99"
        lines.append(sentence(f"GNGSA,A,{fix_type},{','.join(ids)},{dops},{system_id}"))
    return lines


def encode_gsv(epoch: Epoch, talker: str) -> list[bytes]:
    """``$xxGSV`` for one constellation: four satellites per sentence, signal id last."""
    signal_id = CONSTELLATIONS[talker][1]
    sats = sorted((sat for sat in epoch.satellites if sat.talker == talker), key=lambda sat: sat.svid)
    if not sats:
        return [sentence(f"{talker}GSV,1,1,00,{signal_id}")]
    total = (len(sats) + 3) // 4
    lines = []
    for index in range(total):
        chunk = sats[index * 4 : index * 4 + 4]
        fields = ",".join(
            f"{sat.svid:02d},{sat.elevation:02d},{sat.azimuth:03d},{'' if sat.snr is None else f'{sat.snr:02d}'}"
            for sat in chunk
        )
        lines.append(sentence(f"{talker}GSV,{total},{index + 1},{len(sats):02d},{fields},{signal_id}"))
    return lines


def encode_txt(text: str, talker: str = "GN") -> bytes:
    """``$xxTXT`` informational message (receivers print one at boot)."""
    clean = "".join(ch for ch in text if 32 <= ord(ch) < 127 and ch not in "$*,")[:61]
    return sentence(f"{talker}TXT,01,01,02,{clean}")


def encode_epoch(
    epoch: Epoch, talkers: tuple[str, ...] = tuple(CONSTELLATIONS), *, with_gsv: bool = True
) -> list[bytes]:
    """Every sentence of one epoch in receiver order: RMC, VTG, GGA, GSA..., GSV...."""
    lines = [encode_rmc(epoch), encode_vtg(epoch), encode_gga(epoch), *encode_gsa(epoch, talkers)]
    if with_gsv:
        for talker in talkers:
            lines.extend(encode_gsv(epoch, talker))
    return lines


def corrupt_sentence(line: bytes, rng: random.Random) -> bytes:
    """Damage one sentence the way a noisy UART does.

    One of: a flipped character (checksum mismatch), a truncated line, a missing checksum,
    or a non-ASCII byte. The result still ends with ``\\r\\n`` so the damage stays on one line.
    """
    body = line.rstrip(b"\r\n")
    kind = rng.randrange(4)
    if kind == 0:  # flipped bit inside the body: the checksum no longer matches
        pos = rng.randrange(1, max(2, body.index(b"*")))
        flipped = body[pos] ^ 0x01
        if flipped in (ord("*"), ord("$"), ord("\r"), ord("\n")):
            flipped = ord("#")
        body = body[:pos] + bytes([flipped]) + body[pos + 1 :]
    elif kind == 1:  # truncated mid-sentence
        body = body[: rng.randrange(1, len(body) - 3)]
    elif kind == 2:  # checksum missing
        body = body[: body.index(b"*")]
    else:  # a byte that is not ASCII
        pos = rng.randrange(1, len(body) - 3)
        body = body[:pos] + bytes([0x80 + rng.randrange(0x7F)]) + body[pos + 1 :]
    return body + b"\r\n"
