"""Signed device configurations (the used-car market list, the risk tier) and their MQTT publisher.

How this works
--------------
``config_versions`` is the downlink outbox: one row per device holding the last signed
:class:`protocol.DeviceConfig` message (``payload``), its version and, once the broker
acknowledged it, ``published_ms``. Signing (:func:`build_market_configs`) happens in the
transaction that changed the markets (an API request) or in the publisher's own sync round;
publishing happens later, from the outbox, in one thread:

1. **sync** - every device that should hold the current list and does not (no row yet, or
   a row older than the newest market change, e.g. after ``lienwatch collector markets
   import`` or a device registered from the CLI), and every device whose loan's customer
   tier differs from the tier its configuration carries, gets a freshly signed configuration;
2. **publish** - every row not yet acknowledged is published retained at QoS 1 on
   ``lw/v1/{device}/config`` and marked ``published_ms`` when the PUBACK arrives. After each
   (re)connect every stored configuration is published again (the broker may have lost its
   retained store; agents ignore a message identical to the one they hold).

Only the newest configuration of a device exists in the outbox, so a retry can never put
an older version on the retained topic after a newer one. Versions rise by one per device
and signing; agents accept only a version above the one they hold.

The body is built whole for each device from every section's owner (a section absent = the
agent's local default, docs/protocol.md section 6):

* ``markets``: ``[{"id", "name", "lat", "lon", "radius_m", "datum"}, ...]`` with each market as
  stored (its own datum; the agent converts to WGS-84). A device gets a list only once the
  collector has markets, so a device's local markets file stays in force until then; deleting
  the last market through the API pushes an empty list (kept when the device is re-signed
  for another section);
* ``tier``: ``{"name", "batch_interval_s"}`` (:mod:`protocol.tier_section`) from the loan's
  customer tier and the monitoring policy the risk score stored with it
  (``risk_states.tier`` and ``assessment.monitoring``, docs/risk.md): the agent uploads a
  batch at that interval. Absent while the loan has no v2 tier.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from protocol import DeviceConfig, config_topic, open_config, seal_config
from protocol.cli.key_files import load_private_key
from protocol.errors import KeyFileError, PlacesError, ProtocolError, TierSectionError
from protocol.places import load_places
from protocol.tier_section import TierSection, load_tier_section

from ..clock import ClockMs, wall_clock_ms
from ..errors import CollectorError, ConfigError
from ..files import FileReadError, read_bounded
from ..ingest.service import make_mqtt_client
from ..ingest.settings import MqttSettings
from ..storage.tables import Base, ConfigVersion, LoanRecord, MarketRecord, RiskStateRecord
from .worker_loop import WorkerLoop, WorkerLoopError

__all__ = [
    "ConfigMessage",
    "ConfigPublisher",
    "MarketFileError",
    "PublishRound",
    "build_market_configs",
    "check_market_item",
    "config_targets",
    "devices_needing_config",
    "load_market_file",
    "load_signing_key",
    "loan_tier_sections",
    "market_items",
    "upsert_markets",
]

log = logging.getLogger(__name__)

_device_keys = Base.metadata.tables["device_keys"]
MARKET_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_MARKET_FILE_BYTES = 4 * 1024 * 1024
MAX_MARKETS = 10_000


class MarketFileError(CollectorError):
    """A markets file is unreadable, malformed, or holds an item the agents would refuse."""


@dataclass(frozen=True, slots=True)
class ConfigMessage:
    """A signed configuration ready to publish (retained, QoS 1) on ``topic``."""

    device_id: str
    topic: str
    version: int
    payload: bytes


def load_signing_key(path: Path) -> Ed25519PrivateKey:
    """Load the collector's Ed25519 private key (``lienwatch keys generate --collector``).

    The file must be PEM PKCS #8, unencrypted, and not readable by group or others.

    Raises:
        ConfigError: missing, unreadable, insecure mode, or not an Ed25519 private key.
    """
    try:
        return load_private_key(path)
    except KeyFileError as exc:
        raise ConfigError(f"downlink.signing_key: {exc}") from exc


# ------------------------------------------------------------------ markets


def market_items(session: Session) -> list[dict[str, Any]]:
    """Every market as an item of the agent's markets list (as stored, with its datum)."""
    rows = session.scalars(sa.select(MarketRecord).order_by(MarketRecord.market_id))
    return [
        {"id": m.market_id, "name": m.name, "lat": m.lat, "lon": m.lon, "radius_m": m.radius_m, "datum": m.datum}
        for m in rows
    ]


