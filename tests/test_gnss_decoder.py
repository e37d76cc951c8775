"""NmeaDecoder: golden sentences, hostile input, epoch/time rules, and property tests."""

from __future__ import annotations

import datetime as dt
import itertools
from functools import reduce
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.gnss import (
    BadChecksum,
    GarbageLine,
    GnssError,
    ImplausibleDate,
    IncompleteEpoch,
    InvalidField,
    MissingChecksum,
    NmeaDecoder,
    OversizedLine,
    StaleEpoch,
    TruncatedSentence,
    UndatedEpoch,
    UnparsableSentence,
    UnsupportedSentence,
    UntimedEpoch,
    read_nmea_file,
)
from protocol import Fix, FixMode, NoFix

DATA = Path(__file__).parent / "data" / "nmea"

# Classic sentences (NMEA reference examples, date moved to 2024 so the time is plausible).
RMC = b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W*61\r\n"
GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47\r\n"
GSA = b"$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39\r\n"
GSV = b"$GPGSV,2,1,08,01,40,083,46,02,17,308,41,12,07,344,39,14,22,228,45*75\r\n"
VTG = b"$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48\r\n"
RMC_NEXT = b"$GPRMC,123520,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W*6B\r\n"
GGA_NEXT = b"$GPGGA,123520,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*4D\r\n"
EPOCH = RMC + VTG + GGA + GSA + GSV


def ms(iso: str) -> int:
    return int(dt.datetime.fromisoformat(iso).replace(tzinfo=dt.UTC).timestamp() * 1000)


def nmea(body: str) -> bytes:
    """A sentence with its correct checksum (for constructed cases)."""
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}\r\n".encode()


def decode(data: bytes, **kwargs: object) -> tuple[list[Fix | NoFix], NmeaDecoder, list[GnssError]]:
    errors: list[GnssError] = []
    decoder = NmeaDecoder(on_error=errors.append, **kwargs)  # type: ignore[arg-type]
    records = decoder.feed(data) + decoder.flush()
    return records, decoder, errors


# -- golden sentences ------------------------------------------------------------------


def test_classic_epoch_merges_rmc_gga_gsa_gsv_vtg() -> None:
    records, decoder, errors = decode(EPOCH)
    assert errors == []
    assert records == [
        Fix(
            time_ms=ms("2024-03-23T12:35:19"),
            lat=48 + 7.038 / 60,
            lon=11 + 31.0 / 60,
            alt_m=545.4,
            speed_mps=22.4 * (1852 / 3600),
            course_deg=84.4,
            mode=FixMode.THREE_D,
            hdop=0.9,
            sats_used=8,
            mean_snr=42.8,  # (46 + 41 + 39 + 45) / 4 = 42.75
        )
    ]
    assert isinstance(records[0], Fix)
    assert records[0].lat == pytest.approx(48.1173, abs=1e-9)
    counts = decoder.counters.as_dict()
    assert counts["sentences_parsed"] == 5
    assert counts["fixes_emitted"] == 1
    assert counts["lines_read"] == 5


def test_epoch_is_emitted_when_the_time_changes_not_before() -> None:
    decoder = NmeaDecoder()
    assert decoder.feed(EPOCH) == []
    first = decoder.feed(RMC_NEXT)
    assert [r.time_ms for r in first] == [ms("2024-03-23T12:35:19")]
    assert decoder.feed(GGA_NEXT) == []
    assert [r.time_ms for r in decoder.flush()] == [ms("2024-03-23T12:35:20")]
    assert decoder.flush() == []


def test_multi_constellation_ublox_epoch() -> None:
    lines = (DATA / "ublox_gn_multi.nmea").read_bytes().split(b"\r\n")
    first_epoch = b"\r\n".join(lines[1:17]) + b"\r\n"  # GNRMC .. GNGLL of 08:15:20
    records, decoder, errors = decode(first_epoch)
    assert errors == []
    assert records == [
        Fix(
            time_ms=ms("2024-05-15T08:15:20"),
            lat=31 + 13.82496 / 60,
            lon=121 + 28.42206 / 60,
            alt_m=12.4,
            speed_mps=21.771 * 1852 / 3600,
            course_deg=87.5,
            mode=FixMode.THREE_D,
            hdop=0.78,
            sats_used=16,
            # Tracked satellites of GPS, GLONASS, Galileo and BeiDou (empty SNR = not tracked):
            # GP 43 46 40 35 44 32 38 45 41, GL 37 42 34 39, GA 39 43, BD 40 36 38 35 41 44
            mean_snr=round((364 + 152 + 82 + 234) / 21, 1),
        )
    ]
    assert decoder.counters.sentences_parsed == 16


