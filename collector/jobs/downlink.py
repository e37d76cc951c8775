"""Signed device configurations (typed places, tracking, key announcements, the risk tier) and their MQTT publisher.

How this works
--------------
``config_versions`` is the downlink outbox: one row per device holding the last signed
:class:`protocol.DeviceConfig` message (``payload``), its version and, once the broker
acknowledged it, ``published_ms``. Signing (:func:`build_device_configs`) happens in the
transaction that changed the places (an API request) or in the publisher's own sync round;
publishing happens later, from the outbox, in one thread:

1. **sync** - every device that should hold the current list and does not (no row yet, or
   a row older than the newest place change, e.g. after ``lienwatch collector places
   import``/``delete`` or a device registered from the CLI), and every device whose loan's
   customer tier differs from the tier its configuration carries, gets a freshly signed
   configuration;
2. **publish** - every row not yet acknowledged is published retained at QoS 1 on
   ``lw/v1/{device}/config`` and marked ``published_ms`` when the PUBACK arrives. After each
   (re)connect every stored configuration is published again (the broker may have lost its
   retained store; agents ignore a message identical to the one they hold).

Only the newest configuration of a device exists in the outbox, so a retry can never put
an older version on the retained topic after a newer one. Versions rise by one per device
and signing; agents accept only a version above the one they hold.

Body: built whole for each device from every section owner (:data:`SECTION_OWNERS`,
docs/protocol.md section 6); a section absent means the agent's local default.

* ``places``: every place with its ``type`` (``{"id", "type", "name", "lat", "lon",
  "radius_m", "datum"}``, as stored, in its own datum; the agent converts to WGS-84), and
  ``markets``: the places of type ``used_car_market`` without ``type``, for agents from before
  typed places. An agent that knows ``places`` applies it and ignores ``markets``. A device
  gets the lists only once the collector has had a place, so its local places file stays in
  force until then; deleting the last place pushes empty lists.
* ``tracking``: ``{"enabled": false, "reason": "settled"}`` once the device's loan is settled
  or transferred (collector.loans.lifecycle): the agent stops collecting and sending positions.
* ``tier``: ``{"name", "batch_interval_s"}`` (:mod:`protocol.tier_section`) from the loan's
  customer tier and the monitoring policy the risk score stored with it
  (``risk_states.tier`` and ``assessment.monitoring``, docs/risk.md): the agent uploads a
  batch at that interval. Absent while the loan has no v2 tier.
* ``keys``: ``{"next": ...}`` (:mod:`protocol.downlink_keys`) while a next downlink key is
  announced (``downlink_keys``, :func:`announce_next_key`). Announcing a key, and the
  collector's first round signing with it (:func:`promote_signing_key`), both re-sign every
  device's configuration.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from protocol import DeviceConfig, config_topic, seal_config
from protocol.cli.key_files import load_private_key
from protocol.downlink_keys import keys_section, raw_public_key
from protocol.errors import KeyFileError, TierSectionError
from protocol.tier_section import TierSection, load_tier_section

from ..clock import ClockMs, wall_clock_ms
from ..errors import ConfigError
from ..ingest.settings import MqttSettings
from ..storage.places import place_items, places_revision
from ..storage.tables import (
    FINAL_LOAN_STATUSES,
    Base,
    ConfigVersion,
    DownlinkKey,
    LoanDeviceRecord,
    LoanRecord,
    RiskStateRecord,
)
from .publishing_worker import PublishingWorker

__all__ = [
    "SECTION_OWNERS",
    "STOP_TRACKING_STATUSES",
    "ConfigMessage",
    "ConfigPublisher",
    "PublishRound",
    "announce_next_key",
    "announced_next_key",
    "build_device_configs",
    "config_body",
    "config_targets",
    "devices_needing_config",
    "load_signing_key",
    "loan_tier_sections",
    "promote_signing_key",
    "tracking_section",
]

log = logging.getLogger(__name__)

_device_keys = Base.metadata.tables["device_keys"]


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


# ------------------------------------------------------------------ downlink key rotation


def announce_next_key(session: Session, public_key: Ed25519PublicKey, *, now_ms: int) -> DownlinkKey:
    """Announce ``public_key`` as the collector's next downlink key (the caller commits).

    Every configuration signed from now on carries it in its ``keys`` section (and every
    device's configuration is signed again); agents that accept one trust the key next to
    the current one. Announcing the key already announced changes nothing.
    """
    raw = raw_public_key(public_key)
    newest = session.scalars(sa.select(DownlinkKey).order_by(DownlinkKey.id.desc()).limit(1)).first()
    if newest is not None and newest.public_key == raw and newest.promoted_ms is None:
        return newest
    row = DownlinkKey(public_key=raw, fingerprint=hashlib.sha256(raw).hexdigest(), announced_ms=now_ms)
    session.add(row)
    session.flush()
    return row


def _pending(session: Session) -> DownlinkKey | None:
    """The newest announced key not signed with yet."""
    query = sa.select(DownlinkKey).where(DownlinkKey.promoted_ms.is_(None)).order_by(DownlinkKey.id.desc()).limit(1)
    return session.scalars(query).first()


def announced_next_key(session: Session, signing_key: Ed25519PrivateKey) -> Ed25519PublicKey | None:
    """The key the configurations announce: the newest pending one unless it is ``signing_key``'s."""
    pending = _pending(session)
    if pending is None or pending.public_key == raw_public_key(signing_key.public_key()):
        return None
    return Ed25519PublicKey.from_public_bytes(pending.public_key)


def promote_signing_key(session: Session, signing_key: Ed25519PrivateKey, *, now_ms: int) -> bool:
    """Mark the announced key promoted when the collector now signs with it (the caller commits).

    Returns True when it did: every device's configuration is then signed again with the new
    key (and without the announcement), which makes the agents retire the old key.
    """
    pending = _pending(session)
    if pending is None or pending.public_key != raw_public_key(signing_key.public_key()):
        return False
    pending.promoted_ms = now_ms
    session.flush()
    log.warning("downlink key %s promoted: every configuration is signed again with it", pending.fingerprint[:16])
    return True


def _key_revision(session: Session) -> int | None:
    announced = session.scalar(sa.select(sa.func.max(DownlinkKey.announced_ms)))
    promoted = session.scalar(sa.select(sa.func.max(DownlinkKey.promoted_ms)))
    times = [t for t in (announced, promoted) if t is not None]
    return max(times) if times else None
# ------------------------------------------------------------------ signing


def config_targets(session: Session) -> list[str]:
    """Devices that get the place list: every device with an active key and every loan's trackers.

    A loan's device that is not registered yet still gets its (retained) configuration, so it
    finds the list waiting when it first connects.
    """
    registered = session.scalars(sa.select(_device_keys.c.device_id).where(_device_keys.c.revoked_ms.is_(None)))
    loans = session.scalars(sa.select(LoanRecord.device_id))
    second = session.scalars(sa.select(LoanDeviceRecord.device_id))
    return sorted({*registered, *loans, *second})


#: Loan statuses whose device stops collecting and sending positions.
STOP_TRACKING_STATUSES = FINAL_LOAN_STATUSES


def tracking_section(session: Session, device_id: str) -> dict[str, Any] | None:
    """``{"enabled": false, "reason": status}`` when the device's loan is settled or transferred."""
    status = session.scalar(sa.select(LoanRecord.status).where(LoanRecord.device_id == device_id))
    if status in STOP_TRACKING_STATUSES:
        return {"enabled": False, "reason": status}
    return None


def _places_section(session: Session, _device_id: str) -> list[dict[str, Any]] | None:
    if places_revision(session) is None:
        return None  # never had a place: the device keeps its local places file
    return place_items(session)


def _legacy_markets_section(session: Session, device_id: str) -> list[dict[str, Any]] | None:
    places = _places_section(session, device_id)
    if places is None:
        return None
    return [{k: v for k, v in item.items() if k != "type"} for item in places if item["type"] == "used_car_market"]


#: Who owns which section of the body: ``(name, owner(session, device_id) -> value or None)``.
#: A new section owner adds one line here (and a row to docs/protocol.md section 6). ``keys``
#: needs the signing key and is added by :func:`build_device_configs`.
SECTION_OWNERS: tuple[tuple[str, Callable[[Session, str], Any]], ...] = (
    ("places", _places_section),
    ("markets", _legacy_markets_section),
    ("tracking", tracking_section),
)


def config_body(session: Session, device_id: str) -> dict[str, Any]:
    """The whole configuration body of a device from every owner (None from an owner: no section)."""
    body = {}
    for name, owner in SECTION_OWNERS:
        value = owner(session, device_id)
        if value is not None:
            body[name] = value
    return body


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
    """Targets whose stored configuration is missing or older than a change it must carry.

    A change is the newest place change (none while the collector has never had a place: a
    device keeps its local places file), a downlink key announced or promoted, the status
    change of the device's loan that stopped tracking (``loans.status_changed_ms``), or a
    loan tier other than the one its configuration carries.
    """
    revision = places_revision(session)
    if revision is not None:
        revision = max(revision, _key_revision(session) or revision)  # a key announced or promoted
    closing = sa.select(LoanRecord.device_id, LoanRecord.status_changed_ms).where(
        LoanRecord.status.in_(STOP_TRACKING_STATUSES), LoanRecord.status_changed_ms.is_not(None)
    )
    closed: dict[str, int | None] = dict(session.execute(closing).all())
    stored = {row.device_id: row for row in session.scalars(sa.select(ConfigVersion))}
    out = set(_tier_outdated(session))
    for device_id in config_targets(session):
        changed = max((t for t in (revision, closed.get(device_id)) if t is not None), default=None)
        if changed is None:
            continue
        row = stored.get(device_id)
        if row is None or row.payload is None or row.issued_ms < changed:
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


def build_device_configs(
    session: Session, private_key: Ed25519PrivateKey, device_ids: Iterable[str], issued_ms: int
) -> list[ConfigMessage]:
    """Sign each device's whole configuration body (:func:`config_body`, the loan's ``tier``, the
    ``keys`` announcement), bumping its version.

    The version goes up by one per device per call (the agent refuses anything not newer)
    and is kept, with the signed message to publish and the tier it carries, in
    ``config_versions`` in the caller's transaction (row locked on PostgreSQL, so two
    collectors never sign the same version).
    """
    wanted = sorted(set(device_ids))
    next_key = announced_next_key(session, private_key)
    tiers = loan_tier_sections(session, wanted)
    out = []
    for device_id in wanted:
        body = config_body(session, device_id)
        tier_name, tier = tiers.get(device_id, (None, None))
        if tier is not None:
            body["tier"] = tier.as_dict()
        if next_key is not None:
            body["keys"] = keys_section(next_key)
        row = session.get(ConfigVersion, device_id, with_for_update=True)
        if row is None:
            row = ConfigVersion(device_id=device_id, version=0, issued_ms=issued_ms)
            session.add(row)
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
        self._republish_all = threading.Event()
        self._settings = mqtt_settings
        self._worker = PublishingWorker(
            "downlink", mqtt_settings, self.sync_once, interval_s=resync_interval_s, counters=self.counters,
            logger=log, title="config publisher", round_name="downlink sync round", on_connected=self._on_connected,
        )
        self.connected = self._worker.connected
        client = self._worker.client
        assert client is not None  # [mqtt] is given
        self.client = client

    def _on_connected(self) -> None:
        """After each accepted connection: publish everything again (the broker may have lost it)."""
        log.info("downlink publisher connected to %s:%s", self._settings.host, self._settings.port)
        self._republish_all.set()
        self._worker.wake()

    # ------------------------------------------------------------ the work

    def submit(self, messages: Sequence[ConfigMessage]) -> None:
        """``app.state.config_publisher``: the messages are in the outbox already; publish soon."""
        if messages:
            self.wake()

    def wake(self) -> None:
        """Run a sync round now instead of at the next interval."""
        self._worker.wake()

    def sync_once(self) -> PublishRound:
        """Sign what is missing or outdated, then publish what the broker has not acknowledged.

        Database errors propagate (the thread logs them and retries next round); a publish that
        fails or times out stays in the outbox.
        """
        now = self._clock_ms()
        signed = 0
        with Session(self.engine) as session:
            if promote_signing_key(session, self.signing_key, now_ms=now):
                session.commit()
            needing = devices_needing_config(session)
            if needing:
                signed = len(build_device_configs(session, self.signing_key, needing, now))
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
            if self._worker.stopping:
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
        self._worker.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the thread and disconnect (unpublished configurations stay in the outbox)."""
        self._worker.stop(timeout)
