"""Fixtures of the attack tests: a migrated SQLite collector database, signing devices, the loans API.

Each ``test_finding<N>_*.py`` reproduces one numbered finding of issue 13 as the attacker
ran it, and checks that the attack now fails. Helpers live in
``tests.security.signing_devices``, ``tests.secure_broker``, ``tests.loan_api_app``
and ``tests.agent_harness``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from collector.storage.database import create_engine, migrate
from tests.loan_api_app import Api, open_loan_api
from tests.security.signing_devices import SigningDevice


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    db = create_engine(f"sqlite:///{tmp_path / 'collector.db'}")
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def car() -> SigningDevice:
    return SigningDevice("car-0001")


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_loan_api(tmp_path) as running:
        yield running
