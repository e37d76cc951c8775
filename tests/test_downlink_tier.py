"""The risk tier over the signed downlink (docs/protocol.md section 6, issue 15): the collector
builds a ``tier`` section from the loan's customer tier, the agent applies it to its batch
interval, ignores (and counts) sections it does not know, and refuses malformed, forged,
truncated, oversized and replayed configurations with a counted reason."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.jobs.downlink import build_device_configs, devices_needing_config
from collector.loans.csv_import import import_loans, parse_loans
from collector.risk.assessment import reassess_loan
from collector.storage.database import create_engine, migrate
from collector.storage.places import delete_place, upsert_places
from collector.storage.tables import ConfigVersion, RiskStateRecord
from edge.agent import Agent
from edge.config import load_config
from edge.sequence import provision_sequence
from protocol import DeviceConfig, config_topic, open_config, seal_config
from protocol.cli.key_files import generate, load_private_key
from protocol.errors import TierSectionError
from protocol.tier_section import TierSection, load_tier_section
from tests.agent_harness import ScriptedEngine

SAMPLE_LOANS = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000  # 2026-11-28T09:00:00Z
DEVICE = "tbox-0003"  # L-1003: one instalment late and unpaid -> tier "risk"
JIADING = {"id": "sh-jiading-ucm", "name": "Demo used-car market (Shanghai Jiading)", "lat": 31.3, "lon": 121.25,
           "radius_m": 400.0, "datum": "gcj02"}


# ------------------------------------------------------------------ the section itself


def test_tier_section_round_trip_and_unknown_keys_ignored() -> None:
    section = load_tier_section({"name": "risk", "batch_interval_s": 60, "fix_interval_s": 10})
    assert section == TierSection("risk", 60)
    assert section.as_dict() == {"name": "risk", "batch_interval_s": 60}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ([], "must be a map"),
        ("risk", "must be a map"),
        ({"name": "risk"}, "lacks ['batch_interval_s']"),
        ({"batch_interval_s": 60}, "lacks ['name']"),
        ({"name": "Risk!", "batch_interval_s": 60}, "must match"),
        ({"name": "x" * 33, "batch_interval_s": 60}, "must match"),  # oversized
        ({"name": 7, "batch_interval_s": 60}, "must match"),
        ({"name": "risk", "batch_interval_s": 9}, "must be a number in [10, 86400]"),
        ({"name": "risk", "batch_interval_s": 86_401}, "must be a number in [10, 86400]"),
        ({"name": "risk", "batch_interval_s": True}, "must be a number"),
        ({"name": "risk", "batch_interval_s": "60"}, "must be a number"),
        ({"name": "risk", "batch_interval_s": math.nan}, "must be a number"),
        ({"name": "risk", "batch_interval_s": 2**70}, "must be a number"),
    ],
)
def test_malformed_tier_sections_are_refused_with_a_typed_error(section: object, message: str) -> None:
    with pytest.raises(TierSectionError) as info:
        load_tier_section(section)
    assert message in str(info.value)
    assert info.value.reason == "bad_tier_section"


# ------------------------------------------------------------------ collector side


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    db = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(db)
    with Session(db) as session:
        import_loans(session, parse_loans(SAMPLE_LOANS.read_text(encoding="utf-8")), now_ms=NOW)
        session.commit()
    yield db
    db.dispose()


@pytest.fixture
def collector_key(tmp_path: Path) -> Any:
    pair = generate(tmp_path / "keys", "collector")
    return load_private_key(pair.private_path)


def test_the_collector_signs_each_loans_tier_and_re_signs_when_it_changes(
    engine: sa.Engine, collector_key: Any
) -> None:
    with Session(engine) as session:
        assert devices_needing_config(session) == []  # no markets, no tiers: devices keep their own files
        for loan in ("L-1001", "L-1003"):
            reassess_loan(session, loan, NOW)
        session.commit()
        assert devices_needing_config(session) == ["tbox-0001", "tbox-0003"]
        messages = {m.device_id: m for m in build_device_configs(session, collector_key, ["tbox-0001", DEVICE], NOW)}
        session.commit()
        assert devices_needing_config(session) == []
        risk = open_config(messages[DEVICE].payload, config_topic(DEVICE), collector_key.public_key())
        assert risk.body == {"tier": {"name": "risk", "batch_interval_s": 60}}  # no markets section: local file stays
        new = open_config(messages["tbox-0001"].payload, config_topic("tbox-0001"), collector_key.public_key())
        assert new.body == {"tier": {"name": "new", "batch_interval_s": 600}}
        assert session.get(ConfigVersion, DEVICE).tier == "risk"  # type: ignore[union-attr]

        # A later assessment puts L-1003 in another tier: its device (only) is signed again.
        state = session.get(RiskStateRecord, "L-1003")
        assert state is not None
        state.tier = "minor_lates_cured"
        state.assessment = {**state.assessment, "monitoring": {"fix_interval_s": 60, "batch_interval_s": 600,
                                                               "review_days": 30}}
        session.commit()
        assert devices_needing_config(session) == [DEVICE]

        # Places appear: every target needs the whole body, tier sections included.
        upsert_places(session, [JIADING | {"type": "used_car_market"}], now_ms=NOW + 1)
        session.commit()
        assert DEVICE in devices_needing_config(session)
        again = build_device_configs(session, collector_key, [DEVICE], NOW + 2)[0]
        body = open_config(again.payload, config_topic(DEVICE), collector_key.public_key()).body
        assert body == {"places": [JIADING | {"type": "used_car_market"}], "markets": [JIADING],
                        "tier": {"name": "minor_lates_cured", "batch_interval_s": 600}}
        # The last place deleted: empty lists go with the tier (the collector has had places).
        delete_place(session, "sh-jiading-ucm", now_ms=NOW + 3)
        latest = build_device_configs(session, collector_key, devices_needing_config(session), NOW + 3)
        bodies = {m.device_id: open_config(m.payload, m.topic, collector_key.public_key()).body for m in latest}
        assert (bodies[DEVICE]["places"], bodies[DEVICE]["markets"]) == ([], [])
        assert bodies["tbox-0001"]["places"] == []
        session.commit()

        # A stored policy the section refuses: no tier section, logged, and not re-signed every round.
        state = session.get(RiskStateRecord, "L-1001")
        assert state is not None
        state.tier = "risk"
        state.assessment = {**state.assessment, "monitoring": {"batch_interval_s": "often"}}
        session.commit()
        assert devices_needing_config(session) == ["tbox-0001"]
        refused = build_device_configs(session, collector_key, ["tbox-0001"], NOW + 4)[0]
        session.commit()
        assert "tier" not in open_config(refused.payload, refused.topic, collector_key.public_key()).body
        assert devices_needing_config(session) == []


# ------------------------------------------------------------------ agent side, end to end in process


def agent_for(tmp_path: Path, device: str) -> Agent:
    path = tmp_path / "agent.toml"
    first = not path.exists()
    if first:
        generate(tmp_path / "keys", device)
    path = tmp_path / "agent.toml"
    path.write_text(f"""
