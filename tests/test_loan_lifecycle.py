"""Loan lifecycle (issue #16): closing a loan, the stop-tracking configuration, the agent that obeys it."""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from collector.cli.commands import main
from collector.jobs.downlink import ConfigPublisher, config_body, devices_needing_config
from collector.loans.lifecycle import LifecycleError, change_status
from collector.loans.queries import WorklistFilter, worklist
from collector.risk.assessment import reassess_loans
from collector.settings import MqttSettings
from collector.storage.database import create_engine, migrate
from collector.storage.tables import AuditEntry, LoanRecord
from edge.agent import Agent
from edge.downlink_apply import DownlinkApplier, Tracking
from edge.uplink import ConfigGate
from protocol import DeviceConfig, Fix, SignalSample, batch_topic, config_topic, open_batch, open_config, seal_config
from protocol.cli import key_files as keys
from tests.agent_harness import DEVICE, T0, ScriptedEngine, make_config
from tests.loan_api_app import NOW, Api, cli_book, open_loan_api
from tests.mqtt_subscriber import Collector, wait_until
from tests.secure_broker import SecureBroker

MIDNIGHT_UTC = 1_795_824_000_000  # 2026-11-28T08:00:00+08:00
SIGNING = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)  # the key open_loan_api signs with


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_loan_api(tmp_path) as running:
        yield running


def test_settling_a_loan_signs_a_stop_tracking_config_and_is_audited(api: Api) -> None:
    settled = api.call("POST", "/v1/loans/L-1001/status", "admin",
                       json={"status": "settled", "closed_at": "2026-11-28T08:00:00+08:00"})
    assert settled.status_code == 200, settled.text
    body = settled.json()
    assert (body["old_status"], body["status"], body["tracking_stopped"]) == ("active", "settled", True)
    assert body["closed_ms"] == MIDNIGHT_UTC
    [message] = api.published
    config = open_config(message.payload, config_topic("tbox-0001"), SIGNING.public_key())
    assert config.body["tracking"] == {"enabled": False, "reason": "settled"}
    loan = api.call("GET", "/v1/loans/L-1001", "collections").json()
    assert loan["lifecycle"] == {"status": "settled", "closed_ms": MIDNIGHT_UTC}
    with Session(api.engine) as session:
        [audit] = session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "change_loan_status"))
        assert (audit.subject_id, audit.detail["old"], audit.detail["new"]) == ("L-1001", "active", "settled")


def test_lifecycle_transitions(api: Api) -> None:
    def move(loan: str, status: str, **extra: Any) -> int:
        return int(api.call("POST", f"/v1/loans/{loan}/status", "admin", json={"status": status} | extra).status_code)

    assert move("L-1002", "charged_off") == 200
    assert api.published == []  # recovery goes on: the device keeps tracking
    assert move("L-1002", "repossessed") == 200
    assert move("L-1002", "active") == 409
    assert move("L-1002", "transferred") == 200
    assert len(api.published) == 1
    assert move("L-1002", "settled") == 409  # transferred is final
    assert move("L-1003", "paid") == 422
    assert move("L-1003", "settled", closed_at="2030-01-01T00:00:00Z") == 409  # the future
    assert move("L-404", "settled") == 404
    assert api.call("POST", "/v1/loans/L-1003/status", "collections", json={"status": "settled"}).status_code == 403


def test_the_publisher_signs_a_closure_made_without_a_key(tmp_path: Path) -> None:
    with open_loan_api(tmp_path) as api, Session(api.engine) as session:
        assert devices_needing_config(session) == []  # no markets, nothing closed
        change_status(session, "L-1004", "settled", now_ms=NOW + 1)  # like `loans close` from the CLI
        session.commit()
        assert devices_needing_config(session) == ["tbox-0004"]
        with pytest.raises(LifecycleError):
            change_status(session, "L-1004", "active", now_ms=NOW + 2)


# ------------------------------------------------------------------ the agent side


def _gate_and_applier(tmp_path: Path) -> tuple[ConfigGate, DownlinkApplier, list[Tracking]]:
    seen: list[Tracking] = []
    gate = ConfigGate(DEVICE, SIGNING.public_key(), tmp_path / "config.cbor", tmp_path / "floor")
    applier = DownlinkApplier(
        gate, ScriptedEngine(), lambda: make_config(tmp_path, 1).rules, tmp_path, set_tracking=seen.append
    )
    return gate, applier, seen


def _send(applier: DownlinkApplier, version: int, body: dict[str, Any]) -> None:
    topic = config_topic(DEVICE)
    applier.handle(topic, seal_config(DeviceConfig(DEVICE, version, T0, body), SIGNING, topic))


def test_agent_ignores_unknown_sections_and_applies_tracking(tmp_path: Path) -> None:
    gate, applier, seen = _gate_and_applier(tmp_path)
    _send(applier, 1, {"later": {"name": "risk"}, "future": {}, "tracking": {"enabled": False, "reason": "settled"}})
    assert gate.version == 1
    assert seen == [Tracking(False, "settled")]
    assert gate.counters["config_unknown_sections"] == 2
    _send(applier, 2, {"markets": []})  # the collector builds the whole body: no section = local default
    assert seen[-1] == Tracking(True, None)
    for bad in ({"enabled": "no"}, {"enabled": False, "until": 1}, [], {"enabled": False, "reason": "x" * 65}):
        _send(applier, 3, {"tracking": bad})
    assert gate.counters["config_rejected_invalid_body"] == 4
    assert gate.version == 2


