"""Approved location access (issue #16): grants, four eyes, expiry, emergency, audited reads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.loans.access import (
    AccessDecisionError,
    AccessDeniedError,
    AccessRequestError,
    MissingReasonError,
    SelfApprovalError,
    authorize_location_read,
    decide_access,
    request_access,
)
from collector.storage.tables import AlertRecord, AuditEntry, DeviceStatus
from tests.fake_devices import FakeDevice
from tests.loan_api_app import DAY, NOW, Api, open_loan_api

HOUR = 3_600_000
WINDOW = {"from_ms": NOW - 7 * DAY, "to_ms": NOW}


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_loan_api(tmp_path) as running:
        yield running


def audit_rows(api: Api, action: str) -> list[AuditEntry]:
    with Session(api.engine) as session:
        return list(session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def file_request(api: Api, minutes: int = 120, scope: tuple[str, ...] = ("track",)) -> int:
    made = api.call("POST", "/v1/loans/L-1002/access-requests", "collections",
                    json={"reason": "recovery visit booked", "scope": list(scope), "duration_minutes": minutes})
    assert made.status_code == 201, made.text
    assert made.json()["status"] == "pending"
    return int(made.json()["id"])


def test_track_read_without_approval_is_403_and_audited(api: Api) -> None:
    refused = api.call("GET", "/v1/loans/L-1002/track", "collections", params=WINDOW)
    assert refused.status_code == 403
    assert "access request" in refused.json()["detail"]
    [denied] = audit_rows(api, "location_access_denied")
    assert (denied.role, denied.subject_id, denied.detail["scope"]) == ("collections", "L-1002", "track")
    file_request(api)
    assert api.call("GET", "/v1/loans/L-1002/track", "collections", params=WINDOW).status_code == 403  # pending
    assert len(audit_rows(api, "location_access_denied")) == 2
    assert api.call("GET", "/v1/loans/L-1002/position", "collections").status_code == 403  # not in scope


def test_approved_grant_reads_are_audited_with_the_grant_id_until_expiry(api: Api) -> None:
    request_id = file_request(api, minutes=60)
    approved = api.call("POST", f"/v1/access-requests/{request_id}/approve", "risk_analyst",
                        json={"note": "visit confirmed"})
    assert approved.status_code == 200
    assert (approved.json()["status"], approved.json()["valid_until_ms"]) == ("approved", NOW + HOUR)
    track = api.call("GET", "/v1/loans/L-1002/track", "collections", params=WINDOW)
    assert track.status_code == 200
    assert track.json()["points"][0]["lat"] == 31.302
    [read] = audit_rows(api, "read_track")
    assert (read.role, read.detail["grant_id"], read.detail["access_basis"]) == ("collections", request_id, "grant")
    # the grant covers this loan only
    assert api.call("GET", "/v1/loans/L-1001/track", "collections", params=WINDOW).status_code == 403
    # and only its period
    api.set_now(NOW + HOUR)
    expired = api.call("GET", "/v1/loans/L-1002/track", "collections",
                       params={"from_ms": NOW - 7 * DAY, "to_ms": NOW + HOUR})
    assert expired.status_code == 403
    assert [r.subject_id for r in audit_rows(api, "location_access_denied")] == ["L-1001", "L-1002"]
    assert [r.action for r in audit_rows(api, "approve_location_access")] == ["approve_location_access"]


def test_self_approval_and_wrong_roles_are_refused(api: Api) -> None:
    request_id = file_request(api)
    # The requester cannot approve (collections is not an approver role): 403, audited.
    assert api.call("POST", f"/v1/access-requests/{request_id}/approve", "collections", json={}).status_code == 403
    assert api.call("POST", f"/v1/access-requests/{request_id}/approve", "auditor", json={}).status_code == 403
    assert len(audit_rows(api, "access_denied")) == 2
    # Four eyes in the model itself: the same actor never approves its own request.
    with Session(api.engine) as session:
        grant = request_access(session, loan_id="L-1003", requester="user:lee", requester_role="collections",
                               reason="visit", scope=["track"], duration_ms=HOUR, now_ms=NOW)
        with pytest.raises(SelfApprovalError):
            decide_access(session, grant.id, actor="user:lee", role="risk_analyst", approve=True, note=None,
                          now_ms=NOW)
        with pytest.raises(AccessDecisionError):
            decide_access(session, grant.id, actor="user:kim", role="collections", approve=True, note=None,
                          now_ms=NOW)
    denied = api.call("POST", f"/v1/access-requests/{request_id}/deny", "admin", json={"note": "no visit booked"})
    assert denied.json()["status"] == "denied"
    again = api.call("POST", f"/v1/access-requests/{request_id}/approve", "risk_analyst", json={})
    assert again.status_code == 409
    assert [r.detail["error"] for r in audit_rows(api, "access_decision_refused")] == [
        f"access request {request_id} is denied, not pending"
    ]
    assert api.call("POST", "/v1/access-requests/999/approve", "admin", json={}).status_code == 409


def test_bad_requests_are_refused(api: Api) -> None:
    base = {"reason": "visit", "scope": ["track"], "duration_minutes": 60}
    for bad in ({"scope": ["everything"]}, {"scope": []}, {"duration_minutes": 10_000}, {"duration_minutes": 1},
                {"reason": ""}, {"reason": "x" * 501}):
        status = api.call("POST", "/v1/loans/L-1002/access-requests", "collections", json=base | bad).status_code
        assert status == 422, bad
    assert api.call("POST", "/v1/loans/L-404/access-requests", "collections", json=base).status_code == 404
    assert api.call("POST", "/v1/loans/L-1002/access-requests", "risk_analyst", json=base).status_code == 403
    with Session(api.engine) as session, pytest.raises(AccessRequestError):
        request_access(session, loan_id="L-1002", requester="k", requester_role="risk_analyst", reason="r",
                       scope=["track"], duration_ms=HOUR, now_ms=NOW)


def test_analysts_read_by_role_with_a_mandatory_reason(api: Api) -> None:
    missing = api.call("GET", "/v1/loans/L-1002/track", "risk_analyst", params=WINDOW)
    assert missing.status_code == 422
    blank = api.call("GET", "/v1/loans/L-1002/track", "risk_analyst", params=WINDOW | {"reason": "  "})
    assert blank.status_code == 422
    assert len(audit_rows(api, "location_access_denied")) == 2
    ok = api.call("GET", "/v1/loans/L-1002/track", "risk_analyst", params=WINDOW | {"reason": "dwell review"})
    assert ok.status_code == 200
    [read] = audit_rows(api, "read_track")
    assert (read.detail["access_basis"], read.detail["access_reason"]) == ("role", "dwell review")
    with Session(api.engine) as session:
        with pytest.raises(MissingReasonError):
            authorize_location_read(session, loan_id="L-1002", actor="a", role="admin", scope="track", reason=None,
                                    now_ms=NOW)
        with pytest.raises(AccessDeniedError):
            authorize_location_read(session, loan_id="L-1002", actor="a", role="auditor", scope="track",
                                    reason="x", now_ms=NOW)


def test_last_position_needs_a_reason_or_a_position_grant(api: Api) -> None:
    with Session(api.engine) as session:
        session.add(DeviceStatus(device_id="tbox-0002", last_fix_ms=NOW, last_lat=31.3, last_lon=121.2,
                                 last_speed_mps=0.0))
        session.commit()
    plain = api.call("GET", "/v1/loans/L-1002/position", "admin")
    assert plain.status_code == 422
    position = api.call("GET", "/v1/loans/L-1002/position", "admin", params={"reason": "recovery"}).json()
    assert (position["lat"], position["lon"]) == (31.3, 121.2)
    assert api.call("GET", "/v1/loans/L-1002/position", "collections").status_code == 403
    request_id = file_request(api, scope=("position",))
    api.call("POST", f"/v1/access-requests/{request_id}/approve", "admin", json={})
    assert api.call("GET", "/v1/loans/L-1002/position", "collections").json()["lat"] == 31.3
    assert api.call("GET", "/v1/loans/L-1002/track", "collections", params=WINDOW).status_code == 403


def test_emergency_access_needs_a_theft_signature_and_is_flagged_for_review(api: Api) -> None:
    body = {"reason": "car reported moving at night"}
    assert api.call("POST", "/v1/loans/L-1002/emergency-access", "collections", json=body).status_code == 403
    with Session(api.engine) as session:
        batch_id = session.scalar(sa.select(AlertRecord.batch_id))
        session.add(AlertRecord(batch_id=batch_id, device_id="tbox-0002", rule="towing", severity=3, state=0,
                                time_ms=NOW - HOUR, episode="tow-1", evidence={}))
        session.commit()
    made = api.call("POST", "/v1/loans/L-1002/emergency-access", "collections", json=body)
    assert made.status_code == 201
    grant = made.json()
    assert (grant["emergency"], grant["review_needed"], grant["status"]) == (True, True, "approved")
    assert "towing" in grant["reason"]
    track = api.call("GET", "/v1/loans/L-1002/track", "collections", params=WINDOW)
    assert track.status_code == 200
    [read] = audit_rows(api, "read_track")
    assert (read.detail["access_basis"], read.detail["grant_id"]) == ("emergency", grant["id"])
    pending = api.call("GET", "/v1/access-requests", "auditor", params={"status": "review_needed"}).json()
    assert [g["id"] for g in pending] == [grant["id"]]
    assert api.call("POST", f"/v1/access-requests/{grant['id']}/review", "risk_analyst").status_code == 200
    assert api.call("GET", "/v1/access-requests", "admin", params={"status": "review_needed"}).json() == []
    assert api.call("POST", f"/v1/access-requests/{grant['id']}/review", "admin").status_code == 409


def test_device_page_gives_the_last_position_only_with_a_reason(api: Api) -> None:
    pem = FakeDevice("tbox-0009").pem.decode()
    assert api.call("POST", "/v1/devices", "admin", json={"device_id": "tbox-0009", "public_key_pem": pem}
                    ).status_code == 201
    with Session(api.engine) as session:
        session.add(DeviceStatus(device_id="tbox-0009", last_fix_ms=NOW, last_lat=31.3, last_lon=121.2,
                                 last_speed_mps=4.0, last_seen_ms=NOW))
        session.commit()
    plain = api.call("GET", "/v1/devices/tbox-0009", "admin").json()["status"]
    assert plain["last_seen_ms"] == NOW
    assert {"last_lat", "last_lon", "last_speed_mps"} & set(plain) == set()
    located = api.call("GET", "/v1/devices/tbox-0009", "admin", params={"reason": "box reported missing"}).json()
    assert (located["status"]["last_lat"], located["status"]["last_lon"]) == (31.3, 121.2)
    reads = audit_rows(api, "read_device")
    assert [(r.detail["position"], r.detail["access_reason"]) for r in reads] == [
        (False, None), (True, "box reported missing")]
