"""What the collector keeps: every table, whether it holds coordinates or personal data, and its policy.

This is the one list (the "data the collector keeps" seam, /work/shared/SEAMS.md): whoever adds
a table or a column that can hold a coordinate or personal data adds or changes one line here,
and :func:`collector.jobs.retention.run_retention` applies it. A test fails when a table of
the schema is missing from :data:`REGISTRY`, and the retention test scans every table and
column of a real database after a run for what should be gone.

Policies (the clocks, from ``[retention]``: ``fix_days`` 90, ``record_years`` 5):

=====================  ==================================================================
``location``           precise or raw location data: rows older than ``fix_days`` go, and
                       every row of a closed loan's vehicle ``fix_days`` after closure
``until_closure``      non-essential data about a vehicle or a loan: kept while the loan
                       runs, gone ``fix_days`` after closure
``essential_stripped`` essential records (kept ``record_years`` after closure) whose JSON
                       columns lose their coordinate keys after ``fix_days`` (and after
                       closure + ``fix_days``)
``essential``          essential records without coordinates: kept ``record_years`` after
                       the loan's closure (or after their own time, for time-keyed rows)
``operational``        no borrower data and no coordinates of a vehicle (device keys, the
                       batch ledger, config outbox, public market places, staff accounts)
=====================  ==================================================================

``subject`` says how a row finds its loan: ``device_id`` (the loan's vehicle), ``loan_id``,
``event_id`` (a risk event of the loan) or ``None`` (time only).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["REGISTRY", "Policy", "TablePolicy", "policy_of", "tables_with"]


class Policy(StrEnum):
    """How long a table's rows (or their coordinates) live; see the module docstring."""

    LOCATION = "location"
    UNTIL_CLOSURE = "until_closure"
    ESSENTIAL_STRIPPED = "essential_stripped"
    ESSENTIAL = "essential"
    OPERATIONAL = "operational"


@dataclass(frozen=True, slots=True)
class TablePolicy:
    """One table of the registry.

    Attributes:
        table: the table name.
        policy: its :class:`Policy`.
        holds: the columns that can hold coordinates or personal data (empty: none).
        subject: ``device_id``, ``loan_id``, ``event_id`` or None (see the module docstring).
        time_column: the row's time (epoch ms) the ``fix_days``/``record_years`` clocks use.
        strip: JSON columns whose coordinate keys are removed (``essential_stripped``).
        why: one line for docs/compliance.md.
    """

    table: str
    policy: Policy
    holds: tuple[str, ...]
    subject: str | None
    time_column: str | None
    strip: tuple[str, ...] = ()
    why: str = ""


