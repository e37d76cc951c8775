"""The agent's settings: one typed, frozen object loaded from ``agent.toml`` and the environment.

``load_config(path)`` reads the TOML file, resolves relative paths against the file's
folder, applies ``LIENWATCH_AGENT_<SECTION>_<KEY>`` environment overrides (meant for
secrets such as the MQTT password) and returns an :class:`AgentConfig`. Sections the agent
owns ([device] [batch] [outbox] [mqtt] [downlink]) are checked here, key by key: an
unknown key is an error naming it. Sections owned by other modules ([gnss] [can] [rules])
are kept as plain mappings and validated by their owners (``edge.gnss.source_from_config``,
``edge.canbus.decoder_from_config``, ``edge.rules.RulesConfig.from_dict``); see
:func:`validate_delegated_sections`.

Every key, its default and its unit are documented in ``docs/agent.toml``.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from protocol import LIMITS, check_device_id
from protocol.errors import InvalidRecord

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "AgentError",
    "BatchSettings",
    "ConfigError",
    "DeviceSettings",
    "DownlinkSettings",
    "MqttSettings",
    "OutboxSettings",
    "load_config",
    "parse_config",
    "validate_delegated_sections",
]

ENV_PREFIX = "LIENWATCH_AGENT_"


class AgentError(Exception):
    """Root of the errors raised by the edge agent's own modules (config, outbox, uplink, ...)."""

    reason = "agent_error"


class ConfigError(AgentError):
    """The agent configuration is unreadable or names an unknown key or an impossible value."""

    reason = "bad_config"


