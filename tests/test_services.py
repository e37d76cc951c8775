"""The private service launchers the other suites rely on."""

from __future__ import annotations

import socket

import sqlalchemy as sa

from tests.secure_broker import SecureBroker, connack


def test_private_mosquitto_listens_then_stops(mosquitto: SecureBroker) -> None:
    with socket.create_connection(("127.0.0.1", mosquitto.port), timeout=2):
        pass
    mosquitto.stop()
    try:
        socket.create_connection(("127.0.0.1", mosquitto.port), timeout=1).close()
        still_listening = True
    except OSError:
        still_listening = False
    assert not still_listening
    mosquitto.start()
    socket.create_connection(("127.0.0.1", mosquitto.port), timeout=2).close()


def test_the_test_broker_wants_an_account(mosquitto: SecureBroker) -> None:
    """Every tool of the project runs its broker authenticated: no anonymous client gets in."""
    assert connack(mosquitto.port, None) not in (0, None)  # 0x87 not authorized / 0x86 bad login
    assert connack(mosquitto.port, mosquitto.login()) == 0
    device = mosquitto.login("car-0001")  # made while the broker runs: reloaded (SIGHUP)
    assert connack(mosquitto.port, device) == 0


def test_private_postgres_accepts_sql(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1 + 1")).scalar() == 2
    engine.dispose()
