"""collector.settings: collector.toml + LIENWATCH_* environment into one typed object."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.errors import ConfigError
from collector.settings import Limits, MqttSettings, Settings, hash_api_key, load_settings

DOCS_EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "collector.toml"
ADMIN_KEY = "demo-admin-key-0123456789"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    settings = load_settings(None, environ={})
    assert settings.database_url is None
    assert settings.resolved_database_url == f"sqlite:///{(Path.cwd() / 'collector-data' / 'collector.db')}"
    assert (settings.mqtt.host, settings.mqtt.port, settings.mqtt.group) == ("127.0.0.1", 1883, "collectors")
    assert settings.mqtt.client_id.startswith("lw-collector-")
    assert settings.limits == Limits()
    assert settings.api_keys == {}


def test_file_then_environment(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
data_dir = "state"
[mqtt]
host = "broker.internal"
port = 8883
tls = true
ca_file = "ca.pem"
[api]
port = 9000
[limits]
key_cache_ttl_s = 0.5
[api_keys]
"{ADMIN_KEY}" = "admin"
"sha256:{"ab" * 32}" = "auditor"
""",
    )
    env = {
        "LIENWATCH_MQTT_PORT": "1884",
        "LIENWATCH_MQTT_CLIENT_ID": "collector-7",
        "LIENWATCH_DATABASE_URL": "postgresql+psycopg://lw@db/lw",
        "LIENWATCH_LIMITS_MAX_MESSAGE_BYTES": "65536",
        "LIENWATCH_MQTT_TLS": "false",
        "OTHER": "ignored",
    }
    settings = load_settings(path, environ=env)
    assert settings.data_dir == tmp_path / "state"
    assert settings.mqtt == MqttSettings(
        host="broker.internal", port=1884, client_id="collector-7", tls=False, ca_file=tmp_path / "ca.pem"
    )
    assert settings.api.port == 9000
    assert settings.resolved_database_url == "postgresql+psycopg://lw@db/lw"
    assert (settings.limits.key_cache_ttl_s, settings.limits.max_message_bytes) == (0.5, 65536)
    assert settings.api_keys == {hash_api_key(ADMIN_KEY): "admin", "ab" * 32: "auditor"}
    assert ADMIN_KEY not in repr(settings)


def test_api_keys_from_the_environment() -> None:
    settings = load_settings(None, environ={"LIENWATCH_API_KEYS": f"{ADMIN_KEY}=admin, sha256:{'cd' * 32}=collections"})
    assert settings.api_keys == {hash_api_key(ADMIN_KEY): "admin", "cd" * 32: "collections"}


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[mqtt]\nprot = 1\n", {}, "unknown setting(s) in [mqtt]: prot"),
        ("colour = 1\n", {}, "unknown setting(s) in"),
        ("[mqtt]\nport = 'x'\n", {}, "mqtt.port='x' is not a valid int"),
        ("[mqtt]\nport = 70000\n", {}, "mqtt.port=70000 is outside [1, 65535]"),
        ("", {"LIENWATCH_MQTT_TLS": "maybe"}, "mqtt.tls='maybe' is not a valid bool"),
        ("[mqtt]\ngroup = 'a/b'\n", {}, "mqtt.group 'a/b' must match"),
        ("[limits]\nmax_message_bytes = true\n", {}, "is not a valid int"),
        ("[api_keys]\nshort = 'admin'\n", {}, "shorter than 16 characters"),
        (f"[api_keys]\n'{ADMIN_KEY}' = 'root'\n", {}, "role 'root' is not one of"),
        ("[api_keys]\n'sha256:xyz' = 'admin'\n", {}, "must be 64 lower-case hex digits"),
        ("mqtt = 3\n", {}, "[mqtt] must be a table"),
        ("[mqtt\n", {}, "is not valid TOML"),
        ("log_level = 'LOUD'\n", {}, "log_level 'LOUD' is not a logging level name"),
    ],
)
def test_bad_settings_name_the_input_and_the_limit(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read settings file"):
        load_settings(tmp_path / "nope.toml", environ={})


def test_documented_example_loads() -> None:
    settings = load_settings(DOCS_EXAMPLE, environ={})
    assert isinstance(settings, Settings)
    assert set(settings.api_keys.values()) == {"admin", "risk_analyst", "collections", "auditor"}
    assert settings.mqtt.group == "collectors"
