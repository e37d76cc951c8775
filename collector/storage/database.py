"""Database engines and migrations: SQLite by default, PostgreSQL when the URL says so.

SQLite connections get ``journal_mode=WAL`` (readers never block the writer),
``busy_timeout`` (a second writer waits instead of failing), ``foreign_keys=ON`` and
``synchronous=NORMAL`` (durable across a process crash; WAL makes it cheap).

Migrations run programmatically (:func:`migrate`) at start under a lock so that several
collectors starting together do not race: a PostgreSQL advisory lock, or a file lock
beside the SQLite database.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from ..errors import DatabaseUnavailableError, StorageError

__all__ = [
    "MIGRATIONS_DIR",
    "STATEMENT_CHECKED_FOREIGN_KEYS",
    "alembic_config",
    "compared_with_models",
    "create_engine",
    "is_transient",
    "migrate",
    "open_database",
]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
_PG_MIGRATION_LOCK = 0x4C57_0001  # "LW" + 1: the advisory lock id held while migrating
#: Foreign keys of the models that PostgreSQL checks once per statement by triggers instead
#: (migration 0016: a per-row check cost more than the rest of the ingest's COPY).
STATEMENT_CHECKED_FOREIGN_KEYS = frozenset({"fk_fixes_batch_id_batches", "fk_samples_batch_id_batches"})


def create_engine(url: str, *, sqlite_busy_timeout_ms: int = 10_000, echo: bool = False) -> Engine:
    """Create an engine for ``url`` with the collector's connection settings.

    Args:
        url: SQLAlchemy URL (``sqlite:///path`` or ``postgresql+psycopg://...``).
        sqlite_busy_timeout_ms: how long a SQLite writer waits for the lock.
        echo: log SQL.
    """
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            echo=echo,
            connect_args={"timeout": sqlite_busy_timeout_ms / 1000, "check_same_thread": False},
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
            cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA busy_timeout={int(sqlite_busy_timeout_ms)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

        return engine
    return sa.create_engine(url, echo=echo, pool_pre_ping=True, pool_size=5, max_overflow=5)


def open_database(url: str, *, sqlite_busy_timeout_ms: int = 10_000, run_migrations: bool = True) -> Engine:
    """Engine for ``url`` (a SQLite file's folder is created), migrated to head unless told not to.

    Args:
        url: SQLAlchemy URL (``Settings.resolved_database_url``).
        sqlite_busy_timeout_ms: how long a SQLite writer waits for the lock.
        run_migrations: upgrade the schema to head first.
    """
    engine = create_engine(url, sqlite_busy_timeout_ms=sqlite_busy_timeout_ms)
    if run_migrations:
        migrate(engine)
    return engine


def compared_with_models(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    """Alembic ``include_object`` hook: every schema object but :data:`STATEMENT_CHECKED_FOREIGN_KEYS`.

    On PostgreSQL those foreign keys are triggers (migration 0016); comparing the migrated
    schema with the models must not report them missing.
    """
    return not (type_ == "foreign_key_constraint" and name in STATEMENT_CHECKED_FOREIGN_KEYS)


def alembic_config() -> Config:
    """An Alembic configuration pointing at collector/storage/migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock_path = Path(str(engine.url.database) + ".migrate-lock")
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    else:
        yield


def migrate(engine: Engine, revision: str = "head") -> None:
    """Upgrade the database behind ``engine`` to ``revision``.

    Raises:
        DatabaseUnavailableError: the database cannot be reached.
        StorageError: a migration failed.
    """
    config = alembic_config()
    try:
        with _migration_lock(engine), engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except sa.exc.SQLAlchemyError as exc:
        if is_transient(exc):
            raise DatabaseUnavailableError(f"cannot migrate {engine.url!r}: database unreachable: {exc}") from exc
        raise StorageError(f"migrating {engine.url!r} to {revision} failed: {exc}") from exc


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` means "the database is unreachable or busy now", not "bad data".

    Connection loss, a server shutting down, a locked SQLite file: retry later. An
    integrity or data error is about the message and retrying would not help.
    """
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, (sa.exc.IntegrityError, sa.exc.DataError, sa.exc.ProgrammingError)):
        return False
    if isinstance(exc, sa.exc.OperationalError) and any(
        text in str(exc.orig) for text in ("no such table", "no such column", "syntax error", "has no column")
    ):
        return False  # SQLite files these schema mistakes under OperationalError too
    if isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)):
        return True
    return isinstance(exc, (sa.exc.DisconnectionError, sa.exc.TimeoutError))
