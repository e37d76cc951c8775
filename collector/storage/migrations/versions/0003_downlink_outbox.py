"""0003 downlink outbox: keep each device's signed configuration and whether it was published.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

``config_versions.payload`` holds the last signed configuration message of the device and
``published_ms`` the collector time the broker acknowledged it (NULL = still to publish), so a
configuration signed by an API request or a CLI import is published by the running collector
even across restarts and broker outages.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('config_versions') as batch_op:
        batch_op.add_column(sa.Column('payload', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('published_ms', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('config_versions') as batch_op:
        batch_op.drop_column('published_ms')
        batch_op.drop_column('payload')
