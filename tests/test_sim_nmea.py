"""Simulator NMEA: golden sentences, checksums, pynmea2 acceptance, receiver behaviour."""

from __future__ import annotations

import random
from functools import reduce

import pynmea2
import pytest

from firmware_sim import Epoch, GnssReceiver, Satellite, SkyConditions, Truth
from firmware_sim.gnss import DEFAULT_DATE_MS
from firmware_sim.nmea import (
    corrupt_sentence,
    encode_epoch,
    encode_txt,
    format_latitude,
    format_longitude,
    format_time,
    nmea_checksum,
    sentence,
)

T0 = 1_772_407_800_000  # 2026-03-01T23:30:00Z
SATS = (
    Satellite("GP", 7, 32, 352, 37, True),
    Satellite("GP", 10, 53, 335, 43, True),
    Satellite("GP", 14, 12, 52, None, False),
    Satellite("GL", 65, 28, 112, 35, True),
    Satellite("GA", 3, 51, 316, 41, True),
    Satellite("GB", 1, 45, 200, 44, True),
)
FIX = Epoch(
    time_ms=T0 + 123,
    fix=True,
    lat=31.301992,
    lon=121.245568,
    altitude_m=4.2,
    geoid_sep_m=9.0,
    speed_kmh=36.0,
    course_deg=271.5,
    hdop=0.9,
    pdop=1.53,
    vdop=1.26,
    satellites=SATS,
)

GOLDEN_FIX = [
    b"$GNRMC,233000.12,A,3118.11952,N,12114.73408,E,19.438,271.50,010326,,,A,V*31\r\n",
    b"$GNVTG,271.50,T,,M,19.438,N,36.000,K,A*20\r\n",
    b"$GNGGA,233000.12,3118.11952,N,12114.73408,E,1,05,0.90,4.2,M,9.0,M,,*7A\r\n",
    b"$GNGSA,A,3,07,10,,,,,,,,,,,1.53,0.90,1.26,1*0C\r\n",
    b"$GNGSA,A,3,65,,,,,,,,,,,,1.53,0.90,1.26,2*0A\r\n",
    b"$GNGSA,A,3,03,,,,,,,,,,,,1.53,0.90,1.26,3*0B\r\n",
    b"$GNGSA,A,3,01,,,,,,,,,,,,1.53,0.90,1.26,4*0E\r\n",
    b"$GPGSV,1,1,03,07,32,352,37,10,53,335,43,14,12,052,,1*55\r\n",
    b"$GLGSV,1,1,01,65,28,112,35,1*44\r\n",
    b"$GAGSV,1,1,01,03,51,316,41,7*44\r\n",
    b"$GBGSV,1,1,01,01,45,200,44,1*45\r\n",
]


def _xor(body: str) -> int:
    return reduce(lambda acc, ch: acc ^ ord(ch), body, 0)


def test_checksum_and_framing_match_an_independent_xor() -> None:
    body = "GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    assert nmea_checksum(body) == _xor(body) == 0x47  # the classic textbook sentence
    assert sentence(body) == b"$" + body.encode() + b"*47\r\n"


def test_fix_epoch_golden_sentences() -> None:
    assert encode_epoch(FIX) == GOLDEN_FIX


def test_no_fix_epoch_golden_sentences() -> None:
    epoch = Epoch(time_ms=T0, fix=False, satellites=SATS[:2])
    assert encode_epoch(epoch, ("GP", "GL")) == [
        b"$GNRMC,233000.00,V,,,,,,,010326,,,N,V*1D\r\n",
        b"$GNVTG,,T,,M,,N,,K,N*32\r\n",
        b"$GNGGA,233000.00,,,,,0,00,99.99,,,,,,*7A\r\n",
        b"$GNGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99,1*33\r\n",
        b"$GNGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99,2*30\r\n",
        b"$GPGSV,1,1,02,07,32,352,37,10,53,335,43,1*65\r\n",
        b"$GLGSV,1,1,00,1*78\r\n",
    ]


def test_every_golden_sentence_parses_with_pynmea2_checksum_on() -> None:
    parsed = [pynmea2.parse(line.decode().strip(), check=True) for line in GOLDEN_FIX]
    rmc, vtg, gga = parsed[0], parsed[1], parsed[2]
    assert rmc.status == "A"
    assert rmc.latitude == pytest.approx(31.301992, abs=1e-7)
    assert rmc.longitude == pytest.approx(121.245568, abs=1e-7)
    assert rmc.datestamp.isoformat() == "2026-03-01"
    assert rmc.timestamp.isoformat().startswith("23:30:00.12")
    assert float(vtg.spd_over_grnd_kmph) == 36.0
    assert gga.gps_qual == 1
    assert gga.num_sats == "05"
    assert float(gga.altitude) == 4.2
    assert [type(m).__name__ for m in parsed[3:7]] == ["GSA"] * 4
    assert [type(m).__name__ for m in parsed[7:]] == ["GSV"] * 4


