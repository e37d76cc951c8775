"""agent.toml: one typed settings object, strict keys, env overrides, resolved paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge import _agent_cli, keys
from edge.config import ConfigError, load_config, parse_config, validate_delegated_sections

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
    assert config.gnss["url"] == "/dev/ttyS1"
    notes = validate_delegated_sections(config)
    assert notes == [
        "[rules] ok (1 markets, 1 regions)",
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
    assert dict(config.rules) == {}


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


def test_delegated_sections_are_checked_by_their_owners(tmp_path: Path) -> None:
    config = parse_config({"device": {"id": "a", "key_file": "k"}, "rules": {"max_hdop": -1}}, tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"\[rules\] rejected: .*max_hdop"):
        validate_delegated_sections(config)
    raw = {"device": {"id": "a", "key_file": "k"}, "gnss": {"url": "x", "speed": 1}}
    config = parse_config(raw, tmp_path, environ={})
    with pytest.raises(ConfigError, match=r"\[gnss\] rejected: .*speed"):
        validate_delegated_sections(config)
    config = parse_config(
        {"device": {"id": "a", "key_file": "k"}, "can": {"interface": "virtual", "channel": "x", "dbc": ["nope.dbc"]}},
        tmp_path,
        environ={},
    )
    with pytest.raises(ConfigError, match=r"\[can\] rejected"):
        validate_delegated_sections(config)


def test_agent_check_prints_the_resolved_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, MINIMAL)
    keys.generate(tmp_path / "k", "car-7")  # `check` checks the key file as `run` does
    assert _agent_cli.main(["check", "--config", str(path)]) == 0
    out, err = capsys.readouterr()
    resolved = json.loads(out)
    assert resolved["device"]["key_file"] == str(tmp_path.resolve() / "k" / "car-7.key")
    assert resolved["outbox"]["max_bytes"] == 67108864
    assert "[rules] ok" in err
    bad = write(tmp_path, MINIMAL + "[mqtt]\nhots = 1\n")
    assert _agent_cli.main(["check", "--config", str(bad)]) == 2
    assert "unknown key 'hots'" in capsys.readouterr().err