class FeedSource:
    """A source the test feeds record by record (blocks like an idle port in between)."""

    def __init__(self) -> None:
        self.records: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()

    def read(self, timeout: float = 1.0) -> list[Any]:
        try:
            first = self.records.get(timeout=min(timeout, 0.2))
        except queue.Empty:
            return []
        out = [first]
        while not self.records.empty() and len(out) < 100:
            out.append(self.records.get_nowait())
        return out

    def close(self) -> None:
        self._closed.set()


def test_a_settled_loans_device_receives_the_stop_config_and_stops_sending_positions(
    mosquitto: SecureBroker, tmp_path: Path
) -> None:
    collector_key = keys.load_private_key(keys.generate(tmp_path / "keys", "collector").private_path)
    config = make_config(tmp_path, mosquitto.port, extra='[downlink]\ncollector_public_key = "keys/collector.pub"\n',
                         login=mosquitto.login(DEVICE))
    device_key = {DEVICE: keys.load_public_key(keys.public_key_path(tmp_path / "keys", DEVICE))}
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        session.add(LoanRecord(loan_id="L-42", device_id=DEVICE, vin="LSVAU218XN2183294", borrower_ref="B-42",
                               principal_cents=8_000_000, created_ms=T0))
        session.commit()
    login = mosquitto.login()  # the collector's broker account
    mqtt_settings = MqttSettings(port=mosquitto.port, client_id="lifecycle", username=login.username,
                                 password=login.password)
    publisher = ConfigPublisher(engine, collector_key, mqtt_settings, resync_interval_s=0.2)
    batches = Collector(mosquitto, [batch_topic(DEVICE)])
    source = FeedSource()
    agent = Agent(config, engine=ScriptedEngine(), sources={"gnss": source})
    runner = threading.Thread(target=agent.run, name="agent-under-test")
    publisher.start()
    runner.start()
    try:
        assert agent.uplink.downlink_ready.wait(30)
        for i in range(50):  # one full batch (max_fixes = 50) while the loan is active
            source.records.put(Fix(time_ms=T0 + i * 1000, lat=31.3, lon=121.25))
        assert wait_until(lambda: len(batches.on(batch_topic(DEVICE))) >= 1)

        with Session(engine) as session:
            change_status(session, "L-42", "settled", now_ms=T0 + 60_000)
            session.commit()
        publisher.wake()
        assert wait_until(lambda: not agent.tracking.enabled)
        assert agent.tracking == Tracking(False, "settled")

        stop_ms = T0 + 100_000
        for i in range(120):
            source.records.put(Fix(time_ms=stop_ms + i * 1000, lat=31.3, lon=121.25))
        source.records.put(SignalSample("Vehicle.LowVoltageBattery.CurrentVoltage", stop_ms + 200_000, 12.4))
        assert wait_until(lambda: agent.counters["fixes_not_tracked"] == 120)
    finally:
        agent.request_stop()
        runner.join(60)
        publisher.stop()
    assert not runner.is_alive()
    assert wait_until(lambda: any(b.samples for b in _opened(batches, device_key)))
    got = _opened(batches, device_key)
    batches.close()
    engine.dispose()
    fix_times = [f.time_ms for b in got for f in b.fixes]
    assert len(fix_times) == 50
    assert max(fix_times) < stop_ms  # not one position after the stop configuration
    assert [s.name for b in got for s in b.samples] == ["Vehicle.LowVoltageBattery.CurrentVoltage"]


def _opened(collector: Collector, device_key: dict[str, Any]) -> list[Any]:
    return [open_batch(bytes(m.payload), m.topic, device_key) for m in collector.on(batch_topic(DEVICE))]


def test_loans_close_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = cli_book(tmp_path, monkeypatch)
    capsys.readouterr()
    argv = ["loans", "close", "L-1001", "--config", str(config), "--status", "settled", "--at",
            "2026-11-28T08:00:00+08:00"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["status"], out["closed_ms"], out["tracking_stopped"]) == ("settled", MIDNIGHT_UTC, True)
    assert main(argv) == 1  # settled is final
    assert "may become nothing (final)" in capsys.readouterr().err
    assert main([*argv[:-2], "--at", "someday"]) == 2
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'collector.db'}")
    with Session(engine) as session:
        # the running publisher signs it (the other devices wait for their first tier section)
        assert "tbox-0001" in devices_needing_config(session)
        assert config_body(session, "tbox-0001")["tracking"] == {"enabled": False, "reason": "settled"}
        [audit] = session.scalars(sa.select(AuditEntry).where(AuditEntry.action == "change_loan_status"))
        assert audit.actor.startswith("cli:")
    engine.dispose()


def test_settled_loans_leave_the_worklist_and_the_risk_jobs(api: Api) -> None:
    api.call("POST", "/v1/loans/L-1002/assess", "admin")
    assert "L-1002" in [x["loan_id"] for x in api.call("GET", "/v1/loans", "collections").json()]
    assert api.call("POST", "/v1/loans/L-1002/status", "admin", json={"status": "settled"}).status_code == 200
    assert "L-1002" not in [x["loan_id"] for x in api.call("GET", "/v1/loans", "collections").json()]
    assert api.call("GET", "/v1/loans/L-1002", "collections").json()["lifecycle"]["status"] == "settled"
    with Session(api.engine) as session:
        assert "L-1002" not in [r["loan_id"] for r in worklist(session, WorklistFilter()).rows]
        later = NOW + 200 * 86_400_000  # its instalments would all be overdue by then
        changed = [c.loan_id for c in reassess_loans(session, later)]
        assert "L-1002" not in changed
        assert "L-1003" in changed  # the active loans are still reassessed
