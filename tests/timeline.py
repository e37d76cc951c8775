"""Hand-made timelines for the rules tests (builders); tests/test_rules_timeline.py tests them.

The builders produce protocol records directly (for engine tests) and NMEA / candump text
(for replay tests), so a test reads as a story: "parked here for 72 h, then driven".
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from edge.rules import Engine, RulesConfig
from protocol import Alert, AlertState, DailyStats, Fix, NoFix, SignalSample

SHANGHAI = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
DOOR_FL = "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen"
DOOR_FR = "Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen"
TRUNK = "Vehicle.Body.Trunk.Rear.IsOpen"
SPEED = "Vehicle.Speed"
IGNITION = "Vehicle.LowVoltageSystemState"
VOLTAGE = "Vehicle.LowVoltageBattery.CurrentVoltage"
ODOMETER = "Vehicle.TraveledDistance"
#: WGS-84 position of the demo market (sh-jiading-ucm, given in GCJ-02 as 31.3000, 121.2500).
MARKET_WGS = (31.301992, 121.245568)
S = 1000
MIN = 60 * S
H = 60 * MIN


def local_ms(zone: ZoneInfo, *args: int, fold: int = 0) -> int:
    """Epoch ms of a local wall time (year, month, day, hour, minute[, second])."""
    return int(datetime(*args, tzinfo=zone, fold=fold).timestamp() * 1000)  # type: ignore[misc,arg-type]


T0 = local_ms(SHANGHAI, 2024, 5, 6, 12, 0)  # a Monday noon in Shanghai


def offset(lat: float, lon: float, north_m: float, east_m: float) -> tuple[float, float]:
    """Move a point by metres north/east (small distances)."""
    dlat = north_m / 111_195.0
    dlon = east_m / (111_195.0 * math.cos(math.radians(lat)))
    return lat + dlat, lon + dlon


def fix(
    t: int,
    lat: float,
    lon: float,
    *,
    speed_mps: float | None = 0.0,
    hdop: float | None = 0.9,
    sats: int | None = 10,
    snr: float | None = 40.0,
) -> Fix:
    """A good 3D fix."""
    return Fix(time_ms=t, lat=lat, lon=lon, speed_mps=speed_mps, hdop=hdop, sats_used=sats, mean_snr=snr)


def sig(name: str, t: int, value: bool | int | float | str) -> SignalSample:
    """A signal sample."""
    return SignalSample(name=name, time_ms=t, value=value)


def run(engine: Engine, events: Iterable[Fix | NoFix | SignalSample]) -> list[Alert | DailyStats]:
    """Feed events in order, collecting every output record."""
    out: list[Alert | DailyStats] = []
    for event in events:
        out.extend(engine.feed(event))
    return out


def merged(*streams: Iterable[Fix | NoFix | SignalSample]) -> list[Fix | NoFix | SignalSample]:
    """Events of several streams in time order (stable: equal times keep stream order)."""
    return sorted((e for stream in streams for e in stream), key=lambda e: e.time_ms)


def alerts(records: Iterable[object], rule: str | None = None) -> list[Alert]:
    """The Alert records (of one rule)."""
    return [r for r in records if isinstance(r, Alert) and (rule is None or r.rule == rule)]


def raised_of(records: Iterable[object], rule: str | None = None) -> list[Alert]:
    """RAISED alerts (of one rule)."""
    return [a for a in alerts(records, rule) if a.state is AlertState.RAISED]


def parked(t0: int, t1: int, lat: float, lon: float, every_ms: int, jitter_m: float = 0.0) -> Iterator[Fix]:
    """Fixes of a parked car from t0 to t1 inclusive, with deterministic jitter."""
    i = 0
    t = t0
    while t <= t1:
        north = jitter_m * math.sin(i * 1.7)
        east = jitter_m * math.cos(i * 2.3)
        yield fix(t, *offset(lat, lon, north, east))
        i += 1
        t += every_ms


def drive(t0: int, lat: float, lon: float, seconds: int, speed_mps: float, hz: int = 1) -> Iterator[Fix]:
    """Fixes of a car driving due east at constant speed."""
    for i in range(seconds * hz + 1):
        t = t0 + i * S // hz
        yield fix(t, *offset(lat, lon, 0.0, speed_mps * i / hz), speed_mps=speed_mps)


def engine(**rules: object) -> Engine:
    """An engine from a [rules]-like dict."""
    return Engine(RulesConfig.from_dict(rules))


# ------------------------------------------------------------------ NMEA / candump writers


def _nmea(body: str) -> str:
    checksum = 0
    for ch in body:
        checksum ^= ord(ch)
    return f"${body}*{checksum:02X}"


def _ddmm(value: float, lat: bool) -> tuple[str, str]:
    hemi = ("N" if value >= 0 else "S") if lat else ("E" if value >= 0 else "W")
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60
    text = f"{degrees:02d}{minutes:07.4f}" if lat else f"{degrees:03d}{minutes:07.4f}"
    return text, hemi


def nmea_epoch(event: Fix | NoFix) -> list[str]:
    """GGA, GSA, GSV and RMC sentences (GP talker) for one epoch."""
    utc = datetime.fromtimestamp(event.time_ms / 1000.0, ZoneInfo("UTC"))
    hhmmss = utc.strftime("%H%M%S") + f".{utc.microsecond // 10000:02d}"
    ddmmyy = utc.strftime("%d%m%y")
    snr = event.mean_snr
    svs = [(3 + i, 40, 100 + 30 * i, None if snr is None else round(snr)) for i in range(4)]
    gsv_fields = ",".join(f"{prn:02d},{el:02d},{az:03d},{'' if s is None else f'{s:02d}'}" for prn, el, az, s in svs)
    gsv = _nmea(f"GPGSV,1,1,04,{gsv_fields}")
    if isinstance(event, Fix):
        lat, ns = _ddmm(event.lat, lat=True)
        lon, ew = _ddmm(event.lon, lat=False)
        knots = (event.speed_mps or 0.0) / 0.514444
        hdop = event.hdop if event.hdop is not None else 1.0
        sats = event.sats_used if event.sats_used is not None else 8
        gga = _nmea(f"GPGGA,{hhmmss},{lat},{ns},{lon},{ew},1,{sats:02d},{hdop:.1f},10.0,M,0.0,M,,")
        gsa = _nmea(f"GPGSA,A,3,03,04,05,06,,,,,,,,,{hdop + 0.5:.1f},{hdop:.1f},1.0")
        rmc = _nmea(f"GPRMC,{hhmmss},A,{lat},{ns},{lon},{ew},{knots:.2f},0.0,{ddmmyy},,,A")
        return [gga, gsa, gsv, rmc]
    gga = _nmea(f"GPGGA,{hhmmss},,,,,0,00,99.9,,M,,M,,")
    gsa = _nmea("GPGSA,A,1,,,,,,,,,,,,,99.9,99.9,99.9")
    rmc = _nmea(f"GPRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N")
    return [gga, gsa, gsv, rmc]


def write_nmea(path: Path, events: Iterable[Fix | NoFix]) -> Path:
    """An NMEA log file of the epochs."""
    with path.open("w", encoding="ascii", newline="\r\n") as fh:
        for event in events:
            for line in nmea_epoch(event):
                fh.write(line + "\n")
    return path
