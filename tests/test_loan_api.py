"""The loans API through the real app, auth and database: roles, redaction, audit, markets, SSE."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api.dependencies import ApiNotWiredError
from collector.api.loans import router, sse_frame
from collector.jobs.redaction import reasons_for_collections, redact_coordinates, score_for_collections
from collector.settings import RiskSettings, Settings, get_settings, hash_api_key
from collector.storage.tables import LoanRecord, WebhookDelivery
from protocol import config_topic, open_config
from tests.loan_api_app import DAY, KEYS, NOW, Api, audit_actions, open_loan_api


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_loan_api(tmp_path) as running:
        yield running


def test_assess_then_list_and_filter(api: Api) -> None:
    assessed = api.call("POST", "/v1/loans/L-1002/assess", "risk_analyst").json()
    # v2: 88 days past due with three lates is critical on the credit axis (a likely default)
    assert (assessed["level"], assessed["next_step"], assessed["changed"]) == ("critical", "on_site_check", True)
    assert assessed["reasons"][0]["explanation"]["axis"] == "credit"
    api.call("POST", "/v1/loans/L-1003/assess", "admin")
    loans = api.call("GET", "/v1/loans", "collections").json()
    top_two = [(x["loan_id"], x["level"]) for x in loans][:2]
    assert top_two == [("L-1002", "critical"), ("L-1003", "watch")]
    critical = api.call("GET", "/v1/loans", "admin", params={"level": "critical"}).json()
    assert [x["loan_id"] for x in critical] == ["L-1002"]
    assert api.call("GET", "/v1/loans", "admin", params={"level": "high"}).json() == []
    normal = api.call("GET", "/v1/loans", "admin", params={"level": "normal"}).json()
    assert [x["loan_id"] for x in normal] == ["L-1001", "L-1004", "L-1005"]
    assert api.call("GET", "/v1/loans", "admin", params={"level": "panic"}).status_code == 422
    with Session(api.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(WebhookDelivery)) == 2  # one per level change


def test_v2_score_in_the_loan_and_the_worklist(api: Api) -> None:
    for loan_id in ("L-1001", "L-1002", "L-1003", "L-1004", "L-1005"):
        api.call("POST", f"/v1/loans/{loan_id}/assess", "admin")
    loan = api.call("GET", "/v1/loans/L-1002", "risk_analyst").json()
    score = loan["risk"]["score"]
    assert score["model_version"] == "2026.12.1"
    assert 0 < score["score"] < 1
    assert float(score["expected_loss"]) > 0
    assert score["tier"] == "risk"
    assert score["credit"]["level"] in ("high", "critical")
    assert score["credit"]["next_step"] in ("call_borrower", "on_site_check")
    assert score["collateral"]["level"] == "normal"
    first = score["credit"]["reasons"][0]
    assert {"code", "axis", "kind", "log_odds", "pd_points", "value"} <= set(first)
    assert first["axis"] == "credit"
    worklist = api.call("GET", "/v1/loans", "risk_analyst", params={"order": "expected_loss"}).json()
    losses = [float(x["expected_loss"]) for x in worklist]
    assert losses == sorted(losses, reverse=True)
    assert worklist[0]["loan_id"] == "L-1002"
    assert worklist[0]["credit"]["level"] == score["credit"]["level"]
    assert {x["tier"] for x in worklist} <= {"on_time_12m", "minor_lates_cured", "risk", "new"}
    assert api.call("GET", "/v1/loans", "admin", params={"order": "random"}).status_code == 422

    # Collections see each axis's level and next step and the tier, not the score (docs/people.md).
    seen = api.call("GET", "/v1/loans/L-1002", "collections").json()["risk"]
    assert seen["score"] == {"level": score["level"], "tier": "risk",
                             "credit": {"level": score["credit"]["level"], "next_step": score["credit"]["next_step"]},
                             "collateral": {"level": "normal", "next_step": "monitor"}}
    assert all(set(r["explanation"]) == {"axis", "kind", "summary"} for r in seen["reasons"])
    assert all("log_odds" in r["explanation"] for r in loan["risk"]["reasons"])
    listed = api.call("GET", "/v1/loans", "collections", params={"order": "expected_loss"}).json()
    assert [x["loan_id"] for x in listed] == [x["loan_id"] for x in worklist]
    assert {(x["score"], x["expected_loss"]) for x in listed} == {(None, None)}
    assert listed[0]["credit"] == worklist[0]["credit"]


def test_roles(api: Api) -> None:
    assert api.client.get("/v1/loans").status_code == 401
    assert api.client.get("/v1/loans", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert api.call("GET", "/v1/loans", "auditor").status_code == 403
    assert api.call("GET", "/v1/audit", "collections").status_code == 403
    track = {"from_ms": NOW - 7 * DAY, "to_ms": NOW, "reason": "dwell review"}
    assert api.call("GET", "/v1/loans/L-1002/track", "collections", params=track).status_code == 403
    assert api.call("GET", "/v1/loans/L-1002/track", "risk_analyst", params=track).status_code == 200
    assert api.call("POST", "/v1/loans/L-1003/repayments", "risk_analyst",
                    json={"payment_id": "x", "paid_on": "2026-11-20", "amount": "1.00"}).status_code == 403
    assert api.call("PUT", "/v1/markets/m1", "risk_analyst",
                    json={"name": "m", "lat": 1, "lon": 1, "radius_m": 100, "datum": "wgs84"}).status_code == 403


def test_collections_see_no_coordinates(api: Api) -> None:
    api.call("POST", "/v1/loans/L-1002/assess", "admin")
    analyst = api.call("GET", "/v1/loans/L-1002", "risk_analyst").json()
    collections = api.call("GET", "/v1/loans/L-1002", "collections").json()
    def dwell(loan: dict[str, Any]) -> dict[str, Any]:
        reason: dict[str, Any] = next(r for r in loan["risk"]["reasons"] if r["code"] == "market_while_overdue")
        return reason

    market_evidence = dwell(analyst)["evidence"]["alert"]["evidence"]
    assert market_evidence == {"market_id": "sh-jiading-ucm", "centre_lat": 31.302, "centre_lon": 121.2456}
    assert dwell(collections)["evidence"]["alert"]["evidence"] == {"market_id": "sh-jiading-ucm"}
    assert "centre_lat" not in str(collections["risk"])
    assert "pd_points" not in str(collections["risk"])
    assert collections["repayment"]["consecutive_late"] == 3
    assert collections["risk"]["next_step"] == "on_site_check"
    alerts = api.call("GET", "/v1/loans/L-1002/alerts", "collections").json()
    assert alerts[0]["evidence"] == {"market_id": "sh-jiading-ucm"}
    events = api.call("GET", "/v1/loans/L-1002/risk-events", "collections").json()
    assert "centre_lat" not in str(events)
    assert "centre_lat" in str(api.call("GET", "/v1/loans/L-1002/risk-events", "admin").json())


def test_redact_coordinates() -> None:
    doc = {"lat": 1, "market_lon": 2, "latency_ms": 3, "long_name": 4, "items": [{"centre_lat": 5, "x": 6}],
           "Position": 7, "track": [1], "dwell_s": 8}
    assert redact_coordinates(doc) == {"latency_ms": 3, "long_name": 4, "items": [{"x": 6}], "dwell_s": 8}


def test_reasons_and_score_for_collections_carry_no_place_and_no_figure() -> None:
    reasons = [
        {"code": "market_while_overdue", "level": "critical", "next_step": "on_site_check", "alert_episode": "d-1",
         "evidence": {"alert": {"rule": "stationary_near_market", "evidence": {
             "market_id": "sh-jiading-ucm", "market_name": "Jiading", "centre_lat": 31.3, "centre_lon": 121.2,
             "distance_to_market_m": 3.2, "dwell_s": 10.0}}},
         "explanation": {"axis": "credit", "kind": "feature", "summary": "market dwell while overdue",
                         "value": 0.86, "log_odds": 0.14, "pd_points": 0.015}},
        {"code": "overdue", "level": "watch", "next_step": "reminder", "alert_episode": None, "evidence": {}},
    ]
    shown = reasons_for_collections(reasons)
    assert shown[0]["evidence"]["alert"]["evidence"] == {"market_id": "sh-jiading-ucm", "dwell_s": 10.0}
    assert shown[0]["explanation"] == {"axis": "credit", "kind": "feature", "summary": "market dwell while overdue"}
    assert shown[1] == reasons[1]  # a v1 reason has no explanation to trim
    assert reasons[0]["explanation"]["pd_points"] == 0.015  # the stored value is not changed
    score = {"model_version": "2026.12.1", "score": 0.9, "expected_loss": "100.00", "outstanding": "1.00",
             "level": "critical", "tier": "risk", "monitoring": {"fix_interval_s": 10},
             "credit": {"probability": 0.9, "level": "critical", "next_step": "on_site_check", "reasons": reasons},
             "collateral": {"probability": 0.04, "level": "normal", "next_step": "monitor", "reasons": []}}
    assert score_for_collections(score) == {
        "level": "critical", "tier": "risk", "credit": {"level": "critical", "next_step": "on_site_check"},
        "collateral": {"level": "normal", "next_step": "monitor"}}
    assert score_for_collections(None) is None
    assert reasons_for_collections("not a list") == "not a list"


def test_track_and_range_limits(api: Api) -> None:
    body = api.call("GET", "/v1/loans/L-1002/track", "risk_analyst",
                    params={"from_ms": NOW - 7 * DAY, "to_ms": NOW, "reason": "dwell review"}).json()
    assert body["points"] == [{"time_ms": NOW - 3 * DAY, "lat": 31.302, "lon": 121.2456, "speed_mps": 0.0}]
    assert body["truncated"] is False
    too_long = {"from_ms": NOW - 40 * DAY, "to_ms": NOW, "reason": "dwell review"}
    assert api.call("GET", "/v1/loans/L-1002/track", "admin", params=too_long).status_code == 422
    backwards = {"from_ms": NOW, "to_ms": NOW - 1, "reason": "dwell review"}
    assert api.call("GET", "/v1/loans/L-1002/track", "admin", params=backwards).status_code == 422
    assert api.call("GET", "/v1/loans/L-404/track", "admin", params=too_long).status_code == 404


def test_repayments_idempotent_over_http(api: Api) -> None:
    api.call("POST", "/v1/loans/L-1003/assess", "admin")
    payment = {"payment_id": "P-web-1", "paid_on": "2026-11-27", "amount": "3500.00"}
    first = api.call("POST", "/v1/loans/L-1003/repayments", "collections", json=payment)
    assert first.status_code == 201
    assert (first.json()["created"], first.json()["level"]) == (True, "normal")
    replay = api.call("POST", "/v1/loans/L-1003/repayments", "collections", json=payment)
    assert (replay.status_code, replay.json()["created"]) == (200, False)
    conflict = api.call("POST", "/v1/loans/L-1003/repayments", "collections", json=payment | {"amount": "3400.00"})
    assert conflict.status_code == 409
    for bad in ({"amount": "-1"}, {"amount": "1e9"}, {"payment_id": "bad id"}, {"paid_on": "2026-02-30"},
                {"amount": "9" * 30}):
        assert api.call("POST", "/v1/loans/L-1003/repayments", "collections", json=payment | bad).status_code == 422
    assert api.call("POST", "/v1/loans/L-404/repayments", "collections", json=payment).status_code == 404
    future = api.call("POST", "/v1/loans/L-1003/repayments", "collections",
                      json=payment | {"payment_id": "P-next-year", "paid_on": "2027-11-27"})
    assert future.status_code == 422
    assert "paid_on 2027-11-27 is in the future" in future.json()["detail"]


def test_create_loan_json(api: Api) -> None:
    loan = {
        "loan_id": "L-2001", "device_id": "tbox-2001", "vin": "1M8GDM9AXKP042788", "borrower_ref": "B-2001",
        "principal": "7000.00",
        "schedule": [{"due_date": "2026-10-01", "amount": "3500.00"}, {"due_date": "2026-11-01", "amount": "3500.00"}],
        "payments": [{"payment_id": "P1", "paid_on": "2026-10-01", "amount": "3500.00"}],
        "region": "Shanghai",
    }
    created = api.call("POST", "/v1/loans", "admin", json=loan)
    assert created.status_code == 201
    with Session(api.engine) as session:
        assert session.get(LoanRecord, "L-2001").region == "Shanghai"  # type: ignore[union-attr]
    bad_region = api.call("POST", "/v1/loans", "admin", json=loan | {"loan_id": "L-2004", "region": "x;y"})
    assert [e["reason"] for e in bad_region.json()["detail"]] == ["bad_region"]
    assert created.json() == {"loan_id": "L-2001", "level": "watch", "next_step": "reminder"}
    assert api.call("POST", "/v1/loans", "admin", json=loan).status_code == 409
    bad = api.call("POST", "/v1/loans", "admin", json=loan | {"loan_id": "L-2002", "vin": "1M8GDM9A0KP042788"})
    assert bad.status_code == 422
    assert [e["reason"] for e in bad.json()["detail"]] == ["bad_vin"]
    same_device = api.call("POST", "/v1/loans", "admin",
                           json=loan | {"loan_id": "L-2003", "vin": "11111111111111111"})
    assert same_device.status_code == 409
    assert api.call("POST", "/v1/loans", "collections", json=loan).status_code == 403


def test_every_personal_read_is_audited(api: Api) -> None:
    api.call("GET", "/v1/loans/L-1001", "collections")
    api.call("GET", "/v1/loans/L-1002/track", "risk_analyst",
             params={"from_ms": NOW - DAY, "to_ms": NOW, "reason": "dwell review"})
    api.call("GET", "/v1/loans/L-1002/alerts", "admin")
    api.call("GET", "/v1/loans/L-1002/condition", "collections")
    assert audit_actions(api) == [
        ("collections", "read_loan", "L-1001"),
        ("risk_analyst", "read_track", "L-1002"),
        ("admin", "read_alerts", "L-1002"),
        ("collections", "read_condition", "L-1002"),
    ]
    log = api.call("GET", "/v1/audit", "auditor", params={"subject_id": "L-1002"}).json()
    assert [e["action"] for e in log] == ["read_condition", "read_alerts", "read_track"]
    assert log[2]["detail"] == {"from_ms": NOW - DAY, "to_ms": NOW, "points": 0, "access_basis": "role",
                                "grant_id": None, "access_reason": "dwell review"}
    assert log[2]["actor"] == hash_api_key(KEYS["risk_analyst"])[:12]


def test_markets_are_signed_for_every_device(api: Api) -> None:
    market = {"name": "Jiading used cars", "lat": 31.3, "lon": 121.25, "radius_m": 400, "datum": "gcj02"}
    put = api.call("PUT", "/v1/markets/sh-jiading-ucm", "admin", json=market).json()
    assert put == {"market_id": "sh-jiading-ucm", "configs_signed": 5, "published": True}
    assert api.call("PUT", "/v1/markets/bad id", "admin", json=market).status_code == 422
    assert api.call("PUT", "/v1/markets/m2", "admin", json=market | {"datum": "osgb"}).status_code == 422
    assert api.call("PUT", "/v1/markets/m2", "admin", json=market | {"lat": 91}).status_code == 422
    assert api.call("GET", "/v1/markets", "risk_analyst").json() == [
        {"id": "sh-jiading-ucm", "name": "Jiading used cars", "lat": 31.3, "lon": 121.25, "radius_m": 400.0,
         "datum": "gcj02"}
    ]
    deleted = api.call("DELETE", "/v1/markets/sh-jiading-ucm", "admin").json()
    assert deleted["configs_signed"] == 5
    assert api.call("DELETE", "/v1/markets/sh-jiading-ucm", "admin").status_code == 404

    public = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32).public_key()
    mine = [m for m in api.published if m.device_id == "tbox-0002"]
    assert [m.version for m in mine] == [1, 2]
    assert mine[0].topic == config_topic("tbox-0002")
    first = open_config(mine[0].payload, mine[0].topic, public)
    assert (first.version, first.issued_ms, first.body["markets"][0]["id"]) == (1, NOW, "sh-jiading-ucm")
    assert open_config(mine[1].payload, mine[1].topic, public).body == {"places": [], "markets": []}


def test_sse_backlog(api: Api) -> None:
    api.call("POST", "/v1/loans/L-1002/assess", "admin")
    api.call("POST", "/v1/loans/L-1003/assess", "admin")
    response = api.call("GET", "/v1/risk/stream", "collections", params={"follow": "false"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    frames = response.text.split("\n\n")
    assert frames[0] == "retry: 2000"
    assert frames[1].startswith("id: 1\nevent: risk\ndata: {")
    assert '"new_level":"critical"' in frames[1]
    assert '"log_odds"' not in response.text  # collections: no score figures
    assert "centre_lat" not in response.text
    resumed = api.client.get("/v1/risk/stream", params={"follow": "false"},
                             headers={"Authorization": f"Bearer {KEYS['admin']}", "Last-Event-ID": "1"})
    assert [f.split("\n")[0] for f in resumed.text.split("\n\n") if f.startswith("id:")] == ["id: 2"]


def test_sse_frame() -> None:
    assert sse_frame(7, "risk", {"b": 1, "a": "x"}) == b'id: 7\nevent: risk\ndata: {"a":"x","b":1}\n\n'


def test_routes_take_the_settings_from_the_dependency(api: Api) -> None:
    strict = api.call("GET", "/v1/loans/L-1003", "admin").json()["repayment"]
    app = api.client.app
    assert isinstance(app, FastAPI)
    lenient = Settings(api_keys={hash_api_key(k): role for role, k in KEYS.items()}, risk=RiskSettings(grace_days=60))
    app.dependency_overrides[get_settings] = lambda: lenient
    relaxed = api.call("GET", "/v1/loans/L-1003", "admin").json()["repayment"]
    assert (strict["consecutive_late"], relaxed["consecutive_late"]) == (1, 0)


def test_a_router_outside_create_app_fails_loudly_instead_of_using_defaults() -> None:
    app = FastAPI()
    app.include_router(router)
    with TestClient(app, raise_server_exceptions=True) as client, pytest.raises(ApiNotWiredError, match="create_app"):
        client.get("/v1/loans", headers={"Authorization": f"Bearer {KEYS['admin']}"})
