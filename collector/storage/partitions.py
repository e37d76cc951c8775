"""Time partitions of the observation tables on PostgreSQL (``fixes`` and ``samples``).

How this works. On PostgreSQL, migration ``0007`` makes ``fixes`` and ``samples``
declaratively partitioned tables, ``PARTITION BY RANGE (time_ms)``, one partition per UTC
day named ``{table}_pYYYYMMDD``, plus a ``{table}_default`` partition that catches rows no
day partition covers (very late or far-future observation times). SQLite keeps plain
tables; every function here is a no-op there.

* :func:`ensure_partitions` creates the day partitions of a time range that do not exist
  yet. The collector runs it ahead (today - 1 .. today + ``days_ahead``), at start and
  then hourly, so rows of "now" always land in a day partition. A day that already has
  rows in the default partition (backfill) is created empty, those rows are moved into
  it, then it is attached: PostgreSQL refuses to attach a range the default partition
  holds rows of. A transaction-scoped advisory lock serialises collectors doing the same.
* :func:`drop_partitions_before` is retention: a day partition whose whole range is older
  than the cut-off is dropped (``DROP TABLE``: no row-by-row ``DELETE``, no dead tuples,
  no vacuum), after counting its rows for the report. Rows older than the cut-off that
  are left (the default partition, the part of the cut-off day) are the caller's to
  ``DELETE``.

Indexes are declared on the parent, so every partition gets ``(device_id, time_ms)`` (the
one-day track of one vehicle reads one partition through it) and ``batch_id``.
"""

from __future__ import annotations

import datetime as dt
import re

import sqlalchemy as sa
from sqlalchemy.engine import Connection

__all__ = [
    "DAY_MS",
    "PARTITIONED_TABLES",
    "day_partitions",
    "drop_partitions_before",
    "ensure_partitions",
    "is_partitioned",
    "partition_name",
]

DAY_MS = 86_400_000
#: tables partitioned by ``time_ms`` on PostgreSQL
PARTITIONED_TABLES = ("fixes", "samples")
#: at most this many day partitions are created in one call (a garbage range cannot run away)
MAX_NEW_PARTITIONS = 800
_LOCK_KEY = 0x4C57_5041_5254  # "LWPART"
_NAME = re.compile(r"^(fixes|samples)_p(\d{8})$")


def partition_name(table: str, day_start_ms: int) -> str:
    """``{table}_pYYYYMMDD`` of the UTC day starting at ``day_start_ms``."""
    day = dt.datetime.fromtimestamp(day_start_ms / 1000, dt.UTC)
    return f"{table}_p{day:%Y%m%d}"


def _check_table(table: str) -> None:
    if table not in PARTITIONED_TABLES:
        raise ValueError(f"{table!r} is not a partitioned table ({', '.join(PARTITIONED_TABLES)})")


def is_partitioned(conn: Connection, table: str) -> bool:
    """True on PostgreSQL when ``table`` is a partitioned table (migration 0007 ran)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(sa.text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": table}).scalar()
    return kind == "p"


def day_partitions(conn: Connection, table: str) -> dict[str, tuple[int, int]]:
    """The day partitions of ``table``: name -> [from_ms, to_ms) (empty when not partitioned)."""
    _check_table(table)
    if not is_partitioned(conn, table):
        return {}
    rows = conn.execute(
        sa.text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:t)"
        ),
        {"t": table},
    )
    found: dict[str, tuple[int, int]] = {}
    for name, bound in rows:
        match = re.search(r"FROM \('?(-?\d+)'?\) TO \('?(-?\d+)'?\)", bound or "")
        if _NAME.match(name) and match:
            found[name] = (int(match.group(1)), int(match.group(2)))
    return found


def ensure_partitions(conn: Connection, table: str, from_ms: int, to_ms: int) -> list[str]:
    """Create the missing day partitions of ``table`` covering [from_ms, to_ms); return their names.

    Run it inside a transaction (the caller commits). No-op unless ``table`` is partitioned.
    """
    _check_table(table)
    if not is_partitioned(conn, table):
        return []
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    existing = day_partitions(conn, table)
    first = from_ms - from_ms % DAY_MS
    days = range(first, to_ms, DAY_MS)[:MAX_NEW_PARTITIONS]
    created = []
    for start in days:
        name = partition_name(table, start)
        if name in existing:
            continue
        end = start + DAY_MS
        conn.execute(sa.text(f'CREATE TABLE "{name}" (LIKE "{table}" INCLUDING DEFAULTS)'))
        # No row of the day may reach the default partition between the move and the attach
        # (the attach would fail): hold it until commit (inserts of other days wait briefly).
        conn.execute(sa.text(f'LOCK TABLE "{table}_default" IN EXCLUSIVE MODE'))
        moved = (
            f'WITH moved AS (DELETE FROM "{table}_default" WHERE time_ms >= {start} AND time_ms < {end} '
            f'RETURNING *) INSERT INTO "{name}" SELECT * FROM moved'
        )
        conn.execute(sa.text(moved))
        conn.execute(sa.text(f'ALTER TABLE "{table}" ATTACH PARTITION "{name}" FOR VALUES FROM ({start}) TO ({end})'))
        created.append(name)
    return created


def drop_partitions_before(conn: Connection, table: str, cutoff_ms: int) -> tuple[list[str], int]:
    """Drop the day partitions of ``table`` entirely older than ``cutoff_ms``.

    Returns the dropped names and the rows they held. No-op unless ``table`` is partitioned.
    """
    _check_table(table)
    dropped: list[str] = []
    rows = 0
    for name, (_start, end) in sorted(day_partitions(conn, table).items()):
        if end > cutoff_ms:
            continue
        rows += int(conn.execute(sa.text(f'SELECT count(*) FROM "{name}"')).scalar_one())
        conn.execute(sa.text(f'DROP TABLE "{name}"'))
        dropped.append(name)
    return dropped, rows
