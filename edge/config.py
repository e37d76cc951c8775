"""The agent's settings: one typed, frozen object loaded once from ``agent.toml`` and the environment.

``load_config(path)`` reads the TOML file, resolves relative paths against the file's
folder, applies ``LIENWATCH_AGENT_<SECTION>_<KEY>`` environment overrides (meant for
secrets such as the MQTT password) and returns an :class:`AgentConfig` whose every
section is a frozen dataclass: [device] [batch] [outbox] [mqtt] [downlink] [gnss] [can]
and [rules] (:class:`edge.rules.RulesConfig`). An unknown section, key or
``LIENWATCH_AGENT_*`` variable and a value of the wrong type are errors naming it
(:class:`~edge.errors.ConfigError`). ``lienwatch replay`` reads the same file with
:func:`load_replay_config` (the same parsers; only [rules] and [can] are used there).

Values from TOML must have the key's type; values from the environment are text and are
coerced by :mod:`protocol.config_values` (booleans, durations for ``*_s`` keys). Every key,
its default and its unit are documented in ``docs/agent.toml``.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from edge.errors import ConfigError
from edge.rules import RulesConfig
from protocol import LIMITS, check_device_id
from protocol.config_values import ConfigValueError, UnknownVariableError, env_overrides, parse_bool, parse_duration
from protocol.errors import InvalidRecord

__all__ = [
    "ENV_PREFIX",
    "AgentConfig",
    "BatchSettings",
    "CanSettings",
    "ConfigError",
    "DeviceSettings",
    "DownlinkSettings",
    "GnssSettings",
    "MqttSettings",
    "OutboxSettings",
    "ReplayConfig",
    "ReportingSettings",
    "load_config",
    "load_replay_config",
    "parse_config",
    "reporting_with_overrides",
]

ENV_PREFIX = "LIENWATCH_AGENT_"
#: Receiver dates before this are treated as "no time yet" (the [gnss] default).
DEFAULT_EARLIEST_DATE = dt.date(2020, 1, 1)
#: Longest NMEA line accepted by default, bytes.
DEFAULT_MAX_SENTENCE = 200
#: ``bus_options`` keys that the [can] section sets itself.
#: values of ``[downlink] receipts`` (edge.receipts.ReceiptMode)
RECEIPT_MODES = ("auto", "required", "off")
RESERVED_BUS_OPTIONS = frozenset({"interface", "channel", "bitrate", "can_filters", "decoder", "backoff"})


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
class ReportingSettings:
    """[reporting]: what the agent uploads (the rules always see every record).

    See :mod:`edge.reporting` and docs/agent.md "Reporting policy". Defaults are the
    default policy; ``enabled = false`` uploads every decoded fix and sample (the behaviour
    before the policy existed).

    Attributes:
        enabled: apply the policy (False: upload everything).
        moving_tolerance_m: while moving, the uploaded track stays within this distance of
            every full-rate fix (online track simplification).
        moving_max_interval_s: while moving, at least one fix this often.
        moving_sample_interval_s: while moving, a numeric signal at most this often (state
            signals, booleans and text, go up on every change).
        parked_after_s: stationary (and ignition not on) this long before the car counts as parked.
        parked_speed_mps: below this speed a fix counts as stationary.
        parked_fix_interval_s: while parked, one fix this often.
        parked_sample_interval_s: while parked, a numeric signal at most this often.
        parked_batch_s: while parked, an open batch closes after this long (alerts still go at once).
        evidence_before_s: around an alert, full-rate data from this long before it...
        evidence_after_s: ...to this long after it is uploaded.
    """

    enabled: bool = True
    moving_tolerance_m: float = 10.0
    moving_max_interval_s: float = 120.0
    moving_sample_interval_s: float = 10.0
    parked_after_s: float = 120.0
    parked_speed_mps: float = 1.0
    parked_fix_interval_s: float = 900.0
    parked_sample_interval_s: float = 900.0
    parked_batch_s: float = 3600.0
    evidence_before_s: float = 60.0
    evidence_after_s: float = 60.0

    def __post_init__(self) -> None:
        for name in (
            "moving_tolerance_m",
            "moving_max_interval_s",
            "moving_sample_interval_s",
            "parked_after_s",
            "parked_speed_mps",
            "parked_fix_interval_s",
            "parked_sample_interval_s",
            "parked_batch_s",
        ):
            _positive(f"[reporting] {name}", getattr(self, name))
        for name in ("evidence_before_s", "evidence_after_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or not 0 <= value <= 3600:
                raise ConfigError(f"[reporting] {name}={value!r} must be in [0, 3600] seconds")
        if self.parked_batch_s > 86_400:
            raise ConfigError(f"[reporting] parked_batch_s={self.parked_batch_s!r} must be at most 86400 (one day)")


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
        receipts: ``auto`` (keep batches after PUBACK until a signed receipt covers them,
            once the collector was seen sending receipts), ``required`` (always) or ``off``
            (delete on PUBACK); see :mod:`edge.receipts` and docs/protocol.md section 14.
        receipt_timeout_s: a broker-acknowledged batch no receipt covered after this long
            is published again.
    """

    collector_public_key: Path | None
    state_file: Path
    floor_file: Path | None = None
    receipts: str = "auto"
    receipt_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.receipts not in RECEIPT_MODES:
            raise ConfigError(f"[downlink] receipts={self.receipts!r} must be one of {', '.join(RECEIPT_MODES)}")
        if self.receipts == "required" and self.collector_public_key is None:
            raise ConfigError("[downlink] receipts = 'required' needs collector_public_key (receipts are signed)")
        if not 1.0 <= self.receipt_timeout_s <= 86_400.0:
            raise ConfigError(f"[downlink] receipt_timeout_s={self.receipt_timeout_s} must be within 1 .. 86400")

    @property
    def enabled(self) -> bool:
        """True when a collector key is configured."""
        return self.collector_public_key is not None


