"""Honest health: the broker link, ingest lag and last message age in ``/healthz`` and ``/metrics``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from collector.api.app import create_app
from collector.ingest.health import BrokerLink, IngestHealth
from collector.settings import Settings
from collector.storage.database import create_engine, migrate
from firmware_sim.rig import Mosquitto, free_port
from tests.child_processes import ChildProcesses
from tests.collector_process import CollectorProcess, wait_until


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def link(clock: Clock) -> BrokerLink:
    return BrokerLink("broker.example:1883", lag_degraded_s=30, silence_degraded_s=600, monotonic=clock)


def test_a_link_never_connected_is_degraded_with_the_reason(link: BrokerLink, clock: Clock) -> None:
    link.attempt_failed("cannot connect (connection refused)")
    clock.t += 12
    report = link.report()
    assert (report.status, report.broker) == ("degraded", "disconnected")
    (reason,) = report.reasons
    assert "broker.example:1883 not connected for 12 s" in reason
    assert "connection refused" in reason
    assert "1 failed attempt" in reason


def test_connect_disconnect_and_retry_are_each_logged(link: BrokerLink, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="collector.ingest.health"):
        link.attempt_failed("cannot connect")
        link.up("as c1")
        link.down("Unspecified error")
        link.up("as c1")
        link.down("Normal disconnection", expected=True)
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "broker broker.example:1883: cannot connect (attempt 1 failed); retrying",
        "broker broker.example:1883: connected (as c1)",
        "broker broker.example:1883: disconnected (Unspecified error); reconnecting",
        "broker broker.example:1883: connected (as c1)",
        "broker broker.example:1883: disconnected (Normal disconnection)",
    ]


def test_lag_is_the_age_of_the_oldest_message_not_handled(link: BrokerLink, clock: Clock) -> None:
    link.up("x")
    link.queued()
    clock.t += 20
    link.queued()
    clock.t += 15
    report = link.report()
    assert report.lag_s == 35
    assert report.status == "degraded"
    assert report.reasons == ("ingest lag 35 s (above 30 s)",)
    link.handled()
    assert link.report().lag_s == 15
    assert link.report().status == "ok"
    link.handled()
    link.handled()  # more handled than queued (a stop mid-way) never goes negative
    assert link.report().lag_s == 0


def test_silence_while_connected_is_degraded(link: BrokerLink, clock: Clock) -> None:
    link.up("x")
    clock.t += 601
    assert link.report().reasons == ("no message since start, 601 s ago (above 600 s)",)
    link.queued()
    link.handled()
    assert link.report().status == "ok"
    clock.t += 700
    assert link.report().reasons == ("last message 700 s ago (above 600 s)",)


def test_metrics_follow_the_link(link: BrokerLink, clock: Clock) -> None:
    registry = CollectorRegistry()
    link.register_metrics(registry)

    def sample(name: str) -> float | None:
        return registry.get_sample_value(name)

    assert sample("lienwatch_ingest_broker_connected") == 0
    link.attempt_failed("refused")
    link.up("x")
    link.queued()
    clock.t += 4
    assert sample("lienwatch_ingest_broker_connected") == 1
    assert sample("lienwatch_ingest_broker_connect_failures_total") == 1
    assert sample("lienwatch_ingest_lag_seconds") == 4
    assert sample("lienwatch_ingest_last_message_age_seconds") == 4
    link.down("lost")
    assert sample("lienwatch_ingest_broker_connected") == 0
    assert sample("lienwatch_ingest_broker_disconnects_total") == 1


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(database_url=f"sqlite:///{tmp_path / 'c.db'}", data_dir=tmp_path)


@pytest.fixture
def engine_url(settings: Settings) -> str:
    engine = create_engine(settings.resolved_database_url)
    migrate(engine)
    engine.dispose()
    return settings.resolved_database_url


def test_healthz_is_degraded_not_failed_when_only_the_ingest_has_trouble(settings: Settings, engine_url: str) -> None:
    bad = IngestHealth("degraded", ("broker b:1 not connected for 3 s: refused",), "disconnected", 0.0, 3.0)
    engine = create_engine(engine_url)
    with TestClient(create_app(settings, engine=engine, ingest_health=lambda: bad)) as client:
        response = client.get("/healthz")
    engine.dispose()
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["reasons"] == ["broker b:1 not connected for 3 s: refused"]
    assert body["ingest"]["broker"] == "disconnected"


# ------------------------------------------------------------------ the real process


def test_serve_without_a_broker_says_so_then_recovers(processes: ChildProcesses, tmp_path: Path) -> None:
    broker = Mosquitto(workdir=tmp_path / "mosquitto")  # its port stays closed for now
    api_port = free_port()
    config = tmp_path / "collector.toml"
    config.write_text(
        f"""database_url = "sqlite:///{tmp_path / 'collector.db'}"
data_dir = "{tmp_path / 'data'}"
log_level = "INFO"

[mqtt]
host = "127.0.0.1"
port = {broker.port}
client_id = "health-test"

[api]
port = {api_port}
"""
    )
    collector = CollectorProcess(config)
    api = httpx.Client(base_url=f"http://127.0.0.1:{api_port}", timeout=5)
    try:

        def health() -> dict[str, Any] | None:
            if collector.proc.poll() is not None:
                raise AssertionError(f"collector exited:\n{collector.log}")
            try:
                return api.get("/healthz").json()  # type: ignore[no-any-return]
            except httpx.TransportError:
                return None

        def degraded() -> dict[str, Any] | None:
            body = health()
            why = " ".join(body["reasons"]) if body else ""
            return body if body and body["status"] == "degraded" and "cannot connect" in why else None

        body = wait_until(degraded, timeout=10, what="/healthz degraded with the broker down")
        assert any(f"broker 127.0.0.1:{broker.port} not connected" in r for r in body["reasons"])
        assert f"broker 127.0.0.1:{broker.port}: cannot connect" in collector.log
        metrics = api.get("/metrics").text
        assert "lienwatch_ingest_broker_connected 0.0" in metrics

        broker.start()
        wait_until(lambda: (health() or {}).get("status") == "ok", what="/healthz ok once the broker is up")
        assert f"broker 127.0.0.1:{broker.port}: connected" in collector.log
        assert "lienwatch_ingest_broker_connected 1.0" in api.get("/metrics").text

        broker.stop()
        gone = f"broker 127.0.0.1:{broker.port}: disconnected"
        wait_until(lambda: gone in collector.log, what="the disconnect logged")
        assert (health() or {}).get("status") == "degraded"
    finally:
        api.close()
        collector.close()
        broker.close()


def test_serve_workers_only_runs_no_ingest_and_serves_metrics(processes: ChildProcesses, tmp_path: Path) -> None:
    """The third collector role of docs/operations.md: workers and /metrics, no ingest, no API."""
    port = free_port()
    config = tmp_path / "collector.toml"
    config.write_text(
        f'database_url = "sqlite:///{tmp_path / "collector.db"}"\n[mqtt]\nport = {free_port()}\n[api]\nport = {port}\n'
    )
    collector = CollectorProcess(config, "--workers-only")
    try:
        wait_until(lambda: "metrics on http://" in collector.log, what="the metrics server")
        assert "collector running: ingest=False" in collector.log
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert "lienwatch_risk_reassessments_total" in text or "lienwatch_risk_pending_devices" in text
        assert "lienwatch_ingest_broker_connected" not in text  # no MQTT connection in this role
        assert "broker 127.0.0.1" not in collector.log
        assert collector.terminate() == 0
    finally:
        collector.close()