def test_coordinate_formatting_edges() -> None:
    assert format_latitude(-33.999999999) == ("3400.00000", "S")  # rounds up without printing 60 minutes
    assert format_longitude(-0.5) == ("00030.00000", "W")
    assert format_longitude(179.99999999) == ("18000.00000", "E")
    assert format_latitude(0.0) == ("0000.00000", "N")
    assert format_time(T0 + 86_399_999 - (T0 % 86_400_000)) == "235959.99"
    assert format_time(None) == ""


def test_txt_banner_is_sanitised() -> None:
    assert encode_txt("a$b*c,d\u00e9") == sentence("GNTXT,01,01,02,abcd")


@pytest.mark.parametrize("seed", range(40))
def test_corrupted_sentences_fail_the_checksum_or_the_parse(seed: int) -> None:
    rng = random.Random(seed)
    line = GOLDEN_FIX[seed % len(GOLDEN_FIX)]
    damaged = corrupt_sentence(line, rng)
    assert damaged != line
    assert damaged.endswith(b"\r\n")
    assert damaged.count(b"\r\n") == 1
    text = damaged.decode("latin-1").strip()
    try:
        pynmea2.parse(text, check=True)
    except (pynmea2.ParseError, pynmea2.ChecksumError, ValueError, AttributeError, TypeError):
        return
    # a sentence whose checksum was removed can still parse: then it must have lost its '*'
    assert b"*" not in damaged


def test_records_refuse_impossible_values() -> None:
    with pytest.raises(ValueError, match="talker"):
        Satellite("XX", 1, 10, 10, 30, True)
    with pytest.raises(ValueError, match="used but not tracked"):
        Satellite("GP", 1, 10, 10, None, True)
    with pytest.raises(ValueError, match="WGS-84"):
        Epoch(time_ms=T0, fix=True, lat=91.0, lon=0.0)
    with pytest.raises(ValueError, match="must carry a time"):
        Epoch(time_ms=None, fix=True, lat=1.0, lon=1.0)


def test_receiver_clean_sky_gives_a_fix_near_the_truth() -> None:
    receiver = GnssReceiver(seed=1, noise_m=2.0)
    truth = Truth(31.2210, 121.5440, 5.0, 0.0, 0.0)
    for k in range(20):
        epoch = receiver.epoch(T0 + k * 1000, truth)
        assert epoch is not None
        assert epoch.fix
        assert abs(epoch.lat - truth.lat) * 111_320 < 15
        assert abs(epoch.lon - truth.lon) * 95_000 < 15
        assert sum(s.used for s in epoch.satellites) >= 4


def test_receiver_noise_is_reproducible_and_correlated() -> None:
    truth = Truth(31.0, 121.0)
    a = [GnssReceiver(seed=9).epoch(T0, truth)]
    b = [GnssReceiver(seed=9).epoch(T0, truth)]
    assert a == b
    receiver = GnssReceiver(seed=3, noise_m=3.0)
    first = receiver.epoch(T0, truth)
    second = receiver.epoch(T0 + 1000, truth)  # 1 s later: still within a metre or so of the last
    assert first is not None
    assert second is not None
    assert abs(first.lat - second.lat) * 111_320 < 2.5


def test_jamming_collapses_snr_and_then_the_fix() -> None:
    receiver = GnssReceiver(seed=2)
    truth = Truth(31.2, 121.4, speed_kmh=60.0, course_deg=270.0)
    clean = receiver.epoch(T0, truth)
    jammed = receiver.epoch(T0 + 1000, truth, SkyConditions(jam_db=80.0))
    assert clean is not None
    assert clean.fix
    assert jammed is not None
    assert not jammed.fix
    assert all(s.snr is None for s in jammed.satellites)
    lines = encode_epoch(jammed)
    assert lines[0].startswith(b"$GNRMC,233001.00,V,")
    assert pynmea2.parse(lines[2].decode().strip(), check=True).gps_qual == 0


def test_blocked_sky_has_no_satellites() -> None:
    epoch = GnssReceiver(seed=2).epoch(T0, Truth(31.0, 121.0), SkyConditions(blocked=True))
    assert epoch is not None
    assert not epoch.fix
    assert epoch.satellites == ()


def test_receiver_stop_and_cold_restart() -> None:
    receiver = GnssReceiver(seed=4)
    truth = Truth(31.0, 121.0)
    receiver.stop()
    assert receiver.sentences(T0, truth) == []
    receiver.restart(T0 + 10_000, ttff_ms=3000, cold=True)
    booting = receiver.sentences(T0 + 11_000, truth)
    assert booting[0] == encode_txt("LienWatch SIM GNSS 1.0 (multi-GNSS)")
    rmc = pynmea2.parse(booting[1].decode().strip(), check=True)
    assert rmc.status == "V"
    assert rmc.datestamp.isoformat() == "1980-01-06"  # default date before the first fix
    assert DEFAULT_DATE_MS + 1000 == 315_964_801_000
    fixed = receiver.sentences(T0 + 13_000, truth)
    assert pynmea2.parse(fixed[0].decode().strip(), check=True).status == "A"
    assert pynmea2.parse(fixed[0].decode().strip(), check=True).datestamp.isoformat() == "2026-03-01"


def test_receiver_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="constellation"):
        GnssReceiver(talkers=("GX",))
    with pytest.raises(ValueError, match="noise_m"):
        GnssReceiver(noise_m=-1.0)
