"""collector.settings: collector.toml + LIENWATCH_* environment into one typed object."""

from __future__ import annotations

from pathlib import Path

import pytest

from collector.cli import main
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


# ------------------------------------------------------------------ [risk] [webhooks] [retention] [downlink]


def test_loan_side_sections(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[risk]
model = "v1"
grace_days = 5
reassess_interval_s = 30
offline_hours = 72
market_rules = ["stationary_near_market", "parked_near_dealer"]
[webhooks]
urls = ["https://hooks.example.com/lienwatch"]
secret = "file-secret-0123456789"
retry_initial_s = 1
[retention]
fix_days = 30
fix_mode = "delete"
interval_s = 3600
[downlink]
signing_key = "keys/collector.key"
""",
    )
    secret = "env-secret-abcdefghijklmnop"
    settings = load_settings(path, environ={"LIENWATCH_WEBHOOKS_SECRET": secret, "LIENWATCH_RISK_LATE_STREAK": "2"})
    risk = settings.risk
    assert (risk.model, risk.grace_days, risk.reassess_interval_s) == ("v1", 5, 30.0)
    assert (risk.config.offline_hours, risk.config.late_streak, risk.config.dpd_call) == (72, 2, 30)
    assert risk.config.market_rules == frozenset({"stationary_near_market", "parked_near_dealer"})
    assert settings.webhooks.urls == ("https://hooks.example.com/lienwatch",)
    assert settings.webhooks.secret == secret  # the environment wins
    assert (settings.webhooks.retry_initial_s, settings.webhooks.max_attempts) == (1.0, 12)
    retention = settings.retention
    assert (retention.fix_days, retention.fix_mode, retention.record_years) == (30, "delete", 5)
    assert settings.retention.interval_s == 3600.0
    assert settings.downlink.signing_key == tmp_path / "keys" / "collector.key"
    assert secret not in repr(settings)
    assert "file-secret" not in repr(settings)


def test_loan_side_defaults() -> None:
    settings = load_settings(None, environ={})
    assert (settings.risk.model, settings.risk.grace_days, settings.risk.reassess_interval_s) == ("v2", 3, 60.0)
    assert settings.webhooks.urls == ()
    assert settings.webhooks.secret is None
    assert settings.retention.interval_s == 86_400.0  # first run one day after start
    assert settings.downlink.signing_key is None


def test_lists_from_the_environment() -> None:
    settings = load_settings(
        None,
        environ={
            "LIENWATCH_WEBHOOKS_URLS": "http://127.0.0.1:9000/a, http://127.0.0.1:9000/b",
            "LIENWATCH_WEBHOOKS_SECRET": "0123456789abcdef",
            "LIENWATCH_RISK_GNSS_RULES": "gnss_jamming",
        },
    )
    assert settings.webhooks.urls == ("http://127.0.0.1:9000/a", "http://127.0.0.1:9000/b")
    assert settings.risk.config.gnss_rules == frozenset({"gnss_jamming"})


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("[risk]\nofline_hours = 3\n", {}, "unknown setting(s) in [risk]: ofline_hours"),
        ("[risk]\noffline_hours = 0\n", {}, "risk offline_hours=0 must be a number in [1, 2160]"),
        ("[risk]\ndpd_call = 100\n", {}, "dpd_on_site=90 must be >= dpd_call=100"),
        ("[risk]\nmarket_rules = 3\n", {}, "[risk] market_rules must be a list of rule names"),
        ("[risk]\ngrace_days = 99\n", {}, "risk.grace_days=99 is outside [0, 60]"),
        ("[risk]\nmodel = 'v3'\n", {}, "risk.model='v3' is not one of v2, v1"),
        ("", {"LIENWATCH_RISK_MODEL": "rules"}, "risk.model='rules' is not one of v2, v1"),
        ("", {"LIENWATCH_RISK_OFFLINE_HOURS": "soon"}, "risk.offline_hours='soon' is not a valid float"),
        ("[webhooks]\nurls = ['ftp://x/y']\n", {"LIENWATCH_WEBHOOKS_SECRET": "0123456789abcdef"},
         "must be an absolute http(s) URL"),
        ("[webhooks]\nurls = ['http://x/y']\n", {}, "webhooks.secret must be set"),
        ("[webhooks]\nurls = ['http://x/y']\nsecret = 'short'\n", {}, "webhooks.secret must be set (at least 16"),
        ("[webhooks]\nurls = [1]\n", {}, "webhooks.urls=[1] is not a valid tuple"),
        ("[retention]\nfix_mode = 'shred'\n", {}, "fix_mode='shred' must be 'summarize' or 'delete'"),
        ("[retention]\nfix_days = 0\n", {}, "fix_days=0 must be an int in 1..3650"),
        ("[downlink]\nkey = 'x'\n", {}, "unknown setting(s) in [downlink]: key"),
    ],
)
def test_bad_loan_side_settings(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert message in str(info.value)


def test_secret_is_never_in_an_error_message(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, "[webhooks]\nurls = ['http://x/y']\nsecret = 'tiny-secret'\n"), environ={})
    assert "tiny-secret" not in str(info.value)


# ------------------------------------------------------------------ one typed load: keys, types, variables


@pytest.mark.parametrize(
    ("text", "env", "named"),
    [
        ("[mqtt]\nprot = 1883\n", {}, "prot"),  # unknown key in a file
        ("[risk]\nreassess_interval_s = 'soon'\n", {}, "risk.reassess_interval_s='soon'"),  # wrong type
        ("", {"LIENWATCH_MQQT_PORT": "x"}, "LIENWATCH_MQQT_PORT"),  # unknown variable
        ("", {"LIENWATCH_MQTT_PROT": "1883"}, "LIENWATCH_MQTT_PROT"),  # unknown key of a known section
        ("", {"LIENWATCH_COLOUR": "red"}, "LIENWATCH_COLOUR"),
    ],
)
def test_unknown_key_wrong_type_and_unknown_variable_are_refused(
    tmp_path: Path, text: str, env: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), environ=env)
    assert named in str(info.value)


def test_a_misspelled_variable_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"LIENWATCH_MQQT_PORT \(did you mean LIENWATCH_MQTT_PORT\?\)"):
        load_settings(None, environ={"LIENWATCH_MQQT_PORT": "x"})


def test_other_programs_variables_are_left_alone() -> None:
    env = {
        "LIENWATCH_AGENT_MQTT_PORT": "1",
        "LIENWATCH_HIL_SECONDS": "60",
        "LIENWATCH_TEST_POSTGRES_URL": "postgresql://x",
        "LIENWATCH_CONFIG": "collector.toml",
        "LIENWATCH_MQTT_PORT": "1884",
    }
    assert load_settings(None, environ=env).mqtt.port == 1884


def test_every_setting_has_its_variable() -> None:
    env = {
        "LIENWATCH_LOG_LEVEL": "debug",
        "LIENWATCH_LIMITS_DB_RETRY_MAX_S": "2m",
        "LIENWATCH_RISK_REASSESS_INTERVAL_S": "90s",
        "LIENWATCH_RISK_DPD_CALL": "20",
        "LIENWATCH_RETENTION_INTERVAL_S": "1d",
        "LIENWATCH_RETENTION_ENABLED": "off",
        "LIENWATCH_DOWNLINK_RESYNC_INTERVAL_S": "15",
    }
    settings = load_settings(None, environ=env)
    assert settings.log_level == "debug"
    assert settings.limits.db_retry_max_s == 120.0
    assert settings.risk.reassess_interval_s == 90.0
    assert settings.risk.config.dpd_call == 20
    assert (settings.retention.interval_s, settings.retention.enabled) == (86_400.0, False)
    assert settings.downlink.resync_interval_s == 15.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"LIENWATCH_RISK_REASSESS_INTERVAL_S": "5 minutes"},
            "risk.reassess_interval_s='5 minutes' is not a valid duration",
        ),
        ({"LIENWATCH_WEBHOOKS_TIMEOUT_S": "-1"}, "webhooks.timeout_s='-1' is not a valid duration"),
        ({"LIENWATCH_RETENTION_ENABLED": "maybe"}, "retention.enabled='maybe' is not a valid bool"),
    ],
)
def test_durations_and_booleans_from_the_environment_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(None, environ=env)
    assert message in str(info.value)


def test_the_command_line_refuses_an_unknown_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LIENWATCH_MQQT_PORT", "x")
    monkeypatch.setenv("LIENWATCH_DATA_DIR", str(tmp_path))
    assert main(["migrate"]) == 1
    assert "LIENWATCH_MQQT_PORT" in capsys.readouterr().err
    assert not (tmp_path / "collector.db").exists()
