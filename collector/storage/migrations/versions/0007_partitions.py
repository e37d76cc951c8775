"""0007 partitions: fixes and samples partitioned by day of time_ms (PostgreSQL only).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02

On PostgreSQL ``fixes`` and ``samples`` become ``PARTITION BY RANGE (time_ms)`` tables
(collector.storage.partitions: one partition per UTC day, ``{table}_pYYYYMMDD``, plus
``{table}_default``); the primary key becomes ``(id, time_ms)`` (a partitioned table's
unique keys must hold the partition key), the ``id`` sequence, the foreign key to
``batches`` and the indexes (``batch_id``; ``(device_id, time_ms)`` /
``(device_id, name, time_ms)``) are kept with their names. Existing rows are copied into
day partitions created for their range (at most 800 days; older rows go to the default
partition). SQLite is unchanged. Retention then drops whole day partitions.

Merge note: additive for every other table; re-chain ``down_revision`` onto the newest.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa

from collector.storage.partitions import DAY_MS, MAX_NEW_PARTITIONS, ensure_partitions


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

#: table -> (its own indexes besides the batch_id one: name, columns)
_INDEXES = {
    "fixes": ("ix_fixes_device_time", "device_id, time_ms"),
    "samples": ("ix_samples_device_name_time", "device_id, name, time_ms"),
}


def _rename_old(table: str) -> None:
    index, _ = _INDEXES[table]
    op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY NONE")
    op.execute(f"ALTER TABLE {table} RENAME TO {table}_old")
    op.execute(f"ALTER INDEX pk_{table} RENAME TO pk_{table}_old")
    op.execute(f"ALTER INDEX ix_{table}_batch_id RENAME TO ix_{table}_old_batch_id")
    op.execute(f"ALTER INDEX {index} RENAME TO {index}_old")
    op.execute(f"ALTER TABLE {table}_old RENAME CONSTRAINT fk_{table}_batch_id_batches TO fk_{table}_old_batch_id")


def _finish(table: str, partitioned: bool) -> None:
    index, columns = _INDEXES[table]
    key = "id, time_ms" if partitioned else "id"
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({key})")
    op.execute(
        f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_batch_id_batches FOREIGN KEY (batch_id) REFERENCES batches (id)"
    )
    op.execute(f"CREATE INDEX ix_{table}_batch_id ON {table} (batch_id)")
    op.execute(f"CREATE INDEX {index} ON {table} ({columns})")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in ("fixes", "samples"):
        _rename_old(table)
        op.execute(f"CREATE TABLE {table} (LIKE {table}_old INCLUDING DEFAULTS) PARTITION BY RANGE (time_ms)")
        _finish(table, partitioned=True)
        op.execute(f"CREATE TABLE {table}_default PARTITION OF {table} DEFAULT")
        low, high = bind.execute(sa.text(f"SELECT min(time_ms), max(time_ms) FROM {table}_old")).one()
        if low is not None:
            ensure_partitions(bind, table, max(low, high - MAX_NEW_PARTITIONS * DAY_MS + DAY_MS), high + 1)
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_old")
        op.execute(f"DROP TABLE {table}_old")
        op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    for table in ("fixes", "samples"):
        _rename_old(table)
        op.execute(f"CREATE TABLE {table} (LIKE {table}_old INCLUDING DEFAULTS)")
        _finish(table, partitioned=False)
        op.execute(f"INSERT INTO {table} SELECT * FROM {table}_old")
        op.execute(f"DROP TABLE {table}_old CASCADE")
        op.execute(f"ALTER SEQUENCE {table}_id_seq OWNED BY {table}.id")
