"""The agent wired together, in process: fake sources, real outbox/uplink/broker."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.agent import Agent, ObservationClock, StructuredFormatter
from edge.config import AgentConfig
from edge.outbox import Outbox
from firmware_sim.rig import Mosquitto
from protocol import (
    Batch,
    DeviceConfig,
    Fix,
    NoFix,
    Severity,
    SignalSample,
    batch_topic,
    config_topic,
    open_batch,
    open_state,
    seal_config,
    state_topic,
)
from protocol.cli import key_files as keys
from protocol.errors import KeyFileError
from tests.agent_harness import DEVICE, T0, ListSource, ScriptedEngine, fixes, make_config
from tests.mqtt_subscriber import Collector, wait_until


class Running:
    """Runs Agent.run() on a thread; stop() is the SIGTERM path."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(agent.run()), name="agent-under-test")
        self.thread.start()

    def stop(self) -> int:
        self.agent.request_stop()
        self.thread.join(timeout=60)
        assert not self.thread.is_alive()
        return self.result[0]


@pytest.fixture
def collector(mosquitto: Mosquitto) -> Iterator[Collector]:
    c = Collector(mosquitto.port, [batch_topic(DEVICE), state_topic(DEVICE)])
    yield c
    c.close()


def device_keys(tmp_path: Path) -> dict[str, Ed25519PublicKey]:
    """The device's public key as a collector has it: the ``.pub`` file ``make_config`` generated."""
    return {DEVICE: keys.load_public_key(keys.public_key_path(tmp_path / "keys", DEVICE))}


def batches(collector: Collector, tmp_path: Path) -> dict[int, Batch]:
    keys_ = device_keys(tmp_path)
    return {b.seq: b for b in (open_batch(bytes(m.payload), m.topic, keys_) for m in collector.on(batch_topic(DEVICE)))}


def test_observation_clock_follows_gnss_and_host_monotonic_time() -> None:
    mono = [100.0]
    wall = [1_700_000_000.0]
    clock = ObservationClock(monotonic=lambda: mono[0], wall=lambda: wall[0])
    assert not clock.anchored
    assert clock.now_ms() == 1_700_000_000_000  # host time before the first fix
    clock.on_fix(T0)
    mono[0] += 2.5
    wall[0] += 3600  # the host wall clock steps (NTP): ignored
    assert clock.now_ms() == T0 + 2500
    assert clock.stamp(wall[0] - 0.2) == T0 + 2300  # a frame received 200 ms ago
    assert clock.stamp(wall[0] + 5) == T0 + 2500  # from the future: clamped
    assert clock.stamp(0.0) == T0 + 2500 - 10_000  # ancient: clamped to 10 s


def test_structured_log_lines() -> None:
    import logging

    record = logging.LogRecord("lienwatch.agent", logging.INFO, __file__, 1, "alert", None, None)
    record.created = 1.0
    record.fields = {"rule": "power_cut", "detail": "two words"}
    assert json.loads(StructuredFormatter("json").format(record)) == {
        "ts": 1.0,
        "level": "info",
        "logger": "lienwatch.agent",
        "event": "alert",
        "rule": "power_cut",
        "detail": "two words",
    }
    assert StructuredFormatter("kv").format(record) == (
        'ts=1.0 level=info logger=lienwatch.agent event=alert rule=power_cut detail="two words"'
    )


