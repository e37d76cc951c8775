"""0013 config tier, loan region: the customer tier signed into a device's configuration; a loan's region.

Revision ID: 0013
Revises: 0011
Create Date: 2026-12-02

``config_versions.tier`` is the loan's customer tier (risk v2, issue 15) whose ``tier``
section is in the configuration last signed for the device (NULL: no tier section). The
downlink sync signs a new configuration when the loan's current tier differs from it.
``loans.region`` is the lender's optional region label of a loan (loan CSV column ``region``),
indexed for the console's worklist filter.

Merge note: additive; the lead re-chains it on top of the newest revision.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0013'
down_revision: Union[str, Sequence[str], None] = '0011'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('config_versions') as batch_op:
        batch_op.add_column(sa.Column('tier', sa.String(length=24), nullable=True))
    with op.batch_alter_table('loans') as batch_op:
        batch_op.add_column(sa.Column('region', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_loans_region', ['region'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('loans') as batch_op:
        batch_op.drop_index('ix_loans_region')
        batch_op.drop_column('region')
    with op.batch_alter_table('config_versions') as batch_op:
        batch_op.drop_column('tier')