def _market_document_items(document: object, where: str) -> list[object]:
    if isinstance(document, Mapping):
        for key in ("market", "markets"):
            if key in document:
                document = document[key]
                break
        else:
            raise MarketFileError(f"{where} has neither a [[market]] array nor a 'markets' list")
    if not isinstance(document, list):
        raise MarketFileError(f"{where} must hold a list of markets, got {type(document).__name__}")
    if len(document) > MAX_MARKETS:
        raise MarketFileError(f"{where} has {len(document)} markets, over the limit of {MAX_MARKETS}")
    return document


def load_market_file(path: Path) -> list[dict[str, Any]]:
    """Read a markets file (TOML ``[[market]]`` tables or JSON, like edge/data/markets.sample.toml).

    Every item is checked with the shared place loader (:func:`protocol.places.load_places`), so
    the collector never signs a list the devices would refuse; ids must also match
    ``[A-Za-z0-9_-]{1,64}`` and names be 1..200 characters (the API's rules).

    Returns:
        Items ``{"id", "name", "lat", "lon", "radius_m", "datum"}`` as given (not converted).

    Raises:
        MarketFileError: unreadable, too large, not TOML/JSON, or an invalid item (the
            message names the item and the key).
    """
    try:
        text = read_bounded(path, MAX_MARKET_FILE_BYTES, "markets file").decode("utf-8")
    except FileReadError as exc:
        raise MarketFileError(str(exc)) from exc
    except UnicodeDecodeError as exc:
        raise MarketFileError(f"markets file {path} is not UTF-8: {exc}") from exc
    try:
        document: object = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise MarketFileError(f"markets file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {exc}") from exc
    items = _market_document_items(document, f"markets file {path}")
    try:
        load_places(items)  # type: ignore[arg-type]
    except PlacesError as exc:
        raise MarketFileError(f"markets file {path}: {exc}") from exc
    out = []
    for index, item in enumerate(items):
        assert isinstance(item, Mapping)  # load_places checked it
        where = f"markets file {path} item {index}"
        market_id = item["id"]
        if not isinstance(market_id, str) or not MARKET_ID_RE.fullmatch(market_id):
            raise MarketFileError(f"{where}: id {market_id!r:.80} must match [A-Za-z0-9_-]{{1,64}}")
        name = str(item["name"])
        if not 1 <= len(name) <= 200:
            raise MarketFileError(f"{where}: name must be 1..200 characters")
        out.append(
            {
                "id": market_id,
                "name": name,
                "lat": float(item["lat"]),
                "lon": float(item["lon"]),
                "radius_m": float(item["radius_m"]),
                "datum": str(item["datum"]).lower(),
            }
        )
    return out


def check_market_item(item: Mapping[str, Any]) -> None:
    """Refuse a market the agents' loader would refuse (API bodies go through this too).

    Raises:
        MarketFileError: the item breaks a rule of :func:`protocol.places.load_places`.
    """
    try:
        load_places([item])
    except PlacesError as exc:
        raise MarketFileError(str(exc)) from exc


def upsert_markets(session: Session, items: Iterable[Mapping[str, Any]], *, now_ms: int) -> tuple[int, int]:
    """Create or replace markets by id (the caller commits). Returns ``(created, changed)``.

    A market stored with exactly these values is left alone (re-importing a file changes
    nothing and signs nothing).
    """
    created = changed = 0
    for item in items:
        row = session.get(MarketRecord, item["id"])
        values = (item["name"], item["lat"], item["lon"], item["radius_m"], item["datum"])
        if row is not None and (row.name, row.lat, row.lon, row.radius_m, row.datum) == values:
            continue
        if row is None:
            row = MarketRecord(market_id=item["id"])
            session.add(row)
            created += 1
        else:
            changed += 1
        row.name, row.lat, row.lon, row.radius_m, row.datum = values
        row.updated_ms = now_ms
    session.flush()
    return created, changed


# ------------------------------------------------------------------ signing


def config_targets(session: Session) -> list[str]:
    """Devices that get the market list: every device with an active key and every loan's device.

    A loan's device that is not registered yet still gets its (retained) configuration, so it
    finds the list waiting when it first connects.
    """
    registered = session.scalars(sa.select(_device_keys.c.device_id).where(_device_keys.c.revoked_ms.is_(None)))
    loans = session.scalars(sa.select(LoanRecord.device_id))
    return sorted({*registered, *loans})


def _tier_outdated(session: Session) -> list[str]:
    """Loan devices whose current customer tier is not the one their configuration carries."""
    signed = sa.select(ConfigVersion.tier).where(ConfigVersion.device_id == LoanRecord.device_id).scalar_subquery()
    query = (
        sa.select(LoanRecord.device_id)
        .join(RiskStateRecord, RiskStateRecord.loan_id == LoanRecord.loan_id)
        .where(RiskStateRecord.tier.is_not(None), RiskStateRecord.tier.is_distinct_from(signed))
    )
    return list(session.scalars(query))


