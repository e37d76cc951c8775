"""agent.toml: one typed settings object, strict keys, env overrides, resolved paths."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from edge.cli import agent as agent_cli
from edge.cli.agent import validate_delegated_sections
from edge.config import ConfigError, load_config, parse_config
from edge.rules import RulesConfig
from protocol.cli import key_files as keys

DOCS = Path(__file__).resolve().parent.parent / "docs"

MINIMAL = """
[device]
id = "car-7"
key_file = "k/car-7.key"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_documented_example_loads_with_every_owner_agreeing() -> None:
    config = load_config(DOCS / "agent.toml", environ={})
    assert config.device.id == "car-0042"
    assert config.device.key_file == DOCS / "keys" / "car-0042.key"
    assert config.outbox.path == DOCS / "data" / "outbox.db"
    assert config.outbox.max_bytes == 64 * 1024 * 1024
    assert config.batch.max_age_s == 60.0
    assert config.batch.max_age_active_s == 10.0
    assert config.mqtt.client_id == "car-0042"
    assert config.downlink.enabled is False
    assert config.gnss is not None
    assert config.gnss.url == "/dev/ttyS1"
    # the #17 sections parse into the rules' typed settings (docs/agent.toml lists every key)
    assert config.rules.stationary_near_market.threshold("pawn_lot") == (86400.0, "high")
    assert (config.rules.hv_disconnect.missing_after_s, config.rules.soh_drop.max_drop_percent) == (240.0, 5.0)
    assert (config.rules.relocation.away_nights, config.rules.relocation.far_km) == (10, 300.0)
    notes = validate_delegated_sections(config)
    assert notes == [
        "[rules] ok (2 markets, 1 regions)",
        "[can] ok (DBC and signal map load; the bus is opened at run time)",
        "[gnss] ok (url /dev/ttyS1, opened at run time)",
    ]


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={})
    base = tmp_path.resolve()
    assert config.base_dir == base
    assert config.device.key_file == base / "k" / "car-7.key"
    assert config.device.data_dir == base / "data"
    assert config.outbox.path == base / "data" / "outbox.db"
    assert config.downlink.state_file == base / "data" / "downlink.cose"
    assert config.mqtt.host == "127.0.0.1"
    assert config.mqtt.port == 1883
    assert config.mqtt.client_id == "car-7"
    assert config.mqtt.inflight == 10
    assert config.outbox.seq_block == 16
    assert config.gnss is None
    assert config.can is None
    assert config.rules == RulesConfig()


def test_environment_overrides_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '[mqtt]\nusername = "car-7"\n')
    env = {"LIENWATCH_AGENT_MQTT_PASSWORD": "s3cret", "LIENWATCH_AGENT_MQTT_PORT": "8883", "OTHER": "x"}
    config = load_config(path, environ=env)
    assert config.mqtt.password == "s3cret"
    assert config.mqtt.port == 8883
    assert "s3cret" not in repr(config.mqtt)
    assert config.resolved()["mqtt"]["password"] == "***"


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (MINIMAL + "[mqtt]\nhots = 'x'\n", {}, "[mqtt] has unknown key 'hots'"),
        (MINIMAL + "[device2]\n", {}, "unknown section(s) ['device2']"),
        (MINIMAL, {"LIENWATCH_AGENT_MQTT_PASWORD": "x"}, "LIENWATCH_AGENT_MQTT_PASWORD names no agent setting"),
        ('[device]\nid = "car-7"\n', {}, "[device] key_file is required"),
        ('[device]\nid = "car 7"\nkey_file = "k"\n', {}, "[device] id"),
        (MINIMAL + "[mqtt]\nport = 70000\n", {}, "[mqtt] port=70000 must be in [1, 65535]"),
        (MINIMAL + "[mqtt]\nport = 'abc'\n", {}, "[mqtt] port must be an integer"),
        (MINIMAL, {"LIENWATCH_AGENT_MQTT_TLS": "maybe"}, "[mqtt] tls must be true or false"),
        (MINIMAL + "[mqtt]\nca_file = 'ca.pem'\n", {}, "need tls = true"),
        (MINIMAL + "[mqtt]\ntls = true\ncert_file = 'c.pem'\n", {}, "cert_file and key_file go together"),
        (MINIMAL + "[mqtt]\npassword = 'x'\n", {}, "password without username"),
        (MINIMAL + "[batch]\nmax_age_s = 0\n", {}, "[batch] max_age_s=0.0 must be a positive number"),
        (MINIMAL + "[batch]\nmax_fixes = 99999\n", {}, "[batch] max_fixes=99999 must be in [1, 36000]"),
        (MINIMAL + "[outbox]\nmax_bytes = 10\n", {}, "[outbox] max_bytes=10"),
        (MINIMAL + "[mqtt]\nbackoff_min_s = 5\nbackoff_max_s = 1\n", {}, "backoff_max_s=1.0 is below"),
        ("gnss = 3\n" + MINIMAL, {}, "[gnss] must be a table"),
        (MINIMAL + "[device.x]\n", {}, "[device] has unknown key 'x'"),
        (MINIMAL + "[device]\n", {}, "not valid TOML"),
        (MINIMAL + "[device2", {}, "not valid TOML"),
        (MINIMAL.replace('"car-7"', "7"), {}, "[device] id must be a string"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ=env)
    assert message in str(info.value)


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read agent config"):
        load_config(tmp_path / "missing.toml", environ={})


