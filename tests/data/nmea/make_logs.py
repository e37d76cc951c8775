"""Write the receiver logs in this folder (deterministic; rerun to regenerate them).

    .venv/bin/python tests/data/nmea/make_logs.py

The logs imitate real receivers sentence by sentence: a u-blox M8 in NMEA 4.10 mode
(GN talker, one GSA per constellation, GSV per constellation with a signal id), a
MediaTek/SiRF style GPS-only module (GGA first, RMC later in the epoch, crossing
midnight), a cold start with no-fix periods, and a noisy serial line. The vehicle
drives east through Shanghai at a steady speed, so every coordinate is predictable.
gpsd's view of each log is stored next to it (see README.md); the tests compare ours.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import reduce
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNOTS_PER_MPS = 3600 / 1852


def checksum(body: str) -> str:
    """NMEA checksum of the text between '$' and '*'."""
    return f"{reduce(lambda a, c: a ^ ord(c), body, 0):02X}"


def sentence(body: str) -> str:
    return f"${body}*{checksum(body)}"


def lat_field(lat: float, digits: int = 5) -> str:
    hemi = "N" if lat >= 0 else "S"
    lat = abs(lat)
    deg = int(lat)
    minutes = (lat - deg) * 60
    return f"{deg:02d}{minutes:0{3 + digits}.{digits}f},{hemi}"


def lon_field(lon: float, digits: int = 5) -> str:
    hemi = "E" if lon >= 0 else "W"
    lon = abs(lon)
    deg = int(lon)
    minutes = (lon - deg) * 60
    return f"{deg:03d}{minutes:0{3 + digits}.{digits}f},{hemi}"


@dataclass
class State:
    """Where the car is at one epoch (truth used to write the sentences)."""

    hhmmss: str
    ddmmyy: str
    lat: float
    lon: float
    alt: float
    speed_mps: float
    course: float


def drive(start: tuple[int, int, int], date: str, n: int, *, lat: float, lon: float, speed: float,
          course: float, rollover_date: str | None = None) -> Iterator[State]:
    """Yield n one-second epochs of a straight drive starting at hh:mm:ss ``start``."""
    h, m, s = start
    t = h * 3600 + m * 60 + s
    day = date
    for i in range(n):
        if t >= 86400:
            t -= 86400
            assert rollover_date is not None
            day = rollover_date
        hh, rem = divmod(t, 3600)
        mm, ss = divmod(rem, 60)
        yield State(f"{hh:02d}{mm:02d}{ss:02d}", day, lat, lon, 12.4 + 0.1 * i, speed, course)
        dist = speed
        lat += dist * math.cos(math.radians(course)) / 111_320
        lon += dist * math.sin(math.radians(course)) / (111_320 * math.cos(math.radians(lat)))
        t += 1


def gsv_group(talker: str, sats: list[tuple[int, int, int, int | None]], signal_id: str | None) -> list[str]:
    """GSV sentences for (prn, elevation, azimuth, snr) tuples, four per sentence."""
    out = []
    total = max(1, math.ceil(len(sats) / 4))
    for k in range(total):
        chunk = sats[4 * k : 4 * k + 4]
        fields = [str(total), str(k + 1), f"{len(sats):02d}"]
        for prn, el, az, snr in chunk:
            fields += [f"{prn:02d}", f"{el:02d}", f"{az:03d}", "" if snr is None else f"{snr:02d}"]
        if signal_id is not None:
            fields.append(signal_id)
        out.append(sentence(f"{talker}GSV," + ",".join(fields)))
    return out


def jitter(sats: list[tuple[int, int, int, int | None]], delta: int) -> list[tuple[int, int, int, int | None]]:
    return [(p, e, a, None if s is None else s + delta) for p, e, a, s in sats]


def ublox_gn_multi() -> list[str]:
    lines = ["# u-blox M8 style, NMEA 4.10, GPS+GLONASS+Galileo+BeiDou, 1 Hz, Shanghai, 2024-05-15"]
    gps = [(2, 41, 62, 44), (5, 70, 312, 47), (12, 33, 210, 41), (13, 18, 150, 36),
           (15, 55, 280, 45), (18, 12, 40, 33), (20, 25, 95, 39), (24, 61, 175, 46), (25, 8, 330, None),
           (29, 44, 18, 42)]
    glo = [(68, 35, 140, 38), (69, 72, 190, 43), (78, 22, 300, 35), (79, 48, 355, 40), (85, 5, 60, None)]
    gal = [(3, 39, 122, 40), (11, 57, 250, 44)]
    bds = [(6, 66, 200, 41), (9, 30, 170, 37), (16, 45, 215, 39), (21, 27, 80, 36), (23, 52, 300, 42),
           (26, 14, 20, None), (34, 63, 110, 45)]
    for i, st in enumerate(drive((8, 15, 20), "150524", 12, lat=31.2304160, lon=121.4737010, speed=11.2,
                                 course=87.5)):
        t = f"{st.hhmmss}.00"
        kn = st.speed_mps * KNOTS_PER_MPS
        kmh = st.speed_mps * 3.6
        lat5, lon5 = lat_field(st.lat), lon_field(st.lon)
        wobble = i % 3 - 1
        lines += [
            sentence(f"GNRMC,{t},A,{lat5},{lon5},{kn:.3f},{st.course:.2f},{st.ddmmyy},,,A,V"),
            sentence(f"GNVTG,{st.course:.2f},T,,M,{kn:.3f},N,{kmh:.3f},K,A"),
            sentence(f"GNGGA,{t},{lat5},{lon5},1,16,0.78,{st.alt:.1f},M,7.6,M,,"),
            sentence("GNGSA,A,3,02,05,12,13,15,18,20,24,29,,,,1.35,0.78,1.10,1"),
            sentence("GNGSA,A,3,68,69,78,79,,,,,,,,,1.35,0.78,1.10,2"),
            sentence("GNGSA,A,3,03,11,,,,,,,,,,,1.35,0.78,1.10,3"),
            sentence("GNGSA,A,3,06,09,16,23,34,,,,,,,,1.35,0.78,1.10,4"),
        ]
        lines += gsv_group("GP", jitter(gps, wobble), "1")
        lines += gsv_group("GL", jitter(glo, wobble), "1")
        lines += gsv_group("GA", jitter(gal, wobble), "7")
        lines += gsv_group("GB", jitter(bds, wobble), "1")
        lines.append(sentence(f"GNGLL,{lat5},{lon5},{t},A,A"))
    return lines


def mtk_gp_midnight() -> list[str]:
    lines = ["# MediaTek/SiRF style GPS-only module, NMEA 3.01, GGA first and RMC later in each epoch,",
             "# 1 Hz, crossing midnight UTC from 2024-12-31 to 2025-01-01, Shanghai ring road heading north"]
    gps = [(3, 52, 40, 40), (6, 33, 130, 35), (14, 71, 250, 43), (17, 22, 300, 31), (19, 48, 80, 38),
           (22, 15, 190, 29), (24, 60, 10, 42), (28, 9, 220, None)]
    states = list(drive((23, 59, 53), "311224", 14, lat=31.1893550, lon=121.3921230, speed=16.9, course=12.3,
                        rollover_date="010125"))
    # The log starts in the middle of an epoch (the module was already talking).
    first = True
    for st in states:
        t = f"{st.hhmmss}.000"
        kn = st.speed_mps * KNOTS_PER_MPS
        lat4, lon4 = lat_field(st.lat, 4), lon_field(st.lon, 4)
        epoch = [
            sentence(f"GPGGA,{t},{lat4},{lon4},1,07,1.02,{st.alt:.1f},M,7.6,M,,"),
            sentence("GPGSA,A,3,03,06,14,17,19,22,24,,,,,,1.83,1.02,1.52"),
            *gsv_group("GP", gps, None),
            sentence(f"GPRMC,{t},A,{lat4},{lon4},{kn:.2f},{st.course:.2f},{st.ddmmyy},,,A"),
            sentence(f"GPVTG,{st.course:.2f},T,,M,{kn:.2f},N,{st.speed_mps * 3.6:.2f},K,A"),
        ]
        if first:
            epoch = epoch[3:]  # only the tail: GSV 2/2 .. VTG
            first = False
        lines += epoch
    return lines


def nofix_periods() -> list[str]:
    lines = ["# u-blox style GPS-only (NMEA 4.0): cold start without time, time without fix, fixes,",
             "# a tunnel (void RMC, GGA quality 0, zero-filled GGA), and the fix coming back. 2024-05-15"]
    weak = [(5, 70, 312, 21), (15, 55, 280, 18), (24, 61, 175, None), (13, 18, 150, None)]
    strong = [(2, 41, 62, 44), (5, 70, 312, 47), (12, 33, 210, 41), (15, 55, 280, 45), (20, 25, 95, 39),
              (24, 61, 175, 46), (29, 44, 18, 42)]
    # Cold start: the receiver knows neither time nor date.
    for _ in range(2):
        lines += [
            sentence("GPRMC,,V,,,,,,,,,,N"),
            sentence("GPVTG,,,,,,,,,N"),
            sentence("GPGGA,,,,,,0,00,99.99,,,,,,"),
            sentence("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"),
            sentence("GPGSV,1,1,00"),
            sentence("GPGLL,,,,,,V,N"),
        ]
    # Time and date known from the first satellite, no position yet.
    for sec in (40, 41, 42):
        t = f"0815{sec:02d}.00"
        lines += [
            sentence(f"GPRMC,{t},V,,,,,,,150524,,,N"),
            sentence("GPVTG,,,,,,,,,N"),
            sentence(f"GPGGA,{t},,,,,0,02,99.99,,,,,,"),
            sentence("GPGSA,A,1,05,15,,,,,,,,,,,99.99,99.99,99.99"),
            *gsv_group("GP", weak, None),
            sentence(f"GPGLL,,,,,{t},V,N"),
        ]
    states = list(drive((8, 15, 43), "150524", 10, lat=31.2504000, lon=121.3201000, speed=8.3, course=180.0))
    for idx, st in enumerate(states):
        t = f"{st.hhmmss}.00"
        kn = st.speed_mps * KNOTS_PER_MPS
        lat5, lon5 = lat_field(st.lat), lon_field(st.lon)
        if 4 <= idx <= 6:  # the tunnel
            gga = (f"GPGGA,{t},0000.00000,N,00000.00000,E,0,00,99.99,0.0,M,0.0,M,,"
                   if idx == 5 else f"GPGGA,{t},,,,,0,00,99.99,,,,,,")
            lines += [
                sentence(f"GPRMC,{t},V,,,,,,,{st.ddmmyy},,,N"),
                sentence("GPVTG,,,,,,,,,N"),
                sentence(gga),
                sentence("GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99"),
                *gsv_group("GP", weak, None),
                sentence(f"GPGLL,,,,,{t},V,N"),
            ]
            continue
        lines += [
            sentence(f"GPRMC,{t},A,{lat5},{lon5},{kn:.3f},{st.course:.2f},{st.ddmmyy},,,A"),
            sentence(f"GPVTG,{st.course:.2f},T,,M,{kn:.3f},N,{st.speed_mps * 3.6:.3f},K,A"),
            sentence(f"GPGGA,{t},{lat5},{lon5},1,07,1.10,{st.alt:.1f},M,7.6,M,,"),
            sentence("GPGSA,A,3,02,05,12,15,20,24,29,,,,,,2.01,1.10,1.68"),
            *gsv_group("GP", strong, None),
            sentence(f"GPGLL,{lat5},{lon5},{t},A,A"),
        ]
    return lines


def corrupt_lines() -> list[str]:
    """A GPS-only log as captured from a noisy UART: corruption is written in by hand below."""
    lines = ["# GPS-only receiver on a noisy UART, 2024-05-15: bad checksums, a sentence without a checksum,",
             "# a sentence cut short by the next one, binary noise and a truncated sentence at a reboot"]
    gps = [(2, 41, 62, 44), (5, 70, 312, 47), (12, 33, 210, 41), (15, 55, 280, 45), (20, 25, 95, 39)]
    for idx, st in enumerate(drive((9, 30, 0), "150524", 10, lat=31.2000000, lon=121.5000000, speed=5.5,
                                   course=45.0)):
        t = f"{st.hhmmss}.00"
        kn = st.speed_mps * KNOTS_PER_MPS
        lat5, lon5 = lat_field(st.lat), lon_field(st.lon)
        rmc = sentence(f"GPRMC,{t},A,{lat5},{lon5},{kn:.3f},{st.course:.2f},{st.ddmmyy},,,A")
        gga = sentence(f"GPGGA,{t},{lat5},{lon5},1,05,1.40,{st.alt:.1f},M,7.6,M,,")
        gsa = sentence("GPGSA,A,3,02,05,12,15,20,,,,,,,,2.40,1.40,1.95")
        gsv = gsv_group("GP", gps, None)
        if idx == 2:  # one flipped character in RMC: the checksum no longer matches
            good = rmc
            rmc = good[:-3].replace(f",{kn:.3f},", f",{kn + 1:.3f},") + good[-3:]
            assert rmc != good
        if idx == 3:  # GGA without its checksum (some cheap modules, or a cut '*hh')
            gga = gga.split("*")[0]
        if idx == 4:  # RMC cut off by the next sentence (a dropped run of bytes)
            rmc = rmc[:30] + gga
            gga = ""
        if idx == 6:  # a burst of line noise before the epoch
            lines.append("\x00\x7f\x1b\x13\xff\xfe~~~~\x11\x11")
        if idx == 7:  # a wrong checksum on GGA
            gga = gga[:-2] + ("00" if gga[-2:] != "00" else "11")
        lines += [s for s in (rmc, gga, gsa, *gsv) if s]
        if idx == 8:  # receiver reboots mid-sentence and prints its banner
            lines += ["$GPGSV,2,1,05,02,41,06", sentence("GPTXT,01,01,02,ANTSTATUS=OK")]
    return lines


LOGS = {
    "ublox_gn_multi.nmea": ublox_gn_multi,
    "mtk_gp_midnight.nmea": mtk_gp_midnight,
    "nofix_periods.nmea": nofix_periods,
    "corrupt_lines.nmea": corrupt_lines,
}


def main() -> None:
    for name, build in LOGS.items():
        data = "\r\n".join(build()) + "\r\n"
        (HERE / name).write_bytes(data.encode("latin-1"))
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
