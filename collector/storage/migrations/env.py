"""Alembic environment of the collector.

Run programmatically by ``collector.storage.database.migrate`` (which hands over a connection in
``config.attributes["connection"]``), or from the command line for autogeneration with
``sqlalchemy.url`` set (``alembic -x url=sqlite:///x.db ...``). SQLite gets batch mode so
that later migrations can alter tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from collector.storage.database import compared_with_models
from collector.storage.tables import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=compared_with_models,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no database: pass -x url=... or use collector.storage.database.migrate()")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _run(conn)
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
