"""Pytest plugin (loaded with ``-p tests.services``): private Mosquitto and PostgreSQL.

Fixtures start real processes on free loopback ports and stop them afterwards. Set
``LIENWATCH_TEST_POSTGRES_URL`` to use an existing PostgreSQL instead (a SQLAlchemy URL).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from firmware_sim.rig import Mosquitto, Postgres


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    """A fresh private broker per test (stop()/start() it to simulate an outage)."""
    broker = Mosquitto(workdir=tmp_path_factory.mktemp("mosquitto"))
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


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    """Fail a test that leaves non-daemon threads running."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive() and not t.daemon]
    for t in leaked:
        t.join(timeout=5)
    leaked = [t.name for t in leaked if t.is_alive()]
    assert not leaked, f"test leaked threads: {leaked}"
