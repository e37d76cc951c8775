"""Fixtures shared by the tests in ``tests/``; helpers they import live in plain modules beside it.

Which tier a test is in follows from the fixtures below (tests/tiers.py): ``mosquitto``,
``postgres_server``/``postgres_url`` and ``processes`` start real processes on free loopback
ports and stop them afterwards, so a test using any of them is in the ``process`` tier. Set
``LIENWATCH_TEST_POSTGRES_URL`` to use an existing PostgreSQL instead (a SQLAlchemy URL).

Helper modules (no tests in them; a test module never imports another test module):
``tests.fake_devices`` (signed messages from a device with a known key, registry rows),
``tests.timeline`` (rules-engine timelines: fixes, signals, NMEA), ``tests.mqtt_subscriber``
(a recording MQTT subscriber), ``tests.collector_process`` (``lienwatch collector serve``),
``tests.child_processes`` (what the ``processes`` fixture hands out), ``tests.agent_harness``
(an agent.toml for a brand-new device, in-memory sources, a rules-engine double),
``tests.loan_api_app`` (the loans API with the sample loan book and every role),
``tests.secure_broker`` (the authenticated broker of the ``mosquitto`` fixture).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from firmware_sim.rig import Mosquitto, Postgres
from tests.child_processes import ChildProcesses
from tests.secure_broker import SecureBroker


@pytest.fixture
def processes() -> Iterator[ChildProcesses]:
    """Start child processes (``python -m edge ...``, the simulator, scripts); leftovers fail the test."""
    children = ChildProcesses()
    yield children
    left = children.kill_leftovers()
    assert not left, f"test left child processes running (killed): {left}"


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """A fresh private broker per test (stop()/start() it to simulate an outage).

    Anonymous access is off and the LienWatch ACL applies: clients log in with
    ``mosquitto.login()`` (the collector's account) or ``mosquitto.login(device_id)``.
    """
    broker = SecureBroker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture
def open_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A private broker WITHOUT authentication, for load generators only.

    ``lienwatch sim fleet`` and the scale-out tests publish for many devices on one
    connection, which the per-device ACL of :func:`mosquitto` refuses by design (a device may
    publish only on its own topics). Everything else uses :func:`mosquitto`.
    """
    broker = Mosquitto(workdir=tmp_path_factory.mktemp("open-broker"), persistence=False)
    broker.start()
    try:
        yield broker
    finally:
        broker.close()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """One private PostgreSQL server for the session; yields a SQLAlchemy URL."""
    given = os.environ.get("LIENWATCH_TEST_POSTGRES_URL")
    if given:
        yield given
        return
    server = Postgres()
    server.start()
    try:
        yield server.url
    finally:
        server.close()


_db_counter = iter(range(1_000_000))
_db_lock = threading.Lock()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A new empty database on the session's PostgreSQL server, dropped afterwards."""
    import sqlalchemy as sa

    with _db_lock:
        name = f"lw_test_{os.getpid()}_{next(_db_counter)}"
    admin = sa.create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield postgres_server.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            # WITH (FORCE) ends sessions a test left open (PostgreSQL 13+).
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same test on a SQLite file and on a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'collector.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url
