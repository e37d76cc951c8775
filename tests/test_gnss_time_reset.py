"""A receiver whose time goes back (a new GNSS time base) through everything downstream.

The decoder emits a new time base's epochs (``time_resets``; docs/gnss.md, "Time going
back"). Downstream, time must not go back where durations are measured: the rules engine
drops epochs not after its clock (``duplicate_epochs``) and the observation clock keeps its
anchor; uploads keep the receiver's times (the reporting policy and the batcher take them,
each batch's fixes are sorted, the protocol accepts them). The records are the real ones of
gpsd's humminbird-M37 log (clock back from 19:41:24 to 19:41:11) and bt451 (two captures
joined, the second 52 minutes earlier).
"""

from __future__ import annotations

import itertools
import json
from functools import reduce
from pathlib import Path

import pytest

from edge.agent import ObservationClock
from edge.batcher import Batcher, ClosedBatch
from edge.cli.replay import main as replay_main
from edge.config import BatchSettings, ReportingSettings
from edge.gnss import GnssRecord, NmeaDecoder, read_nmea_file
from edge.gnss.parity import GPSD_EARLIEST_DATE
from edge.reporting import ReportingPolicy
from edge.rules import Engine, RulesConfig
from protocol import Batch, Fix, decode_batch, encode_batch

GPSD = Path(__file__).parent / "data" / "gpsd"
BACKWARD_LOGS = ("humminbird-M37.log", "bt451.log")


def records_of(name: str) -> list[GnssRecord]:
    decoder = NmeaDecoder(earliest_date=GPSD_EARLIEST_DATE)
    records = list(read_nmea_file(GPSD / name, decoder=decoder))
    assert decoder.counters.time_resets == 1
    return records


def steps_back(times: list[int]) -> int:
    return sum(b <= a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("name", BACKWARD_LOGS)
def test_the_rules_engine_never_sees_time_go_back(name: str) -> None:
    records = records_of(name)
    assert steps_back([r.time_ms for r in records]) == 1
    engine = Engine(RulesConfig())
    clocks = []
    for record in records:
        engine.feed(record)
        clocks.append(engine.snapshot()["stream"]["clock_ms"])
    assert all(b >= a for a, b in itertools.pairwise(clocks))
    # Exactly the epochs of the new time base that are not after the engine's clock are dropped.
    newest = list(itertools.accumulate((r.time_ms for r in records), max))
    behind = sum(r.time_ms <= before for r, before in zip(records[1:], newest, strict=False))
    assert behind > 0
    assert engine.counters["duplicate_epochs"] == behind
    assert engine.counters["fixes"] + engine.counters["no_fixes"] == len(records) - behind


@pytest.mark.parametrize("name", BACKWARD_LOGS)
@pytest.mark.parametrize("policy_on", [True, False])
def test_every_fix_of_a_new_time_base_can_be_reported_and_encoded(name: str, policy_on: bool) -> None:
    fixes = [r for r in records_of(name) if isinstance(r, Fix)]
    policy = ReportingPolicy(ReportingSettings(enabled=policy_on))
    batcher = Batcher(BatchSettings(max_age_s=60))
    closed: list[ClosedBatch] = []
    uploaded: list[Fix] = []
    for n, fix in enumerate(fixes):
        for item in policy.offer(fix):
            assert isinstance(item, Fix)
            uploaded.append(item)
            closed += batcher.add(item, now_mono=float(n))
    closed += batcher.flush()
    if not policy_on:
        assert uploaded == fixes  # nothing thinned: every fix of both time bases goes up
    assert uploaded
    sent: list[Fix] = []
    for seq, batch in enumerate(closed, start=1):
        assert [f.time_ms for f in batch.fixes] == sorted(f.time_ms for f in batch.fixes)
        wire = Batch(device_id="car-1", boot_id=bytes(16), seq=seq, created_ms=fixes[-1].time_ms, fixes=batch.fixes)
        decoded = decode_batch(encode_batch(wire)).fixes  # positions quantised to 1e-7 degree
        assert [f.time_ms for f in decoded] == [f.time_ms for f in batch.fixes]
        assert all(abs(a.lat - b.lat) < 1e-7 for a, b in zip(decoded, batch.fixes, strict=True))
        sent.extend(batch.fixes)
    assert sorted(sent, key=lambda f: f.time_ms) == sorted(uploaded, key=lambda f: f.time_ms)


def test_the_observation_clock_does_not_follow_the_receiver_back() -> None:
    mono = [0.0]
    clock = ObservationClock(monotonic=lambda: mono[0], wall=lambda: 1_700_000_000.0)
    t0 = 1_758_000_000_000
    clock.on_fix(t0)
    mono[0] += 1.0
    clock.on_fix(t0 + 1000)
    mono[0] += 1.0
    clock.on_fix(t0 - 12_000)  # the receiver's clock went back 13 s
    assert clock.time_went_back == 1
    assert clock.now_ms() == t0 + 2000  # still the last anchor plus host monotonic time
    mono[0] += 1.0
    clock.on_fix(t0 + 3000)  # GNSS time passes the anchor again: it leads once more
    assert clock.now_ms() == t0 + 3000
    assert clock.time_went_back == 1


def _sentence(body: str) -> str:
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}\n"


def test_replay_of_a_log_whose_time_goes_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``lienwatch replay``: the new time base is decoded; the engine drops what is behind its clock."""
    lines = []
    for second in (20, 21, 22, 23, 24, 11, 12, 13, 14, 15):
        t = f"1235{second:02d}"
        lines.append(_sentence(f"GPRMC,{t},A,4807.038,N,01131.000,E,0.0,,230324,,,A"))
        lines.append(_sentence(f"GPGGA,{t},4807.038,N,01131.000,E,1,08,0.9,545.4,M,,,,"))
    nmea = tmp_path / "back.nmea"
    nmea.write_text("".join(lines))
    config = tmp_path / "agent.toml"
    config.write_text("[rules]\n")
    assert replay_main(["--config", str(config), "--nmea", str(nmea), "--jsonl"]) == 0
    counters = json.loads(capsys.readouterr().err.strip().splitlines()[-1])["replay_counters"]
    assert counters["gnss"]["time_resets"] == 1
    assert counters["gnss"]["fixes_emitted"] == 10
    assert counters["rules"]["duplicate_epochs"] == 5
    assert counters["rules"]["fixes"] == 5
