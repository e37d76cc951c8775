"""0010 cases: collections cases, their actions and events; the borrower's zone on loans.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02

``cases`` (at most one open case per loan: a partial unique index), ``case_actions``
(actions with outcomes, promises to pay, refused contacts) and ``case_events`` (opened,
assigned, level, escalated, closed). ``loans.time_zone`` and ``loans.jurisdiction`` (NULL =
the ``[contact]`` defaults) drive the contact rules. See collector/cases and
docs/compliance.md ("Cases and contact rules").

Merge note: written on top of 0006; the lead re-chains it after the other 0007+ revisions.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0010'
down_revision: Union[str, Sequence[str], None] = '0009'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('loans') as batch_op:
        batch_op.add_column(sa.Column('time_zone', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('jurisdiction', sa.String(length=32), nullable=True))
    op.create_table(
        'cases',
        sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
        sa.Column('loan_id', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('level', sa.String(length=16), nullable=False),
        sa.Column('assignee', sa.String(length=64), nullable=True),
        sa.Column('opened_ms', sa.BigInteger(), nullable=False),
        sa.Column('updated_ms', sa.BigInteger(), nullable=False),
        sa.Column('sla_due_ms', sa.BigInteger(), nullable=False),
        sa.Column('next_action', sa.String(length=24), nullable=False),
        sa.Column('next_action_ms', sa.BigInteger(), nullable=False),
        sa.Column('escalations', sa.Integer(), server_default='0', nullable=False),
        sa.Column('closed_ms', sa.BigInteger(), nullable=True),
        sa.Column('resolution', sa.String(length=16), nullable=True),
        sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], name=op.f('fk_cases_loan_id_loans'),
                                ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['assignee'], ['users.username'], name=op.f('fk_cases_assignee_users')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_cases')),
    )
    op.create_index('uq_cases_one_open', 'cases', ['loan_id'], unique=True,
                    sqlite_where=sa.text("status = 'open'"), postgresql_where=sa.text("status = 'open'"))
    op.create_index('ix_cases_status_assignee', 'cases', ['status', 'assignee'], unique=False)
    op.create_table(
        'case_actions',
        sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
        sa.Column('case_id', sa.BigInteger(), nullable=False),
        sa.Column('loan_id', sa.String(length=64), nullable=False),
        sa.Column('time_ms', sa.BigInteger(), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('kind', sa.String(length=24), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('outcome', sa.String(length=24), nullable=True),
        sa.Column('note', sa.String(length=1000), nullable=True),
        sa.Column('promise_date', sa.Date(), nullable=True),
        sa.Column('promise_amount_cents', sa.BigInteger(), nullable=True),
        sa.Column('promise_status', sa.String(length=16), nullable=True),
        sa.Column('refused_reason', sa.String(length=32), nullable=True),
        sa.Column('allowed_from_ms', sa.BigInteger(), nullable=True),
        sa.Column('client_ref', sa.String(length=64), nullable=True),
        sa.UniqueConstraint('case_id', 'client_ref', name='uq_case_actions_case_client_ref'),
        sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_case_actions_case_id_cases'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_case_actions')),
    )
    op.create_index('ix_case_actions_case_time', 'case_actions', ['case_id', 'time_ms'], unique=False)
    op.create_index('ix_case_actions_loan_time', 'case_actions', ['loan_id', 'time_ms'], unique=False)
    op.create_index('ix_case_actions_promise', 'case_actions', ['promise_status'], unique=False)
    op.create_table(
        'case_events',
        sa.Column('id', _BIG_ID, autoincrement=True, nullable=False),
        sa.Column('case_id', sa.BigInteger(), nullable=False),
        sa.Column('time_ms', sa.BigInteger(), nullable=False),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('kind', sa.String(length=24), nullable=False),
        sa.Column('detail', sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(['case_id'], ['cases.id'], name=op.f('fk_case_events_case_id_cases'),
                                ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_case_events')),
    )
    op.create_index('ix_case_events_case_time', 'case_events', ['case_id', 'time_ms'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_case_events_case_time', table_name='case_events')
    op.drop_table('case_events')
    op.drop_index('ix_case_actions_promise', table_name='case_actions')
    op.drop_index('ix_case_actions_loan_time', table_name='case_actions')
    op.drop_index('ix_case_actions_case_time', table_name='case_actions')
    op.drop_table('case_actions')
    op.drop_index('ix_cases_status_assignee', table_name='cases')
    op.drop_index('uq_cases_one_open', table_name='cases')
    op.drop_table('cases')
    with op.batch_alter_table('loans') as batch_op:
        batch_op.drop_column('jurisdiction')
        batch_op.drop_column('time_zone')
