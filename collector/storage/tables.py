"""Every table of the collector (SQLAlchemy 2 declarative models on one :class:`Base`).

Ingest side (migration ``0001``): device registry, batch ledger, observations, latest
per-device state and the dead-letter table. Loan side (migrations ``0002``, ``0003``):
loans, schedules, repayments, risk state and events, the webhook and downlink outboxes,
the audit log, typed places (0014) and fix day summaries. The migrations live in
``collector/storage/migrations``; a test compares this metadata with the migrated schema on
SQLite and PostgreSQL. The operations on these tables live with their owners
(``collector.ingest``, ``collector.risk``, ``collector.loans``, ``collector.jobs``).

Money is integer cents; dates (due dates, payment value dates) are SQL ``DATE``.

Times are ``BIGINT`` epoch milliseconds UTC, like the protocol. Sequence numbers are
unsigned 64-bit on the wire; :class:`UInt64` stores them in a signed ``BIGINT`` (values
below 2**63, i.e. every realistic counter, are stored unchanged).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "FINAL_LOAN_STATUSES",
    "AccessGrant",
    "AlertRecord",
    "AuditEntry",
    "Base",
    "BatchRecord",
    "BigId",
    "CaseActionRecord",
    "CaseEventRecord",
    "CaseRecord",
    "ConfigVersion",
    "DailyStatsRecord",
    "DeadLetter",
    "Device",
    "DeviceKey",
    "DeviceStatus",
    "DownlinkKey",
    "FixDaySummary",
    "FixRecord",
    "InstallmentRecord",
    "LoanDeviceRecord",
    "LoanRecord",
    "PlaceRecord",
    "RegistryVersion",
    "RepaymentRecord",
    "RiskEventRecord",
    "RiskStateRecord",
    "SampleRecord",
    "ScheduleVersion",
    "UInt64",
    "WebhookDelivery",
]

#: Loan statuses after which nothing is worked or tracked any more (collector.loans.lifecycle):
#: the device stops reporting positions, the loan leaves the worklist and the risk jobs.
FINAL_LOAN_STATUSES = ("settled", "transferred")

#: Auto-increment 64-bit key that is also SQLite's rowid alias.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

_NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}


class UInt64(sa.TypeDecorator[int]):
    """An unsigned 64-bit integer kept in a signed BIGINT (two's complement)."""

    impl = sa.BigInteger
    cache_ok = True

    def process_bind_param(self, value: int | None, dialect: sa.Dialect) -> int | None:
        if value is None:
            return None
        if not 0 <= value < 2**64:
            raise ValueError(f"{value} is not an unsigned 64-bit integer")
        return value - 2**64 if value >= 2**63 else value

    def process_result_value(self, value: int | None, dialect: sa.Dialect) -> int | None:
        if value is None:
            return None
        return value + 2**64 if value < 0 else value


class Base(DeclarativeBase):
    """Declarative base of every collector table."""

    metadata = sa.MetaData(naming_convention=_NAMING)
    type_annotation_map: dict[Any, Any] = {int: sa.BigInteger, dict[str, Any]: sa.JSON}


class Device(Base):
    """A registered vehicle terminal."""

    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    created_ms: Mapped[int]
    label: Mapped[str | None] = mapped_column(sa.String(200))


class DeviceKey(Base):
    """An Ed25519 public key of a device; at most one active (not revoked) per device."""

    __tablename__ = "device_keys"
    __table_args__ = (
        sa.Index(
            "uq_device_keys_one_active",
            "device_id",
            unique=True,
            sqlite_where=sa.text("revoked_ms IS NULL"),
            postgresql_where=sa.text("revoked_ms IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("devices.device_id"))
    public_key: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    added_ms: Mapped[int]
    revoked_ms: Mapped[int | None]


class RegistryVersion(Base):
    """One row whose version goes up with every registry change (the ingest key cache checks it)."""

    __tablename__ = "registry_version"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    version: Mapped[int]


class BatchRecord(Base):
    """The batch ledger: one row per stored (device, seq); the unique key makes ingest idempotent."""

    __tablename__ = "batches"
    __table_args__ = (sa.UniqueConstraint("device_id", "seq", name="uq_batches_device_seq"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    device_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("devices.device_id"))
    seq: Mapped[int] = mapped_column(UInt64)
    boot_id: Mapped[bytes] = mapped_column(sa.LargeBinary(16))
    created_ms: Mapped[int]
    received_ms: Mapped[int] = mapped_column(index=True)
    fix_count: Mapped[int] = mapped_column(sa.Integer)
    sample_count: Mapped[int] = mapped_column(sa.Integer)
    alert_count: Mapped[int] = mapped_column(sa.Integer)
    stats_count: Mapped[int] = mapped_column(sa.Integer)
    first_time_ms: Mapped[int | None]
    last_time_ms: Mapped[int | None]
    counters: Mapped[dict[str, Any]]
    message_bytes: Mapped[int] = mapped_column(sa.Integer)


class FixRecord(Base):
    """One GNSS fix, stored by observation time.

    On PostgreSQL partitioned by day of ``time_ms`` (migration 0007,
    collector.storage.partitions); there the primary key is ``(id, time_ms)``.
    """

    __tablename__ = "fixes"
    __table_args__ = (sa.Index("ix_fixes_device_time", "device_id", "time_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("batches.id"), index=True)
    device_id: Mapped[str] = mapped_column(sa.String(64))
    time_ms: Mapped[int]
    lat: Mapped[float] = mapped_column(sa.Double)
    lon: Mapped[float] = mapped_column(sa.Double)
    alt_m: Mapped[float | None] = mapped_column(sa.Double)
    speed_mps: Mapped[float | None] = mapped_column(sa.Double)
    course_deg: Mapped[float | None] = mapped_column(sa.Double)
    mode: Mapped[int] = mapped_column(sa.SmallInteger)
    hdop: Mapped[float | None] = mapped_column(sa.Double)
    sats_used: Mapped[int | None] = mapped_column(sa.SmallInteger)
    mean_snr: Mapped[float | None] = mapped_column(sa.Double)


class SampleRecord(Base):
    """One canonical signal sample; ``value`` is JSON (bool, int, float or text).

    On PostgreSQL partitioned by day of ``time_ms`` like :class:`FixRecord`.
    """

    __tablename__ = "samples"
    __table_args__ = (sa.Index("ix_samples_device_name_time", "device_id", "name", "time_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("batches.id"), index=True)
    device_id: Mapped[str] = mapped_column(sa.String(64))
    name: Mapped[str] = mapped_column(sa.String(128))
    time_ms: Mapped[int]
    value: Mapped[Any] = mapped_column(sa.JSON)


class AlertRecord(Base):
    """One alert record (RAISED or CLEARED) of an on-device rule."""

    __tablename__ = "alerts"
    __table_args__ = (
        sa.Index("ix_alerts_device_time", "device_id", "time_ms"),
        sa.Index("ix_alerts_device_episode", "device_id", "episode"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    batch_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("batches.id"), index=True)
    device_id: Mapped[str] = mapped_column(sa.String(64))
    rule: Mapped[str] = mapped_column(sa.String(64))
    severity: Mapped[int] = mapped_column(sa.SmallInteger)
    state: Mapped[int] = mapped_column(sa.SmallInteger)
    time_ms: Mapped[int]
    episode: Mapped[str] = mapped_column(sa.String(128))
    evidence: Mapped[dict[str, Any]]


class DailyStatsRecord(Base):
    """Driving figures of one device-local day; the row with the latest ``time_ms`` wins.

    The traction-battery figures (``energy_*``, ``charging_sessions``, ``soh_percent``; EVs
    only, NULL otherwise) were added by migration 0014.
    """

    __tablename__ = "daily_stats"

    device_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True)
    day: Mapped[str] = mapped_column(sa.String(10), primary_key=True)
    batch_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("batches.id"))
    time_ms: Mapped[int]
    distance_m: Mapped[float] = mapped_column(sa.Double)
    driving_s: Mapped[float] = mapped_column(sa.Double)
    harsh_accel: Mapped[int]
    harsh_brake: Mapped[int]
    odometer_km: Mapped[float | None] = mapped_column(sa.Double)
    final: Mapped[bool] = mapped_column(sa.Boolean)
    energy_used_kwh: Mapped[float | None] = mapped_column(sa.Double)
    energy_charged_kwh: Mapped[float | None] = mapped_column(sa.Double)
    charging_sessions: Mapped[int | None] = mapped_column(sa.Integer)
    soh_percent: Mapped[float | None] = mapped_column(sa.Double)


class DeviceStatus(Base):
    """Latest known state of a vehicle; every field only moves forward in observation time.

    Attributes:
        last_fix_ms: observation time of the newest fix (with its position and speed).
        last_seen_ms: newest observation time in any stored batch.
        last_received_ms: collector clock of the newest accepted message.
        online: from the signed state topic (birth / Last Will); ``None`` until one arrives.
        state_time_ms: device time of the state message ``online`` comes from.
        state_boot_id: boot id of that state message.
        state_connection: connection counter of that state message (``None``: legacy
            message without one); only a strictly newer connection moves ``online``.
        seq_conflicts: batches refused because their (device, seq) was stored with other content.
        device_counters: the agent's counters from the newest batch (by ``created_ms``).
    """

    __tablename__ = "device_status"

    device_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("devices.device_id"), primary_key=True)
    last_fix_ms: Mapped[int | None]
    last_lat: Mapped[float | None] = mapped_column(sa.Double)
    last_lon: Mapped[float | None] = mapped_column(sa.Double)
    last_speed_mps: Mapped[float | None] = mapped_column(sa.Double)
    last_seen_ms: Mapped[int | None]
    last_received_ms: Mapped[int | None]
    online: Mapped[bool | None] = mapped_column(sa.Boolean)
    state_time_ms: Mapped[int | None]
    state_boot_id: Mapped[bytes | None] = mapped_column(sa.LargeBinary(16))
    state_connection: Mapped[int | None]
    counters_time_ms: Mapped[int | None]
    device_counters: Mapped[dict[str, Any] | None]
    batches_stored: Mapped[int] = mapped_column(default=0, server_default="0")
    fixes_stored: Mapped[int] = mapped_column(default=0, server_default="0")
    samples_stored: Mapped[int] = mapped_column(default=0, server_default="0")
    alerts_stored: Mapped[int] = mapped_column(default=0, server_default="0")
    duplicates: Mapped[int] = mapped_column(default=0, server_default="0")
    seq_conflicts: Mapped[int] = mapped_column(default=0, server_default="0")


class DeadLetter(Base):
    """A message the ingest refused, kept with its raw bytes and the reason."""

    __tablename__ = "dead_letters"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    received_ms: Mapped[int] = mapped_column(index=True)
    topic: Mapped[str] = mapped_column(sa.String(1024))
    device_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)
    reason: Mapped[str] = mapped_column(sa.String(64), index=True)
    detail: Mapped[str] = mapped_column(sa.Text)
    payload: Mapped[bytes] = mapped_column(sa.LargeBinary)
    payload_bytes: Mapped[int] = mapped_column(sa.Integer)
    payload_sha256: Mapped[str | None] = mapped_column(sa.String(64))


# ------------------------------------------------------------------ loan side


class LoanRecord(Base):
    """A loan secured by a vehicle with a T-BOX."""

    __tablename__ = "loans"

    loan_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(sa.String(64), unique=True)
    vin: Mapped[str] = mapped_column(sa.String(17), unique=True)
    borrower_ref: Mapped[str] = mapped_column(sa.String(64), index=True)  # console search (migration 0004)
    principal_cents: Mapped[int]
    created_ms: Mapped[int]
    # Migration 0010: the borrower's IANA zone and contact-rule jurisdiction; NULL = the
    # ``[contact]`` defaults (collector.cases.settings).
    time_zone: Mapped[str | None] = mapped_column(sa.String(64))
    jurisdiction: Mapped[str | None] = mapped_column(sa.String(32))
    # lifecycle (migration 0011, collector.loans.lifecycle): active | settled | charged_off |
    # repossessed | transferred; closed_ms starts the 90-day location and 5-year record clocks.
    status: Mapped[str] = mapped_column(sa.String(16), default="active", server_default="active")
    closed_ms: Mapped[int | None]
    status_changed_ms: Mapped[int | None]  # when the collector recorded the last status change
    schedule_version: Mapped[int] = mapped_column(sa.Integer, default=1, server_default="1")
    #: the lender's region label for the loan (optional CSV column, worklist filter; migration 0013)
    region: Mapped[str | None] = mapped_column(sa.String(64), index=True)


class LoanDeviceRecord(Base):
    """A second tracker on a loan's car (e.g. a hidden battery-powered backup beside the wired T-BOX).

    ``loans.device_id`` stays the main device; a loan has at most one row here (``loan_id``
    unique), so at most two trackers per car, and a device tracks at most one car. The
    collector compares the two (``collector.risk.trackers``) and raises ``tracker_divergence``.
    Migration 0014.
    """

    __tablename__ = "loan_devices"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    loan_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"), unique=True
    )
    added_ms: Mapped[int]


class InstallmentRecord(Base):
    """One scheduled instalment of a loan (``seq`` from 1, in due-date order)."""

    __tablename__ = "installments"

    loan_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    due_date: Mapped[date] = mapped_column(sa.Date)
    amount_cents: Mapped[int]


class RepaymentRecord(Base):
    """A received payment; ``(loan_id, payment_id)`` is the idempotency key."""

    __tablename__ = "repayments"
    __table_args__ = (sa.UniqueConstraint("loan_id", "payment_id", name="uq_repayments_loan_payment"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    loan_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"))
    payment_id: Mapped[str] = mapped_column(sa.String(64))
    paid_on: Mapped[date] = mapped_column(sa.Date, index=True)
    amount_cents: Mapped[int]
    recorded_ms: Mapped[int]
    # a bounced payment (migration 0011): the reversal's own transaction id and when it arrived
    reversal_id: Mapped[str | None] = mapped_column(sa.String(64))
    reversed_ms: Mapped[int | None]


class RiskStateRecord(Base):
    """The current risk state of a loan (one row per assessed loan)."""

    __tablename__ = "risk_states"

    loan_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"), primary_key=True
    )
    level: Mapped[str] = mapped_column(sa.String(16), index=True)
    next_step: Mapped[str] = mapped_column(sa.String(16))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)
    facts: Mapped[dict[str, Any]]
    evaluated_ms: Mapped[int]
    changed_ms: Mapped[int]
    # v2 score (migration 0005): NULL until the loan is reassessed by a v2 collector.
    score: Mapped[float | None] = mapped_column(sa.Double)
    expected_loss_cents: Mapped[int | None] = mapped_column(index=True)
    credit_level: Mapped[str | None] = mapped_column(sa.String(16))
    credit_next_step: Mapped[str | None] = mapped_column(sa.String(32))
    collateral_level: Mapped[str | None] = mapped_column(sa.String(16))
    collateral_next_step: Mapped[str | None] = mapped_column(sa.String(32))
    tier: Mapped[str | None] = mapped_column(sa.String(24))
    model_version: Mapped[str | None] = mapped_column(sa.String(32))
    assessment: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON)


class RiskEventRecord(Base):
    """A level change of a loan (old -> new, with the reasons at that time)."""

    __tablename__ = "risk_events"
    __table_args__ = (sa.Index("ix_risk_events_loan_time", "loan_id", "time_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(36), unique=True)
    loan_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"))
    time_ms: Mapped[int] = mapped_column(index=True)
    old_level: Mapped[str] = mapped_column(sa.String(16))
    new_level: Mapped[str] = mapped_column(sa.String(16))
    next_step: Mapped[str] = mapped_column(sa.String(16))
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(sa.JSON)


class WebhookDelivery(Base):
    """One (event, URL) delivery in the webhook outbox (see collector.jobs.webhooks)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        sa.UniqueConstraint("event_id", "url", name="uq_webhook_deliveries_event_url"),
        sa.Index("ix_webhook_deliveries_due", "status", "next_attempt_ms"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(sa.String(36))
    url: Mapped[str] = mapped_column(sa.String(2048))
    body: Mapped[bytes] = mapped_column(sa.LargeBinary)
    status: Mapped[str] = mapped_column(sa.String(16))  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(sa.Integer, default=0)
    next_attempt_ms: Mapped[int]
    created_ms: Mapped[int]
    delivered_ms: Mapped[int | None]
    last_error: Mapped[str | None] = mapped_column(sa.String(500))


class AuditEntry(Base):
    """Who read or changed what, when (see collector.storage.audit)."""

    __tablename__ = "audit_log"
    __table_args__ = (sa.Index("ix_audit_log_subject", "subject_type", "subject_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    time_ms: Mapped[int] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(32))
    action: Mapped[str] = mapped_column(sa.String(64))
    subject_type: Mapped[str] = mapped_column(sa.String(32))
    subject_id: Mapped[str] = mapped_column(sa.String(128))
    detail: Mapped[dict[str, Any]]


class PlaceRecord(Base):
    """A typed place the devices watch (a used-car market, a pawn lot, a port, ...).

    Stored as given: ``lat``/``lon`` in the declared ``datum`` (the agents convert once, with
    :mod:`protocol.places`). A deleted place stays as a tombstone (``deleted_ms`` set) so the
    newest ``updated_ms`` over all rows is the revision of the list: a deletion made from the
    CLI still makes the publisher sign a new list. Migration 0014 replaced ``markets`` with it.
    """

    __tablename__ = "places"

    place_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    type: Mapped[str] = mapped_column(sa.String(32), index=True)
    name: Mapped[str] = mapped_column(sa.String(200))
    lat: Mapped[float] = mapped_column(sa.Double)
    lon: Mapped[float] = mapped_column(sa.Double)
    datum: Mapped[str] = mapped_column(sa.String(8))
    radius_m: Mapped[float] = mapped_column(sa.Double)
    updated_ms: Mapped[int]
    deleted_ms: Mapped[int | None]


class DownlinkKey(Base):
    """A public key announced as the collector's next downlink signing key (migration 0009).

    Configurations carry it in their ``keys`` section while it is announced (``promoted_ms``
    NULL and not the key the collector signs with); ``promoted_ms`` is set when the collector
    first signs with it (docs/security.md section 5).
    """

    __tablename__ = "downlink_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    public_key: Mapped[bytes] = mapped_column(sa.LargeBinary(32))
    fingerprint: Mapped[str] = mapped_column(sa.String(64))
    announced_ms: Mapped[int]
    promoted_ms: Mapped[int | None]


class ConfigVersion(Base):
    """The last configuration signed for a device (versions must strictly increase).

    ``payload`` is the signed message (kept so it can be published, and re-published
    retained after a broker lost it); ``published_ms`` is set once the broker acknowledged
    it (NULL = still to publish). Migration 0003 added both. ``tier`` is the customer tier
    whose ``tier`` section that configuration carries (NULL: none; migration 0013).
    """

    __tablename__ = "config_versions"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    version: Mapped[int]
    issued_ms: Mapped[int]
    payload: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    published_ms: Mapped[int | None]
    tier: Mapped[str | None] = mapped_column(sa.String(24))


class FixDaySummary(Base):
    """What retention keeps of a device-day of fixes once the precise points are gone."""

    __tablename__ = "fix_day_summaries"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    day: Mapped[str] = mapped_column(sa.String(10), primary_key=True)  # UTC date YYYY-MM-DD
    fix_count: Mapped[int]
    first_ms: Mapped[int]
    last_ms: Mapped[int]
    distance_m: Mapped[float] = mapped_column(sa.Double)


# ------------------------------------------------------------------ cases (migration 0010)


class CaseRecord(Base):
    """A collections case of a loan (collector.cases): at most one open case per loan."""

    __tablename__ = "cases"
    __table_args__ = (
        sa.Index(
            "uq_cases_one_open",
            "loan_id",
            unique=True,
            sqlite_where=sa.text("status = 'open'"),
            postgresql_where=sa.text("status = 'open'"),
        ),
        sa.Index("ix_cases_status_assignee", "status", "assignee"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    loan_id: Mapped[str] = mapped_column(sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(sa.String(16))  # open | closed
    level: Mapped[str] = mapped_column(sa.String(16))  # the loan's risk level (highest while open)
    assignee: Mapped[str | None] = mapped_column(sa.String(64), sa.ForeignKey("users.username"))
    opened_ms: Mapped[int]
    updated_ms: Mapped[int]
    sla_due_ms: Mapped[int]
    next_action: Mapped[str] = mapped_column(sa.String(24))
    next_action_ms: Mapped[int]
    escalations: Mapped[int] = mapped_column(sa.Integer, default=0, server_default="0")
    closed_ms: Mapped[int | None]
    resolution: Mapped[str | None] = mapped_column(sa.String(16))  # cured | settled | recovered


class CaseActionRecord(Base):
    """One action on a case (sms, call, visit, ...) with its outcome, or a refused contact.

    ``status`` is ``done`` or ``refused`` (a contact the rules did not allow: ``refused_reason``
    and ``allowed_from_ms`` say why and from when). A ``promise_to_pay`` outcome carries the
    promised date and amount; ``promise_status`` goes ``open`` -> ``kept`` | ``broken``.
    """

    __tablename__ = "case_actions"
    __table_args__ = (
        sa.Index("ix_case_actions_case_time", "case_id", "time_ms"),
        sa.Index("ix_case_actions_loan_time", "loan_id", "time_ms"),
        sa.Index("ix_case_actions_promise", "promise_status"),
        sa.UniqueConstraint("case_id", "client_ref", name="uq_case_actions_case_client_ref"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("cases.id", ondelete="CASCADE"))
    loan_id: Mapped[str] = mapped_column(sa.String(64))
    time_ms: Mapped[int]
    actor: Mapped[str] = mapped_column(sa.String(128))
    role: Mapped[str] = mapped_column(sa.String(32))
    kind: Mapped[str] = mapped_column(sa.String(24))
    status: Mapped[str] = mapped_column(sa.String(16))  # done | refused
    outcome: Mapped[str | None] = mapped_column(sa.String(24))
    note: Mapped[str | None] = mapped_column(sa.String(1000))
    promise_date: Mapped[date | None] = mapped_column(sa.Date)
    promise_amount_cents: Mapped[int | None]
    promise_status: Mapped[str | None] = mapped_column(sa.String(16))
    refused_reason: Mapped[str | None] = mapped_column(sa.String(32))
    allowed_from_ms: Mapped[int | None]
    # the caller's idempotency key: a replayed request returns the stored action (NULL: none given)
    client_ref: Mapped[str | None] = mapped_column(sa.String(64))


class CaseEventRecord(Base):
    """What happened to a case besides actions: opened, assigned, level, escalated, closed."""

    __tablename__ = "case_events"
    __table_args__ = (sa.Index("ix_case_events_case_time", "case_id", "time_ms"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    case_id: Mapped[int] = mapped_column(sa.BigInteger, sa.ForeignKey("cases.id", ondelete="CASCADE"))
    time_ms: Mapped[int]
    actor: Mapped[str] = mapped_column(sa.String(128))
    kind: Mapped[str] = mapped_column(sa.String(24))
    detail: Mapped[dict[str, Any]]
# ------------------------------------------------------------------ access and lifecycle (migration 0011)


class AccessGrant(Base):
    """A request to read a loan's locations, and its decision (collector.loans.access).

    ``status``: ``pending`` -> ``approved`` | ``denied``; ``emergency`` is granted at once on an
    open theft signature and has ``review_needed`` set until someone reviews it. ``scope`` is a
    comma-separated subset of ``track``, ``position``.
    """

    __tablename__ = "access_requests"
    __table_args__ = (sa.Index("ix_access_requests_loan_grantee", "loan_id", "requester"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    loan_id: Mapped[str] = mapped_column(sa.String(64))
    requester: Mapped[str] = mapped_column(sa.String(128))
    requester_role: Mapped[str] = mapped_column(sa.String(32))
    reason: Mapped[str] = mapped_column(sa.String(500))
    scope: Mapped[str] = mapped_column(sa.String(64))
    requested_ms: Mapped[int] = mapped_column(index=True)
    duration_ms: Mapped[int]
    status: Mapped[str] = mapped_column(sa.String(16))
    valid_from_ms: Mapped[int | None]
    valid_until_ms: Mapped[int | None]
    decided_by: Mapped[str | None] = mapped_column(sa.String(128))
    decided_ms: Mapped[int | None]
    decision_note: Mapped[str | None] = mapped_column(sa.String(500))
    emergency: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    review_needed: Mapped[bool] = mapped_column(sa.Boolean, default=False)
    reviewed_by: Mapped[str | None] = mapped_column(sa.String(128))
    reviewed_ms: Mapped[int | None]


class ScheduleVersion(Base):
    """One version of a loan's instalment schedule (1 = as imported; restructuring, deferral...)."""

    __tablename__ = "schedule_versions"

    loan_id: Mapped[str] = mapped_column(
        sa.String(64), sa.ForeignKey("loans.loan_id", ondelete="CASCADE"), primary_key=True
    )
    version: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(sa.String(16))  # original | restructure | deferral
    reason: Mapped[str] = mapped_column(sa.String(500))
    created_ms: Mapped[int]
    created_by: Mapped[str] = mapped_column(sa.String(128))
    installments: Mapped[list[Any]] = mapped_column(sa.JSON)  # [[due_date ISO, amount_cents], ...]


class SeqLedgerRecord(Base):
    """Per-device ledger of stored seqs and the last receipt signed for it (migration 0008).

    ``ranges`` is :meth:`collector.ingest.seq_ledger.SeqLedger.as_json` (stored, announced
    skipped and floor-gap ranges); ``missing`` the seqs missing between the lowest and
    highest known one (what ``/metrics``, the API and ``lienwatch collector gaps`` show);
    ``evicted`` the seqs the device announced as evicted from its outbox (migration 0015);
    ``receipt_counter`` the counter of the last receipt signed (strictly increasing).
    """

    __tablename__ = "seq_ledgers"

    device_id: Mapped[str] = mapped_column(sa.String(64), primary_key=True)
    ranges: Mapped[dict[str, Any]]
    low_seq: Mapped[int | None] = mapped_column(UInt64)
    high_seq: Mapped[int | None] = mapped_column(UInt64)
    missing: Mapped[int] = mapped_column(default=0, server_default="0")
    evicted: Mapped[int] = mapped_column(default=0, server_default="0")
    receipt_counter: Mapped[int] = mapped_column(default=0, server_default="0")
    receipt_ms: Mapped[int | None]
    updated_ms: Mapped[int]
