"""The private service launchers the other suites rely on."""

from __future__ import annotations

import socket

import sqlalchemy as sa

from firmware_sim.rig import Mosquitto


def test_private_mosquitto_listens_then_stops(mosquitto: Mosquitto) -> None:
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


def test_private_postgres_accepts_sql(postgres_url: str) -> None:
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select 1 + 1")).scalar() == 2
    engine.dispose()
