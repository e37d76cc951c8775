"""``lienwatch collector cases ...`` against a real settings file and SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.cli.cases import REFUSED
from collector.cli.commands import main
from collector.storage.database import create_engine
from collector.storage.people import add_user
from collector.storage.tables import AuditEntry


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in __import__("os").environ if n.startswith("LIENWATCH_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "collector.toml"
    # quiet hours all day but one minute, in the borrower's zone: the refusal is certain at any wall time
    path.write_text('data_dir = "data"\n[contact]\nquiet_start = "00:01"\nquiet_end = "00:00"\n')
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_cases_from_the_shell(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, "loans", "import", "--sample", "--config", str(config))[0] == 0
    code, out, _ = run(capsys, "cases", "list", "--config", str(config))
    assert code == 0
    cases = [json.loads(line) for line in out.splitlines()]
    assert {c["level"] for c in cases} >= {"watch"}
    case_id = str(cases[0]["case_id"])

    code, out, err = run(capsys, "cases", "act", case_id, "--kind", "call", "--outcome", "contacted",
                         "--config", str(config))
    assert code == REFUSED
    refusal = json.loads(out)
    assert refusal["refused"] == "quiet_hours"
    assert refusal["allowed_from"].endswith("T00:00:00+08:00")
    assert "allowed from" in err

    note = ("cases", "act", case_id, "--kind", "note", "--note", "left a card", "--next-action", "visit",
            "--next-action-at", "2030-01-02T10:00", "--config", str(config))
    assert run(capsys, *note)[0] == 0
    bad = run(capsys, "cases", "act", case_id, "--kind", "call", "--outcome", "promise_to_pay", "--config",
              str(config))
    assert bad[0] == 1
    assert "promise" in bad[2]

    engine = create_engine(f"sqlite:///{config.parent / 'data' / 'collector.db'}")
    with Session(engine) as session:
        add_user(session, username="chen", display_name="Chen", role="collections", password="p" * 12, now_ms=1)
        session.commit()
    assert run(capsys, "cases", "assign", case_id, "chen", "--config", str(config))[0] == 0
    code, out, _ = run(capsys, "cases", "show", case_id, "--config", str(config))
    shown = json.loads(out)
    assert (shown["assignee"], shown["next_action"], shown["next_action_at"]) == (
        "chen", "visit", "2030-01-02T10:00:00+08:00")
    assert [a["status"] for a in shown["actions"]] == ["refused", "done"]
    assert json.loads(run(capsys, "cases", "check-promises", "--config", str(config))[1])["checked"] == 0
    code, out, _ = run(capsys, "cases", "close", case_id, "--resolution", "recovered", "--config", str(config))
    assert (code, json.loads(out)["resolution"]) == (0, "recovered")
    assert run(capsys, "cases", "show", "999999", "--config", str(config))[0] == 1
    with Session(engine) as session:
        actions = set(session.scalars(sa.select(AuditEntry.action)))
    engine.dispose()
    assert {"list_cases", "contact_refused", "case_action", "assign_case", "read_case", "case_closed"} <= actions


def test_disabling_a_user_from_the_shell_hands_their_open_cases_over(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "loans", "import", "--sample", "--config", str(config))[0] == 0
    case_id = str(json.loads(run(capsys, "cases", "list", "--config", str(config))[1].splitlines()[0])["case_id"])
    engine = create_engine(f"sqlite:///{config.parent / 'data' / 'collector.db'}")
    with Session(engine) as session:
        for name in ("chen", "lee"):
            add_user(session, username=name, display_name=name, role="collections", password="p" * 12, now_ms=1)
        session.commit()
    assert run(capsys, "cases", "assign", case_id, "chen", "--config", str(config))[0] == 0

    code, _, err = run(capsys, "users", "disable", "chen", "--reassign-to", "chen", "--config", str(config))
    assert (code, "cannot take over their own cases" in err) == (1, True)
    code, out, _ = run(capsys, "users", "disable", "chen", "--reassign-to", "lee", "--config", str(config))
    assert code == 0
    assert out.strip() == f"chen disabled; 1 open case(s) reassigned to lee: #{case_id}"
    assert json.loads(run(capsys, "cases", "show", case_id, "--config", str(config))[1])["assignee"] == "lee"
    code, out, _ = run(capsys, "users", "role", "lee", "auditor", "--config", str(config))
    assert code == 0
    assert out.strip().endswith(f"1 open case(s) back in the unassigned queue: #{case_id}")
    shown = json.loads(run(capsys, "cases", "show", case_id, "--config", str(config))[1])
    assert shown["assignee"] is None
    assert [(e["detail"]["previous"], e["detail"]["because"]) for e in shown["events"]
            if e["kind"] == "assigned" and "because" in e["detail"]] == [("chen", "user_disabled"),
                                                                         ("lee", "role_changed")]
    with Session(engine) as session:
        rows = {e.action: e for e in session.scalars(sa.select(AuditEntry).where(AuditEntry.subject_type == "user"))}
    engine.dispose()
    assert rows["disable_user"].detail == {"open_cases": 1, "reassigned_to": "lee"}
    assert rows["disable_user"].actor.startswith("cli:")
    assert rows["set_user_role"].detail == {"role": "auditor", "old_role": "collections", "open_cases": 1,
                                            "reassigned_to": None}
