"""The collector's one typed settings object: collector.toml + ``LIENWATCH_*`` environment.

How this works: :func:`load_settings` reads the TOML file (if any), lays the environment
over it (``LIENWATCH_{FIELD}`` for top-level fields, ``LIENWATCH_{SECTION}_{FIELD}`` for
fields of a section, e.g. ``LIENWATCH_MQTT_PORT``), and builds frozen dataclasses whose
field annotations drive the type coercion. Unknown keys are errors (a typo must not be
silently ignored). API keys are kept only as SHA-256 hashes: the file may give a plain key
(handy for a demo), which is hashed at load time and never kept.

FastAPI code takes the object through ``Depends(get_settings)``; ``create_app(settings)``
overrides that dependency, and tests override it the same way.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import socket
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = [
    "ENV_PREFIX",
    "ROLES",
    "ApiSettings",
    "Limits",
    "MqttSettings",
    "Settings",
    "get_settings",
    "hash_api_key",
    "load_settings",
]

ENV_PREFIX = "LIENWATCH_"
#: Roles a bearer API key can carry (see collector.auth).
ROLES = ("admin", "risk_analyst", "collections", "auditor")
_HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_MQTT_GROUP = re.compile(r"[A-Za-z0-9_-]{1,64}")


def hash_api_key(key: str) -> str:
    """Return the stored form of an API key: lower-case hex SHA-256 of its UTF-8 bytes.

    API keys are long random tokens, so a fast hash is enough: nothing to brute-force.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def _default_client_id() -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:40] or "host"
    return f"lw-collector-{host}"


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """``[mqtt]``: how the ingest connects to the broker.

    Attributes:
        host: broker host.
        port: broker port.
        group: shared-subscription group; every collector in one group splits the stream.
        client_id: stable client id of this process (persistent session); unique per process.
        keepalive_s: MQTT keepalive.
        session_expiry_s: how long the broker keeps the session (and its unacked messages)
            while this collector is away.
        receive_maximum: in-flight window granted to the broker (MQTT 5 Receive Maximum).
        tls: connect with TLS.
        ca_file: CA bundle for TLS (system default when unset).
        cert_file: client certificate for mutual TLS.
        key_file: client key for mutual TLS.
        username: MQTT user name.
        password: MQTT password.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    group: str = "collectors"
    client_id: str = field(default_factory=_default_client_id)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86_400
    receive_maximum: int = 100
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = None

    def __post_init__(self) -> None:
        _check_range("mqtt.port", self.port, 1, 65_535)
        _check_range("mqtt.keepalive_s", self.keepalive_s, 5, 3_600)
        _check_range("mqtt.session_expiry_s", self.session_expiry_s, 60, 2**32 - 1)
        _check_range("mqtt.receive_maximum", self.receive_maximum, 1, 65_535)
        if not _MQTT_GROUP.fullmatch(self.group):
            raise ConfigError(f"mqtt.group {self.group!r} must match [A-Za-z0-9_-]{{1,64}}")
        if not _MQTT_GROUP.fullmatch(self.client_id):
            raise ConfigError(f"mqtt.client_id {self.client_id!r} must match [A-Za-z0-9_-]{{1,64}}")


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """``[api]``: where the HTTP API listens."""

    host: str = "127.0.0.1"
    port: int = 8080

    def __post_init__(self) -> None:
        _check_range("api.port", self.port, 0, 65_535)


@dataclass(frozen=True, slots=True)
class Limits:
    """``[limits]``: what the ingest accepts and how it behaves under trouble.

    Attributes:
        max_message_bytes: messages above this size are dead-lettered before decoding.
        max_clock_skew_s: observation or batch times further than this in the future
            (collector clock) are dead-lettered as ``time_in_future``.
        dead_letter_keep_bytes: raw bytes kept per dead letter (the rest is cut, the
            original size is recorded).
        key_cache_ttl_s: how often (at most) the ingest checks the registry version; a
            revoke takes effect within this time. 0 checks before every message.
        db_retry_initial_s: first backoff when the database is unreachable.
        db_retry_max_s: backoff ceiling.
        sqlite_busy_timeout_ms: SQLite ``busy_timeout``.
    """

    max_message_bytes: int = 1 << 20
    max_clock_skew_s: int = 86_400
    dead_letter_keep_bytes: int = 2 << 20
    key_cache_ttl_s: float = 1.0
    db_retry_initial_s: float = 0.2
    db_retry_max_s: float = 10.0
    sqlite_busy_timeout_ms: int = 10_000

    def __post_init__(self) -> None:
        _check_range("limits.max_message_bytes", self.max_message_bytes, 64, 64 << 20)
        _check_range("limits.max_clock_skew_s", self.max_clock_skew_s, 0, 10 * 365 * 86_400)
        _check_range("limits.dead_letter_keep_bytes", self.dead_letter_keep_bytes, 0, 64 << 20)
        _check_range("limits.key_cache_ttl_s", self.key_cache_ttl_s, 0, 3_600)
        _check_range("limits.db_retry_initial_s", self.db_retry_initial_s, 0.001, 60)
        _check_range("limits.db_retry_max_s", self.db_retry_max_s, self.db_retry_initial_s, 3_600)
        _check_range("limits.sqlite_busy_timeout_ms", self.sqlite_busy_timeout_ms, 0, 600_000)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the collector reads from its configuration.

    Attributes:
        data_dir: where the default SQLite database lives.
        database_url: SQLAlchemy URL; unset means ``sqlite:///{data_dir}/collector.db``.
        log_level: Python logging level name.
        api_keys: SHA-256 hex of each bearer key -> role.
        mqtt: ``[mqtt]``.
        api: ``[api]``.
        limits: ``[limits]``.
    """

    data_dir: Path = Path("collector-data")
    database_url: str | None = None
    log_level: str = "INFO"
    api_keys: Mapping[str, str] = field(default_factory=dict)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        for digest, role in self.api_keys.items():
            if not _HEX64.fullmatch(digest):
                raise ConfigError(f"api key hash {digest[:16]!r}... must be 64 lower-case hex digits")
            if role not in ROLES:
                raise ConfigError(f"api key role {role!r} is not one of {', '.join(ROLES)}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level {self.log_level!r} is not a logging level name")

    @property
    def resolved_database_url(self) -> str:
        """``database_url`` if set, else the SQLite file in ``data_dir``."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'collector.db').resolve()}"


def _check_range(name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} is outside [{lo}, {hi}]")


_SECTIONS: dict[str, type] = {"mqtt": MqttSettings, "api": ApiSettings, "limits": Limits}


def _convert(value: Any, annotation: Any, base_dir: Path) -> Any:
    """Convert one value to a scalar type; ValueError when it does not fit."""
    if isinstance(value, bool) and annotation is not bool:
        raise ValueError(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).lower()
        if text not in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            raise ValueError(value)
        return text in ("1", "true", "yes", "on")
    if annotation in (int, float):
        return annotation(value)
    if annotation in (str, Path) and not isinstance(value, str):
        raise ValueError(value)
    if annotation is str:
        return value
    if annotation is Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    raise TypeError(f"unsupported setting type {annotation!r}")


def _coerce(name: str, value: Any, annotation: Any, base_dir: Path) -> Any:
    """Convert a TOML or environment value to the annotated field type."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if (value is None or value == "") and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
    try:
        return _convert(value, annotation, base_dir)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(annotation, '__name__', annotation)}") from exc