def test_every_batch_arrives_urgent_alerts_go_alone_and_shutdown_is_clean(
    mosquitto: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    config = make_config(tmp_path, mosquitto.port)
    records: list[Any] = [*fixes(120), SignalSample("Vehicle.LowVoltageBattery.CurrentVoltage", T0 + 12_000, 0.0)]
    records.append(NoFix(time_ms=T0 + 12_100))
    engine = ScriptedEngine(urgent_on="Vehicle.LowVoltageBattery.CurrentVoltage")
    source = ListSource(records, chunk=30)
    agent = Agent(config, engine=engine, sources={"gnss": source})
    run = Running(agent)
    try:
        # 120 fixes at 50 per batch: two full batches, then the urgent alert alone
        assert collector.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/batch")]) >= 3)
        assert wait_until(lambda: agent.counters["records_in"] == 122)
    finally:
        assert run.stop() == 0
    got = batches(collector, tmp_path)
    assert sorted(got) == [1, 2, 3, 4]  # the 4th is the open batch, flushed on shutdown
    assert [len(got[s].fixes) for s in (1, 2)] == [50, 50]
    assert got[3].alerts[0].severity is Severity.PANIC
    assert (got[3].fixes, got[3].samples) == ((), ())
    assert len(got[4].fixes) == 20
    assert got[4].samples[0].value == 0.0
    assert {b.boot_id for b in got.values()} == {agent.boot_id}
    assert source.closed
    assert json.loads(agent.snapshot_path.read_text()) == {"fed": 122}
    public = device_keys(tmp_path)
    states = [open_state(bytes(m.payload), m.topic, public) for m in collector.on(state_topic(DEVICE))]
    assert states[0].online is True
    assert states[-1].online is False
    assert states[-1].counters["batches_stored"] == 4
    assert states[-1].counters["rules_fed"] == 122
    assert states[-1].counters["gnss_records"] == 122
    assert Outbox(config.outbox.path).stats()["outbox_batches"] == 0


def test_sigterm_with_the_broker_down_keeps_the_flushed_batch(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = make_config(tmp_path, mosquitto.port, grace=0.2)
    mosquitto.stop()
    source = ListSource(fixes(30))
    agent = Agent(config, engine=ScriptedEngine(), sources={"gnss": source})
    run = Running(agent)
    assert wait_until(lambda: agent.counters["records_in"] == 30)
    assert run.stop() == 0
    box = Outbox(config.outbox.path)
    pending = box.pending(10)
    assert [p.seq for p in pending] == [1]
    batch = open_batch(pending[0].message, batch_topic(DEVICE), device_keys(tmp_path))
    assert [f.time_ms for f in batch.fixes] == [f.time_ms for f in fixes(30)]
    box.close()
    # the next run continues the sequence and still delivers the old batch first
    mosquitto.start()
    collector = Collector(mosquitto.port, [batch_topic(DEVICE)], client_id="late-collector")
    try:
        again = Agent(config, engine=ScriptedEngine(), sources={"gnss": ListSource(fixes(50))})
        run = Running(again)
        try:
            assert collector.wait_for(lambda ms: len(ms) >= 2)
        finally:
            run.stop()
        got = batches(collector, tmp_path)
        assert sorted(got)[:2] == [1, 17]  # a crash-free restart still skips the rest of the reserved block
        assert got[17].counters == {"seq_skipped_from": 2, "seq_skipped": 15}
    finally:
        collector.close()


def test_full_outbox_keeps_alerts_and_reports_every_eviction(
    mosquitto: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    config = make_config(tmp_path, mosquitto.port, extra="[outbox]\nmax_bytes = 65536\n")
    mosquitto.stop()  # the broker is unreachable while the outbox fills up
    engine = ScriptedEngine(every_ms=100 * 500)  # a WARNING alert every 500 fixes -> 20 alert batches
    agent = Agent(config, engine=engine, sources={"gnss": ListSource(fixes(10_000), chunk=500)})
    run = Running(agent)
    try:
        assert wait_until(lambda: agent.counters["batches_stored"] == 200, timeout=60)
        stored = agent.outbox.totals
        assert stored["evicted_batches"] > 50
        mosquitto.start()
        assert wait_until(lambda: agent.outbox.stats()["outbox_batches"] == 0, timeout=60)
        # the collector's persistent session queued what was sent before it reconnected
        expected = 200 - agent.outbox.totals["evicted_batches"]
        assert collector.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/batch")]) >= expected, 60)
    finally:
        run.stop()
    got = batches(collector, tmp_path)
    alert_batches = [b for b in got.values() if b.alerts]
    assert len(alert_batches) == 20  # every alert survived
    assert sorted(a.alerts[0].time_ms for a in alert_batches) == [T0 + i * 50_000 for i in range(20)]
    reported = sum(b.counters.get("evicted_batches", 0) for b in got.values())
    reported_fixes = sum(b.counters.get("evicted_fixes", 0) for b in got.values())
    left = Outbox(config.outbox.path).unreported()
    evicted = agent.outbox.totals["evicted_batches"]
    assert reported + left.get("evicted_batches", 0) == evicted
    assert reported_fixes + left.get("evicted_fixes", 0) == evicted * 50
    assert len(got) + evicted == 200  # every stored batch was either delivered or evicted and counted
    assert reported > 0


def test_signed_config_is_applied_without_restart_and_forgeries_are_counted(
    mosquitto: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    collector_keys = keys.generate(tmp_path / "keys", "collector")
    config = make_config(tmp_path, mosquitto.port, extra='[downlink]\ncollector_public_key = "keys/collector.pub"\n')
    collector_key = keys.load_private_key(collector_keys.private_path)
    engine = ScriptedEngine()
    agent = Agent(config, engine=engine, sources={})
    run = Running(agent)

    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="collector-pub", protocol=mqtt.MQTTv5)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()

    def send(message: bytes, device: str = DEVICE) -> None:
        pub.publish(config_topic(device), message, qos=1).wait_for_publish(10)

    market = {"id": "m1", "name": "Jiading UCM", "lat": 31.3, "lon": 121.25, "radius_m": 400, "datum": "gcj02"}
    good = DeviceConfig(DEVICE, 5, T0, {"markets": [market], "rules": {"max_hdop": 3.0}})
    try:
        assert agent.uplink.downlink_ready.wait(20)
        send(seal_config(good, collector_key, config_topic(DEVICE)))
        assert wait_until(lambda: agent.gate is not None and agent.gate.version == 5)
        assert engine.calls == [("config", 3.0), ("markets", ["m1"])]
        forged = seal_config(DeviceConfig(DEVICE, 6, T0, {}), Ed25519PrivateKey.generate(), config_topic(DEVICE))
        send(forged)
        send(seal_config(DeviceConfig(DEVICE, 4, T0, {}), collector_key, config_topic(DEVICE)))  # stale
        other = seal_config(DeviceConfig("car-0043", 9, T0, {}), collector_key, config_topic("car-0043"))
        send(other)  # the other device's config, replayed onto ours
        bad_body = DeviceConfig(DEVICE, 7, T0, {"markets": [{"id": "bad"}]})
        send(seal_config(bad_body, collector_key, config_topic(DEVICE)))
        assert wait_until(lambda: agent.gate is not None and agent.gate.counters["config_rejected"] == 4)
    finally:
        pub.loop_stop()
        pub.disconnect()
        run.stop()
    assert agent.gate is not None
    assert agent.gate.counters["config_rejected_bad_signature"] == 2
    assert agent.gate.counters["config_rejected_stale_version"] == 1
    assert agent.gate.counters["config_rejected_invalid_body"] == 1
    assert agent.gate.version == 5
    assert engine.calls == [("config", 3.0), ("markets", ["m1"])]
    last_state = collector.on(state_topic(DEVICE))[-1]
    state = open_state(bytes(last_state.payload), last_state.topic, device_keys(tmp_path))
    assert state.counters["config_version"] == 5
    assert state.counters["config_rejected"] == 4
    # after a restart the accepted configuration is applied again from the signed copy on disk
    engine2 = ScriptedEngine()
    again = Agent(config, engine=engine2, sources={})
    assert again.gate is not None
    assert again.gate.version == 5
    assert engine2.calls == [("config", 3.0), ("markets", ["m1"])]
    again.outbox.close()


def test_sighup_reload_applies_batch_settings_and_reports_restart_needs(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = make_config(tmp_path, mosquitto.port)
    agent = Agent(config, engine=ScriptedEngine(), sources={})
    assert config.source is not None
    config.source.write_text(config.source.read_text().replace("max_fixes = 50", "max_fixes = 7"))
    run = Running(agent)
    try:
        agent.request_reload()  # what SIGHUP does
        assert wait_until(lambda: agent.counters["reloads"] == 1)
        assert agent.batcher.settings.max_fixes == 7
        config.source.write_text("not toml [")
        agent.request_reload()
        assert wait_until(lambda: agent.counters["reload_failures"] == 1)
        assert agent.batcher.settings.max_fixes == 7
    finally:
        assert run.stop() == 0


def test_a_corrupt_rule_snapshot_is_set_aside_and_counted(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = make_config(tmp_path, mosquitto.port)
    config.device.data_dir.mkdir(parents=True, exist_ok=True)
    (config.device.data_dir / "rules_state.json").write_text("{torn")
    seen: list[Any] = []

    def factory(_config: AgentConfig, state: Any) -> ScriptedEngine:
        seen.append(state)
        return ScriptedEngine()

    agent = Agent(config, engine_factory=factory, sources={})
    assert seen == [None]
    assert agent.counters["rule_state_lost"] == 1
    assert len(list(config.device.data_dir.glob("rules_state.json.corrupt-*"))) == 1
    agent.outbox.close()


def test_real_rules_engine_is_used_by_default(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = make_config(tmp_path, mosquitto.port)
    agent = Agent(config, sources={})
    from edge.rules import Engine

    assert isinstance(agent.engine, Engine)
    agent.save_snapshot()
    restored = Agent(config, sources={})
    assert restored.counters["rule_state_lost"] == 0
    agent.outbox.close()
    restored.outbox.close()


def test_world_readable_key_is_refused(mosquitto: Mosquitto, tmp_path: Path) -> None:
    config = make_config(tmp_path, mosquitto.port)
    config.device.key_file.chmod(0o644)
    with pytest.raises(KeyFileError):
        Agent(config, engine=ScriptedEngine(), sources={})


def test_observation_clock_holds_until_the_first_gnss_epoch_then_falls_back_to_host_time() -> None:
    mono, wall = [100.0], [1_700_000_000.0]
    clock = ObservationClock(monotonic=lambda: mono[0], wall=lambda: wall[0], hold_s=10.0)
    mono[0] += 9.9
    assert not clock.anchored
    mono[0] += 0.2  # no GNSS for 10 s: run on host time
    assert clock.anchored
    assert clock.free_running
    assert clock.now_ms() == int(wall[0] * 1000)
    clock.on_fix(T0)  # GNSS appears later: it wins
    assert not clock.free_running
    assert clock.now_ms() == T0


def test_can_samples_before_the_first_epoch_are_held_and_stamped_at_it() -> None:
    """Feeding host-stamped CAN first would put the engine ahead of GNSS time (and drop every fix)."""
    from edge.stamped_can import StampedCanSource

    class FakeCan:
        counters = None

        def __init__(self) -> None:
            self.batches: list[list[tuple[str, float]]] = [
                [("Vehicle.LowVoltageSystemState", 1_700_000_000.0)],
                [("Vehicle.Speed", 1_700_000_000.5)],
                [("Vehicle.Speed", 1_700_000_001.0)],
            ]

        def read(self, timeout: float = 1.0, time_ms: Any = None) -> list[SignalSample]:
            batch = self.batches.pop(0) if self.batches else []
            return [SignalSample(name, time_ms(ts), "ON" if "State" in name else 10.0) for name, ts in batch]

        def close(self) -> None:
            pass

    mono, wall = [0.0], [1_700_000_001.0]
    clock = ObservationClock(monotonic=lambda: mono[0], wall=lambda: wall[0], hold_s=10.0)
    can = StampedCanSource(FakeCan(), clock)
    assert can.read() == []  # held: no observation time yet
    assert can.read() == []
    clock.on_fix(T0)
    released = can.read()
    assert [(s.name, s.time_ms) for s in released] == [
        ("Vehicle.LowVoltageSystemState", T0),
        ("Vehicle.Speed", T0),
        ("Vehicle.Speed", T0),
    ]


def test_the_reporting_policy_thins_a_parked_car_and_sends_the_evidence_with_an_alert(
    mosquitto: Mosquitto, collector: Collector, tmp_path: Path
) -> None:
    extra = "[reporting]\nparked_after_s = 5\nparked_fix_interval_s = 60\nevidence_before_s = 3\nevidence_after_s = 0"
    config = make_config(tmp_path, mosquitto.port, extra=extra)
    parked = [Fix(time_ms=T0 + i * 1000, lat=31.3, lon=121.25, speed_mps=0.0) for i in range(150)]
    cut = SignalSample("Vehicle.LowVoltageBattery.CurrentVoltage", T0 + 150_000, 0.0)
    source = ListSource([*parked, cut], chunk=50)
    agent = Agent(config, engine=ScriptedEngine(urgent_on=cut.name), sources={"gnss": source})
    run = Running(agent)
    try:
        assert wait_until(lambda: agent.counters["records_in"] == 151)
    finally:
        assert run.stop() == 0
    got = batches(collector, tmp_path)
    uploaded = sorted(f.time_ms - T0 for b in got.values() for f in b.fixes)
    # the first fix, the parking spot at 5 s, one a minute, and the 3 s before the cut as evidence
    assert uploaded == [0, 5000, 65_000, 125_000, 147_000, 148_000, 149_000]
    assert [a.rule for b in got.values() for a in b.alerts] == ["power_cut"]
    assert agent.reporting.counters["reporting_fixes_in"] == 150
    assert agent.all_counters()["reporting_evidence_up"] == 3
