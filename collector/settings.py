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
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.config_values import DurationValueError, UnknownVariableError, env_overrides, parse_bool, parse_duration

from .cases.settings import CaseSettings, ContactSettings
from .errors import ConfigError, check_range
from .ingest.settings import Limits, MqttSettings
from .jobs.retention import RetentionError, RetentionPolicy
from .jobs.webhooks import WebhookError, check_webhook_url
from .risk.engine import RiskConfig, RiskConfigError
from .risk.settings import RiskSettings
from .roles import ROLES

__all__ = [
    "CONFIG_VARIABLE",
    "ENV_PREFIX",
    "FOREIGN_ENV_PREFIXES",
    "ROLES",
    "ApiSettings",
    "CaseSettings",
    "ConsoleSettings",
    "ContactSettings",
    "DownlinkSettings",
    "Limits",
    "MqttSettings",
    "RetentionSettings",
    "RiskSettings",
    "Settings",
    "WebhookSettings",
    "get_settings",
    "hash_api_key",
    "load_settings",
]

ENV_PREFIX = "LIENWATCH_"
#: Names the settings file (read by the commands and :func:`get_settings`).
CONFIG_VARIABLE = f"{ENV_PREFIX}CONFIG"
#: ``LIENWATCH_*`` namespaces of other programs: the agent, the HIL suite, the test harness.
FOREIGN_ENV_PREFIXES = (f"{ENV_PREFIX}AGENT_", f"{ENV_PREFIX}HIL_", f"{ENV_PREFIX}TEST_")
_HASH_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")