def _build(cls: type, section: str, raw: Mapping[str, Any], base_dir: Path) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) in [{section}]: {', '.join(unknown)}")
    kwargs = {key: _coerce(f"{section}.{key}", value, hints[key], base_dir) for key, value in raw.items()}
    return cls(**kwargs)


def _parse_api_keys(raw: object, where: str) -> dict[str, str]:
    """``{"sha256:<hex>" | "<plain key>": role}`` -> ``{hex: role}``."""
    if isinstance(raw, str):  # environment: "key=role,sha256:abc...=role"
        items: dict[str, object] = {}
        for part in filter(None, (p.strip() for p in raw.split(","))):
            key, sep, role = part.rpartition("=")
            if not sep or not key:
                raise ConfigError(f"{where}: entry {part[:12]!r}... must be KEY=ROLE")
            items[key] = role
        raw = items
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must map keys to roles")
    out: dict[str, str] = {}
    for key, role in raw.items():
        if not isinstance(key, str) or not key or not isinstance(role, str):
            raise ConfigError(f"{where}: every entry must be a non-empty text key mapped to a role name")
        if len(key) < 16 and not key.startswith(_HASH_PREFIX):
            raise ConfigError(f"{where}: plain key {key[:4]!r}... is shorter than 16 characters")
        digest = key[len(_HASH_PREFIX) :].lower() if key.startswith(_HASH_PREFIX) else hash_api_key(key)
        out[digest] = role
    return out


def load_settings(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings from a TOML file (optional) and the environment.

    Args:
        path: collector.toml; ``None`` uses only defaults and the environment. Relative
            paths inside the file are taken relative to the file's folder.
        environ: the environment (``os.environ`` when ``None``); ``LIENWATCH_*`` wins over
            the file.

    Raises:
        ConfigError: unreadable file, unknown key, wrong type, value out of range.
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"settings file {path} is not valid TOML: {exc}") from exc
        base_dir = path.resolve().parent
    top_level = {f.name for f in dataclasses.fields(Settings)} - set(_SECTIONS) - {"api_keys"}
    unknown = sorted(set(data) - top_level - set(_SECTIONS) - {"api_keys"})
    if unknown:
        raise ConfigError(f"unknown setting(s) in {path}: {', '.join(unknown)}")

    sections: dict[str, dict[str, Any]] = {}
    for name in _SECTIONS:
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"[{name}] must be a table")
        sections[name] = dict(section)
    top: dict[str, Any] = {k: data[k] for k in top_level if k in data}
    api_keys_raw: object = data.get("api_keys", {})

    # The environment wins over the file.
    env_base = Path.cwd()
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG" or key.startswith(f"{ENV_PREFIX}TEST_"):
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name == "api_keys":
            api_keys_raw = value
            continue
        if name in top_level:
            top[name] = value
            continue
        section_name, _, field_name = name.partition("_")
        if section_name in _SECTIONS and field_name:
            sections[section_name][field_name] = value
    hints = typing.get_type_hints(Settings)
    kwargs: dict[str, Any] = {}
    for name, value in top.items():
        from_env = f"{ENV_PREFIX}{name.upper()}" in env
        kwargs[name] = _coerce(name, value, hints[name], env_base if from_env else base_dir)
    for name, cls in _SECTIONS.items():
        kwargs[name] = _build(cls, name, sections[name], base_dir)
    kwargs["api_keys"] = _parse_api_keys(api_keys_raw, "api_keys")
    return Settings(**kwargs)


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """FastAPI dependency: the process's settings, loaded once.

    Reads the file named by ``LIENWATCH_CONFIG`` (if set) and the environment.
    ``collector.app.create_app(settings)`` overrides this dependency with its argument.
    """
    return load_settings(os.environ.get(f"{ENV_PREFIX}CONFIG"))