[device]
id = "{device}"
key_file = "keys/{device}.key"
snapshot_interval_s = 3600
[batch]
max_age_s = 120
max_age_active_s = 10
[mqtt]
port = 1
[downlink]
collector_public_key = "keys/collector.pub"
""")
    config = load_config(path, environ={})
    if first:
        config.device.data_dir.mkdir(parents=True, exist_ok=True)
        provision_sequence(config.device.data_dir / "sequence")
    return Agent(config, engine=ScriptedEngine(), sources={})


def test_the_agent_applies_the_tier_ignores_unknown_sections_and_refuses_bad_ones(
    engine: sa.Engine, collector_key: Any, tmp_path: Path
) -> None:
    with Session(engine) as session:
        reassess_loan(session, "L-1003", NOW)
        session.commit()
        signed = build_device_configs(session, collector_key, [DEVICE], NOW)[0]
        session.commit()
    agent = agent_for(tmp_path, DEVICE)
    try:
        assert agent.gate is not None
        downlink = agent._downlink
        assert downlink is not None
        assert agent.batcher.settings.max_age_s == 120  # the local [batch]
        topic = config_topic(DEVICE)

        downlink.handle(topic, signed.payload)  # what the collector built, as published
        assert agent.gate.version == signed.version
        assert (agent.tier, agent.batcher.settings.max_age_s) == (TierSection("risk", 60), 60)
        assert agent.batcher.settings.max_age_active_s == 10

        # A newer collector's body: the unknown sections are ignored and counted, the rest applies.
        newer = DeviceConfig(DEVICE, signed.version + 1, NOW, {
            "tier": {"name": "on_time_12m", "batch_interval_s": 3600, "fix_interval_s": 300},
            "future": {"enabled": True}, "later": {"next": "x"}})
        downlink.handle(topic, seal_config(newer, collector_key, topic))
        assert agent.gate.version == newer.version
        assert agent.gate.counters["config_unknown_sections"] == 2
        assert agent.batcher.settings.max_age_s == 3600

        def rejected(reason: str) -> int:
            assert agent.gate is not None
            return agent.gate.counters.get(f"config_rejected_{reason}", 0)

        # Malformed tier: the whole body is refused (counted), the tier in force stays.
        bad = DeviceConfig(DEVICE, newer.version + 1, NOW, {"tier": {"name": "risk", "batch_interval_s": 1}})
        downlink.handle(topic, seal_config(bad, collector_key, topic))
        assert rejected("invalid_body") == 1
        assert (agent.gate.version, agent.batcher.settings.max_age_s) == (newer.version, 3600)
        # Forged (another key), truncated, oversized, replayed: refused with their reasons.
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        forged = DeviceConfig(DEVICE, newer.version + 2, NOW, {"tier": {"name": "risk", "batch_interval_s": 10}})
        downlink.handle(topic, seal_config(forged, Ed25519PrivateKey.generate(), topic))
        assert rejected("bad_signature") == 1
        good_next = seal_config(DeviceConfig(DEVICE, newer.version + 3, NOW, {}), collector_key, topic)
        downlink.handle(topic, good_next[:-7])
        downlink.handle(topic, good_next + b"\x00" * 300_000)
        downlink.handle(topic, signed.payload)  # an older genuine configuration replayed
        assert rejected("stale_version") == 1
        assert agent.gate.counters["config_rejected"] == 5
        assert agent.batcher.settings.max_age_s == 3600

        # After a restart the stored configuration applies again, its tier included.
        agent.outbox.close()
        agent = agent_for(tmp_path, DEVICE)
        assert agent.gate is not None
        assert agent.gate.version == newer.version
        assert agent.batcher.settings.max_age_s == 3600
        downlink = agent._downlink
        assert downlink is not None

        # A body without a tier section puts the local [batch] back.
        downlink.handle(topic, good_next)
        assert (agent.gate.version, agent.tier, agent.batcher.settings.max_age_s) == (newer.version + 3, None, 120)
    finally:
        agent.outbox.close()
