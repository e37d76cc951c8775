"""Finding 1: a replayed Last Will escalates a loan; a future-dated state freezes the status.

The attacker (no device key, an open broker) recorded the signed offline state an earlier
connection of the same boot left behind and re-publishes it while the device keeps
sending batches. Today's state messages carry a per-device connection counter (payload key
6): the replayed will belongs to an older connection and changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy.orm import Session

from collector.ingest.ingestor import Ingestor, Outcome
from collector.risk.assessment import device_status
from collector.settings import Limits
from edge.agent import Agent
from protocol import open_state, state_topic
from tests.agent_harness import DEVICE, ScriptedEngine, make_config

from .signing_devices import NOW, SigningDevice, register, rows

DAY_MS = 86_400_000


def test_replayed_will_of_an_earlier_connection_changes_nothing(engine: sa.Engine, car: SigningDevice) -> None:
    register(engine, car)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    three_days_ago = NOW - 3 * DAY_MS
    # Connection 41: birth, then the link drops and the broker publishes the will.
    old_will = car.state(False, three_days_ago, connection=41)
    birth = car.state(True, three_days_ago, connection=41)
    assert ingest.handle(car.state_topic, birth).outcome is Outcome.STATE_APPLIED
    assert ingest.handle(car.state_topic, old_will).outcome is Outcome.STATE_APPLIED
    # Connection 42 (same boot): online again, batches flowing.
    assert ingest.handle(car.state_topic, car.state(True, NOW - 60_000, connection=42)).outcome is Outcome.STATE_APPLIED
    assert ingest.handle(car.topic, car.sealed(1, t0=NOW - 30_000)).outcome is Outcome.STORED

    # The attack: re-publish the earlier will (and, for good measure, the earlier birth).
    assert ingest.handle(car.state_topic, old_will).outcome is Outcome.STATE_STALE
    assert ingest.handle(car.state_topic, car.state(True, three_days_ago, connection=41)).outcome is Outcome.STATE_STALE

    (status,) = rows(engine, "device_status", device_id=car.device_id)
    assert (status["online"], status["state_connection"]) == (True, 42)
    with Session(engine) as session:
        seen_by_risk = device_status(session, car.device_id)
    assert (seen_by_risk.online, seen_by_risk.offline_since_ms) == (True, None)
    assert ingest.counters["states_stale"] == 2


def test_the_will_of_the_current_connection_still_ends_it(engine: sa.Engine, car: SigningDevice) -> None:
    register(engine, car)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    ingest.handle(car.state_topic, car.state(True, NOW - 1000, connection=7))
    # The will is signed at connect time, so its device time is not after the birth's.
    assert ingest.handle(car.state_topic, car.state(False, NOW - 1000, connection=7)).outcome is Outcome.STATE_APPLIED
    assert ingest.handle(car.state_topic, car.state(False, NOW - 1000, connection=7)).outcome is Outcome.STATE_STALE
    (status,) = rows(engine, "device_status", device_id=car.device_id)
    assert status["online"] is False


def test_legacy_state_after_a_counted_one_is_stale(engine: sa.Engine, car: SigningDevice) -> None:
    register(engine, car)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    ingest.handle(car.state_topic, car.state(True, NOW - 1000, connection=3))
    legacy_will = car.state(False, NOW - 500, connection=None)
    assert ingest.handle(car.state_topic, legacy_will).outcome is Outcome.STATE_STALE
    (status,) = rows(engine, "device_status", device_id=car.device_id)
    assert status["online"] is True


def test_state_dated_twenty_years_ahead_is_refused(engine: sa.Engine, car: SigningDevice) -> None:
    register(engine, car)
    ingest = Ingestor(engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    twenty_years = 20 * 365 * DAY_MS
    result = ingest.handle(car.state_topic, car.state(False, NOW + twenty_years, connection=2**62))
    assert (result.outcome, result.reason) == (Outcome.DEAD_LETTERED, "time_in_future")
    # The genuine device is not frozen out: its next state applies.
    assert ingest.handle(car.state_topic, car.state(True, NOW, connection=5)).outcome is Outcome.STATE_APPLIED
    (status,) = rows(engine, "device_status", device_id=car.device_id)
    assert status["online"] is True


def test_agent_binds_will_and_birth_to_a_connection_counter_that_never_repeats(tmp_path: Path) -> None:
    config = make_config(tmp_path, port=1)
    public: dict[str, Ed25519PublicKey] = {}

    def connect(agent: Agent) -> tuple[int | None, int | None]:
        agent._new_connection()  # what the uplink calls before each CONNECT
        public[DEVICE] = agent._key.public_key()
        topic = state_topic(DEVICE)
        will = open_state(agent._state_message(False), topic, public)
        birth = open_state(agent._state_message(True), topic, public)
        return will.connection, birth.connection

    agent = Agent(config, engine=ScriptedEngine(), sources={})
    first = connect(agent)
    second = connect(agent)
    agent.outbox.close()
    assert first[0] == first[1]
    assert second[0] == second[1]
    assert first[0] is not None
    assert second[0] is not None
    assert second[0] > first[0]
    again = Agent(config, engine=ScriptedEngine(), sources={})
    after_restart = connect(again)
    again.outbox.close()
    assert after_restart[0] is not None
    assert after_restart[0] > second[0]
    # A wiped counter file starts at the clock floor, above anything used before.
    (config.device.data_dir / "connection").unlink()
    wiped = Agent(config, engine=ScriptedEngine(), sources={})
    after_wipe = connect(wiped)
    wiped.outbox.close()
    assert after_wipe[0] is not None
    assert after_wipe[0] > after_restart[0]