@dataclass(frozen=True, slots=True)
class GnssSettings:
    """[gnss]: the NMEA receiver (optional section; the agent runs without GNSS if absent).

    Attributes:
        url: any pyserial URL (``/dev/ttyS1``, a pty path, ``socket://``, ``loop://``); a
            relative device path is resolved against the config file's folder.
        baud: bit/s.
        earliest_date: receiver dates before this are treated as "no time yet".
        max_sentence: longest NMEA line accepted, bytes (16..4096).
        backoff_initial_s: first reopen delay after the port disappears, seconds.
        backoff_max_s: reopen delay cap, seconds.
    """

    url: str
    baud: int = 9600
    earliest_date: dt.date = DEFAULT_EARLIEST_DATE
    max_sentence: int = DEFAULT_MAX_SENTENCE
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 5.0

    def __post_init__(self) -> None:
        if not self.url:
            raise ConfigError("[gnss] url must be a non-empty string")
        _int_range("[gnss] max_sentence", self.max_sentence, 16, 4096)
        _positive("[gnss] backoff_initial_s", self.backoff_initial_s)
        if self.backoff_max_s < self.backoff_initial_s:
            raise ConfigError(
                f"[gnss] backoff_max_s={self.backoff_max_s} is below backoff_initial_s={self.backoff_initial_s}"
            )


