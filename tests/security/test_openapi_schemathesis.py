"""schemathesis against the collector's own OpenAPI, for every role: no 500, no response
outside its documented schema.

The app is the real one (auth, request guard, every router, SQLite with the sample loan
book and a device with an alert and a fix). Each operation gets ``LIENWATCH_API_EXAMPLES``
examples, each sent with every role's key and with none (default 10: 200 examples, 1,000
requests in all); ``bench/fuzz_bench.py`` runs longer campaigns. ``/v1/risk/stream`` is
left out (with ``follow=true`` it streams for ever); its parameters are covered by
tests/security/test_finding5_smaller.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance
from sqlalchemy.orm import Session

from collector.api.alerts import router as alerts_router
from collector.api.app import create_app
from collector.api.loans import router
from collector.api.places import router as places_router
from collector.loans.csv_import import import_loans, parse_loans
from collector.settings import Settings, hash_api_key
from collector.storage.database import create_engine, migrate
from collector.storage.tables import AlertRecord, BatchRecord, Device, FixRecord

EXAMPLES = int(os.environ.get("LIENWATCH_API_EXAMPLES", "10"))
SAMPLE = Path(__file__).resolve().parents[2] / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000
DAY = 86_400_000
KEYS = {role: f"schemathesis-{role}-key-0123456789" for role in ("admin", "risk_analyst", "collections", "auditor")}


def _app(folder: Path) -> Any:
    engine = create_engine(f"sqlite:///{folder / 'api.db'}")
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW)
        session.add(Device(device_id="tbox-0002", created_ms=NOW - 100 * DAY))
        session.flush()
        batch = BatchRecord(device_id="tbox-0002", seq=1, boot_id=b"\x01" * 16, created_ms=NOW, received_ms=NOW,
                            fix_count=1, sample_count=0, alert_count=1, stats_count=0, first_time_ms=None,
                            last_time_ms=None, counters={}, message_bytes=0)  # fmt: skip
        session.add(batch)
        session.flush()
        session.add(AlertRecord(batch_id=batch.id, device_id="tbox-0002", rule="stationary_near_market", severity=2,
                                state=0, time_ms=NOW - 3 * DAY, episode="dwell-1",
                                evidence={"market_id": "m1", "centre_lat": 31.3, "centre_lon": 121.2}))  # fmt: skip
        session.add(FixRecord(batch_id=batch.id, device_id="tbox-0002", time_ms=NOW - 3 * DAY, lat=31.3, lon=121.2,
                              speed_mps=0.0, mode=3))  # fmt: skip
        session.commit()
    settings_ = Settings(data_dir=folder, api_keys={hash_api_key(k): role for role, k in KEYS.items()})
    return create_app(
        settings_, engine=engine, routers=[router, places_router, alerts_router], clock_ms=lambda: NOW,
        config_publisher=lambda _messages: None,
    )


# The database lives in memory-backed storage when there is one: the run is request-bound.
_FOLDER = Path(tempfile.mkdtemp(prefix="lw-schemathesis-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
schema = schemathesis.openapi.from_asgi("/openapi.json", _app(_FOLDER)).exclude(path="/v1/risk/stream")


@pytest.fixture(scope="module", autouse=True)
def _remove_database() -> Iterator[None]:
    yield
    shutil.rmtree(_FOLDER, ignore_errors=True)


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_no_response_outside_the_schema(case: Any) -> None:
    for role in (*sorted(KEYS), None):  # every role, then no key at all
        headers = {"Authorization": f"Bearer {KEYS[role]}"} if role else {}
        case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])
