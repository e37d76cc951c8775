"""0002 loans: loans, schedules, repayments, risk state and events, webhook outbox, audit
log, markets, downlink config versions, fix day summaries (issue 7).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Loan-side tables of collector.storage.tables. Money is integer cents, times epoch ms UTC.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('audit_log',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('actor', sa.String(length=128), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('action', sa.String(length=64), nullable=False),
    sa.Column('subject_type', sa.String(length=32), nullable=False),
    sa.Column('subject_id', sa.String(length=128), nullable=False),
    sa.Column('detail', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_log'))
    )
    op.create_index('ix_audit_log_subject', 'audit_log', ['subject_type', 'subject_id'], unique=False)
    op.create_index(op.f('ix_audit_log_time_ms'), 'audit_log', ['time_ms'], unique=False)
    op.create_table('config_versions',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('issued_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', name=op.f('pk_config_versions'))
    )
    op.create_table('fix_day_summaries',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('fix_count', sa.BigInteger(), nullable=False),
    sa.Column('first_ms', sa.BigInteger(), nullable=False),
    sa.Column('last_ms', sa.BigInteger(), nullable=False),
    sa.Column('distance_m', sa.Double(), nullable=False),
    sa.PrimaryKeyConstraint('device_id', 'day', name=op.f('pk_fix_day_summaries'))
    )
    op.create_table('loans',
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('vin', sa.String(length=17), nullable=False),
    sa.Column('borrower_ref', sa.String(length=64), nullable=False),
    sa.Column('principal_cents', sa.BigInteger(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('loan_id', name=op.f('pk_loans')),
    sa.UniqueConstraint('device_id', name=op.f('uq_loans_device_id')),
    sa.UniqueConstraint('vin', name=op.f('uq_loans_vin'))
    )
    op.create_table('markets',
    sa.Column('market_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('lat', sa.Double(), nullable=False),
    sa.Column('lon', sa.Double(), nullable=False),
    sa.Column('datum', sa.String(length=8), nullable=False),
    sa.Column('radius_m', sa.Double(), nullable=False),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('market_id', name=op.f('pk_markets'))
    )
    op.create_table('webhook_deliveries',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('body', sa.LargeBinary(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_ms', sa.BigInteger(), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('delivered_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    sa.UniqueConstraint('event_id', 'url', name='uq_webhook_deliveries_event_url')
    )
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['status', 'next_attempt_ms'], unique=False)
    op.create_table('installments',
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('due_date', sa.Date(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], name=op.f('fk_installments_loan_id_loans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('loan_id', 'seq', name=op.f('pk_installments'))
    )
    op.create_table('repayments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('payment_id', sa.String(length=64), nullable=False),
    sa.Column('paid_on', sa.Date(), nullable=False),
    sa.Column('amount_cents', sa.BigInteger(), nullable=False),
    sa.Column('recorded_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], name=op.f('fk_repayments_loan_id_loans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_repayments')),
    sa.UniqueConstraint('loan_id', 'payment_id', name='uq_repayments_loan_payment')
    )
    op.create_index(op.f('ix_repayments_paid_on'), 'repayments', ['paid_on'], unique=False)
    op.create_table('risk_events',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('event_id', sa.String(length=36), nullable=False),
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('old_level', sa.String(length=16), nullable=False),
    sa.Column('new_level', sa.String(length=16), nullable=False),
    sa.Column('next_step', sa.String(length=16), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], name=op.f('fk_risk_events_loan_id_loans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_risk_events')),
    sa.UniqueConstraint('event_id', name=op.f('uq_risk_events_event_id'))
    )
    op.create_index('ix_risk_events_loan_time', 'risk_events', ['loan_id', 'time_ms'], unique=False)
    op.create_index(op.f('ix_risk_events_time_ms'), 'risk_events', ['time_ms'], unique=False)
    op.create_table('risk_states',
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('next_step', sa.String(length=16), nullable=False),
    sa.Column('reasons', sa.JSON(), nullable=False),
    sa.Column('facts', sa.JSON(), nullable=False),
    sa.Column('evaluated_ms', sa.BigInteger(), nullable=False),
    sa.Column('changed_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], name=op.f('fk_risk_states_loan_id_loans'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('loan_id', name=op.f('pk_risk_states'))
    )
    op.create_index(op.f('ix_risk_states_level'), 'risk_states', ['level'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_risk_states_level'), table_name='risk_states')
    op.drop_table('risk_states')
    op.drop_index(op.f('ix_risk_events_time_ms'), table_name='risk_events')
    op.drop_index('ix_risk_events_loan_time', table_name='risk_events')
    op.drop_table('risk_events')
    op.drop_index(op.f('ix_repayments_paid_on'), table_name='repayments')
    op.drop_table('repayments')
    op.drop_table('installments')
    op.drop_index('ix_webhook_deliveries_due', table_name='webhook_deliveries')
    op.drop_table('webhook_deliveries')
    op.drop_table('markets')
    op.drop_table('loans')
    op.drop_table('fix_day_summaries')
    op.drop_table('config_versions')
    op.drop_index(op.f('ix_audit_log_time_ms'), table_name='audit_log')
    op.drop_index('ix_audit_log_subject', table_name='audit_log')
    op.drop_table('audit_log')
