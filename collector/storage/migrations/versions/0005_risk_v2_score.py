"""0005 risk v2 score: score, expected loss, both axes, tier and explained reasons in risk_states.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02

Every column is nullable: a state written before this migration (or by a collector without
the v2 model) has no score until the next reassessment. ``expected_loss_cents`` is indexed
because the worklist can be ranked by it.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('risk_states') as batch_op:
        batch_op.add_column(sa.Column('score', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('expected_loss_cents', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('credit_level', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('credit_next_step', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('collateral_level', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('collateral_next_step', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('tier', sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column('model_version', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('assessment', sa.JSON(), nullable=True))
        batch_op.create_index('ix_risk_states_expected_loss_cents', ['expected_loss_cents'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('risk_states') as batch_op:
        batch_op.drop_index('ix_risk_states_expected_loss_cents')
        for column in ('assessment', 'model_version', 'tier', 'collateral_next_step', 'collateral_level',
                       'credit_next_step', 'credit_level', 'expected_loss_cents', 'score'):
            batch_op.drop_column(column)
