"""0001 ingest: device registry, batch ledger, observations, device status, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

Every ingest table (collector.storage.tables) as of issue 6; ``batches.seq`` is an unsigned 64-bit
sequence number kept in a signed BIGINT (collector.storage.tables.UInt64).
"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('dead_letters',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('received_ms', sa.BigInteger(), nullable=False),
    sa.Column('topic', sa.String(length=1024), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('payload', sa.LargeBinary(), nullable=False),
    sa.Column('payload_bytes', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dead_letters'))
    )
    op.create_index(op.f('ix_dead_letters_reason'), 'dead_letters', ['reason'], unique=False)
    op.create_index(op.f('ix_dead_letters_received_ms'), 'dead_letters', ['received_ms'], unique=False)

    op.create_table('devices',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=True),
    sa.PrimaryKeyConstraint('device_id', name=op.f('pk_devices'))
    )
    op.create_table('registry_version',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_registry_version'))
    )
    op.bulk_insert(sa.table('registry_version', sa.column('id', sa.Integer), sa.column('version', sa.BigInteger)),
                   [{'id': 1, 'version': 0}])
    op.create_table('batches',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('boot_id', sa.LargeBinary(length=16), nullable=False),
    sa.Column('created_ms', sa.BigInteger(), nullable=False),
    sa.Column('received_ms', sa.BigInteger(), nullable=False),
    sa.Column('fix_count', sa.Integer(), nullable=False),
    sa.Column('sample_count', sa.Integer(), nullable=False),
    sa.Column('alert_count', sa.Integer(), nullable=False),
    sa.Column('stats_count', sa.Integer(), nullable=False),
    sa.Column('first_time_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_time_ms', sa.BigInteger(), nullable=True),
    sa.Column('counters', sa.JSON(), nullable=False),
    sa.Column('message_bytes', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.device_id'], name=op.f('fk_batches_device_id_devices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_batches')),
    sa.UniqueConstraint('device_id', 'seq', name='uq_batches_device_seq')
    )
    op.create_index(op.f('ix_batches_received_ms'), 'batches', ['received_ms'], unique=False)

    op.create_table('device_keys',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.LargeBinary(length=32), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('added_ms', sa.BigInteger(), nullable=False),
    sa.Column('revoked_ms', sa.BigInteger(), nullable=True),
    sa.ForeignKeyConstraint(['device_id'], ['devices.device_id'], name=op.f('fk_device_keys_device_id_devices')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_keys'))
    )
    op.create_index('uq_device_keys_one_active', 'device_keys', ['device_id'], unique=True, sqlite_where=sa.text('revoked_ms IS NULL'), postgresql_where=sa.text('revoked_ms IS NULL'))

    op.create_table('device_status',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('last_fix_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_lat', sa.Double(), nullable=True),
    sa.Column('last_lon', sa.Double(), nullable=True),
    sa.Column('last_speed_mps', sa.Double(), nullable=True),
    sa.Column('last_seen_ms', sa.BigInteger(), nullable=True),
    sa.Column('last_received_ms', sa.BigInteger(), nullable=True),
    sa.Column('online', sa.Boolean(), nullable=True),
    sa.Column('state_time_ms', sa.BigInteger(), nullable=True),
    sa.Column('state_boot_id', sa.LargeBinary(length=16), nullable=True),
    sa.Column('counters_time_ms', sa.BigInteger(), nullable=True),
    sa.Column('device_counters', sa.JSON(), nullable=True),
    sa.Column('batches_stored', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('fixes_stored', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('samples_stored', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('alerts_stored', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('duplicates', sa.BigInteger(), server_default='0', nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.device_id'], name=op.f('fk_device_status_device_id_devices')),
    sa.PrimaryKeyConstraint('device_id', name=op.f('pk_device_status'))
    )
    op.create_table('alerts',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('batch_id', sa.BigInteger(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('rule', sa.String(length=64), nullable=False),
    sa.Column('severity', sa.SmallInteger(), nullable=False),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('episode', sa.String(length=128), nullable=False),
    sa.Column('evidence', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_alerts_batch_id_batches')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alerts'))
    )
    op.create_index(op.f('ix_alerts_batch_id'), 'alerts', ['batch_id'], unique=False)
    op.create_index('ix_alerts_device_episode', 'alerts', ['device_id', 'episode'], unique=False)
    op.create_index('ix_alerts_device_time', 'alerts', ['device_id', 'time_ms'], unique=False)

    op.create_table('daily_stats',
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('day', sa.String(length=10), nullable=False),
    sa.Column('batch_id', sa.BigInteger(), nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('distance_m', sa.Double(), nullable=False),
    sa.Column('driving_s', sa.Double(), nullable=False),
    sa.Column('harsh_accel', sa.BigInteger(), nullable=False),
    sa.Column('harsh_brake', sa.BigInteger(), nullable=False),
    sa.Column('odometer_km', sa.Double(), nullable=True),
    sa.Column('final', sa.Boolean(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_daily_stats_batch_id_batches')),
    sa.ForeignKeyConstraint(['device_id'], ['devices.device_id'], name=op.f('fk_daily_stats_device_id_devices')),
    sa.PrimaryKeyConstraint('device_id', 'day', name=op.f('pk_daily_stats'))
    )
    op.create_table('fixes',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('batch_id', sa.BigInteger(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('lat', sa.Double(), nullable=False),
    sa.Column('lon', sa.Double(), nullable=False),
    sa.Column('alt_m', sa.Double(), nullable=True),
    sa.Column('speed_mps', sa.Double(), nullable=True),
    sa.Column('course_deg', sa.Double(), nullable=True),
    sa.Column('mode', sa.SmallInteger(), nullable=False),
    sa.Column('hdop', sa.Double(), nullable=True),
    sa.Column('sats_used', sa.SmallInteger(), nullable=True),
    sa.Column('mean_snr', sa.Double(), nullable=True),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_fixes_batch_id_batches')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_fixes'))
    )
    op.create_index(op.f('ix_fixes_batch_id'), 'fixes', ['batch_id'], unique=False)
    op.create_index('ix_fixes_device_time', 'fixes', ['device_id', 'time_ms'], unique=False)

    op.create_table('samples',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), autoincrement=True, nullable=False),
    sa.Column('batch_id', sa.BigInteger(), nullable=False),
    sa.Column('device_id', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('time_ms', sa.BigInteger(), nullable=False),
    sa.Column('value', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_samples_batch_id_batches')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_samples'))
    )
    op.create_index(op.f('ix_samples_batch_id'), 'samples', ['batch_id'], unique=False)
    op.create_index('ix_samples_device_name_time', 'samples', ['device_id', 'name', 'time_ms'], unique=False)



def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index('ix_samples_device_name_time', table_name='samples')
    op.drop_index(op.f('ix_samples_batch_id'), table_name='samples')

    op.drop_table('samples')
    op.drop_index('ix_fixes_device_time', table_name='fixes')
    op.drop_index(op.f('ix_fixes_batch_id'), table_name='fixes')

    op.drop_table('fixes')
    op.drop_table('daily_stats')
    op.drop_index('ix_alerts_device_time', table_name='alerts')
    op.drop_index('ix_alerts_device_episode', table_name='alerts')
    op.drop_index(op.f('ix_alerts_batch_id'), table_name='alerts')

    op.drop_table('alerts')
    op.drop_table('device_status')
    op.drop_index('uq_device_keys_one_active', table_name='device_keys', sqlite_where=sa.text('revoked_ms IS NULL'), postgresql_where=sa.text('revoked_ms IS NULL'))

    op.drop_table('device_keys')
    op.drop_index(op.f('ix_batches_received_ms'), table_name='batches')

    op.drop_table('batches')
    op.drop_table('registry_version')
    op.drop_table('devices')
    op.drop_index(op.f('ix_dead_letters_received_ms'), table_name='dead_letters')
    op.drop_index(op.f('ix_dead_letters_reason'), table_name='dead_letters')

    op.drop_table('dead_letters')
