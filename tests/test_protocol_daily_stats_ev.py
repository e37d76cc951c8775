"""DailyStats' optional EV figures (#17): encoded only when present, older payloads unchanged."""

from __future__ import annotations

import dataclasses

import cbor2
import pytest

from protocol import DailyStats, decode_batch, encode_batch
from protocol.errors import InvalidRecord, InvalidValue, SchemaError
from protocol.examples import tiny_batch

STATS_KEY = 9


def day(**ev: object) -> DailyStats:
    return DailyStats(
        day="2026-05-04", time_ms=1_777_910_392_000, distance_m=4337.9, driving_s=392.0,
        harsh_accel=1, harsh_brake=0, odometer_km=18404.4, final=True, **ev,  # type: ignore[arg-type]
    )  # fmt: skip


def stats_map(stats: DailyStats) -> dict[int, object]:
    payload = cbor2.loads(encode_batch(dataclasses.replace(tiny_batch(), stats=(stats,))))
    [record] = payload[STATS_KEY]
    return dict(record)


def test_a_car_without_traction_battery_encodes_exactly_the_keys_it_always_had() -> None:
    assert sorted(stats_map(day())) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_ev_figures_round_trip_under_keys_8_to_11() -> None:
    stats = day(energy_used_kwh=0.314, energy_charged_kwh=10.5, charging_sessions=1, soh_percent=93.0)
    record = stats_map(stats)
    assert (record[8], record[9], record[10], record[11]) == (0.314, 10.5, 1, 93.0)
    batch = dataclasses.replace(tiny_batch(), stats=(stats,))
    assert decode_batch(encode_batch(batch)).stats == (stats,)


def test_a_payload_written_before_the_ev_keys_decodes_with_none() -> None:
    batch = dataclasses.replace(tiny_batch(), stats=(day(),))
    [decoded] = decode_batch(encode_batch(batch)).stats
    assert (decoded.energy_used_kwh, decoded.energy_charged_kwh, decoded.charging_sessions, decoded.soh_percent) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("energy_used_kwh", -0.1, "energy_used_kwh"),
        ("energy_charged_kwh", float("inf"), "energy_charged_kwh"),
        ("charging_sessions", 1.5, "charging_sessions"),
        ("charging_sessions", True, "charging_sessions"),
        ("soh_percent", 100.5, "soh_percent"),
    ],
)
def test_bad_ev_figures_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(InvalidRecord, match=message):
        day(**{field: value})


def test_hostile_ev_figures_on_the_wire_are_a_typed_error() -> None:
    payload = cbor2.loads(encode_batch(dataclasses.replace(tiny_batch(), stats=(day(),))))
    payload[STATS_KEY][0][11] = 250.0
    with pytest.raises(InvalidValue, match=r"stats\[0\]: soh_percent"):
        decode_batch(cbor2.dumps(payload))
    payload[STATS_KEY][0][11] = 90.0
    payload[STATS_KEY][0][12] = 1
    with pytest.raises(SchemaError, match=r"stats\[0\] has unknown keys \[12\]"):
        decode_batch(cbor2.dumps(payload))
