"""End to end: CLI loan import -> signed batch over a real Mosquitto -> `lienwatch collector serve`
-> risk level, event, signed webhook; markets -> signed retained config; webhook outbox across a
restart; the periodic reassessment with an injected clock.

The collector runs as a real subprocess (``lienwatch collector serve``) on a private broker and
a SQLite file (and PostgreSQL for the main flow). Every wait is a bounded poll of a condition.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.orm import Session

from collector.ingest.ingestor import Ingestor
from collector.ingest.registry import DeviceRegistry
from collector.jobs.webhooks import EVENT_HEADER, SIGNATURE_HEADER, verify_signature
from collector.loans.csv_import import import_loans, parse_loans
from collector.runtime import CollectorRuntime
from collector.settings import load_settings
from collector.storage.database import create_engine, migrate
from collector.storage.tables import RiskEventRecord, RiskStateRecord, WebhookDelivery
from firmware_sim.rig import free_port
from protocol import (
    Alert,
    AlertState,
    Batch,
    Fix,
    Severity,
    batch_topic,
    config_topic,
    open_config,
    parse_topic,
    seal_batch,
)  # fmt: skip
from protocol.cli.key_files import generate, load_private_key, load_public_key
from tests.collector_process import WAIT_S, CollectorProcess, collector_command, wait_until
from tests.secure_broker import SecureBroker

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
SECRET = "e2e-webhook-secret-0123456789"
KEYS = {
    "admin": "e2e-admin-key-0123456789",
    "risk_analyst": "e2e-analyst-key-0123456789",
    "collections": "e2e-collections-key-0123456789",
    "auditor": "e2e-auditor-key-0123456789",
}
HOUR = 3_600_000
DAY = 24 * HOUR
BOOT = bytes(range(16))


def lienwatch(*args: str, config: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LIENWATCH_WEBHOOKS_SECRET": SECRET}
    done = subprocess.run(
        [*collector_command(), *args, "--config", str(config)],
        capture_output=True, text=True, timeout=WAIT_S, env=env, check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


# ------------------------------------------------------------------ a webhook receiver


class Receiver:
    """An http.server on 127.0.0.1 recording every POST (start/stop to simulate an outage)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/hooks/risk"
        self.received: list[tuple[dict[str, str], bytes]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(WAIT_S)
            self._server = self._thread = None

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(free_port())
    yield r
    r.stop()


# ------------------------------------------------------------------ the collector process


class Serve(CollectorProcess):
    """``lienwatch collector serve`` (ingest + API) with the webhook secret."""

    def __init__(self, config: Path) -> None:
        super().__init__(config, env={"LIENWATCH_WEBHOOKS_SECRET": SECRET})

    def wait_ready(self, api: httpx.Client) -> None:  # type: ignore[override]
        def healthy() -> bool:
            try:
                return api.get("/healthz").status_code == 200
            except httpx.TransportError:
                return False

        super().wait_ready(healthy)


def write_config(tmp_path: Path, database_url: str, broker: SecureBroker, api_port: int, hook_url: str) -> Path:
    keys = "\n".join(f'"{key}" = "{role}"' for role, key in KEYS.items())
    login = broker.login()  # the collector's broker account
    path = tmp_path / "collector.toml"
    path.write_text(
        f"""database_url = "{database_url}"
data_dir = "data"
log_level = "INFO"

[mqtt]
port = {broker.port}
client_id = "e2e-collector"
group = "e2e"
username = "{login.username}"
password = "{login.password}"

[api]
port = {api_port}

[limits]
key_cache_ttl_s = 0
max_clock_skew_s = 600

[risk]
reassess_interval_s = 60

[webhooks]
urls = ["{hook_url}"]
retry_initial_s = 0.2
retry_max_s = 0.5
max_attempts = 1000
poll_interval_s = 0.2

[downlink]
signing_key = "keys/collector.key"
resync_interval_s = 0.5

[api_keys]
{keys}
""",
        encoding="utf-8",
    )
    return path


class Api:
    def __init__(self, port: int) -> None:
        self.client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=WAIT_S)

    def get(self, path: str, role: str, **params: Any) -> httpx.Response:
        return self.client.get(path, params=params, headers={"Authorization": f"Bearer {KEYS[role]}"})

    def put(self, path: str, role: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.put(path, json=body, headers={"Authorization": f"Bearer {KEYS[role]}"})


class ConfigListener:
    """Subscribes to a device's config topic (retained) and keeps every message."""

    def __init__(self, broker: SecureBroker, device_id: str) -> None:
        self.topic = config_topic(device_id)
        self.messages: list[bytes] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-config-listener", protocol=mqtt.MQTTv5)
        self.client.on_message = lambda _c, _u, m: self.messages.append(bytes(m.payload))
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe(self.topic, qos=1)
        broker.authenticate(self.client, device_id)  # the device's own account reads its config
        self.client.connect("127.0.0.1", broker.port)
        self.client.loop_start()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish_acked(broker: SecureBroker, topic: str, payload: bytes) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="e2e-device", protocol=mqtt.MQTTv5)
    broker.authenticate(client, parse_topic(topic).device_id)  # the device's own account
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        info = client.publish(topic, payload, qos=1)
        info.wait_for_publish(WAIT_S)
        assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def market_batch(device_id: str, now_ms: int) -> Batch:
    """A batch like the agent sends when the dwell rule fires: fixes at rest + the RAISED alert."""
    dwell_start = now_ms - 3 * DAY
    fixes = tuple(Fix(now_ms - 60_000 + i * 10_000, 31.301992, 121.245568, speed_mps=0.0) for i in range(6))
    evidence = {
        "dwell_start_ms": dwell_start,
        "dwell_s": 259_200.0,
        "centre_lat": 31.301992,
        "centre_lon": 121.245568,
        "fixes": 4320,
        "market_id": "sh-jiading-ucm",
        "market_name": "Demo used-car market (Shanghai Jiading)",
        "market_lat": 31.301992,
        "market_lon": 121.245568,
        "market_radius_m": 400.0,
        "market_datum": "gcj02",
        "distance_to_market_m": 3.2,
        "radius_m": 150.0,
    }
    alert = Alert("stationary_near_market", Severity.HIGH, now_ms - 30_000, f"stationary_near_market-{dwell_start}",
                  AlertState.RAISED, evidence)
    return Batch(device_id, BOOT, 1, now_ms, fixes=fixes, alerts=(alert,))


