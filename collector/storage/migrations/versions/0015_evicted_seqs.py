"""0015 evicted seqs (#12): the seq ledger counts the seqs devices announce as evicted.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-02

``seq_ledgers.evicted``: how many seqs the device announced as evicted from its full outbox
(docs/protocol.md section 13, "Evicted seqs"); the ranges themselves live in ``ranges``
(key ``evicted``). A row written before this revision reads 0 and has no such key.

Merge note: the lead re-chains ``down_revision`` onto the newest revision at merge.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0015'
down_revision: Union[str, Sequence[str], None] = '0014'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('seq_ledgers') as batch_op:
        batch_op.add_column(sa.Column('evicted', sa.BigInteger(), server_default='0', nullable=False))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('seq_ledgers') as batch_op:
        batch_op.drop_column('evicted')
