"""0006 security: state connection counter, seq conflicts, bounded dead letters.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02

``device_status.state_connection`` is the connection counter of the state message that set
``online`` (only a strictly newer connection may change it, docs/protocol.md section 5);
``device_status.seq_conflicts`` counts batches whose (device, seq) was already stored with
other content; ``dead_letters.payload_sha256`` is the digest of the whole refused message
(only a head of its bytes is kept) and ``dead_letters.device_id`` is indexed for the
per-device dead-letter quota.

Merge note: this revision follows 0005 (risk v2); when the console's 0004 is chained in
before 0005, this one stays on top of the newest revision.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0006'
down_revision: Union[str, Sequence[str], None] = '0005'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('device_status') as batch_op:
        batch_op.add_column(sa.Column('state_connection', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('seq_conflicts', sa.BigInteger(), server_default='0', nullable=False))
    with op.batch_alter_table('dead_letters') as batch_op:
        batch_op.add_column(sa.Column('payload_sha256', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_dead_letters_device_id', ['device_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('dead_letters') as batch_op:
        batch_op.drop_index('ix_dead_letters_device_id')
        batch_op.drop_column('payload_sha256')
    with op.batch_alter_table('device_status') as batch_op:
        batch_op.drop_column('seq_conflicts')
        batch_op.drop_column('state_connection')
