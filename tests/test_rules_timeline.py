"""Tests of the timeline builders in tests/timeline.py (NMEA text, offsets, local times)."""

from __future__ import annotations

from tests.timeline import BERLIN, MARKET_WGS, T0, fix, local_ms, nmea_epoch, offset


def test_nmea_sentences_have_valid_checksums_and_coordinates() -> None:
    lines = nmea_epoch(fix(T0, 31.301992, 121.245568, speed_mps=10.0))
    for line in lines:
        body, checksum = line[1:].split("*")
        value = 0
        for ch in body:
            value ^= ord(ch)
        assert f"{value:02X}" == checksum
    assert lines[0].startswith("$GPGGA,040000.00,3118.1195,N,12114.7341,E,1,10,0.9,")
    assert lines[3].startswith("$GPRMC,040000.00,A,3118.1195,N,12114.7341,E,19.44,0.0,060524,")


def test_offset_moves_by_the_requested_metres() -> None:
    from protocol.geo import distance_m

    lat, lon = offset(*MARKET_WGS, 300.0, 400.0)
    assert abs(distance_m(*MARKET_WGS, lat, lon) - 500.0) < 1.0


def test_local_ms_matches_known_instants() -> None:
    assert T0 == 1_714_968_000_000  # 2024-05-06T04:00:00Z
    # 02:30 on 2024-10-27 happens twice in Berlin: CEST (00:30Z) then CET (01:30Z).
    assert local_ms(BERLIN, 2024, 10, 27, 2, 30) == 1_729_989_000_000
    assert local_ms(BERLIN, 2024, 10, 27, 2, 30, fold=1) == 1_729_992_600_000