def power_cut_batch(device_id: str, now_ms: int) -> Batch:
    """The box unplugged a minute ago (the agent's RAISED power_cut with its last position)."""
    alert = Alert("power_cut", Severity.PANIC, now_ms - 60_000, f"power_cut-{now_ms}", AlertState.RAISED,
                  {"volts": 0.4, "lat": 31.2, "lon": 121.4})
    return Batch(device_id, BOOT, 1, now_ms, fixes=(Fix(now_ms - 70_000, 31.2, 121.4, speed_mps=0.0),),
                 alerts=(alert,))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'collector.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


# ------------------------------------------------------------------ the main flow


def test_market_dwell_and_power_cut_reach_the_loans_with_event_webhook_and_config(
    tmp_path: Path, database_url: str, mosquitto: SecureBroker, receiver: Receiver
) -> None:
    receiver.start()
    collector_keys = generate(tmp_path / "keys", "collector")
    device_keys = generate(tmp_path / "keys", "tbox-0002")
    unplugged_keys = generate(tmp_path / "keys", "tbox-0003")
    api_port = free_port()
    config = write_config(tmp_path, database_url, mosquitto, api_port, receiver.url)

    imported = lienwatch("loans", "import", "--sample", config=config)
    # v2 (docs/risk.md): L-1002, 88 days past due with three lates, is a likely default (credit axis)
    assert imported.stdout == (
        "imported 5, unchanged 0, errors 0; payments recorded 21; at risk: L-1002 critical, L-1003 watch\n"
    )
    lienwatch("devices", "add", "--device", "tbox-0002", "--public-key", str(device_keys.public_path), config=config)
    lienwatch("devices", "add", "--device", "tbox-0003", "--public-key", str(unplugged_keys.public_path),
              config=config)

    listener = ConfigListener(mosquitto, "tbox-0002")
    serve = Serve(config)
    api = Api(api_port)
    try:
        serve.wait_ready(api.client)
        assert listener.subscribed.wait(WAIT_S)

        # L-1002's customer tier -> a signed, retained config on lw/v1/tbox-0002/config (the
        # downlink sync, without markets yet: the device keeps its local markets file).
        public = load_public_key(collector_keys.public_path)
        wait_until(lambda: listener.messages, what="the first config")
        first = open_config(listener.messages[0], listener.topic, public)
        assert (first.version, first.body) == (1, {"tier": {"name": "risk", "batch_interval_s": 60}})

        # Markets through the API -> the whole body signed again, the tier kept.
        market = {"name": "Demo used-car market (Shanghai Jiading)", "lat": 31.3, "lon": 121.25, "radius_m": 400,
                  "datum": "gcj02"}
        put = api.put("/v1/markets/sh-jiading-ucm", "admin", market)
        assert put.status_code == 200, put.text
        assert put.json()["configs_signed"] == 5  # the five loans' devices (tbox-0002 among them)
        wait_until(lambda: len(listener.messages) >= 2, what="the config with markets")
        with_markets = open_config(listener.messages[-1], listener.topic, public)
        assert with_markets.version == 2
        item = {"id": "sh-jiading-ucm", "name": market["name"], "lat": 31.3, "lon": 121.25, "radius_m": 400.0,
                "datum": "gcj02"}
        assert with_markets.body == {
            "places": [item | {"type": "used_car_market"}],
            "markets": [item],
            "tier": {"name": "risk", "batch_interval_s": 60},
        }
        assert api.put("/v1/markets/sh-jiading-ucm", "admin", market | {"radius_m": 500}).status_code == 200
        wait_until(lambda: len(listener.messages) >= 3, what="the third config")
        third = open_config(listener.messages[-1], listener.topic, public)
        assert (third.version, third.body["markets"][0]["radius_m"]) == (3, 500.0)

        # A signed batch with the dwell alert, published at QoS 1 like the agent does.
        now = _wall_ms()
        batch = market_batch("tbox-0002", now)
        topic = batch_topic("tbox-0002")
        publish_acked(mosquitto, topic, seal_batch(batch, load_private_key(device_keys.private_path), topic))

        def dwell_reason() -> dict[str, Any] | None:
            loan = api.get("/v1/loans/L-1002", "risk_analyst").json()
            found = [r for r in loan["risk"]["reasons"] if r["alert_episode"] == batch.alerts[0].episode]
            return found[0] if found else None

        # The dwell is explained on the credit axis with its contribution; L-1002 stays critical.
        reason = wait_until(dwell_reason, what="the dwell among L-1002's reasons")
        assert reason["code"] in ("market_while_overdue", "market")
        assert reason["explanation"]["axis"] == "credit"
        assert reason["explanation"]["log_odds"] > 0
        assert reason["evidence"]["alert"]["evidence"]["market_id"] == "sh-jiading-ucm"
        assert reason["evidence"]["alert"]["evidence"]["centre_lat"] == 31.301992
        assert reason["evidence"]["repayment"]["consecutive_late"] == 3
        events = api.get("/v1/loans/L-1002/risk-events", "collections").json()
        assert [(e["old_level"], e["new_level"]) for e in events] == [("normal", "critical")]

        # A power cut on L-1003 (overdue): the hard rule power_cut_while_overdue, collateral critical.
        unplug = power_cut_batch("tbox-0003", _wall_ms())
        topic = batch_topic("tbox-0003")
        publish_acked(mosquitto, topic, seal_batch(unplug, load_private_key(unplugged_keys.private_path), topic))

        def loan_is_critical() -> dict[str, Any] | None:
            loan = api.get("/v1/loans/L-1003", "risk_analyst").json()
            return loan if loan["risk"]["level"] == "critical" else None

        loan = wait_until(loan_is_critical, what="L-1003 critical")
        first_reason = loan["risk"]["reasons"][0]
        assert (first_reason["code"], first_reason["next_step"]) == ("power_cut_while_overdue", "recovery")
        assert first_reason["alert_episode"] == unplug.alerts[0].episode
        assert first_reason["explanation"] == {**first_reason["explanation"], "axis": "collateral", "kind": "rule"}
        assert loan["risk"]["score"]["collateral"]["next_step"] == "notify_recovery_and_insurer"

        events = api.get("/v1/loans/L-1003/risk-events", "collections").json()
        assert [(e["old_level"], e["new_level"]) for e in events] == [("watch", "critical"), ("normal", "watch")]
        assert '"lat"' not in json.dumps(events)  # collections see no coordinates
        assert '"lat"' in json.dumps(api.get("/v1/loans/L-1003/risk-events", "admin").json())

        # The webhook: HMAC verified, its id is the stored event's id.
        def is_the_critical_event(body: bytes) -> bool:
            data = json.loads(body)["data"]
            return (data["loan_id"], data["new_level"]) == ("L-1003", "critical")

        critical = wait_until(
            lambda: [(h, b) for h, b in receiver.received if is_the_critical_event(b)],
            what="the webhook of the critical event",
        )
        headers, body = critical[0]
        verify_signature(headers[SIGNATURE_HEADER], body, SECRET.encode(), int(time.time()))
        document = json.loads(body)
        assert headers[EVENT_HEADER] == document["id"] == events[0]["event_id"]
        assert (document["type"], document["data"]["loan_id"]) == ("risk.level_changed", "L-1003")
        assert document["data"]["reasons"][0]["alert_episode"] == unplug.alerts[0].episode
        assert document["data"]["reasons"][0]["explanation"]["axis"] == "collateral"

        # Tracks: collections may not without an approved grant (audited), analysts may with a reason.
        window = {"from_ms": now - DAY, "to_ms": now + 60_000, "reason": "dwell review"}
        assert api.get("/v1/loans/L-1002/track", "collections", **window).status_code == 403
        track = api.get("/v1/loans/L-1002/track", "risk_analyst", **window)
        assert track.status_code == 200
        assert [p["lat"] for p in track.json()["points"]] == [31.301992] * 6
        reads = api.get("/v1/audit", "auditor", subject_id="L-1002").json()
        actions = [(a["role"], a["action"]) for a in reads]
        assert ("collections", "location_access_denied") in actions
        assert ("risk_analyst", "read_track") in actions

        assert serve.terminate() == 0
    finally:
        serve.close()
        listener.close()
        api.client.close()
    assert "risk worker counters" in serve.log