def devices_needing_config(session: Session) -> list[str]:
    """Targets whose stored configuration is missing or older than the newest market change,
    and loan devices whose tier section is outdated.

    Without markets and tiers this is empty (a device keeps its local files).
    """
    out = set(_tier_outdated(session))
    revision = session.scalar(sa.select(sa.func.max(MarketRecord.updated_ms)))
    if revision is not None:
        stored = {row.device_id: row for row in session.scalars(sa.select(ConfigVersion))}
        for device_id in config_targets(session):
            row = stored.get(device_id)
            if row is None or row.payload is None or row.issued_ms < revision:
                out.add(device_id)
    return sorted(out)


def loan_tier_sections(session: Session, device_ids: Iterable[str]) -> dict[str, tuple[str, TierSection | None]]:
    """The tier and ``tier`` section of each of ``device_ids`` whose loan has a v2 tier.

    The batch interval is the one the risk score stored with the tier (``assessment.monitoring``);
    a stored value the section refuses is logged and the device gets no tier section (None),
    but the tier counts as signed, so it is not tried again until it changes.
    """
    wanted = sorted(set(device_ids))
    rows = session.execute(
        sa.select(LoanRecord.device_id, RiskStateRecord.tier, RiskStateRecord.assessment)
        .join(RiskStateRecord, RiskStateRecord.loan_id == LoanRecord.loan_id)
        .where(LoanRecord.device_id.in_(wanted), RiskStateRecord.tier.is_not(None))
    )
    out: dict[str, tuple[str, TierSection | None]] = {}
    for device_id, tier, assessment in rows:
        monitoring = assessment.get("monitoring") if isinstance(assessment, dict) else None
        interval = monitoring.get("batch_interval_s") if isinstance(monitoring, dict) else None
        try:
            out[device_id] = (tier, load_tier_section({"name": tier, "batch_interval_s": interval}))
        except TierSectionError as exc:
            log.warning("device %s gets no tier section: %s", device_id, exc)
            out[device_id] = (tier, None)
    return out


def _had_markets(row: ConfigVersion, private_key: Ed25519PrivateKey) -> bool:
    """Whether the configuration last signed for ``row``'s device carried a ``markets`` section."""
    if row.payload is None:
        return False
    try:
        previous = open_config(row.payload, config_topic(row.device_id), private_key.public_key())
    except ProtocolError:
        return False
    return "markets" in previous.body


def build_market_configs(
    session: Session, private_key: Ed25519PrivateKey, device_ids: Iterable[str], issued_ms: int
) -> list[ConfigMessage]:
    """Sign the whole current body (markets, tier) for each device, bumping its config version.

    The version goes up by one per device per call (the agent refuses anything not newer)
    and is kept, with the signed message to publish and the tier it carries, in
    ``config_versions`` in the caller's transaction (row locked on PostgreSQL, so two
    collectors never sign the same version).
    """
    wanted = sorted(set(device_ids))
    markets = market_items(session)
    tiers = loan_tier_sections(session, wanted)
    out = []
    for device_id in wanted:
        row = session.get(ConfigVersion, device_id, with_for_update=True)
        if row is None:
            row = ConfigVersion(device_id=device_id, version=0, issued_ms=issued_ms)
            session.add(row)
        body: dict[str, Any] = {}
        if markets or _had_markets(row, private_key):
            body["markets"] = markets
        tier_name, tier = tiers.get(device_id, (None, None))
        if tier is not None:
            body["tier"] = tier.as_dict()
        row.version += 1
        row.issued_ms = issued_ms
        row.tier = tier_name
        topic = config_topic(device_id)
        payload = seal_config(DeviceConfig(device_id, row.version, issued_ms, body), private_key, topic)
        row.payload = payload
        row.published_ms = None
        out.append(ConfigMessage(device_id, topic, row.version, payload))
    session.flush()
    return out


# ------------------------------------------------------------------ publishing


@dataclass(frozen=True, slots=True)
class PublishRound:
    """What one :meth:`ConfigPublisher.sync_once` did."""

    signed: int = 0
    published: int = 0
    failed: int = 0