def hash_api_key(key: str) -> str:
    """Return the stored form of an API key: lower-case hex SHA-256 of its UTF-8 bytes.

    API keys are long random tokens, so a fast hash is enough: nothing to brute-force.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class ApiSettings:
    """``[api]``: where the HTTP API listens and the largest request it reads.

    Attributes:
        host: listen address.
        port: listen port.
        max_body_bytes: request bodies over this get 413 before they are read
            (collector.api.request_guard).
    """

    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        check_range("api.port", self.port, 0, 65_535)
        check_range("api.max_body_bytes", self.max_body_bytes, 1024, 1 << 30)


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    """``[webhooks]``: where risk level changes are POSTed and how deliveries are retried.

    Attributes:
        urls: absolute http(s) URLs; every level change is delivered to each.
        secret: HMAC-SHA256 key of the ``X-LienWatch-Signature`` header (at least 16
            bytes; better set by ``LIENWATCH_WEBHOOKS_SECRET`` than in the file). Never
            logged, never part of ``repr``.
        retry_initial_s: wait after the first failed attempt (doubles after each failure).
        retry_max_s: longest wait between attempts.
        max_attempts: attempts before a delivery is marked ``failed`` (kept).
        timeout_s: HTTP timeout of one attempt.
        poll_interval_s: how often the worker looks for due deliveries when not woken.
    """

    urls: tuple[str, ...] = ()
    secret: str | None = field(default=None, repr=False)
    retry_initial_s: float = 2.0
    retry_max_s: float = 3600.0
    max_attempts: int = 12
    timeout_s: float = 10.0
    poll_interval_s: float = 1.0

    def __post_init__(self) -> None:
        for url in self.urls:
            try:
                check_webhook_url(url)
            except WebhookError as exc:
                raise ConfigError(f"webhooks.urls: {exc}") from exc
        if self.urls and (self.secret is None or len(self.secret.encode()) < 16):
            raise ConfigError(
                "webhooks.secret must be set (at least 16 bytes; LIENWATCH_WEBHOOKS_SECRET) when webhooks.urls is set"
            )
        check_range("webhooks.retry_initial_s", self.retry_initial_s, 0.01, 3_600)
        check_range("webhooks.retry_max_s", self.retry_max_s, self.retry_initial_s, 86_400)
        check_range("webhooks.max_attempts", self.max_attempts, 1, 1_000)
        check_range("webhooks.timeout_s", self.timeout_s, 0.1, 120)
        check_range("webhooks.poll_interval_s", self.poll_interval_s, 0.01, 3_600)


@dataclass(frozen=True, slots=True)
class RetentionSettings:
    """``[retention]``: how long precise locations and loan records are kept.

    Attributes:
        fix_days: precise fixes are kept this many days.
        fix_mode: ``summarize`` (keep per-day summaries without coordinates) or ``delete``.
        record_years: loans, repayments, alerts and risk events are kept this many years.
        interval_s: time between runs; the first run happens one interval after start
            (never at start, so a restart loop cannot hammer the database).
        enabled: run the job in ``serve`` at all.
    """

    fix_days: int = 90
    fix_mode: str = "summarize"
    record_years: int = 5
    interval_s: float = 86_400.0
    enabled: bool = True

    def __post_init__(self) -> None:
        try:
            RetentionPolicy(self.fix_days, self.fix_mode, self.record_years)
        except RetentionError as exc:
            raise ConfigError(str(exc)) from exc
        check_range("retention.interval_s", self.interval_s, 0.01, 366 * 86_400)


@dataclass(frozen=True, slots=True)
class DownlinkSettings:
    """``[downlink]``: signed configuration messages (market lists) for the devices.

    Attributes:
        signing_key: the collector's Ed25519 private key (``lienwatch keys generate
            --collector --out DIR`` makes ``DIR/collector.key``, mode 0600). Unset: no
            configuration is signed or published.
        resync_interval_s: how often the publisher looks for devices whose configuration is
            missing, outdated or not yet acknowledged by the broker.
        publish_timeout_s: how long one publish waits for the broker's PUBACK.
        receipts: publish a signed receipt per device on ``lw/v1/{device}/receipt`` after
            the commits that stored its batches (needs ``signing_key``; docs/protocol.md
            section 14). The seq ledger and the gap counts are kept either way.
        receipt_interval_s: receipts of one device are coalesced to at most one per this.
    """

    signing_key: Path | None = None
    resync_interval_s: float = 30.0
    publish_timeout_s: float = 10.0
    receipts: bool = True
    receipt_interval_s: float = 1.0

    def __post_init__(self) -> None:
        check_range("downlink.resync_interval_s", self.resync_interval_s, 0.01, 86_400)
        check_range("downlink.publish_timeout_s", self.publish_timeout_s, 0.1, 300)
        check_range("downlink.receipt_interval_s", self.receipt_interval_s, 0.05, 60)


@dataclass(frozen=True, slots=True)
class ConsoleSettings:
    """``[console]``: the web console's sessions and map (docs/console.md).

    Attributes:
        session_idle_minutes: a session unused for longer than this is ended.
        session_max_hours: a session ends this long after sign-in whatever its use.
        secure_cookie: mark the session cookie ``Secure`` (set it behind HTTPS).
        tile_url: optional map tile server (``{z}/{x}/{y}`` template) drawn under the track;
            unset = the plain projected background only (works with no internet).
        tile_datum: datum of the tiles: ``wgs84`` or ``gcj02`` (Chinese providers; the
            track is shifted onto the tiles' datum).
    """

    session_idle_minutes: float = 30.0
    session_max_hours: float = 12.0
    secure_cookie: bool = False
    tile_url: str | None = None
    tile_datum: str = "wgs84"

    def __post_init__(self) -> None:
        check_range("console.session_idle_minutes", self.session_idle_minutes, 1, 24 * 60)
        check_range("console.session_max_hours", self.session_max_hours, 0.1, 24 * 30)
        if self.tile_datum not in ("wgs84", "gcj02"):
            raise ConfigError(f"console.tile_datum {self.tile_datum!r} must be wgs84 or gcj02")
        if self.tile_url is not None and (
            not re.match(r"^https?://", self.tile_url) or not all(p in self.tile_url for p in ("{z}", "{x}", "{y}"))
        ):
            raise ConfigError("console.tile_url must be an http(s) URL template with {z}, {x} and {y}")


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
        risk: ``[risk]``.
        webhooks: ``[webhooks]``.
        retention: ``[retention]``.
        downlink: ``[downlink]``.
        console: ``[console]``.
        cases: ``[cases]`` (case SLAs, the promise check).
        contact: ``[contact]`` (the borrower's default zone, contact rules per jurisdiction).
    """

    data_dir: Path = Path("collector-data")
    database_url: str | None = None
    log_level: str = "INFO"
    api_keys: Mapping[str, str] = field(default_factory=dict)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    api: ApiSettings = field(default_factory=ApiSettings)
    limits: Limits = field(default_factory=Limits)
    risk: RiskSettings = field(default_factory=RiskSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    downlink: DownlinkSettings = field(default_factory=DownlinkSettings)
    console: ConsoleSettings = field(default_factory=ConsoleSettings)
    cases: CaseSettings = field(default_factory=CaseSettings)
    contact: ContactSettings = field(default_factory=ContactSettings)

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


_SECTIONS: dict[str, type] = {
    "mqtt": MqttSettings,
    "api": ApiSettings,
    "limits": Limits,
    "risk": RiskSettings,
    "webhooks": WebhookSettings,
    "retention": RetentionSettings,
    "downlink": DownlinkSettings,
    "console": ConsoleSettings,
    "cases": CaseSettings,
    "contact": ContactSettings,
}


def _convert(value: Any, annotation: Any, base_dir: Path) -> Any:
    """Convert one value to a scalar type; ValueError when it does not fit."""
    if annotation is bool:
        return parse_bool(value)
    if isinstance(value, bool):
        raise TypeError(value)
    if annotation in (int, float):
        return annotation(value)
    if annotation in (str, Path) and not isinstance(value, str):
        raise ValueError(value)
    if annotation is str:
        return value
    if annotation is Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir / path
    if typing.get_origin(annotation) in (tuple, frozenset):
        # A TOML array, or comma-separated text from the environment.
        items = [p.strip() for p in value.split(",") if p.strip()] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not all(isinstance(i, str) for i in items):
            raise ValueError(value)
        return typing.get_origin(annotation)(items)
    raise TypeError(f"unsupported setting type {annotation!r}")


def _coerce(name: str, value: Any, annotation: Any, base_dir: Path) -> Any:
    """Convert a TOML or environment value to the annotated field type.

    A ``float`` whose name ends in ``_s`` is a duration: seconds, or a number with a unit
    (``90s``, ``5m``, ``2h``, ``7d``; :func:`protocol.config_values.parse_duration`).
    """
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if (value is None or value == "") and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
    if annotation is float and name.endswith("_s"):
        try:
            return parse_duration(value)
        except DurationValueError as exc:
            raise ConfigError(f"{name}={value!r} is not a valid duration ({exc})") from exc
    try:
        return _convert(value, annotation, base_dir)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}={value!r} is not a valid {getattr(annotation, '__name__', annotation)}") from exc


_RISK_OWN = ("model", "grace_days", "reassess_interval_s")


def _build_risk(raw: Mapping[str, Any], base_dir: Path) -> RiskSettings:
    """``[risk]``: ``model``, ``grace_days`` and ``reassess_interval_s`` here, every other key is a threshold."""
    own = {k: raw[k] for k in _RISK_OWN if k in raw}
    thresholds: dict[str, Any] = {}
    config_hints = typing.get_type_hints(RiskConfig)
    for key, value in raw.items():
        if key in own:
            continue
        if key not in config_hints:
            known = ", ".join(sorted([*config_hints, *_RISK_OWN]))
            raise ConfigError(f"unknown setting(s) in [risk]: {key} (known: {known})")
        if isinstance(value, str):  # from the environment: coerce like any other setting
            coerced = _coerce(f"risk.{key}", value, config_hints[key], base_dir)
            thresholds[key] = sorted(coerced) if isinstance(coerced, frozenset) else coerced
        else:
            thresholds[key] = value
    try:
        config = RiskConfig.from_dict(thresholds)
    except RiskConfigError as exc:
        raise ConfigError(str(exc)) from exc
    hints = typing.get_type_hints(RiskSettings)
    kwargs = {key: _coerce(f"risk.{key}", value, hints[key], base_dir) for key, value in own.items()}
    return RiskSettings(config=config, **kwargs)


def _build_contact(raw: Mapping[str, Any], base_dir: Path) -> ContactSettings:
    """``[contact]`` and its ``[contact.jurisdictions.NAME]`` tables (the file only)."""
    tables = raw.get("jurisdictions", {})
    if not isinstance(tables, Mapping) or not all(isinstance(t, Mapping) for t in tables.values()):
        raise ConfigError("[contact.jurisdictions] must hold one table per jurisdiction")
    plain = {k: v for k, v in raw.items() if k != "jurisdictions"}
    defaults: ContactSettings = _build(ContactSettings, "contact", plain, base_dir)
    rules = {str(name): defaults.jurisdiction_rules(table) for name, table in tables.items()}
    return dataclasses.replace(defaults, jurisdictions=rules)


def _build(cls: type, section: str, raw: Mapping[str, Any], base_dir: Path) -> Any:
    if cls is RiskSettings:
        return _build_risk(raw, base_dir)
    if cls is ContactSettings and "jurisdictions" in raw:
        return _build_contact(raw, base_dir)
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
        ConfigError: unreadable file, unknown key, unknown ``LIENWATCH_*`` variable, wrong
            type, value out of range; the message names the key or variable.
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
    for variable, value in _environment(env).items():
        section_name, field_name = _ENV_TARGETS[variable]
        if section_name == "api_keys":
            api_keys_raw = value
        elif section_name is None:
            top[field_name] = value
        else:
            sections[section_name][field_name] = value
    env_base = Path.cwd()
    hints = typing.get_type_hints(Settings)
    kwargs: dict[str, Any] = {}
    for name, value in top.items():
        from_env = f"{ENV_PREFIX}{name.upper()}" in env
        kwargs[name] = _coerce(name, value, hints[name], env_base if from_env else base_dir)
    for name, cls in _SECTIONS.items():
        kwargs[name] = _build(cls, name, sections[name], base_dir)
    kwargs["api_keys"] = _parse_api_keys(api_keys_raw, "api_keys")
    return Settings(**kwargs)


def _env_targets() -> dict[str, tuple[str | None, str]]:
    """Every variable the collector reads -> (section or ``None`` for top level, field).

    ``LIENWATCH_{FIELD}`` for top-level fields, ``LIENWATCH_{SECTION}_{FIELD}`` for fields of a
    section (for ``[risk]`` also every threshold of :class:`RiskConfig`) and ``LIENWATCH_API_KEYS``.
    """
    targets: dict[str, tuple[str | None, str]] = {f"{ENV_PREFIX}API_KEYS": ("api_keys", "api_keys")}
    for item in dataclasses.fields(Settings):
        if item.name not in _SECTIONS and item.name != "api_keys":
            targets[f"{ENV_PREFIX}{item.name.upper()}"] = (None, item.name)
    for section, cls in _SECTIONS.items():
        names = [f.name for f in dataclasses.fields(cls)]
        if cls is RiskSettings:
            names = [n for n in names if n != "config"] + [f.name for f in dataclasses.fields(RiskConfig)]
        names = [n for n in names if n != "jurisdictions"]  # per-jurisdiction tables: the file only
        for name in names:
            targets[f"{ENV_PREFIX}{section.upper()}_{name.upper()}"] = (section, name)
    return targets


_ENV_TARGETS = _env_targets()


def _environment(env: Mapping[str, str]) -> dict[str, str]:
    """The collector's ``LIENWATCH_*`` variables of ``env`` (``LIENWATCH_CONFIG`` aside).

    Raises:
        ConfigError: a ``LIENWATCH_*`` variable names no setting (other programs' prefixes
            ``LIENWATCH_AGENT_``, ``LIENWATCH_HIL_`` and ``LIENWATCH_TEST_`` are left alone).
    """
    known = [*_ENV_TARGETS, CONFIG_VARIABLE]
    try:
        found = env_overrides(env, ENV_PREFIX, known, ignore_prefixes=FOREIGN_ENV_PREFIXES)
    except UnknownVariableError as exc:
        raise ConfigError(f"{exc} (collector settings are LIENWATCH_<SECTION>_<KEY>, see docs/collector.md)") from exc
    found.pop(CONFIG_VARIABLE, None)
    return found


@functools.lru_cache(maxsize=1)
def get_settings() -> Settings:
    """FastAPI dependency: the process's settings, loaded once.

    Reads the file named by ``LIENWATCH_CONFIG`` (if set) and the environment.
    ``collector.api.app.create_app(settings)`` overrides this dependency with its argument.
    """
    return load_settings(os.environ.get(f"{ENV_PREFIX}CONFIG"))