@dataclass(frozen=True, slots=True)
class CanSettings:
    """[can]: the CAN interface and how its frames map to canonical signals (optional section).

    Attributes:
        dbc: DBC file(s).
        signal_map: DBC signal -> canonical (VSS) name map (docs/signals.md).
        interface: any python-can interface (``socketcan``, ``slcan``, ``virtual``, ...);
            needed to open the bus, not to decode a log.
        channel: the interface's channel (for slcan the serial device).
        bitrate: bit/s (None: the interface's own setting).
        bus_options: extra ``can.Bus`` keyword arguments.
    """

    dbc: tuple[Path, ...]
    signal_map: Path
    interface: str | None = None
    channel: str | None = None
    bitrate: int | None = None
    bus_options: Mapping[str, object] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if not self.dbc:
            raise ConfigError("[can] dbc: expected a path or a non-empty list of paths, got []")
        reserved = sorted(RESERVED_BUS_OPTIONS & set(self.bus_options))
        if reserved:
            raise ConfigError(f"[can] bus_options: {', '.join(reserved)} cannot be set here")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything the agent needs, resolved: one object, loaded once, injected."""

    source: Path | None
    base_dir: Path
    device: DeviceSettings
    batch: BatchSettings
    outbox: OutboxSettings
    mqtt: MqttSettings
    downlink: DownlinkSettings
    gnss: GnssSettings | None = None
    can: CanSettings | None = None
    rules: RulesConfig = field(default_factory=RulesConfig)
    reporting: ReportingSettings = field(default_factory=ReportingSettings)

    def resolved(self) -> dict[str, Any]:
        """A JSON-friendly view of the settings (secrets masked), for ``agent check``."""
        out: dict[str, Any] = {"source": _plain(self.source), "base_dir": str(self.base_dir)}
        for name in ("device", "gnss", "can", "rules", "reporting", "batch", "outbox", "mqtt", "downlink"):
            out[name] = _plain(getattr(self, name))
        if out["mqtt"]["password"] is not None:
            out["mqtt"]["password"] = "***"  # noqa: S105 - masking, not a password
        return out


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    """What ``lienwatch replay`` takes from an agent.toml: the rules and the CAN decoding."""

    source: Path
    base_dir: Path
    rules: RulesConfig
    can: CanSettings | None


def _plain(value: object) -> object:
    """JSON-friendly copy of a settings value (dataclasses, paths, dates, mappings)."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, (Path, dt.date)):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    return str(value)


# ----------------------------------------------------------------------------- parsing


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be a positive number")


def _int_range(name: str, value: int, lo: int, hi: int) -> None:
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} must be in [{lo}, {hi}]")


def _as_str(where: str, value: object, _base: Path) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r:.80}")
    return value


def _as_int(where: str, value: object, _base: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be an integer, got {value!r:.80}")
    return value


def _as_float(where: str, value: object, _base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} must be a number, got {value!r:.80}")
    return float(value)


def _as_bool(where: str, value: object, _base: Path) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r:.80}")
    return value


def _path(where: str, value: object, base: Path) -> Path:
    text = _as_str(where, value, base)
    if not text:
        raise ConfigError(f"{where} must not be empty")
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)


def _device_url(where: str, value: object, base: Path) -> str:
    url = _as_str(where, value, base)
    if not url:
        raise ConfigError(f"{where} must be a non-empty string")
    return url if "://" in url or os.path.isabs(url) else str(base / url)


def _date(where: str, value: object, _base: Path) -> dt.date:
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value)
        except ValueError:
            raise ConfigError(f"{where} {value!r:.40} is not YYYY-MM-DD") from None
    if isinstance(value, dt.datetime) or not isinstance(value, dt.date):
        raise ConfigError(f"{where} {value!r:.40} must be a date")
    return value


