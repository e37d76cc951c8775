"""0011 access, lifecycle, repayment feed: location access requests, loan status, reversals, schedule versions.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02

``access_requests`` holds each request to read a loan's locations and its decision (four
eyes, docs/compliance.md); ``loans.status``/``closed_ms`` the lifecycle (the retention clocks
count from ``closed_ms``); ``loans.schedule_version`` and ``schedule_versions`` the schedule
history (restructuring, deferral); ``repayments.reversal_id``/``reversed_ms`` bounced payments.

Merge note: the lead re-chains ``down_revision`` onto the newest revision.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0011'
down_revision: Union[str, Sequence[str], None] = '0010'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'access_requests',
        sa.Column('id', _ID, autoincrement=True, nullable=False),
        sa.Column('loan_id', sa.String(length=64), nullable=False),
        sa.Column('requester', sa.String(length=128), nullable=False),
        sa.Column('requester_role', sa.String(length=32), nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.Column('scope', sa.String(length=64), nullable=False),
        sa.Column('requested_ms', sa.BigInteger(), nullable=False),
        sa.Column('duration_ms', sa.BigInteger(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('valid_from_ms', sa.BigInteger(), nullable=True),
        sa.Column('valid_until_ms', sa.BigInteger(), nullable=True),
        sa.Column('decided_by', sa.String(length=128), nullable=True),
        sa.Column('decided_ms', sa.BigInteger(), nullable=True),
        sa.Column('decision_note', sa.String(length=500), nullable=True),
        sa.Column('emergency', sa.Boolean(), nullable=False),
        sa.Column('review_needed', sa.Boolean(), nullable=False),
        sa.Column('reviewed_by', sa.String(length=128), nullable=True),
        sa.Column('reviewed_ms', sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_access_requests')),
    )
    op.create_index('ix_access_requests_loan_grantee', 'access_requests', ['loan_id', 'requester'], unique=False)
    op.create_index(op.f('ix_access_requests_requested_ms'), 'access_requests', ['requested_ms'], unique=False)
    op.create_table(
        'schedule_versions',
        sa.Column('loan_id', sa.String(length=64), nullable=False),
        sa.Column('version', sa.Integer(), autoincrement=False, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('reason', sa.String(length=500), nullable=False),
        sa.Column('created_ms', sa.BigInteger(), nullable=False),
        sa.Column('created_by', sa.String(length=128), nullable=False),
        sa.Column('installments', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], name=op.f('fk_schedule_versions_loan_id_loans'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('loan_id', 'version', name=op.f('pk_schedule_versions')),
    )
    with op.batch_alter_table('loans') as batch_op:
        batch_op.add_column(sa.Column('status', sa.String(length=16), server_default='active', nullable=False))
        batch_op.add_column(sa.Column('closed_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('status_changed_ms', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('schedule_version', sa.Integer(), server_default='1', nullable=False))
    with op.batch_alter_table('repayments') as batch_op:
        batch_op.add_column(sa.Column('reversal_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('reversed_ms', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('repayments') as batch_op:
        batch_op.drop_column('reversed_ms')
        batch_op.drop_column('reversal_id')
    with op.batch_alter_table('loans') as batch_op:
        batch_op.drop_column('schedule_version')
        batch_op.drop_column('status_changed_ms')
        batch_op.drop_column('closed_ms')
        batch_op.drop_column('status')
    op.drop_table('schedule_versions')
    op.drop_index(op.f('ix_access_requests_requested_ms'), table_name='access_requests')
    op.drop_index('ix_access_requests_loan_grantee', table_name='access_requests')
    op.drop_table('access_requests')