def test_every_section_is_parsed_by_the_one_loader(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[rules\] rejected: .*max_hdop"):
        parse_config({"device": {"id": "a", "key_file": "k"}, "rules": {"max_hdop": -1}}, tmp_path, environ={})
    raw = {"device": {"id": "a", "key_file": "k"}, "gnss": {"url": "x", "speed": 1}}
    with pytest.raises(ConfigError, match=r"\[gnss\] has unknown key 'speed'"):
        parse_config(raw, tmp_path, environ={})
    raw = {"device": {"id": "a", "key_file": "k"}, "rules": {"power_cut": {"min_voltage_v": "9"}}}
    with pytest.raises(ConfigError, match=r"\[rules\] rejected: .*power_cut.min_voltage_v must be a finite number"):
        parse_config(raw, tmp_path, environ={})


def test_files_named_by_sections_are_checked_without_opening_devices(tmp_path: Path) -> None:
    raw = {"device": {"id": "a", "key_file": "k"}, "rules": {"markets_file": "missing.toml"}}
    config = parse_config(raw, tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"\[rules\] rejected: cannot read markets file"):
        validate_delegated_sections(config)
    can = {"interface": "virtual", "channel": "x", "dbc": ["nope.dbc"], "signal_map": "map.toml"}
    config = parse_config({"device": {"id": "a", "key_file": "k"}, "can": can}, tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"\[can\] rejected: .*nope\.dbc"):
        validate_delegated_sections(config)


def test_agent_check_prints_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL)
    keys.generate(tmp_path / "k", "car-7")  # `check` checks the key file as `run` does
    assert agent_cli.main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    resolved = json.loads(out)
    assert resolved["device"]["key_file"] == str(tmp_path.resolve() / "k" / "car-7.key")
    assert resolved["outbox"]["max_bytes"] == 67108864
    assert "[rules] ok" in err
    bad = write(tmp_path, MINIMAL + "[mqtt]\nhots = 1\n")
    assert agent_cli.main(["check", "--config", str(bad)]) == 2
    assert "unknown key 'hots'" in capsys.readouterr().err