REGISTRY: tuple[TablePolicy, ...] = (
    # --- location: precise positions or raw bytes that may hold them
    TablePolicy("fixes", Policy.LOCATION, ("lat", "lon", "alt_m", "speed_mps", "course_deg"), "device_id", "time_ms",
                why="precise GNSS fixes; folded into fix_day_summaries, then deleted"),
    TablePolicy("dead_letters", Policy.LOCATION, ("payload", "detail", "topic"), "device_id", "received_ms",
                why="raw bytes of refused messages (may hold positions)"),
    TablePolicy("samples", Policy.LOCATION, ("value",), "device_id", "time_ms",
                why="CAN signal values (driving behaviour of a person)"),
    TablePolicy("webhook_deliveries", Policy.LOCATION, ("body",), "event_id", "created_ms",
                why="signed bodies of risk events sent to the lender (loan, reasons)"),
    # --- non-essential, kept while the loan runs
    TablePolicy("device_status", Policy.UNTIL_CLOSURE, ("last_lat", "last_lon", "last_speed_mps", "device_counters"),
                "device_id", None, why="last position and state of the vehicle"),
    TablePolicy("daily_stats", Policy.UNTIL_CLOSURE, ("distance_m", "driving_s", "odometer_km"), "device_id", None,
                why="daily driving figures of the vehicle"),
    TablePolicy("fix_day_summaries", Policy.UNTIL_CLOSURE, ("distance_m", "first_ms", "last_ms"), "device_id", None,
                why="what is left of old fixes: per-day counts and distance, no coordinates"),
    # --- essential records, 5 years from closure, coordinates stripped
    TablePolicy("alerts", Policy.ESSENTIAL_STRIPPED, ("evidence",), "device_id", "time_ms", strip=("evidence",),
                why="on-device alerts: the record stays, the evidence loses its coordinates"),
    TablePolicy("risk_events", Policy.ESSENTIAL_STRIPPED, ("reasons",), "loan_id", "time_ms", strip=("reasons",),
                why="level changes with their reasons"),
    TablePolicy("risk_states", Policy.ESSENTIAL_STRIPPED, ("reasons", "facts", "assessment"), "loan_id",
                "evaluated_ms", strip=("reasons", "facts", "assessment"), why="the current risk state of a loan"),
    # --- essential records without coordinates
    TablePolicy("loans", Policy.ESSENTIAL, ("vin", "borrower_ref", "device_id", "region"), "loan_id", None,
                why="the loan and its vehicle"),
    TablePolicy("loan_devices", Policy.ESSENTIAL, ("device_id",), "loan_id", None,
                why="a loan's second tracker (the link, no positions)"),
    TablePolicy("installments", Policy.ESSENTIAL, ("amount_cents", "due_date"), "loan_id", None,
                why="the current schedule"),
    TablePolicy("schedule_versions", Policy.ESSENTIAL, ("installments", "reason"), "loan_id", None,
                why="every version of the schedule"),
    TablePolicy("repayments", Policy.ESSENTIAL, ("payment_id", "paid_on", "amount_cents"), "loan_id", None,
                why="payments and reversals"),
    TablePolicy("access_requests", Policy.ESSENTIAL, ("reason", "requester", "decision_note"), "loan_id",
                "requested_ms", why="location access requests and their decisions"),
    TablePolicy("cases", Policy.ESSENTIAL, ("assignee",), "loan_id", "opened_ms",
                why="collections cases: level, assignee, SLA, resolution (collector.cases)"),
    TablePolicy("case_actions", Policy.ESSENTIAL, ("note", "promise_date", "promise_amount_cents", "actor"), "loan_id",
                "time_ms", why="every contact, visit and note with its outcome, refused contacts included"),
    TablePolicy("case_events", Policy.ESSENTIAL, ("actor", "detail"), None, "time_ms",
                why="case assignments, escalations and closures (no coordinates)"),
    TablePolicy("audit_log", Policy.ESSENTIAL, ("actor", "subject_id", "detail"), None, "time_ms",
                why="who read or changed what (never the data itself)"),
    # --- operational: no borrower data, no vehicle coordinates
    TablePolicy("devices", Policy.OPERATIONAL, (), None, None, why="registered devices"),
    TablePolicy("device_keys", Policy.OPERATIONAL, (), None, None, why="device public keys"),
    TablePolicy("registry_version", Policy.OPERATIONAL, (), None, None, why="key cache version"),
    TablePolicy("batches", Policy.OPERATIONAL, (), None, None,
                why="the batch ledger: seq, counts, agent counters (no payload is kept)"),
    TablePolicy("seq_ledgers", Policy.OPERATIONAL, (), None, None,
                why="per-device stored seq ranges and the last receipt (collector.jobs.receipts): no data"),
    TablePolicy("config_versions", Policy.OPERATIONAL, (), None, None,
                why="the signed downlink outbox (public market places, tracking off): kept so a device stays stopped"),
    TablePolicy("downlink_keys", Policy.OPERATIONAL, (), None, None,
                why="the collector's announced and promoted downlink signing keys (public keys)"),
    TablePolicy("places", Policy.OPERATIONAL, (), None, None,
                why="public places (used-car markets, pawn lots, ports, ...), not a person's"),
    TablePolicy("users", Policy.OPERATIONAL, (), None, None, why="staff accounts (not borrowers)"),
    TablePolicy("console_sessions", Policy.OPERATIONAL, (), None, None, why="staff sessions, expire in hours"),
)

_BY_TABLE = {entry.table: entry for entry in REGISTRY}


#: PostgreSQL day partitions (collector.storage.partitions) belong to their parent's line.
_PARTITION_RE = re.compile(r"(fixes|samples)_(default|p\d{8})")


def policy_of(table: str) -> TablePolicy | None:
    """The registry line of ``table`` (a day partition: its parent's; None: not registered)."""
    partition = _PARTITION_RE.fullmatch(table)
    return _BY_TABLE.get(partition.group(1) if partition else table)


def tables_with(*policies: Policy) -> tuple[TablePolicy, ...]:
    """The registry lines with one of ``policies``, in registry order."""
    return tuple(entry for entry in REGISTRY if entry.policy in policies)
