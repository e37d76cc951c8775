"""0008 seq ledgers: per-device stored seq ranges, missing count and receipt counter.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02

One row per device that has sent a batch: the ranges of stored (and announced never-sent)
sequence numbers the signed receipts are built from (docs/protocol.md section 14), the
number of missing seqs an operator sees, and the last receipt counter (strictly increasing,
so the counter survives a collector restart and is shared by every collector process).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'seq_ledgers',
        sa.Column('device_id', sa.String(length=64), nullable=False),
        sa.Column('ranges', sa.JSON(), nullable=False),
        sa.Column('low_seq', sa.BigInteger(), nullable=True),
        sa.Column('high_seq', sa.BigInteger(), nullable=True),
        sa.Column('missing', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('receipt_counter', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('receipt_ms', sa.BigInteger(), nullable=True),
        sa.Column('updated_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('device_id', name=op.f('pk_seq_ledgers')),
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('seq_ledgers')
