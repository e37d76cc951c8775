"""What every ``lienwatch collector`` command starts from: the settings and their database.

The settings come from ``--config`` (or the file named by ``LIENWATCH_CONFIG``) and the
``LIENWATCH_*`` environment; the database is the one they name, migrated to head, the same
one ``serve`` uses.
"""

from __future__ import annotations

import argparse
import getpass
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ..clock import wall_clock_ms
from ..settings import ENV_PREFIX, Settings, load_settings
from ..storage.audit import record_access
from ..storage.database import open_database

__all__ = ["audit_cli", "cli_actor", "open_settings_database", "settings_from_args", "settings_session"]


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Load the settings named by ``--config`` (else ``LIENWATCH_CONFIG``) and the environment.

    Raises:
        ConfigError: unreadable file, unknown key or variable, wrong type, value out of range.
    """
    path = args.config or os.environ.get(f"{ENV_PREFIX}CONFIG")
    return load_settings(path)


def open_settings_database(settings: Settings) -> Engine:
    """The database named by ``settings``, migrated to head.

    Raises:
        DatabaseUnavailableError: the database cannot be reached.
        StorageError: a migration failed.
    """
    return open_database(settings.resolved_database_url, sqlite_busy_timeout_ms=settings.limits.sqlite_busy_timeout_ms)


@contextmanager
def settings_session(settings: Settings) -> Iterator[Session]:
    """A session on the settings' database; the engine is disposed afterwards."""
    engine = open_settings_database(settings)
    try:
        with Session(engine) as session:
            yield session
    finally:
        engine.dispose()


def cli_actor() -> str:
    """The audit actor of a command: ``cli:{OS user}``."""
    try:
        return f"cli:{getpass.getuser()}"[:128]
    except (KeyError, OSError):  # no passwd entry (containers)
        return "cli:unknown"


def audit_cli(engine: Engine, action: str, *, kind: str, subject: str, **detail: Any) -> None:
    """Append and commit one audit row for what a command did (role ``admin``, like the API's rows)."""
    with Session(engine) as session:
        record_access(
            session, actor=cli_actor(), role="admin", action=action, subject_type=kind, subject_id=subject,
            time_ms=wall_clock_ms(), detail=detail,
        )  # fmt: skip
        session.commit()
