"""Batcher: time budget (observation and host time), size budget, urgent alerts."""

from __future__ import annotations

import pytest

from edge.batcher import Batcher, BatcherError, ClosedBatch, estimate_bytes
from edge.config import BatchSettings
from edge.outbox import Priority
from protocol import Alert, AlertState, DailyStats, Fix, NoFix, Severity, SignalSample

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def fix(t_ms: int) -> Fix:
    return Fix(time_ms=t_ms, lat=31.3, lon=121.25)


def sample(t_ms: int, name: str = "Vehicle.Speed", value: float | str = 12.5) -> SignalSample:
    return SignalSample(name=name, time_ms=t_ms, value=value)


def alert(severity: Severity, t_ms: int = T0) -> Alert:
    return Alert(rule="power_cut", severity=severity, time_ms=t_ms, episode="e1", state=AlertState.RAISED)


def test_closes_on_observation_time() -> None:
    b = Batcher(BatchSettings(max_age_s=60, max_age_active_s=10))
    for i in range(60):  # 0 .. 59 s of data
        assert b.add(fix(T0 + i * 1000), now_mono=0.0) == []
    closed = b.add(fix(T0 + 60_000), now_mono=0.0)
    assert len(closed) == 1
    assert closed[0].reason == "age"
    assert [f.time_ms for f in closed[0].fixes] == [T0 + i * 1000 for i in range(61)]
    assert b.open_records == 0


def test_closes_on_host_time_when_gnss_time_stalls() -> None:
    b = Batcher(BatchSettings(max_age_s=60))
    b.add(fix(T0), now_mono=100.0)
    b.add(fix(T0), now_mono=130.0)  # the receiver repeats a frozen time
    assert b.deadline() == 160.0
    assert b.poll(159.9) == []
    closed = b.poll(160.0)
    assert [c.reason for c in closed] == ["age"]
    assert len(closed[0].fixes) == 2
    assert b.deadline() == float("inf")


def test_active_rule_shortens_the_budget() -> None:
    b = Batcher(BatchSettings(max_age_s=60, max_age_active_s=10))
    b.add(sample(T0), now_mono=0.0, active=True)
    assert b.add(sample(T0 + 9_999), now_mono=1.0, active=True) == []
    closed = b.add(sample(T0 + 10_000), now_mono=1.0, active=True)
    assert [len(c.samples) for c in closed] == [3]
    b.add(sample(T0 + 20_000), now_mono=2.0)
    assert b.deadline(active=True) == 12.0
    assert b.deadline(active=False) == 62.0


def test_urgent_alert_goes_at_once_in_its_own_batch() -> None:
    b = Batcher(BatchSettings())
    b.add(fix(T0), now_mono=0.0)
    high = alert(Severity.HIGH)
    assert b.add(high, now_mono=0.1) == [ClosedBatch(alerts=(high,), reason="urgent")]
    panic = alert(Severity.PANIC)
    assert b.add(panic, now_mono=0.2)[0].alerts == (panic,)
    assert b.open_records == 1  # the open batch is left as it was
    warning = alert(Severity.WARNING)
    assert b.add(warning, now_mono=0.3) == []
    closed = b.flush()
    assert closed[0].alerts == (warning,)
    assert closed[0].fixes == (fix(T0),)
    assert closed[0].priority is Priority.ALERT
    assert b.counters == {"batches_closed": 3, "urgent_batches": 2, "records_batched": 4}


def test_size_budget_by_count() -> None:
    b = Batcher(BatchSettings(max_fixes=3, max_samples=2))
    assert b.add(fix(T0), 0.0) == []
    assert b.add(fix(T0 + 1), 0.0) == []
    assert [c.reason for c in b.add(fix(T0 + 2), 0.0)] == ["size"]
    assert b.add(sample(T0), 0.0) == []
    assert [len(c.samples) for c in b.add(sample(T0 + 1), 0.0)] == [2]


def test_size_budget_by_bytes() -> None:
    b = Batcher(BatchSettings(max_bytes=2048, max_samples=100_000))
    closed: list[ClosedBatch] = []
    n = 0
    while not closed:
        closed = b.add(sample(T0 + n, value="x" * 100), 0.0)
        n += 1
    per = estimate_bytes(sample(T0, value="x" * 100))
    assert per == 12 + 100
    assert n == (2048 - 128 - len("Vehicle.Speed")) // per + 1
    assert closed[0].reason == "size"


def test_fixes_are_put_in_time_order() -> None:
    b = Batcher(BatchSettings())
    for t in (T0 + 2000, T0, T0 + 1000):
        b.add(fix(t), 0.0)
    assert [f.time_ms for f in b.flush()[0].fixes] == [T0, T0 + 1000, T0 + 2000]


def test_priorities_and_split() -> None:
    stats = DailyStats(day="2026-01-01", time_ms=T0, distance_m=1.0, driving_s=2.0, harsh_accel=0, harsh_brake=0)
    assert ClosedBatch(fixes=(fix(T0),)).priority is Priority.ROUTINE
    assert ClosedBatch(stats=(stats,)).priority is Priority.STATS
    assert ClosedBatch(alerts=(alert(Severity.INFO),), stats=(stats,)).priority is Priority.ALERT
    whole = ClosedBatch(fixes=tuple(fix(T0 + i) for i in range(5)), samples=(sample(T0),), reason="age")
    first, second = whole.split()
    assert [len(first.fixes), len(second.fixes), len(first.samples), len(second.samples)] == [2, 3, 0, 1]
    assert first.reason == second.reason == "age"
    assert ClosedBatch().empty


def test_flush_of_nothing_is_nothing_and_poll_without_data_is_quiet() -> None:
    b = Batcher(BatchSettings())
    assert b.flush() == []
    assert b.poll(1e9) == []


def test_bad_input_is_a_typed_error() -> None:
    b = Batcher(BatchSettings())
    with pytest.raises(BatcherError, match="NoFix is not a batch record"):
        b.add(NoFix(time_ms=T0), 0.0)  # type: ignore[arg-type]
    with pytest.raises(BatcherError, match="reason"):
        ClosedBatch(reason="whenever")
    with pytest.raises(BatcherError, match="time order"):
        ClosedBatch(fixes=(fix(T0 + 1), fix(T0)))


def test_settings_can_change_while_running() -> None:
    b = Batcher(BatchSettings(max_age_s=60))
    b.add(fix(T0), now_mono=0.0)
    b.set_settings(BatchSettings(max_age_s=5))
    assert [c.reason for c in b.poll(5.0)] == ["age"]
