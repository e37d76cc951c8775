"""0004 console users and sessions: named people with a role, and their console sessions.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

``users`` holds one row per person (scrypt password hash, role, locale, time zone);
``console_sessions`` the SHA-256 of each session cookie with the principal it stands for,
its CSRF token, last use (idle expiry) and absolute expiry. See docs/people.md. An index on
``loans.borrower_ref`` serves the worklist's search.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table(
        'users',
        sa.Column('username', sa.String(length=64), nullable=False),
        sa.Column('display_name', sa.String(length=200), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('password_hash', sa.String(length=255), nullable=False),
        sa.Column('locale', sa.String(length=8), nullable=False),
        sa.Column('time_zone', sa.String(length=64), nullable=False),
        sa.Column('disabled', sa.Boolean(), nullable=False),
        sa.Column('created_ms', sa.BigInteger(), nullable=False),
        sa.Column('updated_ms', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('username', name=op.f('pk_users')),
    )
    op.create_table(
        'console_sessions',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=64), nullable=True),
        sa.Column('actor', sa.String(length=128), nullable=False),
        sa.Column('role', sa.String(length=32), nullable=False),
        sa.Column('display_name', sa.String(length=200), nullable=False),
        sa.Column('locale', sa.String(length=8), nullable=False),
        sa.Column('time_zone', sa.String(length=64), nullable=False),
        sa.Column('csrf_token', sa.String(length=64), nullable=False),
        sa.Column('created_ms', sa.BigInteger(), nullable=False),
        sa.Column('last_seen_ms', sa.BigInteger(), nullable=False),
        sa.Column('expires_ms', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['username'], ['users.username'],
                                name=op.f('fk_console_sessions_username_users'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_console_sessions')),
    )
    op.create_index(op.f('ix_console_sessions_username'), 'console_sessions', ['username'], unique=False)
    op.create_index(op.f('ix_console_sessions_last_seen_ms'), 'console_sessions', ['last_seen_ms'], unique=False)
    # The console's worklist search looks loans up by borrower reference too.
    op.create_index(op.f('ix_loans_borrower_ref'), 'loans', ['borrower_ref'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_loans_borrower_ref'), table_name='loans')
    op.drop_index(op.f('ix_console_sessions_last_seen_ms'), table_name='console_sessions')
    op.drop_index(op.f('ix_console_sessions_username'), table_name='console_sessions')
    op.drop_table('console_sessions')
    op.drop_table('users')
