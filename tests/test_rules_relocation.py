"""The home-base learner and ``relocation`` (#17) on weeks of hand-made lives.

Each life is a function from local time to where the car is (or None while it is driven),
sampled every 10 minutes as a sleeping box reports. Adversarial patterns that must never
raise: shift work (the car sleeps by day), two homes alternating, a week-long trip that
returns, a car driven all night; a true relocation raises exactly once.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest

from edge.errors import ConfigError
from edge.rules import Engine, RulesConfig
from protocol import Alert, AlertState, Fix, Severity
from tests.timeline import SHANGHAI, alerts, fix

Where = tuple[float, float] | None
Life = Callable[[datetime], Where]

HOME = (31.2210, 121.5440)  # Pudong
WORK = (31.2290, 121.4480)  # Jing'an, 9 km away
HOME2 = (31.0300, 121.2300)  # Songjiang, 37 km away
SUZHOU = (31.3000, 120.6200)  # 88 km away
BEIJING = (39.9000, 116.4000)  # 1,070 km away
START = datetime(2026, 3, 2, tzinfo=SHANGHAI)  # a Monday
STEP = timedelta(minutes=10)


def fixes(life: Life, days: int, start: datetime = START) -> Iterator[Fix]:
    moment = start
    while moment < start + timedelta(days=days):
        where = life(moment)
        if where is not None:
            yield fix(int(moment.timestamp() * 1000), *where)
        moment += STEP


def live(engine: Engine, life: Life, days: int, start: datetime = START) -> list[Alert]:
    out: list[Alert] = []
    for event in fixes(life, days, start):
        out.extend(alerts(engine.feed(event), "relocation"))
    return out


def commuter(home: tuple[float, float], work: tuple[float, float] = WORK) -> Life:
    """At work 09:00-18:00 on weekdays, at home otherwise, driving 08:30-09:00 and 18:00-18:30."""

    def where(t: datetime) -> Where:
        minute = t.hour * 60 + t.minute
        if t.weekday() < 5 and (510 <= minute < 540 or 1080 <= minute < 1110):
            return None
        if t.weekday() < 5 and 540 <= minute < 1080:
            return work
        return home

    return where


def night_shift(t: datetime) -> Where:
    """At work 22:00-07:00 every day, at home otherwise (sleeps by day)."""
    minute = t.hour * 60 + t.minute
    if 1290 <= minute < 1320 or 420 <= minute < 450:
        return None
    return WORK if minute >= 1320 or minute < 420 else HOME


def relocation_engine(**overrides: object) -> Engine:
    return Engine(RulesConfig.from_dict({"relocation": overrides} if overrides else {}))


def local(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, SHANGHAI).strftime("%Y-%m-%d %H:%M")


# ------------------------------------------------------------------ learning


def test_a_commuter_month_learns_home_and_work_and_never_raises() -> None:
    engine = relocation_engine()
    assert live(engine, commuter(HOME), 30) == []
    places = engine.snapshot()["rules"]["relocation"]["learner"]["places"]
    usual = {(round(p["lat"], 3), round(p["lon"], 3)): (p["nights"], p["days"]) for p in places if p["usual_since_ms"]}
    # home by night (and weekend days), work by weekday
    assert usual == {(31.221, 121.544): (30, 8), (31.229, 121.448): (0, 22)}
    assert all(p["id"].startswith("p") and len(p["id"]) == 11 for p in places)


def test_shift_work_switching_to_nights_is_not_a_relocation() -> None:
    """Three weeks of day shifts, then three of night shifts: the nights move to a usual day place."""
    engine = relocation_engine()

    def life(t: datetime) -> Where:
        return commuter(HOME)(t) if t < START + timedelta(days=21) else night_shift(t)

    assert live(engine, life, 42) == []


def test_a_car_that_sleeps_by_day_from_the_start_learns_its_night_place() -> None:
    engine = relocation_engine()
    assert live(engine, night_shift, 30) == []
    places = engine.snapshot()["rules"]["relocation"]["learner"]["places"]
    work = next(p for p in places if abs(p["lat"] - WORK[0]) < 0.001)
    assert work["nights"] >= 28
    assert work["usual_since_ms"] is not None


@pytest.mark.parametrize("period_days", [1, 2, 7])
def test_two_homes_alternating_never_raise(period_days: int) -> None:
    engine = relocation_engine()

    def life(t: datetime) -> Where:
        first = ((t - timedelta(hours=12) - START).days // period_days) % 2 == 0
        return commuter(HOME if first else HOME2)(t)

    assert live(engine, life, 56) == []
    places = engine.snapshot()["rules"]["relocation"]["learner"]["places"]
    assert sum(1 for p in places if p["usual_since_ms"] is not None and p["nights"] >= 3) == 2


def test_a_week_long_trip_far_away_that_returns_never_raises() -> None:
    engine = relocation_engine()
    trip = (START + timedelta(days=21, hours=8), START + timedelta(days=29, hours=20))  # 8 nights in Beijing

    def life(t: datetime) -> Where:
        if trip[0] <= t < trip[1]:
            return None if t < trip[0] + timedelta(hours=12) or t >= trip[1] - timedelta(hours=12) else BEIJING
        return commuter(HOME)(t)

    assert live(engine, life, 42) == []
    state = engine.snapshot()["rules"]["relocation"]
    assert (state["away_nights"], state["far_days"]) == (0, 0)  # the run ended when it came home


def test_a_car_driven_all_night_proves_nothing() -> None:
    engine = relocation_engine()
    assert live(engine, commuter(HOME), 14) == []

    def taxi(t: datetime) -> Where:
        return None if t.hour < 8 else commuter(HOME)(t)  # out every night until 08:00

    assert live(engine, taxi, 20, START + timedelta(days=14)) == []
    assert engine.snapshot()["rules"]["relocation"]["away_nights"] == 0


# ------------------------------------------------------------------ a true relocation


def test_a_true_relocation_raises_exactly_once_and_clears_when_the_car_comes_home() -> None:
    engine = relocation_engine()
    moved = START + timedelta(days=14, hours=10)
    back = moved + timedelta(days=20)

    def life(t: datetime) -> Where:
        if moved <= t < back:
            return commuter(SUZHOU, SUZHOU)(t)  # lives and parks in Suzhou now
        return commuter(HOME)(t)

    out = live(engine, life, 40)
    assert [(a.rule, a.state) for a in out] == [("relocation", AlertState.RAISED), ("relocation", AlertState.CLEARED)]
    alert, clear = out
    assert alert.severity is Severity.HIGH
    first_away = datetime(2026, 3, 17, tzinfo=SHANGHAI)  # the night of Mon 16 to Tue 17, 00:00-05:00
    assert alert.episode == f"relocation:{int(first_away.timestamp() * 1000)}"
    assert local(alert.time_ms) == "2026-03-26 05:00"  # the end of the 10th night away
    evidence = alert.evidence
    assert evidence["cause"] == "away_nights"
    assert evidence["away_nights"] == 10
    assert evidence["distance_km"] == 79  # to the nearest usual place: the office in Jing'an
    assert len(evidence["usual_place_ids"]) == 2  # home and work
    assert str(evidence["place_id"]).startswith("p")
    assert not any("lat" in key or "lon" in key for key in evidence)  # no coordinate leaves the device
    assert clear.episode == alert.episode
    assert clear.evidence["reason"] == "returned"
    assert local(clear.time_ms) == "2026-04-06 05:00"  # the end of the first night home again


def test_the_flight_signature_far_days_raises_for_a_car_kept_moving_far_away() -> None:
    engine = relocation_engine()
    assert live(engine, commuter(HOME), 14) == []
    gone = START + timedelta(days=14)

    def roaming(t: datetime) -> Where:
        hops = int((t - gone).total_seconds() // 5400)  # a new place every 90 minutes: no night place
        return (BEIJING[0] + 0.05 * (hops % 40), BEIJING[1] + 0.05 * (hops // 40 % 40))

    out = live(engine, roaming, 12, gone)
    [alert] = out
    assert alert.evidence["cause"] == "far_days"
    assert alert.evidence["far_days"] == 10
    assert alert.evidence["away_nights"] == 0  # every night undetermined
    assert alert.evidence["distance_km"] > 1000
    assert local(alert.time_ms) == "2026-03-26 00:00"  # the end of the 10th far day
    assert alert.episode == f"relocation:{int(gone.timestamp() * 1000)}"


def test_nothing_is_counted_before_a_usual_place_is_known() -> None:
    engine = relocation_engine()
    # installed, then the car sleeps at a new place every two nights: no usual night place, ever
    assert live(engine, lambda t: (31.0 + 0.1 * ((t - START).days // 2), 121.5), 30) == []
    assert engine.snapshot()["rules"]["relocation"]["away_nights"] == 0


def test_thresholds_come_from_the_config() -> None:
    engine = relocation_engine(away_nights=3)
    moved = START + timedelta(days=7, hours=10)
    out = live(engine, lambda t: commuter(SUZHOU if t >= moved else HOME)(t), 14)
    [alert] = out
    assert alert.evidence["away_nights_limit"] == 3
    assert local(alert.time_ms) == "2026-03-12 05:00"
    with pytest.raises(ConfigError, match=r"rules\.relocation: night_start and night_end must differ"):
        RulesConfig.from_dict({"relocation": {"night_start": "01:00", "night_end": "01:00"}})
    with pytest.raises(ConfigError, match=r"rules\.relocation\.away_night "):
        RulesConfig.from_dict({"relocation": {"away_night": 3}})
    with pytest.raises(ConfigError, match=r"away_nights=0 must be in 1\.\.365"):
        RulesConfig.from_dict({"relocation": {"away_nights": 0}})
    assert live(Engine(RulesConfig.from_dict({"relocation": {"enabled": False}})), commuter(SUZHOU), 3) == []


def test_place_ids_are_salted_hashes_and_the_coordinates_stay_in_the_snapshot() -> None:
    plain, salted = relocation_engine(), relocation_engine(id_salt="device-secret-1")
    live(plain, commuter(HOME), 5)
    live(salted, commuter(HOME), 5)
    ids = [{p["id"] for p in e.snapshot()["rules"]["relocation"]["learner"]["places"]} for e in (plain, salted)]
    assert ids[0]
    assert not ids[0] & ids[1]


def test_a_restored_snapshot_continues_exactly() -> None:
    moved = START + timedelta(days=14, hours=10)

    def life(t: datetime) -> Where:
        return commuter(SUZHOU if t >= moved else HOME)(t)

    straight = relocation_engine()
    expected = live(straight, life, 30)
    first = relocation_engine()
    events = list(fixes(life, 30))
    out: list[Alert] = []
    for index, event in enumerate(events):
        if index % 500 == 499:  # a power cycle every ~3.5 days
            first = Engine(first.config, state=json.loads(json.dumps(first.snapshot())))
        out.extend(alerts(first.feed(event), "relocation"))
    assert out == expected
    assert len(expected) == 1
