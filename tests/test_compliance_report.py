"""The compliance report (issue #16): access requests, approvals, reads, refusals, purges; API and CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.cli.commands import main
from collector.jobs.retention import run_retention
from collector.storage.database import create_engine
from collector.storage.people import add_user
from collector.storage.tables import AuditEntry
from tests.loan_api_app import DAY, NOW, cli_book, open_loan_api

WINDOW = {"from_ms": NOW - 7 * DAY, "to_ms": NOW}
PERIOD = {"from": "2026-11-27T00:00:00+08:00", "to": "2026-11-29T00:00:00+08:00"}


def test_the_report_shows_requests_approvals_reads_refusals_and_purges(tmp_path: Path) -> None:
    with open_loan_api(tmp_path) as api:
        assert api.call("GET", "/v1/loans/L-1002/track", "collections", params=WINDOW).status_code == 403
        made = api.call("POST", "/v1/loans/L-1002/access-requests", "collections",
                        json={"reason": "recovery visit", "scope": ["track"], "duration_minutes": 60}).json()
        api.call("POST", f"/v1/access-requests/{made['id']}/approve", "risk_analyst", json={})
        assert api.call("GET", "/v1/loans/L-1002/track", "collections", params=WINDOW).status_code == 200
        api.call("GET", "/v1/loans/L-1002/track", "risk_analyst", params=WINDOW | {"reason": "dwell review"})
        with Session(api.engine) as session:
            run_retention(session, NOW)
            session.commit()
        report = api.call("GET", "/v1/compliance/report", "auditor", params=PERIOD)
        assert report.status_code == 200, report.text
        body = report.json()
        assert body["summary"] == {
            "access_requests": 1, "emergency_accesses": 0, "decisions": {"approved": 1},
            "location_reads": {"grant": 1, "role": 1}, "refusals": {"location_access_denied": 1},
            "emergencies_awaiting_review": 0, "refused_contacts": 0, "retention_runs": 1,
        }
        assert body["refused_contacts_source"] == "wired"
        assert [r["detail"]["grant_id"] for r in body["location_reads"]] == [made["id"], None]
        assert body["approvals"][0]["decided_by"] != body["approvals"][0]["requester"]
        assert api.call("GET", "/v1/compliance/report", "risk_analyst", params=PERIOD).status_code == 403
        bad = api.call("GET", "/v1/compliance/report", "auditor", params={"from": "yesterday", "to": PERIOD["to"]})
        assert bad.status_code == 422
        backwards = api.call("GET", "/v1/compliance/report", "auditor",
                             params={"from": PERIOD["to"], "to": PERIOD["from"]})
        assert backwards.status_code == 422


def test_the_cli_prints_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("LIENWATCH_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "collector.toml"
    config.write_text('data_dir = "data"\n')
    assert main(["migrate", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["compliance", "report", "--config", str(config), "--from", "2026-12-01T00:00:00+08:00",
                 "--to", "2026-12-02T00:00:00+08:00"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["summary"]["access_requests"] == 0
    assert report["from_ms"] == 1_796_054_400_000
    assert main(["compliance", "report", "--config", str(config), "--from", "soon", "--to", "later"]) == 2
    assert main(["compliance", "report", "--config", str(config), "--from", "2026-12-02T00:00:00Z",
                 "--to", "2026-12-01T00:00:00Z"]) == 2


def test_access_requests_from_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    config = cli_book(tmp_path, monkeypatch)
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'collector.db'}")
    with Session(engine) as session:
        add_user(session, username="lee", display_name="Lee", role="collections", password="x" * 12, now_ms=NOW)
        add_user(session, username="ana", display_name="Ana", role="risk_analyst", password="x" * 12, now_ms=NOW)
        session.commit()
    engine.dispose()
    capsys.readouterr()
    cfg = ["--config", str(config)]
    request = ["access", "request", "L-1002", *cfg, "--reason", "visit booked", "--minutes", "60"]
    assert main([*request, "--as", "lee"]) == 0
    filed = json.loads(capsys.readouterr().out)
    assert (filed["requester"], filed["status"], filed["scope"]) == ("user:lee", "pending", ["track"])
    assert main([*request, "--as", "ana"]) == 1
    assert "reads locations by role" in capsys.readouterr().err
    assert main([*request, "--as", "nobody"]) == 1
    assert main(["access", "approve", str(filed["id"]), *cfg, "--note", "ok"]) == 0
    approved = json.loads(capsys.readouterr().out)
    assert approved["status"] == "approved"
    assert approved["decided_by"].startswith("cli:")
    assert main(["access", "deny", str(filed["id"]), *cfg]) == 1  # not pending any more
    assert main(["access", "review", str(filed["id"]), *cfg]) == 1  # not an emergency
    assert main(["access", "list", *cfg, "--status", "approved"]) == 0
    assert [json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()] == [filed["id"]]
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'collector.db'}")
    with Session(engine) as session:
        actions = [a for (a,) in session.execute(sa.select(AuditEntry.action).order_by(AuditEntry.id))]
    engine.dispose()
    assert actions[-7:] == ["request_location_access", "access_request_refused", "access_request_refused",
                            "approve_location_access", "access_deny_refused", "access_review_refused",
                            "list_access_requests"]