# ------------------------------------------------------------------ issue #11: one typed load, refusals name the key


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        (MINIMAL + "[mqtt]\nprot = 1883\n", {}, "[mqtt] has unknown key 'prot'"),
        (MINIMAL + "[can]\ndbc = 'a.dbc'\nsignal_map = 'm.toml'\nbitrte = 5\n", {}, "[can] has unknown key 'bitrte'"),
        (MINIMAL + "[rules.power_cut]\nmin_voltag_v = 9.0\n", {}, "unknown key rules.power_cut.min_voltag_v"),
        (MINIMAL + "[mqtt]\nport = '1883'\n", {}, "[mqtt] port must be an integer, got '1883'"),
        (MINIMAL + "[gnss]\nurl = 'loop://'\nbaud = 9600.5\n", {}, "[gnss] baud must be an integer"),
        (MINIMAL + "[rules]\nmin_sats = 'four'\n", {}, "rules.min_sats must be an integer"),
        (MINIMAL, {"LIENWATCH_AGENT_MQQT_PORT": "1884"}, "LIENWATCH_AGENT_MQQT_PORT names no agent setting"),
        (MINIMAL, {"LIENWATCH_AGENT_MQTT_PORT": "high"}, "[mqtt] port (from LIENWATCH_AGENT_MQTT_PORT) must be an"),
        (MINIMAL, {"LIENWATCH_AGENT_BATCH_MAX_AGE_S": "soon"}, "[batch] max_age_s must be a duration"),
    ],
)
def test_unknown_key_wrong_type_and_unknown_variable_are_refused_by_name(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ=env)
    assert message in str(info.value)


def test_environment_durations_and_the_suggested_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, MINIMAL), environ={"LIENWATCH_AGENT_BATCH_MAX_AGE_S": "2m"})
    assert config.batch.max_age_s == 120.0
    with pytest.raises(ConfigError, match="did you mean LIENWATCH_AGENT_MQTT_PORT"):
        load_config(write(tmp_path, MINIMAL), environ={"LIENWATCH_AGENT_MQTT_PROT": "1"})


def test_replay_reads_the_same_file_with_the_same_parsers(tmp_path: Path) -> None:
    from edge.config import load_replay_config

    path = write(tmp_path, "[rules]\nmax_hdop = 3.0\n[can]\ndbc = 'car.dbc'\nsignal_map = 'map.toml'\n")
    config = load_replay_config(path)
    assert config.rules.max_hdop == 3.0
    assert config.can is not None
    assert config.can.dbc == (tmp_path.resolve() / "car.dbc",)
    with pytest.raises(ConfigError, match=r"\[can\] has unknown key 'dbcs'"):
        load_replay_config(write(tmp_path, "[can]\ndbcs = 'car.dbc'\n"))
    with pytest.raises(ConfigError, match=r"unknown section\(s\) \['rule'\]"):
        load_replay_config(write(tmp_path, "[rule]\n"))


# ------------------------------------------------------------------ issue #18: check refuses what run refuses


def test_agent_check_refuses_a_missing_or_world_readable_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, MINIMAL)
    assert agent_cli.main(["check", "--config", str(path)]) == 2
    assert "car-7.key" in capsys.readouterr().err
    generated = keys.generate(tmp_path / "k", "car-7")
    generated.private_path.chmod(0o644)
    assert agent_cli.main(["check", "--config", str(path)]) == 2
    assert "car-7.key" in capsys.readouterr().err
    generated.private_path.chmod(0o600)
    assert agent_cli.main(["check", "--config", str(path)]) == 0
    assert not (tmp_path / "data").exists()  # check makes nothing


def test_agent_check_refuses_a_data_dir_it_cannot_make(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys.generate(tmp_path / "k", "car-7")
    (tmp_path / "a-file").write_text("")
    path = write(tmp_path, MINIMAL + 'data_dir = "a-file/data"\n')
    assert agent_cli.main(["check", "--config", str(path)]) == 2
    assert "[device] data_dir" in capsys.readouterr().err
    path = write(tmp_path, MINIMAL + 'data_dir = "a-file"\n')
    assert agent_cli.main(["check", "--config", str(path)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err


def test_agent_run_that_fails_on_its_key_makes_no_data_folder(tmp_path: Path) -> None:
    """``agent run --config docs/agent.toml`` (no key there) once made docs/data/ before failing."""
    shipped = Path(__file__).parents[1] / "docs" / "agent.toml"
    path = tmp_path / "agent.toml"
    path.write_text(shipped.read_text())
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level  # `run` installs its own log handler
    try:
        assert agent_cli.main(["run", "--config", str(path)]) == 1
    finally:
        root.handlers[:], root.level = handlers, level
    assert sorted(p.name for p in tmp_path.iterdir()) == ["agent.toml"]