# ------------------------------------------------------------------ webhook outbox across a restart


def test_webhooks_queued_while_the_receiver_is_down_arrive_after_a_restart(
    tmp_path: Path, mosquitto: SecureBroker, receiver: Receiver
) -> None:
    generate(tmp_path / "keys", "collector")
    url = f"sqlite:///{tmp_path / 'collector.db'}"
    api_port = free_port()
    config = write_config(tmp_path, url, mosquitto, api_port, receiver.url)  # receiver not started: refused
    lienwatch("loans", "import", "--sample", config=config)  # L-1002 -> critical, L-1003 -> watch: 2 deliveries
    engine = create_engine(url)

    def deliveries() -> list[tuple[str, int]]:
        with Session(engine) as session:
            return [(d.status, d.attempts) for d in session.scalars(sa.select(WebhookDelivery))]

    api = Api(api_port)
    first = Serve(config)
    try:
        first.wait_ready(api.client)
        wait_until(lambda: all(a >= 2 for _, a in deliveries()), what="failed attempts")
        assert first.terminate() == 0
    finally:
        first.close()
    assert [s for s, _ in deliveries()] == ["pending"] * 2
    assert receiver.received == []

    receiver.start()
    second = Serve(config)
    try:
        second.wait_ready(api.client)
        wait_until(lambda: len(receiver.received) == 2, what="two deliveries")
        wait_until(lambda: [s for s, _ in deliveries()] == ["delivered"] * 2, what="delivered status")
        assert second.terminate() == 0
    finally:
        second.close()
        api.client.close()
        engine.dispose()
    loans = sorted(e["data"]["loan_id"] for e in receiver.events())
    assert loans == ["L-1002", "L-1003"]
    assert len({h[EVENT_HEADER] for h, _ in receiver.received}) == 2
    for headers, body in receiver.received:
        verify_signature(headers[SIGNATURE_HEADER], body, SECRET.encode(), int(time.time()))
        assert int(headers["X-LienWatch-Delivery-Attempt"]) >= 3