class ConfigPublisher:
    """Publishes the downlink outbox retained at QoS 1 from its own MQTT 5 client and thread.

    Args:
        engine: the collector database.
        signing_key: the collector's Ed25519 private key.
        mqtt_settings: ``[mqtt]`` (the client id gets a ``-downlink`` suffix).
        resync_interval_s: time between sync rounds when nobody calls :meth:`wake`.
        publish_timeout_s: how long one publish waits for its PUBACK.
        clock_ms: collector clock (injected in tests).
    """

    def __init__(
        self,
        engine: Engine,
        signing_key: Ed25519PrivateKey,
        mqtt_settings: MqttSettings,
        *,
        resync_interval_s: float = 30.0,
        publish_timeout_s: float = 10.0,
        clock_ms: ClockMs = wall_clock_ms,
    ) -> None:
        self.engine = engine
        self.signing_key = signing_key
        self.resync_interval_s = resync_interval_s
        self.publish_timeout_s = publish_timeout_s
        self._clock_ms = clock_ms
        self.counters: Counter[str] = Counter()
        self.connected = threading.Event()
        self._republish_all = threading.Event()
        self._loop = WorkerLoop("lw-downlink", self._round, on_error=self._failed)
        self._settings = mqtt_settings
        client_id = f"{mqtt_settings.client_id[:55]}-downlink"
        self.client = make_mqtt_client(mqtt_settings, client_id, manual_ack=False)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            log.error("broker refused the downlink connection: %s", reason)
            return
        log.info("downlink publisher connected to %s:%s", self._settings.host, self._settings.port)
        self.connected.set()
        self._republish_all.set()
        self._loop.wake()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if not self._loop.stopping:
            log.warning("downlink publisher disconnected (%s); reconnecting", reason)

    # ------------------------------------------------------------ the work

    def submit(self, messages: Sequence[ConfigMessage]) -> None:
        """``app.state.config_publisher``: the messages are in the outbox already; publish soon."""
        if messages:
            self.wake()

    def wake(self) -> None:
        """Run a sync round now instead of at the next interval."""
        self._loop.wake()

    def sync_once(self) -> PublishRound:
        """Sign what is missing or outdated, then publish what the broker has not acknowledged.

        Database errors propagate (the thread logs them and retries next round); a publish that
        fails or times out stays in the outbox.
        """
        now = self._clock_ms()
        signed = 0
        with Session(self.engine) as session:
            needing = devices_needing_config(session)
            if needing:
                signed = len(build_market_configs(session, self.signing_key, needing, now))
                session.commit()
        self.counters["signed"] += signed
        if not self.connected.is_set():
            return PublishRound(signed=signed)
        everything = self._republish_all.is_set()
        self._republish_all.clear()
        with Session(self.engine) as session:
            query = sa.select(ConfigVersion.device_id, ConfigVersion.version, ConfigVersion.payload).where(
                ConfigVersion.payload.is_not(None)
            )
            if not everything:
                query = query.where(ConfigVersion.published_ms.is_(None))
            rows = session.execute(query.order_by(ConfigVersion.device_id)).all()
        published = failed = 0
        for device_id, version, payload in rows:
            if self._loop.stopping:
                break
            assert payload is not None  # selected on it
            if self._publish(config_topic(device_id), payload):
                published += 1
                with Session(self.engine) as session:
                    session.execute(
                        sa.update(ConfigVersion)
                        .where(ConfigVersion.device_id == device_id, ConfigVersion.version == version)
                        .values(published_ms=self._clock_ms())
                    )
                    session.commit()
            else:
                failed += 1
                if everything:
                    self._republish_all.set()  # try the full republish again next round
                break  # the connection is in trouble: the next round retries
        self.counters["published"] += published
        self.counters["publish_failed"] += failed
        return PublishRound(signed, published, failed)

    def _publish(self, topic: str, payload: bytes) -> bool:
        try:
            info = self.client.publish(topic, payload, qos=1, retain=True)
            info.wait_for_publish(self.publish_timeout_s)
        except (RuntimeError, ValueError) as exc:  # paho: not connected / queue full
            log.warning("publishing the configuration on %s failed: %s", topic, exc)
            return False
        if not info.is_published():
            log.warning("no PUBACK for the configuration on %s within %.1f s", topic, self.publish_timeout_s)
            return False
        return True

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect (paho reconnects by itself) and start the sync thread.

        Raises:
            WorkerLoopError: already started.
        """
        if self._loop.running:
            raise WorkerLoopError("config publisher already started")
        s = self._settings
        self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True)
        self.client.loop_start()
        self._loop.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread and disconnect (unpublished configurations stay in the outbox)."""
        self._loop.stop(timeout)
        self.client.disconnect()
        self.client.loop_stop()

    def _round(self) -> float:
        self.sync_once()
        return self.resync_interval_s

    def _failed(self, exc: Exception) -> float:
        self.counters["errors"] += 1
        if isinstance(exc, (sa.exc.SQLAlchemyError, CollectorError, ProtocolError)):
            log.warning("downlink sync round failed, retrying in %.1f s: %s", self.resync_interval_s, exc)
        else:  # a bug: keep the traceback
            delay = self.resync_interval_s
            log.error("downlink sync round failed unexpectedly, retrying in %.1f s", delay, exc_info=exc)
        return self.resync_interval_s
