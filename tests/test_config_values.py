"""protocol.config_values: the env/bool/duration coercion shared by the agent and the collector."""

from __future__ import annotations

import math

import pytest

from protocol.config_values import (
    BoolValueError,
    ConfigValueError,
    DurationValueError,
    UnknownVariableError,
    env_overrides,
    parse_bool,
    parse_duration,
)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        (1, True),
        (0, False),
        ("1", True),
        ("true", True),
        (" TRUE ", True),
        ("Yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        (" off", False),
    ],
)
def test_bool_words(value: object, expected: bool) -> None:
    assert parse_bool(value) is expected


@pytest.mark.parametrize("value", ["", "2", "truthy", "y", 2, -1, 1.0, None, [True]])
def test_bool_refuses_anything_else(value: object) -> None:
    with pytest.raises(BoolValueError, match="is not a boolean") as info:
        parse_bool(value)
    assert info.value.reason == "invalid_bool"
    assert isinstance(info.value, ConfigValueError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (90, 90.0),
        (2.5, 2.5),
        (0, 0.0),
        ("90", 90.0),
        (" 2.5 ", 2.5),
        ("1e3", 1000.0),
        ("90s", 90.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("7d", 604_800.0),
        ("1.5 h", 5400.0),
        ("250ms", 0.25),
        ("10S", 10.0),
        (".5s", 0.5),
    ],
)
def test_durations(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    assert isinstance(parse_duration(value), float)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "is not a duration"),
        ("5 minutes", "is not a duration"),
        ("5w", "is not a duration"),
        ("1h30m", "is not a duration"),
        ("s", "is not a duration"),
        (True, "is not a duration"),
        (None, "is not a duration"),
        ("-5", "negative duration"),
        (-1, "negative duration"),
        ("inf", "not a finite duration"),
        (math.nan, "not a finite duration"),
    ],
)
def test_duration_refusals_name_the_value(value: object, message: str) -> None:
    with pytest.raises(DurationValueError, match=message) as info:
        parse_duration(value)
    assert info.value.reason == "invalid_duration"
    assert repr(value)[:20] in str(info.value)


KNOWN = {"LIENWATCH_MQTT_PORT", "LIENWATCH_MQTT_HOST", "LIENWATCH_DATABASE_URL"}


def test_env_overrides_keeps_known_variables_and_ignores_the_rest() -> None:
    environ = {
        "PATH": "/bin",
        "LIENWATCH_MQTT_PORT": "1884",
        "LIENWATCH_DATABASE_URL": "sqlite://",
        "LIENWATCH_AGENT_MQTT_PORT": "1",  # another program's namespace
        "LIENWATCH_TEST_POSTGRES_URL": "x",
        "lienwatch_mqtt_port": "9",  # prefixes are case-sensitive, like the environment
    }
    found = env_overrides(environ, "LIENWATCH_", KNOWN, ignore_prefixes=("LIENWATCH_AGENT_", "LIENWATCH_TEST_"))
    assert found == {"LIENWATCH_MQTT_PORT": "1884", "LIENWATCH_DATABASE_URL": "sqlite://"}
    assert list(found) == ["LIENWATCH_MQTT_PORT", "LIENWATCH_DATABASE_URL"]


def test_env_overrides_names_every_unknown_variable_with_a_suggestion() -> None:
    environ = {"LIENWATCH_MQQT_PORT": "x", "LIENWATCH_COLOUR": "red", "LIENWATCH_MQTT_HOST": "h"}
    with pytest.raises(UnknownVariableError) as info:
        env_overrides(environ, "LIENWATCH_", KNOWN)
    message = str(info.value)
    assert "LIENWATCH_MQQT_PORT (did you mean LIENWATCH_MQTT_PORT?)" in message
    assert "LIENWATCH_COLOUR" in message
    assert info.value.names == ("LIENWATCH_COLOUR", "LIENWATCH_MQQT_PORT")
    assert info.value.reason == "unknown_variable"
    assert isinstance(info.value, ConfigValueError)


def test_env_overrides_with_an_agent_prefix() -> None:
    environ = {"LIENWATCH_AGENT_MQTT_PASWORD": "s", "LIENWATCH_MQTT_PORT": "1"}
    with pytest.raises(UnknownVariableError, match="LIENWATCH_AGENT_MQTT_PASWORD"):
        env_overrides(environ, "LIENWATCH_AGENT_", {"LIENWATCH_AGENT_MQTT_PASSWORD"})
    assert env_overrides(
        {"LIENWATCH_AGENT_MQTT_PASSWORD": "s"}, "LIENWATCH_AGENT_", {"LIENWATCH_AGENT_MQTT_PASSWORD"}
    ) == {"LIENWATCH_AGENT_MQTT_PASSWORD": "s"}


def test_env_overrides_empty_environment() -> None:
    assert env_overrides({}, "LIENWATCH_", KNOWN) == {}
