"""0009 downlink keys: the collector's announced and promoted downlink signing keys.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02

``downlink_keys`` holds each public key announced as the collector's next downlink key
(``lienwatch collector downlink-key announce``): signed configurations carry it in their
``keys`` section until the collector signs with it, which sets ``promoted_ms``
(docs/security.md section 5). Additive; the lead re-chains ``down_revision`` at merge.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('downlink_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('public_key', sa.LargeBinary(length=32), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('announced_ms', sa.BigInteger(), nullable=False),
    sa.Column('promoted_ms', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_downlink_keys'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('downlink_keys')
