"""collector.api.app + collector.api.auth + the ``lienwatch collector`` command (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi import APIRouter, Depends
from fastapi.testclient import TestClient

from collector.api.app import create_app, discover_routers
from collector.api.auth import Principal, require_role
from collector.cli import commands as _cli
from collector.ingest.ingestor import Ingestor
from collector.ingest.metrics import IngestMetrics
from collector.settings import Settings, hash_api_key, load_settings
from collector.storage.database import create_engine, migrate
from tests.fake_devices import NOW, FakeDevice

KEYS = {role: f"{role}-key-0123456789abcdef" for role in ("admin", "risk_analyst", "collections", "auditor")}


def bearer(role: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[role]}"}


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return Settings(
        data_dir=tmp_path, database_url=database_url, api_keys={hash_api_key(k): r for r, k in KEYS.items()}
    )


@pytest.fixture
def engine(settings: Settings) -> Iterator[sa.Engine]:
    db = create_engine(settings.resolved_database_url)
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def metrics() -> IngestMetrics:
    return IngestMetrics()


@pytest.fixture
def client(settings: Settings, engine: sa.Engine, metrics: IngestMetrics) -> Iterator[TestClient]:
    probe = APIRouter(prefix="/v1/probe")

    @probe.get("")
    def who(principal: Principal = Depends(require_role("risk_analyst", "auditor"))) -> dict[str, str]:  # noqa: B008
        return {"role": principal.role}

    app = create_app(settings, engine=engine, metrics_registry=metrics.registry, routers=[probe])
    with TestClient(app) as test_client:
        yield test_client


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok", "reasons": [], "database": "ok"})


def test_healthz_reports_an_unreachable_database(settings: Settings) -> None:
    from firmware_sim.rig import free_port

    dead = create_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/x")
    with TestClient(create_app(settings, engine=dead)) as test_client:
        response = test_client.get("/healthz")
    dead.dispose()
    assert (response.status_code, response.json()["status"]) == (503, "failed")
    assert response.json()["reasons"] == ["database unreachable (OperationalError)"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        ({"Authorization": "Bearer not-a-configured-key"}, 401),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, 401),
        ({"Authorization": "Bearer " + "x" * 5000}, 401),
        (bearer("collections"), 403),
        (bearer("admin"), 403),
        (bearer("risk_analyst"), 200),
        (bearer("auditor"), 200),
    ],
)
def test_require_role(client: TestClient, headers: dict[str, str], status: int) -> None:
    response = client.get("/v1/probe", headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    if status == 403:
        assert "needs risk_analyst or auditor" in response.json()["detail"]


def test_require_role_refuses_unknown_roles() -> None:
    with pytest.raises(ValueError, match="require_role needs roles"):
        require_role("superuser")


def test_devices_add_list_revoke(client: TestClient, engine: sa.Engine) -> None:
    truck = FakeDevice("truck-1")
    body = {"device_id": "truck-1", "public_key_pem": truck.pem.decode(), "label": "demo truck"}
    assert client.post("/v1/devices", json=body, headers=bearer("risk_analyst")).status_code == 403
    created = client.post("/v1/devices", json=body, headers=bearer("admin"))
    assert created.status_code == 201
    assert created.json()["active"] is True
    assert client.post("/v1/devices", json=body, headers=bearer("admin")).status_code == 409
    listed = client.get("/v1/devices", headers=bearer("admin")).json()
    assert [(d["device_id"], d["active"], d["label"]) for d in listed] == [("truck-1", True, "demo truck")]
    assert created.json()["label"] == "demo truck"

    ingestor = Ingestor(engine, clock_ms=lambda: NOW)
    ingestor.handle(truck.topic, truck.sealed(1))
    detail = client.get("/v1/devices/truck-1", headers=bearer("admin")).json()
    assert (detail["status"]["batches_stored"], detail["status"]["fixes_stored"]) == (1, 3)

    revoked = client.post("/v1/devices/truck-1/revoke", headers=bearer("admin"))
    assert revoked.status_code == 200
    assert revoked.json()["active"] is False
    assert client.post("/v1/devices/nope/revoke", headers=bearer("admin")).status_code == 404
    assert client.get("/v1/devices/nope", headers=bearer("admin")).status_code == 404
    # A new key may be given after a revoke.
    assert client.post("/v1/devices", json=body, headers=bearer("admin")).status_code == 201


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"device_id": "truck 1", "public_key_pem": "x"}, 422),
        ({"device_id": "truck-1", "public_key_pem": "not a pem"}, 422),
        ({"device_id": "truck-1", "public_key_pem": "x" * 5000}, 422),
        ({"device_id": "truck-1"}, 422),
    ],
)
def test_devices_add_refuses_bad_input(client: TestClient, body: dict[str, str], status: int) -> None:
    assert client.post("/v1/devices", json=body, headers=bearer("admin")).status_code == status


def test_devices_add_refuses_a_non_ed25519_key(client: TestClient) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    response = client.post(
        "/v1/devices", json={"device_id": "t", "public_key_pem": pem.decode()}, headers=bearer("admin")
    )
    assert response.status_code == 422
    assert "expected Ed25519" in response.json()["detail"]


def test_metrics_and_dead_letters(client: TestClient, engine: sa.Engine, metrics: IngestMetrics) -> None:
    ingestor = Ingestor(engine, metrics=metrics, clock_ms=lambda: NOW)
    ingestor.handle("lw/v1/truck-1/batch", b"junk")
    text = client.get("/metrics").text
    assert 'lienwatch_ingest_dead_letters_total{reason="invalid_envelope"} 1.0' in text
    assert 'lienwatch_ingest_messages_received_total{kind="batch"} 1.0' in text
    assert "lienwatch_ingest_latency_seconds_bucket" in text
    assert client.get("/v1/dead-letters", headers=bearer("auditor")).status_code == 403
    [letter] = client.get("/v1/dead-letters?reason=invalid_envelope", headers=bearer("admin")).json()
    assert client.get("/v1/dead-letters?reason=nonsense", headers=bearer("admin")).status_code == 422
    assert (letter["topic"], letter["device_id"], letter["payload_bytes"]) == ("lw/v1/truck-1/batch", "truck-1", 4)


def test_discover_routers_skips_missing_modules() -> None:
    assert discover_routers(("collector.no_such_module",)) == []
    with pytest.raises(ModuleNotFoundError):
        discover_routers(("collector.no_such_package.api",))


# ------------------------------------------------------------------ the command line


def test_cli_devices_and_api_keys(
    tmp_path: Path, database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "collector.toml"
    config.write_text(f'database_url = "{database_url}"\n')
    pem = tmp_path / "truck.pem"
    pem.write_bytes(FakeDevice("truck-1").pem)
    monkeypatch.delenv("LIENWATCH_CONFIG", raising=False)

    def run(*argv: str) -> tuple[int, list[dict[str, object]]]:
        code = _cli.main([*argv])
        out = capsys.readouterr().out
        return code, [json.loads(line) for line in out.splitlines() if line.startswith("{")]

    assert _cli.main(["migrate", "--config", str(config)]) == 0
    code, [added] = run("devices", "add", "--device", "truck-1", "--public-key", str(pem), "--config", str(config))
    assert (code, added["device_id"], added["active"]) == (0, "truck-1", True)
    assert _cli.main(["devices", "add", "--device", "truck-1", "--public-key", str(pem), "--config", str(config)]) == 1
    assert "already has an active key" in capsys.readouterr().err
    monkeypatch.setenv("LIENWATCH_CONFIG", str(config))  # the file can come from the environment too
    code, listed = run("devices", "list")
    assert [(d["device_id"], d["active"]) for d in listed] == [("truck-1", True)]
    code, [revoked] = run("devices", "revoke", "truck-1")
    assert (code, revoked["active"]) == (0, False)
    assert _cli.main(["devices", "revoke", "ghost"]) == 1
    assert _cli.main(["devices", "add", "--device", "t2", "--public-key", str(tmp_path / "none.pem")]) == 2
    code, letters = run("dead-letters")
    assert (code, letters) == (0, [])

    assert _cli.main(["api-key", "new", "--role", "auditor"]) == 0
    printed = capsys.readouterr().out
    key = printed.splitlines()[0].split()[2]
    assert tomllib.loads(printed) == {"api_keys": {f"sha256:{hash_api_key(key)}": "auditor"}}  # valid TOML
    (tmp_path / "keys.toml").write_text(printed)
    assert load_settings(tmp_path / "keys.toml", environ={}).api_keys == {hash_api_key(key): "auditor"}

    # --label is shown; an unknown dead-letter reason is an error, not an empty answer
    code, [labelled] = run(
        "devices", "add", "--device", "t3", "--public-key", str(pem), "--label", "fleet van 3", "--config", str(config)
    )
    assert labelled["label"] == "fleet van 3"
    code, listed = run("devices", "list")
    assert {d["device_id"]: d["label"] for d in listed} == {"truck-1": None, "t3": "fleet van 3"}
    with pytest.raises(SystemExit) as exit_info:
        _cli.main(["dead-letters", "--reason", "nonsense"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nonsense'" in capsys.readouterr().err
    code, letters = run("dead-letters", "--reason", "bad_signature")
    assert (code, letters) == (0, [])