# ------------------------------------------------------------------ periodic reassessment, injected clock


def test_a_device_silent_for_more_than_48_hours_makes_its_overdue_loan_high_without_a_message(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'collector.db'}"
    (tmp_path / "collector.toml").write_text(
        f'database_url = "{url}"\n[risk]\nreassess_interval_s = 0.05\n[retention]\nenabled = false\n'
    )
    settings = load_settings(tmp_path / "collector.toml", environ={})
    engine = create_engine(url)
    migrate(engine)
    t0 = 1_795_858_800_000  # 2026-11-28T09:00:00Z: L-1003 is one instalment late, 27 days past due
    clock = [t0]
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=t0)
        session.commit()
    device = generate(tmp_path / "keys", "tbox-0003")
    DeviceRegistry(engine, clock_ms=lambda: t0).add("tbox-0003", device.public_path.read_bytes())
    batch = Batch("tbox-0003", BOOT, 1, t0, fixes=(Fix(t0 - 5_000, 31.2, 121.4, speed_mps=8.0),))
    topic = batch_topic("tbox-0003")
    Ingestor(engine).handle(topic, seal_batch(batch, load_private_key(device.private_path), topic), received_ms=t0)

    def level_at(time_ms: int) -> RiskStateRecord:
        clock[0] = time_ms

        def evaluated() -> RiskStateRecord | None:
            with Session(engine) as session:
                state = session.get(RiskStateRecord, "L-1003")
                return state if state is not None and state.evaluated_ms == time_ms else None

        state: RiskStateRecord = wait_until(evaluated, what=f"L-1003 evaluated at {time_ms}")
        return state

    runtime = CollectorRuntime(settings, engine, ingest=False, clock_ms=lambda: clock[0])
    runtime.start()
    try:
        assert level_at(t0).level == "watch"
        assert level_at(t0 + 48 * HOUR).level == "watch"  # exactly 48 h is not "more than 48 h"
        high = level_at(t0 + 48 * HOUR + 60_000)
        assert (high.level, high.next_step) == ("high", "on_site_check")
        # v2: the silence raises the collateral axis (offline, never stationary)
        assert high.collateral_level == "high"
        collateral = [r for r in high.reasons if r["explanation"]["axis"] == "collateral"]
        assert collateral[0]["code"] == "offline"  # the largest contribution first
        assert "offline_while_overdue" in {r["code"] for r in collateral}
        assert collateral[0]["evidence"]["device"]["last_seen_ms"] == t0
        assert "stationary" not in {r["code"] for r in high.reasons}
    finally:
        runtime.stop()
    with Session(engine) as session:
        events = session.scalars(sa.select(RiskEventRecord).where(RiskEventRecord.loan_id == "L-1003")
                                 .order_by(RiskEventRecord.id))
        assert [(e.old_level, e.new_level) for e in events] == [("normal", "watch"), ("watch", "high")]
    assert runtime.risk.counters["errors"] == 0
    engine.dispose()
