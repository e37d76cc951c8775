"""0014 collateral signals (#17): typed places replace markets; EV battery daily figures; second trackers.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-02

``places`` holds every typed place the devices watch (used-car market, pawn lot, auction,
impound yard, port, border crossing; protocol.places.PlaceType) with its declared datum and
a ``deleted_ms`` tombstone (the newest ``updated_ms`` is the list's revision). The rows of
``markets`` are copied in as ``used_car_market`` places and ``markets`` is dropped (it was
read and written only by the market code this revision replaces).

``daily_stats`` gains the traction-battery figures of protocol.DailyStats (EVs only, NULL
otherwise): energy used and charged (kWh), charging sessions, state of health (%).

``loan_devices`` links a second tracker to a loan (``loans.device_id`` stays the main one; one
row per loan at most, so two trackers per car).

Merge note: the lead re-chains ``down_revision`` onto the newest revision at merge.
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0014'
down_revision: Union[str, Sequence[str], None] = '0013'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('places',
    sa.Column('place_id', sa.String(length=64), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('lat', sa.Double(), nullable=False),
    sa.Column('lon', sa.Double(), nullable=False),
    sa.Column('datum', sa.String(length=8), nullable=False),
    sa.Column('radius_m', sa.Double(), nullable=False),
    sa.Column('updated_ms', sa.BigInteger(), nullable=False),
    sa.Column('deleted_ms', sa.BigInteger(), nullable=True),
    sa.PrimaryKeyConstraint('place_id', name=op.f('pk_places'))
    )
    op.create_index(op.f('ix_places_type'), 'places', ['type'], unique=False)
    op.execute(
        "INSERT INTO places (place_id, type, name, lat, lon, datum, radius_m, updated_ms, deleted_ms) "
        "SELECT market_id, 'used_car_market', name, lat, lon, datum, radius_m, updated_ms, NULL FROM markets"
    )
    op.drop_table('markets')
    with op.batch_alter_table('daily_stats') as batch_op:
        batch_op.add_column(sa.Column('energy_used_kwh', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('energy_charged_kwh', sa.Double(), nullable=True))
        batch_op.add_column(sa.Column('charging_sessions', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('soh_percent', sa.Double(), nullable=True))
    op.create_table('loan_devices',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('loan_id', sa.String(length=64), nullable=False),
    sa.Column('added_ms', sa.BigInteger(), nullable=False),
    sa.ForeignKeyConstraint(['loan_id'], ['loans.loan_id'], name=op.f('fk_loan_devices_loan_id_loans'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('device_id', name=op.f('pk_loan_devices')),
    sa.UniqueConstraint('loan_id', name=op.f('uq_loan_devices_loan_id'))
    )


def downgrade() -> None:
    """Downgrade schema (places of other types than used-car markets are lost)."""
    op.drop_table('loan_devices')
    with op.batch_alter_table('daily_stats') as batch_op:
        batch_op.drop_column('soh_percent')
        batch_op.drop_column('charging_sessions')
        batch_op.drop_column('energy_charged_kwh')
        batch_op.drop_column('energy_used_kwh')
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
    op.execute(
        "INSERT INTO markets (market_id, name, lat, lon, datum, radius_m, updated_ms) "
        "SELECT place_id, name, lat, lon, datum, radius_m, updated_ms FROM places "
        "WHERE type = 'used_car_market' AND deleted_ms IS NULL"
    )
    op.drop_index(op.f('ix_places_type'), table_name='places')
    op.drop_table('places')
