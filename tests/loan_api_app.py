"""The loans API through the real app, auth and database, set up for a test (no tests in here).

Used by tests/test_loan_api.py and the attack tests in tests/security.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api.access import router as access_router
from collector.api.app import create_app
from collector.api.loans import router
from collector.api.places import router as places_router
from collector.cli.commands import main as collector_main
from collector.jobs.downlink import ConfigMessage
from collector.loans.csv_import import import_loans, parse_loans
from collector.settings import Settings, WebhookSettings, hash_api_key
from collector.storage.database import create_engine, migrate
from collector.storage.tables import AlertRecord, AuditEntry, BatchRecord, Device, FixRecord

__all__ = ["DAY", "KEYS", "NOW", "SAMPLE", "Api", "audit_actions", "cli_book", "cli_config", "open_loan_api"]

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000  # 2026-11-28T09:00:00Z
DAY = 86_400_000
KEYS = {"admin": "k-admin", "risk_analyst": "k-analyst", "collections": "k-collections", "auditor": "k-auditor"}


class Api:
    def __init__(self, client: TestClient, engine: sa.Engine, published: list[ConfigMessage], clock: list[int]) -> None:
        self.client = client
        self.engine = engine
        self.published = published
        self._clock = clock

    def set_now(self, now_ms: int) -> None:
        """Move the app's clock (it starts at NOW)."""
        self._clock[0] = now_ms

    def call(self, method: str, path: str, role: str, **kwargs: Any) -> Any:
        return self.client.request(method, path, headers={"Authorization": f"Bearer {KEYS[role]}"}, **kwargs)


def cli_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A collector.toml with a SQLite database under ``tmp_path/data`` and no LIENWATCH_* overrides."""
    for name in [n for n in os.environ if n.startswith("LIENWATCH_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "collector.toml"
    config.write_text('data_dir = "data"\n')
    return config


@contextmanager
def open_loan_api(tmp_path: Path) -> Iterator[Api]:
    """The app with the sample loan book, one device with an alert and a fix, all four roles."""
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        session.add(Device(device_id="tbox-0002", created_ms=NOW - 100 * DAY))
        session.flush()
        batch = BatchRecord(device_id="tbox-0002", seq=1, boot_id=b"\x01" * 16, created_ms=NOW, received_ms=NOW,
                            fix_count=1, sample_count=0, alert_count=1, stats_count=0, first_time_ms=None,
                            last_time_ms=None, counters={}, message_bytes=0)
        session.add(batch)
        session.flush()
        session.add(AlertRecord(batch_id=batch.id, device_id="tbox-0002", rule="stationary_near_market", severity=2,
                                state=0, time_ms=NOW - 3 * DAY, episode="dwell-1",
                                evidence={"market_id": "sh-jiading-ucm", "centre_lat": 31.302, "centre_lon": 121.2456}))
        session.add(FixRecord(batch_id=batch.id, device_id="tbox-0002", time_ms=NOW - 3 * DAY, lat=31.302,
                              lon=121.2456, speed_mps=0.0, mode=3))
        session.commit()
    settings = Settings(
        api_keys={hash_api_key(k): role for role, k in KEYS.items()},
        webhooks=WebhookSettings(urls=("http://127.0.0.1:9/hook",), secret="s" * 16),
    )
    published: list[ConfigMessage] = []
    clock = [NOW]
    app = create_app(
        settings,
        engine=engine,
        routers=[router, access_router, places_router],
        clock_ms=lambda: clock[0],
        signing_key=Ed25519PrivateKey.from_private_bytes(b"\x07" * 32),
        config_publisher=published.extend,
    )
    with TestClient(app) as client:
        yield Api(client, engine, published, clock)
    engine.dispose()


def audit_actions(api: Api) -> list[tuple[str, str, str]]:
    with Session(api.engine) as session:
        entries = session.scalars(sa.select(AuditEntry).order_by(AuditEntry.id))
        return [(e.role, e.action, e.subject_id) for e in entries]


def cli_book(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A collector.toml (SQLite in ``tmp_path/data``) with the sample loan book imported from the
    command line, no ``LIENWATCH_*`` variable in the way; returns the config file's path."""
    for name in [n for n in os.environ if n.startswith("LIENWATCH_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "collector.toml"
    config.write_text('data_dir = "data"\n[webhooks]\nurls = ["http://127.0.0.1:9/hook"]\n'
                      'secret = "cli-test-secret-0123456789"\n')
    assert collector_main(["loans", "import", "--config", str(config), str(SAMPLE)]) == 0
    return config