# ----------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class DeviceSettings:
    """[device]: who this agent is and where it keeps its files.

    Attributes:
        id: device id (``[A-Za-z0-9_-]{1,64}``), also the COSE ``kid``.
        key_file: Ed25519 private key (PEM, mode 0600).
        data_dir: folder for the rules snapshot, the sequence file and the outbox.
        snapshot_interval_s: seconds between periodic rule-state snapshots.
        log_format: ``json`` or ``kv`` (key=value) log lines.
    """

    id: str
    key_file: Path
    data_dir: Path
    snapshot_interval_s: float = 60.0
    log_format: str = "json"

    def __post_init__(self) -> None:
        try:
            check_device_id(self.id)
        except InvalidRecord as exc:
            raise ConfigError(f"[device] id: {exc}") from exc
        _positive("[device] snapshot_interval_s", self.snapshot_interval_s)
        if self.log_format not in ("json", "kv"):
            raise ConfigError(f"[device] log_format {self.log_format!r} must be 'json' or 'kv'")


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """[batch]: when an open batch is closed.

    Attributes:
        max_age_s: close after this many seconds of data (observation time or host time).
        max_age_active_s: the same while a rule has an open episode.
        max_bytes: close when the payload estimate reaches this many bytes.
        max_fixes: close at this many fixes (at most ``LIMITS.MAX_FIXES``).
        max_samples: close at this many samples (at most ``LIMITS.MAX_SAMPLES``).
    """

    max_age_s: float = 60.0
    max_age_active_s: float = 10.0
    max_bytes: int = 256 * 1024
    max_fixes: int = 3600
    max_samples: int = 20_000

    def __post_init__(self) -> None:
        _positive("[batch] max_age_s", self.max_age_s)
        _positive("[batch] max_age_active_s", self.max_age_active_s)
        _int_range("[batch] max_bytes", self.max_bytes, 1024, LIMITS.MAX_PAYLOAD_BYTES // 2)
        _int_range("[batch] max_fixes", self.max_fixes, 1, LIMITS.MAX_FIXES)
        _int_range("[batch] max_samples", self.max_samples, 1, LIMITS.MAX_SAMPLES)


@dataclass(frozen=True, slots=True)
class OutboxSettings:
    """[outbox]: the durable queue of signed batches.

    Attributes:
        path: SQLite file (default ``{data_dir}/outbox.db``).
        max_bytes: byte budget of stored messages; routine telemetry is evicted beyond it.
        seq_block: sequence numbers reserved per fsync of the sequence file.
    """

    path: Path
    max_bytes: int = 64 * 1024 * 1024
    seq_block: int = 16

    def __post_init__(self) -> None:
        _int_range("[outbox] max_bytes", self.max_bytes, 64 * 1024, 2**40)
        _int_range("[outbox] seq_block", self.seq_block, 1, 1_000_000)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """[mqtt]: the broker connection (MQTT 5, QoS 1).

    Attributes:
        host: broker host name or address.
        port: broker TCP port.
        client_id: MQTT client id (default: the device id).
        keepalive_s: MQTT keep-alive, seconds.
        tls: use TLS (with ``ca_file``; ``cert_file``/``key_file`` for a client certificate).
        ca_file: CA bundle that signs the broker certificate (None: system store).
        cert_file: client certificate (PEM).
        key_file: client certificate key (PEM).
        username: MQTT user name, if the broker wants one.
        password: MQTT password (set it through ``LIENWATCH_AGENT_MQTT_PASSWORD``).
        inflight: batches published and not yet acknowledged, at most.
        backoff_min_s: first reconnect delay, seconds (doubles per failure, full jitter).
        backoff_max_s: reconnect delay cap, seconds.
        shutdown_grace_s: on SIGTERM, seconds spent trying to publish what is left.
    """

    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = ""
    keepalive_s: int = 60
    tls: bool = False
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    inflight: int = 10
    backoff_min_s: float = 0.5
    backoff_max_s: float = 60.0
    shutdown_grace_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("[mqtt] host must not be empty")
        _int_range("[mqtt] port", self.port, 1, 65535)
        _int_range("[mqtt] keepalive_s", self.keepalive_s, 5, 65535)
        _int_range("[mqtt] inflight", self.inflight, 1, 1000)
        _positive("[mqtt] backoff_min_s", self.backoff_min_s)
        if self.backoff_max_s < self.backoff_min_s:
            raise ConfigError(f"[mqtt] backoff_max_s={self.backoff_max_s} is below backoff_min_s={self.backoff_min_s}")
        if self.shutdown_grace_s < 0:
            raise ConfigError(f"[mqtt] shutdown_grace_s={self.shutdown_grace_s} must not be negative")
        if (self.cert_file is None) != (self.key_file is None):
            raise ConfigError("[mqtt] cert_file and key_file go together")
        if (self.cert_file is not None or self.ca_file is not None) and not self.tls:
            raise ConfigError("[mqtt] ca_file/cert_file/key_file need tls = true")
        if self.password is not None and self.username is None:
            raise ConfigError("[mqtt] password without username")


@dataclass(frozen=True, slots=True)
class DownlinkSettings:
    """[downlink]: signed configurations pushed by the collector.

    Attributes:
        collector_public_key: PEM public key of the collector; None disables the downlink.
        state_file: where the last accepted configuration is kept (default
            ``{data_dir}/downlink.cose``); its version is the floor for the next one.
        floor_file: a second copy of that version floor, kept away from the data folder
            (default: beside the device key, ``{key folder}/{device id}.config-floor``), so
            losing ``state_file`` does not let an older configuration back in.
    """

    collector_public_key: Path | None
    state_file: Path
    floor_file: Path | None = None

    @property
    def enabled(self) -> bool:
        """True when a collector key is configured."""
        return self.collector_public_key is not None


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs, resolved: one object, loaded once, injected.

    ``gnss``, ``can`` and ``rules`` are the raw sections, handed to the modules that own
    them together with ``base_dir`` (relative paths inside them resolve against it).
    """

    source: Path | None
    base_dir: Path
    device: DeviceSettings
    batch: BatchSettings
    outbox: OutboxSettings
    mqtt: MqttSettings
    downlink: DownlinkSettings
    gnss: Mapping[str, Any] | None = None
    can: Mapping[str, Any] | None = None
    rules: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def resolved(self) -> dict[str, Any]:
        """A JSON-friendly view of the settings (secrets masked), for ``agent check``."""

        def plain(value: Any) -> Any:
            if isinstance(value, Path):
                return str(value)
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [plain(v) for v in value]
            return value

        def section(obj: Any) -> dict[str, Any]:
            out = {name: plain(getattr(obj, name)) for name in obj.__dataclass_fields__}
            if "password" in out and out["password"] is not None:
                out["password"] = "***"  # noqa: S105 - masking, not a password
            return out

        return {
            "source": plain(self.source),
            "base_dir": str(self.base_dir),
            "device": section(self.device),
            "gnss": plain(self.gnss),
            "can": plain(self.can),
            "rules": plain(self.rules),
            "batch": section(self.batch),
            "outbox": section(self.outbox),
            "mqtt": section(self.mqtt),
            "downlink": section(self.downlink),
        }


# ----------------------------------------------------------------------------- parsing


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive number")


def _int_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} must be in [{lo}, {hi}]")


def _as_str(where: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r:.80}")
    return value


def _as_int(where: str, value: object) -> int:
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise ConfigError(f"{where} must be an integer, got {value!r:.80}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, got {value!r:.80}")
    return value


def _as_float(where: str, value: object) -> float:
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise ConfigError(f"{where} must be a number, got {value!r:.80}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r:.80}")
    return float(value)


def _as_bool(where: str, value: object) -> bool:
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r:.80}")
    return value


#: key -> converter, per owned section. A converter takes (where, raw value, base_dir).
_Converter = Callable[[str, object, Path], Any]


def _path(where: str, value: object, base: Path) -> Path:
    text = _as_str(where, value)
    if not text:
        raise ConfigError(f"{where} must not be empty")
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)


def _conv(fn: Callable[[str, object], Any]) -> _Converter:
    return lambda where, value, _base: fn(where, value)


_SCHEMA: dict[str, dict[str, _Converter]] = {
    "device": {
        "id": _conv(_as_str),
        "key_file": _path,
        "data_dir": _path,
        "snapshot_interval_s": _conv(_as_float),
        "log_format": _conv(_as_str),
    },
    "batch": {
        "max_age_s": _conv(_as_float),
        "max_age_active_s": _conv(_as_float),
        "max_bytes": _conv(_as_int),
        "max_fixes": _conv(_as_int),
        "max_samples": _conv(_as_int),
    },
    "outbox": {"path": _path, "max_bytes": _conv(_as_int), "seq_block": _conv(_as_int)},
    "mqtt": {
        "host": _conv(_as_str),
        "port": _conv(_as_int),
        "client_id": _conv(_as_str),
        "keepalive_s": _conv(_as_int),
        "tls": _conv(_as_bool),
        "ca_file": _path,
        "cert_file": _path,
        "key_file": _path,
        "username": _conv(_as_str),
        "password": _conv(_as_str),
        "inflight": _conv(_as_int),
        "backoff_min_s": _conv(_as_float),
        "backoff_max_s": _conv(_as_float),
        "shutdown_grace_s": _conv(_as_float),
    },
    "downlink": {"collector_public_key": _path, "state_file": _path, "floor_file": _path},
}
_DELEGATED = ("gnss", "can", "rules")


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``LIENWATCH_AGENT_MQTT_PASSWORD=...`` -> {"mqtt": {"password": "..."}}."""
    out: dict[str, dict[str, str]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        rest = name[len(ENV_PREFIX) :].lower()
        section, _, key = rest.partition("_")
        if section not in _SCHEMA or key not in _SCHEMA[section]:
            known = ", ".join(f"{ENV_PREFIX}{s.upper()}_{k.upper()}" for s in _SCHEMA for k in _SCHEMA[s])
            raise ConfigError(f"environment variable {name} names no agent setting (known: {known})")
        out.setdefault(section, {})[key] = value
    return out


def _section(raw: Mapping[str, Any], name: str, base: Path, env: Mapping[str, str]) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    schema = _SCHEMA[name]
    out: dict[str, Any] = {}
    for key, value in {**table, **env}.items():
        if key not in schema:
            raise ConfigError(f"[{name}] has unknown key {key!r} (known: {', '.join(schema)})")
        out[key] = schema[key](f"[{name}] {key}", value, base)
    return out


def parse_config(
    raw: Mapping[str, Any], base_dir: Path, *, environ: Mapping[str, str] | None = None, source: Path | None = None
) -> AgentConfig:
    """Build an :class:`AgentConfig` from an already parsed TOML document.

    Args:
        raw: the TOML document as a mapping.
        base_dir: folder relative paths are resolved against.
        environ: environment to take ``LIENWATCH_AGENT_*`` overrides from (default: os.environ).
        source: the file the document came from, for messages.

    Raises:
        ConfigError: an unknown section or key, a missing required key, or a bad value.
    """
    env = _env_overrides(os.environ if environ is None else environ)
    unknown = set(raw) - set(_SCHEMA) - set(_DELEGATED)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)} (known: {sorted([*_SCHEMA, *_DELEGATED])})")
    base = base_dir.resolve()
    device = _section(raw, "device", base, env.get("device", {}))
    for required in ("id", "key_file"):
        if required not in device:
            raise ConfigError(f"[device] {required} is required")
    device.setdefault("data_dir", base / "data")
    device_settings = DeviceSettings(**device)
    data_dir = device_settings.data_dir

    outbox = _section(raw, "outbox", base, env.get("outbox", {}))
    outbox.setdefault("path", data_dir / "outbox.db")
    mqtt = _section(raw, "mqtt", base, env.get("mqtt", {}))
    mqtt.setdefault("client_id", device_settings.id)
    downlink = _section(raw, "downlink", base, env.get("downlink", {}))
    downlink.setdefault("collector_public_key", None)
    downlink.setdefault("state_file", data_dir / "downlink.cose")
    downlink.setdefault("floor_file", Path(device_settings.key_file).parent / f"{device_settings.id}.config-floor")

    delegated: dict[str, Mapping[str, Any] | None] = {}
    for name in _DELEGATED:
        table = raw.get(name)
        if table is not None and not isinstance(table, Mapping):
            raise ConfigError(f"[{name}] must be a table")
        delegated[name] = MappingProxyType(dict(table)) if table is not None else None
    try:
        return AgentConfig(
            source=source,
            base_dir=base,
            device=device_settings,
            batch=BatchSettings(**_section(raw, "batch", base, env.get("batch", {}))),
            outbox=OutboxSettings(**outbox),
            mqtt=MqttSettings(**mqtt),
            downlink=DownlinkSettings(**downlink),
            gnss=delegated["gnss"],
            can=delegated["can"],
            rules=delegated["rules"] or MappingProxyType({}),
        )
    except TypeError as exc:  # pragma: no cover - the schema tables and dataclasses agree
        raise ConfigError(f"configuration does not fit the settings objects: {exc}") from exc


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load ``agent.toml``: relative paths resolve against the file's folder.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key or bad value.
    """
    path = Path(path)
    try:
        with path.open("rb") as fp:
            raw = tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent config {path} is not valid TOML: {exc}") from exc
    return parse_config(raw, path.resolve().parent, environ=environ, source=path.resolve())


def validate_delegated_sections(config: AgentConfig) -> list[str]:
    """Ask the owners of [gnss], [can] and [rules] to validate their sections.

    Nothing is opened: the GNSS port opens lazily, the CAN bus is not created (only the
    DBC files and the signal map are loaded), the market and region files are read.

    Returns:
        Lines describing what was checked (``"[rules] ok (2 markets, 0 regions)"``, ...).

    Raises:
        ConfigError: an owner rejected its section (the message names it).
    """
    notes: list[str] = []
    try:
        from edge.rules import RulesConfig, load_markets, load_regions

        rules = RulesConfig.from_dict(config.rules, config.base_dir)
        markets = load_markets(rules.markets_file) if rules.markets_file else []
        regions = load_regions(rules.regions_file) if rules.regions_file else []
    except ImportError as exc:
        notes.append(f"[rules] not checked: edge.rules is not importable ({exc})")
    except Exception as exc:  # the owner's error tree, re-raised as ours naming the section
        raise ConfigError(f"[rules] rejected: {exc}") from exc
    else:
        notes.append(f"[rules] ok ({len(markets)} markets, {len(regions)} regions)")
    if config.can is not None:
        try:
            from edge.canbus import decoder_from_config

            decoder_from_config(config.can, config.base_dir)
        except ImportError as exc:
            notes.append(f"[can] not checked: edge.canbus is not importable ({exc})")
        except Exception as exc:  # see above
            raise ConfigError(f"[can] rejected: {exc}") from exc
        else:
            notes.append("[can] ok (DBC and signal map load; the bus is opened at run time)")
    if config.gnss is not None:
        try:
            from edge.gnss import source_from_config

            source_from_config(config.gnss, config.base_dir).close()
        except ImportError as exc:
            notes.append(f"[gnss] not checked: edge.gnss is not importable ({exc})")
        except Exception as exc:  # see above
            raise ConfigError(f"[gnss] rejected: {exc}") from exc
        else:
            notes.append(f"[gnss] ok (url {config.gnss.get('url')}, opened at run time)")
    return notes