def test_every_talker_is_accepted() -> None:
    for talker in ("GP", "GN", "GL", "GA", "GB", "BD", "GQ"):
        body_rmc = f"{talker}RMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W"
        body_gga = f"{talker}GGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
        records, _, errors = decode(nmea(body_rmc) + nmea(body_gga))
        assert errors == [], talker
        assert len(records) == 1, talker
        assert isinstance(records[0], Fix), talker


def test_void_rmc_and_quality_zero_yield_nofix_never_a_position() -> None:
    data = (
        b"$GPRMC,123519,V,,,,,,,230324,,,N*5A\r\n"
        b"$GPGGA,123519,,,,,0,00,99.99,,,,,,*45\r\n"
        b"$GPGSA,A,1,,,,,,,,,,,,,99.99,99.99,99.99*30\r\n" + nmea("GPGSV,1,1,03,05,70,312,21,15,55,280,18,24,61,175,")
    )
    records, decoder, errors = decode(data)
    assert errors == []
    assert records == [NoFix(time_ms=ms("2024-03-23T12:35:19"), sats_in_view=3, mean_snr=19.5)]
    assert decoder.counters.no_fix_epochs == 1
    assert decoder.counters.fixes_emitted == 0


def test_zero_filled_sentences_yield_nofix() -> None:
    # A GGA of zeros with quality 0, and an RMC claiming 'A' at exactly 0,0 (seen on cheap modules).
    gga_zero = b"$GPGGA,123519.00,0000.0000,N,00000.0000,E,0,00,99.9,0.0,M,0.0,M,,*69\r\n"
    rmc_zero = b"$GPRMC,123519.00,A,0000.0000,N,00000.0000,E,0.0,0.0,230324,,,A*57\r\n"
    for data in (rmc_zero + gga_zero, rmc_zero):
        records, _, errors = decode(data)
        assert errors == []
        assert records == [NoFix(time_ms=ms("2024-03-23T12:35:19"))]


ZDA = nmea("GPZDA,123519,23,03,2024,00,00")


def test_gns_gives_position_altitude_satellites_and_hdop() -> None:
    gns = nmea("GNGNS,123519,4807.038,N,01131.000,W,ADN,14,0.7,545.4,46.9,,,S")
    records, decoder, errors = decode(ZDA + gns)
    assert errors == []
    assert records == [
        Fix(
            time_ms=ms("2024-03-23T12:35:19"),
            lat=48 + 7.038 / 60,
            lon=-(11 + 31.0 / 60),
            alt_m=545.4,
            speed_mps=None,
            course_deg=None,
            mode=FixMode.THREE_D,
            hdop=0.7,
            sats_used=14,
            mean_snr=None,
        )
    ]
    assert decoder.counters.sentences_parsed == 2


def test_gns_with_three_satellites_is_2d_as_gpsd_says() -> None:
    records, _, _ = decode(ZDA + nmea("GPGNS,123519,4807.038,N,01131.000,E,A,03,2.0,545.4,,,"))
    assert isinstance(records[0], Fix)
    assert records[0].mode is FixMode.TWO_D


@pytest.mark.parametrize("modes", ["N", "NN", "NNNNNN", ""])
def test_gns_without_a_fix_in_any_constellation_is_no_fix(modes: str) -> None:
    records, _, errors = decode(ZDA + nmea(f"GNGNS,123519,4807.038,N,01131.000,E,{modes},00,,,,,"))
    assert errors == []
    assert [type(r) for r in records] == [NoFix]


def test_gns_without_gps_or_marked_unsafe_leaves_the_position_to_rmc_and_gga() -> None:
    """Furuno GN-87: "NDD" (GLONASS and Galileo fix, no GPS) and navigation status V, as gpsd."""
    rmc = nmea("GNRMC,123519,A,4807.038,N,01131.000,E,0.0,0.0,230324,,,D,V")
    gns = nmea("GNGNS,123519,4807.500,N,01131.500,E,NDD,11,1.3,168.9,39.5,,,V")
    gga = nmea("GNGGA,123519,4807.038,N,01131.000,E,2,11,1.3,168.9,M,39.5,M,,")
    records, _, errors = decode(rmc + gns + gga)
    assert errors == []
    assert [(type(r), r.lat) for r in records if isinstance(r, Fix)] == [(Fix, 48 + 7.038 / 60)]
    only_gns, _, _ = decode(ZDA + nmea("GNGNS,123519,4807.500,N,01131.500,E,NDD,11,1.3,168.9,39.5,,,V"))
    assert [type(r) for r in only_gns] == [NoFix]


def test_rmc_alone_is_a_2d_fix_and_gll_is_a_fallback() -> None:
    records, _, _ = decode(RMC)
    assert isinstance(records[0], Fix)
    assert records[0].mode is FixMode.TWO_D
    assert records[0].alt_m is None
    gll = b"$GPGLL,4807.038,N,01131.000,E,123519,A,A*48\r\n"
    records, _, errors = decode(nmea("GPRMC,123519,A,,,,,022.4,084.4,230324,,,A") + gll)
    assert errors == []
    assert isinstance(records[0], Fix)
    assert records[0].lat == pytest.approx(48.1173)


