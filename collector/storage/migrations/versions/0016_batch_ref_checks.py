"""0016 batch reference checks: one check per statement instead of one per row (PostgreSQL only).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02

The foreign keys ``fixes.batch_id`` and ``samples.batch_id`` -> ``batches.id`` ran a
referential-integrity query for every row: a one-minute batch of 60 fixes cost 60 lookups
with a row lock each, more than half of what PostgreSQL spent on the ingest's COPY
(docs/collector.md, "Where one process's CPU goes"). On PostgreSQL they are replaced by
statement-level triggers that check the same thing once per statement, over all its rows
(a transition table):

* ``AFTER INSERT`` / ``AFTER UPDATE`` on ``fixes`` and ``samples``: every non-NULL
  ``batch_id`` of the new rows must be in ``batches``; those ledger rows are locked
  ``FOR KEY SHARE`` like the foreign key locks them, so they cannot vanish before the commit.
* ``AFTER DELETE`` / ``AFTER UPDATE`` on ``batches``: an id that is gone and still named by a
  fix or sample refuses the statement (the foreign key's NO ACTION), through the ``batch_id``
  indexes, which stay; ``BEFORE TRUNCATE``: refused while ``fixes`` or ``samples`` hold rows.

A violation raises SQLSTATE 23503 (``foreign_key_violation``), as the foreign key did. The
triggers sit on the partitioned parents: a row written straight into a day partition is not
checked (only the partition maintenance does that, moving rows that were checked).
SQLite keeps its foreign keys. The downgrade restores the foreign keys.

Merge note: additive; re-chain ``down_revision`` onto the newest revision.
"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0016'
down_revision: Union[str, Sequence[str], None] = '0015'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_TABLES = ("fixes", "samples")

_CHECK_NEW_ROWS = """
CREATE FUNCTION lw_check_batch_refs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    wanted bigint;
    present bigint;
    missing bigint;
BEGIN
    SELECT count(DISTINCT batch_id) INTO wanted FROM lw_new_rows;
    IF wanted = 0 THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM batches b WHERE b.id IN (SELECT batch_id FROM lw_new_rows) FOR KEY SHARE OF b;
    GET DIAGNOSTICS present = ROW_COUNT;
    IF present < wanted THEN
        SELECT n.batch_id INTO missing FROM lw_new_rows n
         WHERE n.batch_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = n.batch_id) LIMIT 1;
        RAISE EXCEPTION 'insert or update on table "%" violates the batch reference', TG_TABLE_NAME
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (batch_id)=(%s) is not present in table "batches".', missing);
    END IF;
    RETURN NULL;
END $$
"""

_CHECK_REMOVED_BATCHES = """
CREATE FUNCTION lw_check_batches_removed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    gone bigint;
BEGIN
    SELECT o.id INTO gone FROM lw_old_rows o
     WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = o.id)
       AND (EXISTS (SELECT 1 FROM fixes f WHERE f.batch_id = o.id)
            OR EXISTS (SELECT 1 FROM samples s WHERE s.batch_id = o.id))
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'update or delete on table "batches" violates the batch reference of fixes or samples'
            USING ERRCODE = 'foreign_key_violation',
                  DETAIL = format('Key (id)=(%s) is still referenced.', gone);
    END IF;
    RETURN NULL;
END $$
"""

_REFUSE_TRUNCATE = """
CREATE FUNCTION lw_refuse_batches_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM fixes) OR EXISTS (SELECT 1 FROM samples) THEN
        RAISE EXCEPTION 'cannot truncate "batches": fixes or samples still reference it'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_CHECK_NEW_ROWS)
    op.execute(_CHECK_REMOVED_BATCHES)
    op.execute(_REFUSE_TRUNCATE)
    for table in _TABLES:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT fk_{table}_batch_id_batches")
        for event in ("INSERT", "UPDATE"):
            op.execute(
                f"CREATE TRIGGER lw_{table}_batch_refs_{event.lower()} AFTER {event} ON {table} "
                "REFERENCING NEW TABLE AS lw_new_rows FOR EACH STATEMENT EXECUTE FUNCTION lw_check_batch_refs()"
            )
    for event in ("DELETE", "UPDATE"):
        op.execute(
            f"CREATE TRIGGER lw_batches_refs_{event.lower()} AFTER {event} ON batches "
            "REFERENCING OLD TABLE AS lw_old_rows FOR EACH STATEMENT EXECUTE FUNCTION lw_check_batches_removed()"
        )
    op.execute(
        "CREATE TRIGGER lw_batches_refs_truncate BEFORE TRUNCATE ON batches "
        "FOR EACH STATEMENT EXECUTE FUNCTION lw_refuse_batches_truncate()"
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for event in ("delete", "update", "truncate"):
        op.execute(f"DROP TRIGGER lw_batches_refs_{event} ON batches")
    for table in _TABLES:
        for event in ("insert", "update"):
            op.execute(f"DROP TRIGGER lw_{table}_batch_refs_{event} ON {table}")
        op.execute(
            f"ALTER TABLE {table} ADD CONSTRAINT fk_{table}_batch_id_batches "
            "FOREIGN KEY (batch_id) REFERENCES batches (id)"
        )
    for function in ("lw_check_batch_refs", "lw_check_batches_removed", "lw_refuse_batches_truncate"):
        op.execute(f"DROP FUNCTION {function}()")