def _dbc_paths(where: str, value: object, base: Path) -> tuple[Path, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError(f"{where}: expected a path or a non-empty list of paths, got {value!r:.80}")
    out = []
    for item in items:
        if not isinstance(item, str) or not item:
            raise ConfigError(f"{where}: expected a file path, got {item!r:.80}")
        out.append(_path(where, item, base))
    return tuple(out)


def _table(where: str, value: object, _base: Path) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a table, got {value!r:.80}")
    return MappingProxyType(dict(value))


def _duration_text(text: str) -> object:
    return parse_duration(text)


def _int_text(text: str) -> object:
    try:
        return int(text.strip())
    except ValueError:
        return text  # the converter names the key and the expected type


def _float_text(text: str) -> object:
    try:
        return float(text.strip())
    except ValueError:
        return text


@dataclass(frozen=True, slots=True)
class _Key:
    """How one key is read: from TOML (``convert``) and, if given, from environment text."""

    convert: Callable[[str, object, Path], Any]
    from_text: Callable[[str], object] | None = None


_STR, _PATH = _Key(_as_str, str), _Key(_path, str)
_INT, _FLOAT, _SECONDS = _Key(_as_int, _int_text), _Key(_as_float, _float_text), _Key(_as_float, _duration_text)
_BOOL = _Key(_as_bool, parse_bool)

#: Every section and key of agent.toml ([rules] is RulesConfig's own, nested, schema).
_SCHEMA: dict[str, dict[str, _Key]] = {
    "device": {"id": _STR, "key_file": _PATH, "data_dir": _PATH, "snapshot_interval_s": _SECONDS, "log_format": _STR},
    "batch": {
        "max_age_s": _SECONDS,
        "max_age_active_s": _SECONDS,
        "max_bytes": _INT,
        "max_fixes": _INT,
        "max_samples": _INT,
    },
    "outbox": {"path": _PATH, "max_bytes": _INT, "seq_block": _INT},
    "reporting": {
        "enabled": _BOOL,
        **dict.fromkeys(
            (
                "moving_max_interval_s",
                "moving_sample_interval_s",
                "parked_after_s",
                "parked_fix_interval_s",
                "parked_sample_interval_s",
                "parked_batch_s",
                "evidence_before_s",
                "evidence_after_s",
            ),
            _SECONDS,
        ),
        "moving_tolerance_m": _FLOAT,
        "parked_speed_mps": _FLOAT,
    },
    "mqtt": {
        "host": _STR,
        "port": _INT,
        "client_id": _STR,
        "keepalive_s": _INT,
        "tls": _BOOL,
        "ca_file": _PATH,
        "cert_file": _PATH,
        "key_file": _PATH,
        "username": _STR,
        "password": _STR,
        "inflight": _INT,
        "backoff_min_s": _SECONDS,
        "backoff_max_s": _SECONDS,
        "shutdown_grace_s": _SECONDS,
    },
    "downlink": {
        "collector_public_key": _PATH,
        "state_file": _PATH,
        "floor_file": _PATH,
        "receipts": _STR,
        "receipt_timeout_s": _SECONDS,
    },
    "gnss": {
        "url": _Key(_device_url),
        "baud": _Key(_as_int),
        "earliest_date": _Key(_date),
        "max_sentence": _Key(_as_int),
        "backoff_initial_s": _Key(_as_float),
        "backoff_max_s": _Key(_as_float),
    },
    "can": {
        "interface": _Key(_as_str),
        "channel": _Key(_as_str),
        "bitrate": _Key(_as_int),
        "dbc": _Key(_dbc_paths),
        "signal_map": _Key(_path),
        "bus_options": _Key(_table),
    },
}
_REQUIRED = {"device": ("id", "key_file"), "gnss": ("url",)}
_SECTIONS = (*_SCHEMA, "rules")
#: Every environment variable the agent reads: the keys that accept text.
_ENV_NAMES = {
    f"{ENV_PREFIX}{section.upper()}_{key.upper()}": (section, key)
    for section, keys in _SCHEMA.items()
    for key, spec in keys.items()
    if spec.from_text is not None
}


def _env_overrides(environ: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """``LIENWATCH_AGENT_MQTT_PASSWORD=...`` -> {"mqtt": {"password": "..."}}; unknown names refused."""
    try:
        found = env_overrides(environ, ENV_PREFIX, _ENV_NAMES)
    except UnknownVariableError as exc:
        raise ConfigError(f"environment variable {', '.join(exc.names)} names no agent setting: {exc}") from exc
    out: dict[str, dict[str, str]] = {}
    for name, value in found.items():
        section, key = _ENV_NAMES[name]
        out.setdefault(section, {})[key] = value
    return out


def _section(raw: Mapping[str, Any], name: str, base: Path, env: Mapping[str, str]) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, Mapping):
        raise ConfigError(f"[{name}] must be a table")
    schema = _SCHEMA[name]
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key not in schema:
            raise ConfigError(f"[{name}] has unknown key {key!r} (known: {', '.join(schema)})")
        out[key] = schema[key].convert(f"[{name}] {key}", value, base)
    for key, text in env.items():
        parse_text = schema[key].from_text
        assert parse_text is not None  # only keys with a text form are in _ENV_NAMES
        where = f"[{name}] {key} (from {ENV_PREFIX}{name.upper()}_{key.upper()})"
        try:
            out[key] = schema[key].convert(where, parse_text(text), base)
        except ConfigValueError as exc:
            raise ConfigError(f"[{name}] {key} must be {_EXPECTED.get(schema[key], 'valid')}: {exc}") from exc
    for key in _REQUIRED.get(name, ()):
        if key not in out:
            raise ConfigError(f"[{name}] {key} is required")
    return out


_EXPECTED = {_BOOL: "true or false", _SECONDS: "a duration"}


def _optional_section(raw: Mapping[str, Any], name: str, base: Path) -> dict[str, Any] | None:
    if raw.get(name) is None:
        return None
    return _section(raw, name, base, {})


def _gnss(raw: Mapping[str, Any], base: Path) -> GnssSettings | None:
    values = _optional_section(raw, "gnss", base)
    return None if values is None else GnssSettings(**values)


def _can(raw: Mapping[str, Any], base: Path) -> CanSettings | None:
    values = _optional_section(raw, "can", base)
    if values is None:
        return None
    if "dbc" not in values or "signal_map" not in values:
        raise ConfigError("[can]: 'dbc' and 'signal_map' are required")
    return CanSettings(**values)


def _rules(raw: Mapping[str, Any], base: Path) -> RulesConfig:
    table = raw.get("rules", {})
    if not isinstance(table, Mapping):
        raise ConfigError("[rules] must be a table")
    try:
        return RulesConfig.from_dict(table, base)
    except ConfigError as exc:
        raise ConfigError(f"[rules] rejected: {exc}") from exc


def _check_sections(raw: Mapping[str, Any]) -> None:
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"unknown section(s) {sorted(unknown)} (known: {sorted(_SECTIONS)})")


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
        ConfigError: an unknown section, key or variable, a missing required key, or a bad value.
    """
    env = _env_overrides(os.environ if environ is None else environ)
    _check_sections(raw)
    base = base_dir.resolve()
    device = _section(raw, "device", base, env.get("device", {}))
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
    return AgentConfig(
        source=source,
        base_dir=base,
        device=device_settings,
        batch=BatchSettings(**_section(raw, "batch", base, env.get("batch", {}))),
        outbox=OutboxSettings(**outbox),
        mqtt=MqttSettings(**mqtt),
        downlink=DownlinkSettings(**downlink),
        gnss=_gnss(raw, base),
        can=_can(raw, base),
        rules=_rules(raw, base),
        reporting=ReportingSettings(**_section(raw, "reporting", base, env.get("reporting", {}))),
    )


def reporting_with_overrides(base: ReportingSettings, overrides: Mapping[str, object]) -> ReportingSettings:
    """``base`` with the keys of a downlink ``reporting`` section applied (same keys and checks as the file).

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"downlink 'reporting' must be a map, got {overrides!r:.80}")
    schema = _SCHEMA["reporting"]
    changed: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in schema:
            raise ConfigError(f"downlink 'reporting' has unknown key {key!r} (known: {', '.join(schema)})")
        changed[key] = schema[key].convert(f"downlink 'reporting' {key}", value, Path())
    return replace(base, **changed)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fp:
            return tomllib.load(fp)
    except OSError as exc:
        raise ConfigError(f"cannot read agent config {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"agent config {path} is not valid TOML: {exc}") from exc


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> AgentConfig:
    """Load ``agent.toml``: relative paths resolve against the file's folder.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown key or variable, or bad value.
    """
    path = Path(path)
    return parse_config(_read_toml(path), path.resolve().parent, environ=environ, source=path.resolve())


def load_replay_config(path: str | Path) -> ReplayConfig:
    """Load the [rules] and [can] sections of an agent.toml for ``lienwatch replay``.

    The file is parsed by the same section parsers as :func:`load_config`; the sections a
    replay does not use ([device], [mqtt], ...) may be absent, unknown sections are refused.

    Raises:
        ConfigError: unreadable file, TOML syntax error, unknown section or key, or bad value.
    """
    path = Path(path)
    raw = _read_toml(path)
    _check_sections(raw)
    base = path.resolve().parent
    return ReplayConfig(source=path.resolve(), base_dir=base, rules=_rules(raw, base), can=_can(raw, base))