def test_vtg_gives_speed_and_course_when_rmc_has_none() -> None:
    rmc = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,,,230324,,,A")
    records, _, errors = decode(rmc + VTG)
    assert errors == []
    fix = records[0]
    assert isinstance(fix, Fix)
    assert fix.speed_mps == pytest.approx(5.5 * 1852 / 3600)
    assert fix.course_deg == pytest.approx(54.7)


def test_southern_and_western_hemispheres() -> None:
    rmc = nmea("GPRMC,123519,A,3352.128,S,15112.558,W,0.0,,230324,,,A")
    records, _, _ = decode(rmc)
    fix = records[0]
    assert isinstance(fix, Fix)
    assert fix.lat == pytest.approx(-(33 + 52.128 / 60))
    assert fix.lon == pytest.approx(-(151 + 12.558 / 60))


def test_fractional_seconds_are_kept_to_the_millisecond() -> None:
    records, _, _ = decode(nmea("GPRMC,123519.250,A,4807.038,N,01131.000,E,0.0,,230324,,,A"))
    assert records[0].time_ms == ms("2024-03-23T12:35:19") + 250


# -- hostile input: every rejection is typed and counted --------------------------------


@pytest.mark.parametrize(
    ("line", "error", "counter"),
    [
        (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*48", BadChecksum, "bad_checksums"),
        (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*4G", BadChecksum, "bad_checksums"),
        (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", MissingChecksum, "missing_checksums"),
        (b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*", MissingChecksum, "missing_checksums"),
        (b"$GPGGA,123519,4807.03", MissingChecksum, "missing_checksums"),  # truncated
        (b"\x00\x01\xff\xfe binary noise \x80", GarbageLine, "unparsable_lines"),
        (b"$" + b"A" * 300 + b"*00", OversizedLine, "oversized_lines"),
        (nmea("GPTXT,01,01,02,ANTSTATUS=OK").strip(), UnsupportedSentence, "unsupported_sentences"),
        (nmea("PUBX,00,081350.00,4717.113210,N").strip(), UnsupportedSentence, "unsupported_sentences"),
        (nmea("GP").strip(), UnparsableSentence, "unparsable_lines"),
        (nmea("GPGGA\x01,1").strip(), UnparsableSentence, "unparsable_lines"),
        (nmea("GPGGA;123519").strip(), UnparsableSentence, "unparsable_lines"),
        # Forged: correct checksum, impossible content.
        (nmea("GPGGA,123519,9507.038,N,01131.000,E,1,08,0.9,545.4,M,,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GPGGA,123519,4807.038,X,01131.000,E,1,08,0.9,545.4,M,,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GPGGA,126519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GPGGA,123519,4860.000,N,01131.000,E,1,08,0.9,545.4,M,,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GPGGA,123519,4807.038,N,01131.000,E,1,x8,0.9,545.4,M,,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GPGGA,123519,4807.038,N,01131.000,E,1,08,nan,545.4,M,,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GPRMC,123519,A,4807.038,N,01131.000,E,inf,,230324,,,A").strip(), InvalidField, "invalid_fields"),
        (nmea("GPGSV,1,1,01,07,95,083,46").strip(), InvalidField, "invalid_fields"),
        (nmea("GPGSA,A,7,04,,,,,,,,,,,,2.5,1.3,2.1").strip(), InvalidField, "invalid_fields"),
        (nmea("GPZDA,123519,31,12,24,00,00").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,123519,4807.038,N,01131.000,E,AX,08,0.9,545.4,46.9,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,123519,4807.038,N,01131.000,E,AAAAAAAAA,08,0.9,545.4,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,123519,4807.038,N,01131.000,E,AA,-1,0.9,545.4,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,123519,4807.038,N,01131.000,E,AA,08,nan,545.4,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,123519,4807.038,N,01131.000,E,AA,08,0.9,1e9,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,123519,4807.038,N,01131.000,E,AA,08,0.9,545.4,,,,X").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,123519,4807.038,Q,01131.000,E,AA,08,0.9,545.4,,,").strip(), InvalidField, "invalid_fields"),
        (nmea("GNGNS,126519,4807.038,N,01131.000,E,AA,08,0.9,545.4,,,").strip(), InvalidField, "invalid_fields"),
    ],
)
def test_bad_lines_are_typed_counted_and_never_raise(line: bytes, error: type[GnssError], counter: str) -> None:
    errors: list[GnssError] = []
    decoder = NmeaDecoder(on_error=errors.append)
    assert decoder.feed_line(line) == []
    assert decoder.feed(line + b"\r\n") == []
    assert decoder.flush() == []
    assert [type(e) for e in errors] == [error, error]
    assert decoder.counters.as_dict()[counter] == 2
    assert decoder.counters.sentences_parsed == 0
    assert decoder.last_error is errors[-1]
    assert errors[0].reason
    assert str(errors[0])


def test_lowercase_checksum_is_accepted() -> None:
    line = nmea("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230324,,,A").strip()
    records, _, errors = decode(line[:-2] + line[-2:].lower() + b"\n")
    assert errors == []
    assert len(records) == 1


def test_a_sentence_cut_by_the_next_is_reported_and_the_next_survives() -> None:
    data = RMC + b"$GPGGA,123519,4807.03" + GGA
    records, decoder, errors = decode(data)
    assert [type(e) for e in errors] == [TruncatedSentence]
    assert len(records) == 1
    assert isinstance(records[0], Fix)
    assert records[0].alt_m == 545.4
    assert decoder.counters.bytes_discarded == len(b"$GPGGA,123519,4807.03")


def test_noise_before_a_sentence_is_discarded_and_counted() -> None:
    records, decoder, errors = decode(b"\xff\x00garbage" + EPOCH)
    assert errors == []
    assert len(records) == 1
    assert decoder.counters.bytes_discarded == len(b"\xff\x00garbage")


def test_an_endless_line_does_not_grow_the_buffer() -> None:
    decoder = NmeaDecoder()
    for _ in range(1000):
        assert decoder.feed(b"x" * 1000) == []
    assert len(decoder._tail) <= decoder.max_sentence
    assert decoder.counters.bytes_discarded >= 999_000
    assert decoder.feed(b"\r\n" + EPOCH) == []
    assert len(decoder.flush()) == 1


def test_cr_only_line_ends_are_framed() -> None:
    records, _, errors = decode(EPOCH.replace(b"\r\n", b"\r"))
    assert errors == []
    assert len(records) == 1


# -- epochs and time -------------------------------------------------------------------


def test_replayed_epoch_is_dropped_as_stale() -> None:
    records, decoder, errors = decode(EPOCH + RMC_NEXT + GGA_NEXT + EPOCH)
    assert [r.time_ms for r in records] == [ms("2024-03-23T12:35:19"), ms("2024-03-23T12:35:20")]
    assert [type(e) for e in errors] == [StaleEpoch]
    assert decoder.counters.stale_epochs == 1


def _epochs(*seconds: int, minute: int = 35) -> bytes:
    return b"".join(_rmc_gga(second, minute=minute) for second in seconds)


def test_a_clock_that_jumps_back_and_runs_on_is_a_new_time_base() -> None:
    """humminbird-M37: 12:35:20..24, then the receiver's clock restarts at 12:35:11 and runs on."""
    records, decoder, errors = decode(_epochs(20, 21, 22, 23, 24, 11, 12, 13, 14, 15))
    assert [r.time_ms % 60_000 // 1000 for r in records] == [20, 21, 22, 23, 24, 11, 12, 13, 14, 15]
    assert decoder.counters.time_resets == 1
    assert decoder.counters.stale_epochs == 0
    assert errors == []
    # Within each time base the records increase.
    assert all(b.time_ms > a.time_ms for a, b in itertools.pairwise(records[5:]))


def test_a_new_time_base_is_held_until_confirmed_then_released_in_order() -> None:
    decoder = NmeaDecoder()
    decoder.feed(_epochs(20, 21, 22))
    assert decoder.feed(_rmc_gga(11)) == []  # back in time: held, not dropped, not yet emitted
    assert decoder.feed(_rmc_gga(12)) == []
    assert [r.time_ms % 60_000 for r in decoder.feed(_rmc_gga(13))] == [11_000, 12_000, 13_000]
    assert decoder.counters.time_resets == 1
    assert [r.time_ms % 60_000 for r in decoder.feed(_rmc_gga(14))] == [14_000]


def test_two_captures_joined_the_second_an_hour_earlier() -> None:
    """bt451: the log's second capture starts 52 minutes before the first one ended."""
    records, decoder, _ = decode(_epochs(10, 11, 12, minute=35) + _epochs(6, 7, 8, 9, minute=33))
    assert [(r.time_ms // 60_000 % 60, r.time_ms // 1000 % 60) for r in records] == [
        (35, 10),
        (35, 11),
        (35, 12),
        (33, 6),
        (33, 7),
        (33, 8),
        (33, 9),
    ]
    assert decoder.counters.time_resets == 1


def test_one_stray_epoch_back_in_time_stays_stale() -> None:
    """telit-he910: one epoch 0.3 s before the last, then the receiver's time goes on."""
    early = nmea(f"GPRMC,123520.400,A,{LAT},{LON},0.0,,230324,,,A") + nmea(
        f"GPGGA,123520.400,{LAT},{LON},1,08,0.9,545.4,M,,,,"
    )
    late = nmea(f"GPRMC,123520.700,A,{LAT},{LON},0.0,,230324,,,A") + nmea(
        f"GPGGA,123520.700,{LAT},{LON},1,08,0.9,545.4,M,,,,"
    )
    records, decoder, errors = decode(_epochs(18, 19) + late + early + _epochs(21, 22))
    assert [r.time_ms % 60_000 for r in records] == [18_000, 19_000, 20_700, 21_000, 22_000]
    assert [type(e) for e in errors] == [StaleEpoch]
    assert decoder.counters.stale_epochs == 1
    assert decoder.counters.time_resets == 0


@pytest.mark.parametrize(
    ("after", "stale"),
    [
        ((11, 12), 2),  # the input ends before a third epoch confirms them
        ((11, 10, 12), 3),  # 10 does not increase from 11: 11 is dropped, 10 12 wait
        ((11, 12, 23), 2),  # the old time base goes on: the two were strays
    ],
)
def test_epochs_back_in_time_that_are_not_confirmed_are_stale(after: tuple[int, ...], stale: int) -> None:
    records, decoder, errors = decode(_epochs(20, 21, 22, *after))
    assert all(b.time_ms > a.time_ms for a, b in itertools.pairwise(records))
    assert decoder.counters.time_resets == 0
    assert decoder.counters.stale_epochs == stale
    assert [type(e) for e in errors] == [StaleEpoch] * stale


def test_a_replay_of_a_whole_stretch_is_a_new_time_base_counted_once() -> None:
    """A receiver (or a log) that repeats three or more epochs: indistinguishable from a reset."""
    records, decoder, _ = decode(_epochs(10, 11, 12, 13, 10, 11, 12, 13, 14))
    assert [r.time_ms % 60_000 // 1000 for r in records] == [10, 11, 12, 13, 10, 11, 12, 13, 14]
    assert decoder.counters.time_resets == 1


def test_repeated_sentences_within_an_epoch_merge() -> None:
    records, _, errors = decode(RMC + RMC + GGA + GSV + GSV)
    assert errors == []
    assert len(records) == 1
    assert records[0].mean_snr == 42.8


def test_gga_before_the_first_rmc_is_dropped_with_a_counter() -> None:
    records, decoder, errors = decode(GGA + RMC_NEXT)
    assert [type(e) for e in errors] == [UndatedEpoch]
    assert [r.time_ms for r in records] == [ms("2024-03-23T12:35:20")]
    assert decoder.counters.undated_epochs == 1


def test_gga_before_rmc_in_the_same_epoch_is_dated() -> None:
    records, _, errors = decode(GGA + GSA + RMC)
    assert errors == []
    assert records[0].time_ms == ms("2024-03-23T12:35:19")
    assert isinstance(records[0], Fix)
    assert records[0].alt_m == 545.4


def test_midnight_rollover_without_rmc_moves_to_the_next_day() -> None:
    # A receiver sending RMC then GGA each second; the RMC of 00:00:00 is lost.
    gga = "GPGGA,{},4807.038,N,01131.000,E,1,08,0.9,545.4,M,,,,"
    before = nmea("GPRMC,235959,A,4807.038,N,01131.000,E,0.0,,311224,,,A") + nmea(gga.format("235959"))
    after = nmea(gga.format("000000"))
    dated = nmea("GPRMC,000001,A,4807.038,N,01131.000,E,0.0,,010125,,,A") + nmea(gga.format("000001"))
    records, _, errors = decode(before + after + dated)
    assert errors == []
    assert [r.time_ms for r in records] == [
        ms("2024-12-31T23:59:59"),
        ms("2025-01-01T00:00:00"),
        ms("2025-01-01T00:00:01"),
    ]


def test_zda_gives_the_date() -> None:
    zda = b"$GNZDA,235959.50,31,12,2024,00,00*79\r\n"
    gga = nmea("GNGGA,235959.50,4807.038,N,01131.000,E,1,08,0.9,545.4,M,,,,")
    records, _, errors = decode(zda + gga)
    assert errors == []
    assert records[0].time_ms == ms("2024-12-31T23:59:59") + 500


@pytest.mark.parametrize(
    "rmc",
    [
        b"$GPRMC,000012.00,V,,,,,,,060180,,,N*71\r\n",  # GPS epoch default 1980-01-06
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,010100,,,A*73\r\n",  # 2000-01-01
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,000000,,,A*73\r\n",  # zero-filled
    ],
)
def test_receiver_default_dates_are_not_trusted(rmc: bytes) -> None:
    records, decoder, errors = decode(rmc)
    assert records == []
    assert [type(e) for e in errors] == [ImplausibleDate]
    assert decoder.counters.invalid_dates == 1


def test_earliest_date_is_configurable() -> None:
    records, _, errors = decode(RMC, earliest_date=dt.date(2024, 6, 1))
    assert records == []
    assert isinstance(errors[0], ImplausibleDate)
    with pytest.raises(ValueError, match="earliest_date"):
        NmeaDecoder(earliest_date=dt.date(1999, 1, 1))


def test_untimed_cold_start_epochs_are_counted_one_per_epoch() -> None:
    cold = b"$GPRMC,,V,,,,,,,,,,N*53\r\n$GPGGA,,,,,,0,00,99.99,,,,,,*48\r\n$GPGSV,1,1,00*79\r\n"
    records, decoder, errors = decode(cold * 3 + EPOCH)
    assert [type(e) for e in errors] == [UntimedEpoch] * 3
    assert len(records) == 1
    assert decoder.counters.untimed_epochs == 3


def test_read_nmea_file_skips_comments(tmp_path: Path) -> None:
    log = tmp_path / "drive.nmea"
    log.write_bytes(b"# recorded 2024-03-23\n" + EPOCH + b"  # indented comment\n" + RMC_NEXT)
    decoder = NmeaDecoder()
    records = list(read_nmea_file(log, decoder=decoder))
    assert [r.time_ms for r in records] == [ms("2024-03-23T12:35:19"), ms("2024-03-23T12:35:20")]
    assert decoder.counters.lines_read == 6
    assert decoder.counters.unparsable_lines == 0


def test_file_and_stream_decoding_agree() -> None:
    for name in ("ublox_gn_multi", "mtk_gp_midnight", "nofix_periods", "corrupt_lines"):
        path = DATA / f"{name}.nmea"
        from_file = list(read_nmea_file(path))
        body = b"".join(line for line in path.read_bytes().splitlines(keepends=True) if not line.startswith(b"#"))
        decoder = NmeaDecoder()
        streamed = [r for i in range(0, len(body), 7) for r in decoder.feed(body[i : i + 7])] + decoder.flush()
        assert streamed == from_file, name


# -- properties ------------------------------------------------------------------------


@st.composite
def drives(draw: st.DrawFn) -> list[tuple[int, float, float, bool]]:
    """Epochs (second of day, lat, lon, has_fix) in increasing time."""
    n = draw(st.integers(1, 12))
    start = draw(st.integers(0, 86_400 - 13))
    steps = draw(st.lists(st.integers(1, 3), min_size=n, max_size=n))
    epochs: list[tuple[int, float, float, bool]] = []
    t = start
    for step in steps:
        t += step
        if t >= 86_400:
            break
        # Exactly 0,0 is a receiver's zero-fill and decodes as NoFix by design.
        lat = draw(st.floats(-89.9, 89.9).filter(lambda v: abs(v) > 1e-3))
        lon = draw(st.floats(-179.9, 179.9))
        epochs.append((t, lat, lon, draw(st.booleans()) or not epochs))
    return epochs


def _coord(value: float, width: int, hemis: str) -> str:
    deg = int(abs(value))
    minutes = (abs(value) - deg) * 60
    return f"{deg:0{width}d}{minutes:07.4f},{hemis[0] if value >= 0 else hemis[1]}"


def render(epochs: list[tuple[int, float, float, bool]]) -> list[bytes]:
    lines = []
    for t, lat, lon, has_fix in epochs:
        hms = f"{t // 3600:02d}{t // 60 % 60:02d}{t % 60:02d}.00"
        pos = f"{_coord(lat, 2, 'NS')},{_coord(lon, 3, 'EW')}"
        if has_fix:
            lines.append(nmea(f"GNRMC,{hms},A,{pos},12.5,90.0,150524,,,A"))
            lines.append(nmea(f"GNGGA,{hms},{pos},1,09,0.9,45.0,M,7.0,M,,"))
            lines.append(nmea("GNGSA,A,3,01,02,03,04,,,,,,,,,1.8,0.9,1.5"))
        else:
            lines.append(nmea(f"GNRMC,{hms},V,,,,,,,150524,,,N"))
            lines.append(nmea(f"GNGGA,{hms},,,,,0,00,99.99,,,,,,"))
        lines.append(nmea("GPGSV,1,1,02,01,40,083,46,02,17,308,"))
    return lines


garbage = st.one_of(
    st.binary(max_size=80),
    st.binary(max_size=600).map(lambda b: b.replace(b"$", b"#")),
    st.sampled_from(render([(3600, 1.5, 2.5, True)])).flatmap(
        lambda line: st.integers(1, line.index(b"*") - 1).map(lambda cut: line[:cut])
    ),
    st.sampled_from([b"\r\n", b"\n", b"$", b"*", b"$GPGGA,", b"\x00" * 50, b"$GPTXT,01,01,02,HELLO*00\r\n"]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(epochs=drives(), data=st.data())
def test_garbage_never_crashes_and_every_valid_epoch_is_recovered(
    epochs: list[tuple[int, float, float, bool]], data: st.DataObject
) -> None:
    lines = render(epochs)
    clean = NmeaDecoder()
    expected = clean.feed(b"".join(lines)) + clean.flush()
    assert [r.time_ms % 86_400_000 for r in expected] == [t * 1000 for t, *_ in epochs]
    for record, (_, lat, lon, has_fix) in zip(expected, epochs, strict=True):
        assert isinstance(record, Fix) == has_fix
        if isinstance(record, Fix):
            assert record.lat == pytest.approx(lat, abs=1e-6)
            assert record.lon == pytest.approx(lon, abs=1e-6)

    noisy = b""
    for line in lines:
        noisy += data.draw(garbage) + line
    noisy += data.draw(garbage)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(noisy)), max_size=20)))
    decoder = NmeaDecoder()
    got = []
    for a, b in zip([0, *cuts], [*cuts, len(noisy)], strict=True):
        got += decoder.feed(noisy[a:b])
    got += decoder.flush()
    assert got == expected
    assert decoder.counters.fixes_emitted == clean.counters.fixes_emitted


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(blob: bytes) -> None:
    decoder = NmeaDecoder()
    records = decoder.feed(blob) + decoder.flush()
    assert records == []  # random bytes never carry a valid checksummed, dated epoch
    assert decoder.counters.bytes_discarded <= len(blob)


def _rmc_gga(second: int, minute: int = 35) -> bytes:
    t = f"12{minute:02d}{second:02d}"
    return nmea(f"GPRMC,{t},A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W") + nmea(
        f"GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    )


def test_the_cycle_ender_is_learnt_and_closes_later_epochs_at_once() -> None:
    """As gpsd does: once two cycles ended with the same sentence, an epoch is emitted at it."""
    decoder = NmeaDecoder()
    assert decoder.feed(_rmc_gga(10)) == []  # nothing known yet: wait for the next epoch
    assert [r.time_ms % 60_000 for r in decoder.feed(_rmc_gga(11))] == [10_000]
    # GGA ended 10 and 11: from now on an epoch is emitted at its GGA, not one cycle later.
    assert [r.time_ms % 60_000 for r in decoder.feed(_rmc_gga(12))] == [11_000, 12_000]
    assert [r.time_ms % 60_000 for r in decoder.feed(_rmc_gga(13))] == [13_000]
    assert decoder.counters.epochs_closed_early == 2
    assert decoder.flush() == []


def test_a_wrong_cycle_ender_is_unlearnt() -> None:
    decoder = NmeaDecoder()
    for second in (10, 11, 12):
        decoder.feed(_rmc_gga(second))
    assert decoder.counters.epochs_closed_early == 1  # 12 closed at its GGA
    # The receiver changes its output: a VTG now follows the GGA in the same epoch.
    vtg = nmea("GPVTG,084.4,T,,M,022.4,N,041.5,K,A")
    t = "123513"
    out = decoder.feed(nmea(f"GPRMC,{t},A,4807.038,N,01131.000,E,022.4,084.4,230324,003.1,W"))
    out += decoder.feed(nmea(f"GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,") + vtg)
    assert [r.time_ms % 60_000 for r in out] == [13_000]  # closed at the GGA; the VTG is untimed
    out = decoder.feed(_rmc_gga(14))
    assert decoder.counters.cycle_ender_resets == 0  # an untimed VTG cannot be told apart
    assert all(r.time_ms % 60_000 != 13_000 for r in out)


# -- gpsd's reporting cycle ------------------------------------------------------------------

LAT, LON = "4807.038,N", "01131.000,E"


def _rmc(tod: str, lat: str = LAT) -> bytes:
    return nmea(f"GPRMC,{tod},A,{lat},{LON},0.0,,230324,,,A")


def _gga(tod: str, lat: str = LAT) -> bytes:
    return nmea(f"GPGGA,{tod},{lat},{LON},1,08,0.9,545.4,M,,,,")


def _gll(tod: str, lat: str = LAT) -> bytes:
    return nmea(f"GPGLL,{lat},{LON},{tod},A,A")


def test_split_cycle_is_reported_once_at_its_ender() -> None:
    """Garmin 48: RMC and GGA at T, GLL at T+1. gpsd reports the cycle at the GLL only."""
    data = b"".join(_rmc(f"1235{t:02d}") + _gga(f"1235{t:02d}") + _gll(f"1235{t + 1:02d}") for t in range(10, 20, 2))
    records, decoder, errors = decode(data)
    # Until GLL is known to end the cycle (at 12:35:12) every epoch is reported; after it,
    # the RMC/GGA epochs never get their GLL and are dropped, counted incomplete.
    assert [r.time_ms for r in records] == [ms("2024-03-23T12:35:10"), ms("2024-03-23T12:35:11")] + [
        ms(f"2024-03-23T12:35:{t:02d}") for t in (13, 15, 17, 19)
    ]
    assert decoder.counters.incomplete_epochs == 4
    assert {type(e).__name__ for e in errors} == {"IncompleteEpoch"}


def test_the_epoch_takes_the_position_of_its_ender() -> None:
    """GLL a second ahead of RMC/GGA (a multiplexing chartplotter): the position is GLL's."""
    data = b"".join(_rmc(f"1235{t}") + _gga(f"1235{t}") + _gll(f"1235{t}") for t in (10, 11, 12))
    for t in range(13, 18):  # from now on GLL carries T and starts the epoch; RMC/GGA of T follow
        data += _gll(f"1235{t}", f"4807.{t:03d},N") + _rmc(f"1235{t}", f"4807.{t + 100:03d},N")
        data += _gga(f"1235{t}", f"4807.{t + 200:03d},N")
    records, _, errors = decode(data)
    # At the switch, the learnt GLL ender closes 12:35:13 at once (as gpsd reports it there);
    # the RMC and GGA of 12:35:13 that follow are the rest of an epoch already emitted.
    assert [type(e) for e in errors] == [IncompleteEpoch]
    fixes = {r.time_ms: r for r in records if isinstance(r, Fix)}
    assert len(fixes) == 8
    for t in range(13, 18):
        assert fixes[ms(f"2024-03-23T12:35:{t}")].lat == pytest.approx(48 + (7 + t / 1000) / 60)


def test_a_damaged_line_does_not_cost_the_epoch_its_ender() -> None:
    """The GGA that ends each cycle arrives with a bad checksum: the epoch is still reported."""
    good = b"".join(_rmc(f"1235{t}") + _gga(f"1235{t}") for t in (10, 11, 12))
    damaged_gga = _gga("123513").replace(b"*", b"0*")  # a field grew: the checksum no longer matches
    records, decoder, errors = decode(good + _rmc("123513") + damaged_gga + _rmc("123514") + _gga("123514"))
    assert [r.time_ms for r in records][-2:] == [ms("2024-03-23T12:35:13"), ms("2024-03-23T12:35:14")]
    assert [type(e) for e in errors] == [BadChecksum]
    assert decoder.counters.incomplete_epochs == 0


def test_a_damaged_gsv_cannot_have_been_the_ender() -> None:
    """A GSV cut short is no excuse for an epoch that never got its GGA: it is still dropped."""
    good = b"".join(_rmc(f"1235{t}") + _gga(f"1235{t}") for t in (10, 11, 12))
    cut_gsv = GSV.replace(b"*75", b"*7")
    records, decoder, errors = decode(good + _rmc("123513") + cut_gsv + _rmc("123514") + _gga("123514"))
    assert ms("2024-03-23T12:35:13") not in [r.time_ms for r in records]
    assert [type(e) for e in errors] == [BadChecksum, IncompleteEpoch]
    assert decoder.counters.incomplete_epochs == 1


def test_a_void_rmc_without_time_makes_every_position_a_report_again() -> None:
    """Quectel before its fix sends $GPRMC,,V,...: gpsd's cycle detector is unreliable again."""
    cycle = b"".join(_rmc(f"1235{t}") + _gga(f"1235{t}") for t in (10, 11, 12))
    void = nmea("GPRMC,,V,,,,,,,,,,N")
    # After the void RMC, RMC alone (no GGA, the learnt ender) at 13 is still reported.
    records, decoder, _ = decode(cycle + void + _rmc("123513") + _rmc("123514") + _gga("123514"))
    assert ms("2024-03-23T12:35:13") in [r.time_ms for r in records]
    assert decoder.counters.incomplete_epochs == 0


def test_a_position_before_any_date_is_not_timed_by_a_later_zda() -> None:
    """As gpsd: a GLL whose date only comes with the ZDA after it is reported without time."""
    data = b"".join(_gll(f"1235{t}.00") + nmea(f"GPZDA,1235{t}.00,23,03,2024,00,00") for t in (10, 11, 12))
    records, _, errors = decode(data)
    assert [r.time_ms for r in records] == [ms("2024-03-23T12:35:11"), ms("2024-03-23T12:35:12")]
    assert [type(e) for e in errors] == [UndatedEpoch]


def test_a_new_time_base_confirmed_by_an_unterminated_last_line_keeps_its_order() -> None:
    """flush(): the last line (no line end) ends the third epoch back and so confirms the reset."""
    decoder = NmeaDecoder()
    data = _epochs(20, 21, 22, 11, 12) + _rmc_gga(13).rstrip(b"\r\n")
    records = decoder.feed(data) + decoder.flush()
    assert [r.time_ms % 60_000 // 1000 for r in records] == [20, 21, 22, 11, 12, 13]
    assert decoder.counters.time_resets == 1
