"""The console through the real app, sessions and database (TestClient): sign-in, CSRF, roles,
pages, message catalog, exports, ``GET /v1/alerts``, ISO-8601 times, offline ``/docs``."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api.alerts import router as alerts_router
from collector.api.app import create_app
from collector.api.loans import router as loans_router
from collector.console.web import router as console_router
from collector.loans.csv_import import import_loans, parse_loans
from collector.loans.queries import WorklistFilter, worklist
from collector.risk.assessment import reassess_loan
from collector.settings import ConsoleSettings, Settings, hash_api_key
from collector.storage.database import create_engine, migrate
from collector.storage.people import SessionRecord, add_user
from collector.storage.tables import (
    AlertRecord,
    AuditEntry,
    BatchRecord,
    Device,
    FixRecord,
    LoanDeviceRecord,
    LoanRecord,
    PlaceRecord,
    RepaymentRecord,
)
from tests.child_processes import ChildProcesses

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
NOW = 1_795_858_800_000  # 2026-11-28T09:40:00Z
MIN = 60_000
DAY = 86_400_000
KEYS = {"admin": "k-admin-0123456789", "risk_analyst": "k-analyst-0123456789",
        "collections": "k-collections-0123456789", "auditor": "k-auditor-0123456789"}
PASSWORD = "correct horse battery"
USERS = {"ana": ("risk_analyst", "en"), "li": ("risk_analyst", "zh-CN"), "cole": ("collections", "en"),
         "audrey": ("auditor", "en"), "root": ("admin", "en")}
MARKET = (31.301992, 121.245568)  # WGS-84 of the demo market (stored below in WGS-84)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[TestClient, sa.Engine, Clock]]:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW - DAY)
        for name, (role, locale) in USERS.items():
            add_user(session, username=name, display_name=name.title(), role=role, password=PASSWORD, now_ms=NOW,
                     locale=locale)
        session.add(Device(device_id="tbox-0002", created_ms=NOW - 100 * DAY))
        session.flush()
        batch = BatchRecord(device_id="tbox-0002", seq=1, boot_id=b"\x01" * 16, created_ms=NOW, received_ms=NOW,
                            fix_count=1, sample_count=0, alert_count=1, stats_count=0, first_time_ms=None,
                            last_time_ms=None, counters={}, message_bytes=0)
        session.add(batch)
        session.flush()
        # A drive from 3 km south-east into the market, then 2 h parked in it.
        start = NOW - 4 * 3_600_000
        for i in range(30):
            f = i / 29
            session.add(FixRecord(batch_id=batch.id, device_id="tbox-0002", time_ms=start + i * 20_000,
                                  lat=31.28 + f * (MARKET[0] - 31.28), lon=121.26 + f * (MARKET[1] - 121.26),
                                  speed_mps=10.0, mode=3))
        for i in range(120):
            session.add(FixRecord(batch_id=batch.id, device_id="tbox-0002", time_ms=start + 600_000 + i * MIN,
                                  lat=MARKET[0] + (i % 3) * 0.00002, lon=MARKET[1] - (i % 2) * 0.00002,
                                  speed_mps=0.0, mode=3))
        session.add(AlertRecord(batch_id=batch.id, device_id="tbox-0002", rule="stationary_near_market", severity=2,
                                state=0, time_ms=NOW - 3 * DAY, episode="dwell-1",
                                evidence={"market_id": "sh-jiading-ucm", "market_name": "Jiading used-car market",
                                          "centre_lat": MARKET[0], "centre_lon": MARKET[1], "dwell_s": 259_200.0}))
        session.add(PlaceRecord(place_id="sh-jiading-ucm", type="used_car_market", name="Jiading used-car market",
                                lat=MARKET[0], lon=MARKET[1], datum="wgs84", radius_m=400.0, updated_ms=NOW))
        session.flush()
        for loan in ("L-1002", "L-1003"):
            reassess_loan(session, loan, NOW)
        session.commit()
    settings = Settings(api_keys={hash_api_key(k): role for role, k in KEYS.items()},
                        console=ConsoleSettings(session_idle_minutes=30))
    clock = Clock()
    app = create_app(settings, engine=engine, routers=[loans_router, alerts_router, console_router], clock_ms=clock)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        yield client, engine, clock
    engine.dispose()


def sign_in(client: TestClient, **fields: str) -> str:
    """Sign in through the form; returns the CSRF token of the new session."""
    form = client.get("/console/sign-in")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text)
    assert token is not None
    done = client.post("/console/sign-in", data={"login_token": token.group(1), **fields}, follow_redirects=False)
    assert done.status_code == 303, done.text
    page = client.get(done.headers["location"])
    csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text)
    assert csrf is not None
    return csrf.group(1)


def user(client: TestClient, name: str) -> str:
    return sign_in(client, username=name, password=PASSWORD)


def test_sign_in_sets_a_strict_httponly_cookie_and_bad_passwords_are_refused(world: tuple) -> None:
    client, engine, _ = world
    assert client.get("/console/worklist", follow_redirects=False).headers["location"] == "/console/sign-in"
    form = client.get("/console/sign-in")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    bad = client.post("/console/sign-in", data={"login_token": token, "username": "ana", "password": "wrong-password"})
    assert bad.status_code == 401
    assert "lw_session" not in client.cookies
    no_token = client.post("/console/sign-in", data={"username": "ana", "password": PASSWORD})
    assert no_token.status_code == 403
    form = client.get("/console/sign-in")
    token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
    good = client.post("/console/sign-in", data={"login_token": token, "username": "ana", "password": PASSWORD},
                       follow_redirects=False)
    cookie = good.headers["set-cookie"]
    assert "lw_session=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert PASSWORD not in good.headers["location"]
    with Session(engine) as session:
        stored = session.scalars(sa.select(SessionRecord)).all()
        assert [(s.actor, s.role) for s in stored] == [("user:ana", "risk_analyst")]
        assert client.cookies["lw_session"] not in {s.token_hash for s in stored}  # only its hash is kept
        actions = [e.action for e in session.scalars(sa.select(AuditEntry))]
    assert actions.count("sign_in_failed") == 1
    assert actions.count("sign_in") == 1


def test_an_api_key_is_exchanged_for_a_session_and_never_in_a_url(world: tuple) -> None:
    client, _, _ = world
    sign_in(client, api_key=KEYS["collections"], locale="zh-CN")
    page = client.get("/console/worklist")
    assert page.status_code == 200
    assert "工作清单" in page.text
    assert KEYS["collections"] not in page.text


def test_writes_without_the_csrf_token_are_refused(world: tuple) -> None:
    client, _, _ = world
    csrf = user(client, "ana")
    assert client.post("/console/loans/L-1002/assess", data={}).status_code == 403
    assert client.post("/console/preferences", data={"locale": "zh-CN", "csrf_token": "forged"}).status_code == 403
    assert client.post("/v1/loans/L-1002/assess").status_code == 403  # the API accepts the cookie only with the token
    ok = client.post("/v1/loans/L-1002/assess", headers={"X-CSRF-Token": csrf})
    assert ok.status_code == 200
    assert client.post("/console/loans/L-1002/assess", data={"csrf_token": csrf},
                       follow_redirects=False).status_code == 303


def test_sessions_end_after_the_idle_time_and_at_sign_out(world: tuple) -> None:
    client, _, clock = world
    csrf = user(client, "ana")
    clock.now += 29 * MIN
    assert client.get("/console/worklist").status_code == 200
    clock.now += 31 * MIN
    assert client.get("/console/worklist", follow_redirects=False).status_code == 303
    csrf = user(client, "ana")
    assert client.post("/console/sign-out", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert client.get("/console/worklist", follow_redirects=False).status_code == 303


def test_worklist_order_filters_search_and_csv(world: tuple) -> None:
    client, _, _ = world
    user(client, "ana")
    page = client.get("/console/worklist").text
    order = re.findall(r'<tr data-loan="([^"]+)"', page)
    assert order[:2] == ["L-1002", "L-1003"]
    assert 'data-level="critical"' in page  # v2: 88 days past due with three lates is a likely default
    critical = client.get("/console/worklist", params={"level": "critical"}).text
    assert re.findall(r'<tr data-loan="([^"]+)"', critical) == ["L-1002"]
    by_reason = client.get("/console/worklist", params={"reason": "market_while_overdue"}).text
    assert re.findall(r'<tr data-loan="([^"]+)"', by_reason) == ["L-1002"]
    by_credit_reason = client.get("/console/worklist", params={"reason": "dpd_1_29"}).text
    assert re.findall(r'<tr data-loan="([^"]+)"', by_credit_reason) == ["L-1003"]
    assert re.findall(r'<tr data-loan="([^"]+)"', client.get("/console/worklist", params={"q": "tbox-0003"}).text) == [
        "L-1003"]
    assert client.get("/console/worklist", params={"level": "panic"}).status_code == 422
    exported = client.get("/console/worklist.csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [r["loan_id"] for r in rows][:2] == ["L-1002", "L-1003"]
    assert rows[0]["level"] == "critical"
    assert rows[0]["next_step"] == "on_site_check"


def test_loan_page_reason_sentence_in_both_languages(world: tuple) -> None:
    client, _, _ = world
    user(client, "ana")
    en = client.get("/console/loans/L-1002").text
    assert "¥10500.00 is overdue (3 instalments late in a row) and the vehicle has been parked near a used-car " \
           "market (Jiading used-car market) for 3 d 0 h" in en
    assert "Asia/Shanghai" in en
    client.cookies.clear()
    user(client, "li")
    zh = client.get("/console/loans/L-1002").text
    assert "逾期金额 ¥10500.00（连续 3 期逾期），且车辆已在二手车市场“Jiading used-car market”附近停放 3 天 0 小时" \
        in zh


def test_track_map_draws_the_stop_inside_the_market_and_exports_parse(world: tuple) -> None:
    client, engine, _ = world
    user(client, "ana")
    page = client.get("/console/loans/L-1002", params={"from": "2026-11-28T13:00", "to": "2026-11-28T17:40",
                                                        "reason": "dwell check"}).text
    market = re.search(r'<circle class="market-area" cx="([\d.]+)" cy="([\d.]+)" r="([\d.]+)"', page)
    stops = re.findall(r'<circle class="stop" cx="([\d.]+)" cy="([\d.]+)" r="7" data-duration-s="(\d+)"', page)
    assert market is not None
    assert stops
    mx, my, r = (float(v) for v in market.groups())
    sx, sy, duration = float(stops[-1][0]), float(stops[-1][1]), int(stops[-1][2])
    assert ((sx - mx) ** 2 + (sy - my) ** 2) ** 0.5 < r
    assert duration >= 7000
    assert 'class="scale-bar"' in page
    why = {"reason": "dwell check"}
    geo = client.get("/console/loans/L-1002/track.geojson", params={"from": "2026-11-28T05:00:00Z"} | why).json()
    kinds = [f["properties"]["kind"] for f in geo["features"]]
    assert kinds[0] == "track"
    assert "stop" in kinds
    assert geo["features"][0]["geometry"]["coordinates"][-1] == [pytest.approx(MARKET[1], abs=1e-3),
                                                                 pytest.approx(MARKET[0], abs=1e-3)]
    gpx = client.get("/console/loans/L-1002/track.gpx", params={"from": "2026-11-28T05:00:00Z"} | why).text
    assert gpx.count("<trkpt ") == 150
    with Session(engine) as session:
        actions = {e.action for e in session.scalars(sa.select(AuditEntry).where(AuditEntry.subject_id == "L-1002"))}
    assert {"view_loan", "view_track", "export_track_geojson", "export_track_gpx"} <= actions
    assert client.get("/console/loans/L-1002/track.geojson").status_code == 422  # no reason


def test_collections_see_no_map_no_coordinates_and_no_place_names(world: tuple) -> None:
    client, _, _ = world
    user(client, "cole")
    for path in ("/console/loans/L-1002", "/console/alerts", "/console/worklist", "/console/alerts.csv"):
        body = client.get(path).text
        assert "<svg" not in body
        assert "Jiading" not in body
        assert "jiading" not in body
        assert not re.search(r"31\.3\d|121\.2\d", body), path
    assert client.get("/console/loans/L-1002/track.geojson").status_code == 403
    assert client.get("/console/audit").status_code == 403
    assert "parked near a used-car market for 3 d 0 h" in client.get("/console/loans/L-1002").text


def test_auditor_sees_the_audit_log_with_filters_and_admin_the_devices(world: tuple) -> None:
    client, engine, _ = world
    user(client, "ana")
    client.get("/console/loans/L-1002")
    client.cookies.clear()
    user(client, "audrey")
    assert client.get("/console/worklist").status_code == 403
    page = client.get("/console/audit", params={"actor": "user:ana", "subject": "L-1002"}).text
    assert "view_loan" in page
    assert "user:ana" in page
    assert client.get("/console/devices").status_code == 403
    client.cookies.clear()
    user(client, "root")
    with Session(engine) as session:  # seq 1 is stored; 4 arrives: 2 and 3 are missing
        session.add(BatchRecord(device_id="tbox-0002", seq=4, boot_id=b"\x01" * 16, created_ms=NOW, received_ms=NOW,
                                fix_count=0, sample_count=0, alert_count=0, stats_count=0, first_time_ms=None,
                                last_time_ms=None, counters={}, message_bytes=0))
        session.commit()
    devices = client.get("/console/devices").text
    assert 'data-device="tbox-0002"' in devices
    assert "L-1002" in devices
    assert re.search(r'data-device="tbox-0002">.*?<td class="num seq-gaps">2</td>', devices, flags=re.S)


def test_v1_alerts_filters_iso_times_and_redaction(world: tuple) -> None:
    client, _engine, _ = world

    def get(role: str, **params: str) -> list[dict[str, object]]:
        answer = client.get("/v1/alerts", params=params, headers={"Authorization": f"Bearer {KEYS[role]}"})
        assert answer.status_code == 200, answer.text
        return list(answer.json())

    rows = get("risk_analyst", rule="stationary_near_market", severity="high", **{"from": "2026-11-25T00:00:00+08:00"})
    assert [(r["loan_id"], r["rule"], r["state"]) for r in rows] == [("L-1002", "stationary_near_market", "raised")]
    assert "centre_lat" not in rows[0]["evidence"]  # coordinates only with a reason
    assert rows[0]["evidence"]["market_id"] == "sh-jiading-ucm"
    assert get("risk_analyst", rule="stationary_near_market", reason="dwell review")[0]["evidence"]["centre_lat"] \
        == MARKET[0]
    assert get("risk_analyst", to="2026-11-24") == []
    assert get("risk_analyst", **{"from": str(NOW - 4 * DAY)})[0]["episode"] == "dwell-1"
    assert "centre_lat" not in json.dumps(get("collections"))
    bad = client.get("/v1/alerts", params={"from": "yesterday"}, headers={"Authorization": f"Bearer {KEYS['admin']}"})
    assert bad.status_code == 422
    assert client.get("/v1/alerts", headers={"Authorization": f"Bearer {KEYS['auditor']}"}).status_code == 403


def test_track_and_audit_accept_iso_8601_and_epoch_ms(world: tuple) -> None:
    client, _, _ = world
    headers = {"Authorization": f"Bearer {KEYS['risk_analyst']}"}
    why = {"reason": "dwell review"}
    iso = client.get("/v1/loans/L-1002/track", params={"from": "2026-11-28T13:00:00+08:00", "to": "2026-11-28T09:40Z"}
                     | why, headers=headers).json()
    ms = client.get("/v1/loans/L-1002/track", params={"from_ms": NOW - 4 * 3_600_000, "to_ms": NOW} | why,
                    headers=headers).json()
    default = client.get("/v1/loans/L-1002/track", params=why, headers=headers).json()  # the last 24 h
    assert iso["points"] == ms["points"] == default["points"]
    assert len(iso["points"]) == 150
    audit = client.get("/v1/audit", params={"since_ms": "2026-11-28T00:00:00Z"},
                       headers={"Authorization": f"Bearer {KEYS['auditor']}"})
    assert audit.status_code == 200
    assert audit.json()


def test_docs_are_served_offline(world: tuple) -> None:
    client, _, _ = world
    page = client.get("/docs").text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets
    assert all(a.startswith("/docs/assets/") or a.startswith("/openapi") for a in assets)
    assert client.get("/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs/assets/swagger-ui.css").status_code == 200


def test_users_cli_add_list_passwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    from collector.cli.commands import main
    from collector.storage.people import authenticate_user

    config = tmp_path / "collector.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path / "c.db"}"\n')
    monkeypatch.setattr("sys.stdin", io.StringIO("first password 1\n"))
    assert main(["users", "add", "mei", "--role", "collections", "--display-name", "Mei", "--locale", "zh-CN",
                 "--password-stdin", "--config", str(config)]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("short\n"))
    assert main(["users", "add", "bob", "--role", "admin", "--password-stdin", "--config", str(config)]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("x" * 12 + "\n"))
    assert main(["users", "add", "bob", "--role", "admin", "--time-zone", "Mars/Base", "--password-stdin",
                 "--config", str(config)]) == 1
    capsys.readouterr()
    assert main(["users", "list", "--config", str(config)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert listed == [{"username": "mei", "display_name": "Mei", "role": "collections", "locale": "zh-CN",
                       "time_zone": "Asia/Shanghai", "disabled": False}]
    monkeypatch.setattr("sys.stdin", io.StringIO("second password 2\n"))
    assert main(["users", "passwd", "mei", "--password-stdin", "--config", str(config)]) == 0
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with Session(engine) as session:
        assert authenticate_user(session, "mei", "first password 1") is None
        assert authenticate_user(session, "mei", "second password 2") is not None
        assert "scrypt$" in session.scalar(sa.text("SELECT password_hash FROM users"))
    engine.dispose()
    assert main(["users", "role", "mei", "auditor", "--config", str(config)]) == 0
    assert main(["users", "disable", "mei", "--config", str(config)]) == 0
    assert main(["users", "enable", "mei", "--config", str(config)]) == 0
    assert main(["users", "disable", "ghost", "--config", str(config)]) == 1
    monkeypatch.setattr("sys.stdin", io.StringIO("boss password 3\n"))
    assert main(["users", "add", "boss", "--role", "admin", "--password-stdin", "--config", str(config)]) == 0
    assert main(["users", "disable", "boss", "--config", str(config)]) == 1  # the last enabled admin
    assert "last enabled admin" in capsys.readouterr().err
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with Session(engine) as session:
        rows = session.scalars(sa.select(AuditEntry).where(AuditEntry.subject_type == "user")
                               .order_by(AuditEntry.id)).all()
        assert [(r.action, r.subject_id) for r in rows] == [
            ("add_user", "mei"), ("reset_password", "mei"), ("set_user_role", "mei"), ("disable_user", "mei"),
            ("enable_user", "mei"), ("add_user", "boss")]
        assert all(r.actor.startswith("cli:") and r.role == "admin" for r in rows)
        assert rows[2].detail == {"role": "auditor", "old_role": "collections", "open_cases": 0, "reassigned_to": None}
    engine.dispose()


def test_worklist_pages_run_across_levels_in_order(world: tuple) -> None:
    from collector.loans.queries import WorklistFilter, worklist

    _, engine, _ = world
    with Session(engine) as session:
        everything = worklist(session, WorklistFilter(), page=1, size=50).rows
        pages = [worklist(session, WorklistFilter(), page=n, size=2) for n in (1, 2, 3)]
    assert [r["loan_id"] for r in everything][:2] == ["L-1002", "L-1003"]
    assert [r["loan_id"] for p in pages for r in p.rows] == [r["loan_id"] for r in everything]
    assert [p.has_next for p in pages] == [True, True, False]


def test_hostile_input_gets_a_clean_refusal(world: tuple) -> None:
    client, engine, _ = world
    for cookie in ("forged", "x" * 5000, "", "%FF%00"):
        client.cookies.set("lw_session", cookie)
        assert client.get("/console/worklist", follow_redirects=False).status_code == 303
        assert client.get("/v1/loans").status_code == 401
    client.cookies.clear()
    for fields in ({"username": "a" * 10_000, "password": "p" * 100_000}, {"api_key": "k" * 10_000},
                   {"username": "ana", "password": ""}, {}):
        form = client.get("/console/sign-in").text  # each answer hands out a new sign-in token
        token = re.search(r'name="login_token" value="([^"]+)"', form).group(1)  # type: ignore[union-attr]
        answer = client.post("/console/sign-in", data={"login_token": token, **fields})
        assert answer.status_code == 401
    user(client, "ana")
    for params in ({"q": "' OR 1=1 --"}, {"q": "x" * 100}, {"reason": "nope"}, {"next_step": "x"}):
        assert client.get("/console/worklist", params=params).status_code == 422, params
    assert client.get("/console/worklist", params={"page": "-3"}).status_code == 200
    assert client.get("/console/worklist", params={"page": "9" * 40}).status_code == 200
    for params in ({"from": "yesterday"}, {"from": "2026-11-28T10:00Z", "to": "2026-11-28T09:00Z"},
                   {"from": "2026-01-01", "to": "2026-11-28"}, {"to": "9" * 30}):
        assert client.get("/console/loans/L-1002", params=params).status_code == 422, params
    assert client.get("/console/alerts", params={"severity": "apocalyptic"}).status_code == 422
    assert client.get("/console/loans/L-404").status_code == 404
    with Session(engine) as session:
        failed = session.scalar(sa.select(sa.func.count()).select_from(AuditEntry)
                                .where(AuditEntry.action == "sign_in_failed"))
    assert failed == 4


def test_map_tiles_are_placed_by_their_datum() -> None:
    from collector.console.track_map import MapPoint, TileLayer, _projection, distance_m, tile_images
    from protocol.geo import gcj02_to_wgs84

    points = [MapPoint(0, 31.28, 121.26), MapPoint(1, MARKET[0], MARKET[1])]
    proj = _projection([(p.lat, p.lon, 0.0) for p in points])
    plain = tile_images(proj, TileLayer("https://tiles.invalid/{z}/{x}/{y}.png"))
    shifted = tile_images(proj, TileLayer("https://tiles.invalid/{z}/{x}/{y}.png", gcj02_to_wgs84))
    assert plain
    assert all(re.fullmatch(r"https://tiles\.invalid/1[0-9]/\d+/\d+\.png", url) for url, *_ in plain)
    by_url = {url: (x, y) for url, x, y, _, _ in plain}
    moved = [(x - by_url[url][0], y - by_url[url][1]) for url, x, y, _, _ in shifted if url in by_url]
    metres_per_px = 1 / proj.scale
    for dx, dy in moved:
        offset_m = ((dx * metres_per_px) ** 2 + (dy * metres_per_px) ** 2) ** 0.5
        assert 300 < offset_m < 700  # GCJ-02 tiles drawn where their places really are
    lat, lon = gcj02_to_wgs84(31.3, 121.25)
    assert 300 < distance_m(lat, lon, 31.3, 121.25) < 700


def test_a_configured_tile_server_is_drawn_and_allowed_by_the_page_policy(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    migrate(engine)
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=NOW - DAY)
        add_user(session, username="ana", display_name="Ana", role="risk_analyst", password=PASSWORD, now_ms=NOW)
        session.add(Device(device_id="tbox-0002", created_ms=NOW))
        session.flush()
        batch = BatchRecord(device_id="tbox-0002", seq=1, boot_id=b"\x01" * 16, created_ms=NOW, received_ms=NOW,
                            fix_count=1, sample_count=0, alert_count=0, stats_count=0, first_time_ms=None,
                            last_time_ms=None, counters={}, message_bytes=0)
        session.add(batch)
        session.flush()
        session.add(FixRecord(batch_id=batch.id, device_id="tbox-0002", time_ms=NOW - MIN, lat=MARKET[0],
                              lon=MARKET[1], speed_mps=0.0, mode=3))
        session.commit()
    settings = Settings(console=ConsoleSettings(tile_url="https://tiles.invalid/{z}/{x}/{y}.png", tile_datum="gcj02"))
    app = create_app(settings, engine=engine, routers=[console_router], clock_ms=lambda: NOW)
    with TestClient(app, base_url="http://127.0.0.1") as client:
        user(client, "ana")
        page = client.get("/console/loans/L-1002", params={"reason": "tile check"})
        assert '<image class="tile" href="https://tiles.invalid/' in page.text
        assert "img-src 'self' data: https://tiles.invalid;" in page.headers["content-security-policy"]
    engine.dispose()


def test_vehicle_condition_report(world: tuple) -> None:
    from collector.storage.tables import DailyStatsRecord, SampleRecord

    client, engine, _ = world
    with Session(engine) as session:
        batch_id = session.scalar(sa.select(BatchRecord.id))
        for day, km in (("2026-11-26", 42.0), ("2026-11-27", 7.5)):
            session.add(DailyStatsRecord(device_id="tbox-0002", day=day, batch_id=batch_id, time_ms=NOW,
                                         distance_m=km * 1000, driving_s=3600, harsh_accel=1, harsh_brake=2,
                                         odometer_km=61_234.5, final=True))
        session.add(SampleRecord(batch_id=batch_id, device_id="tbox-0002", time_ms=NOW - DAY,
                                 name="Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed", value=64.0))
        session.commit()
    user(client, "cole")  # no location in it: collections may read it
    page = client.get("/console/loans/L-1002/condition").text
    bars = re.findall(r'<svg class="chart distance".*?</svg>', page, flags=re.S)[0]
    assert re.findall(r'data-value="([\d.]+)"', bars) == ["42", "7.5"]
    assert "61234.5 km (2026-11-27)" in page
    assert '<svg class="chart soc"' in page
    assert re.search(r'data-day="2026-11-27">.*?<td class="num">64.0</td>', page, flags=re.S)
    assert 'id="battery-health"' not in page  # no traction-battery figure: not an EV
    with Session(engine) as session:
        row = session.get(DailyStatsRecord, ("tbox-0002", "2026-11-27"))
        assert row is not None
        row.soh_percent, row.energy_used_kwh, row.charging_sessions = 92.5, 11.0, 2
        session.commit()
    page = client.get("/console/loans/L-1002/condition").text
    battery = re.findall(r'<section class="card" id="battery-health">.*?</section>', page, flags=re.S)[0]
    assert "<dt>State of health (%)</dt><dd>92.5 (2026-11-27)</dd>" in battery
    assert "<dt>Charging sessions</dt><dd>2</dd>" in battery
    assert "<dt>High-voltage disconnects while parked</dt><dd>0</dd>" in battery


def test_the_demo_users_can_sign_in(tmp_path: Path, processes: ChildProcesses) -> None:
    # add_demo_users runs ``lienwatch collector users add`` as child processes (the process tier)
    from collector.storage.people import authenticate_user
    from firmware_sim.rig.demo_console import DEMO_PASSWORD, DEMO_USERS, add_demo_users, console_lines

    config = tmp_path / "collector.toml"
    config.write_text(f'database_url = "sqlite:///{tmp_path / "c.db"}"\n')
    add_demo_users(config)
    engine = create_engine(f"sqlite:///{tmp_path / 'c.db'}")
    with Session(engine) as session:
        signed = [authenticate_user(session, name, DEMO_PASSWORD) for name, *_ in DEMO_USERS]
        assert [(u.username, u.role, u.locale) for u in signed if u is not None] == [
            (name, role, locale) for name, role, locale, _ in DEMO_USERS]
    engine.dispose()
    lines = console_lines("http://127.0.0.1:8080")
    assert lines[0].startswith("Console: http://127.0.0.1:8080/console   users: analyst (risk_analyst)")
    assert DEMO_PASSWORD in lines[1]


def test_the_places_page_lists_typed_places_for_analysts(world: tuple) -> None:
    client, engine, _ = world
    with Session(engine) as session:
        session.add(PlaceRecord(place_id="sh-minhang-pawn", type="pawn_lot", name="Minhang pawn lot", lat=31.15,
                                lon=121.42, datum="gcj02", radius_m=150.0, updated_ms=NOW))
        session.add(PlaceRecord(place_id="gone", type="port", name="Deleted port", lat=31.0, lon=121.0,
                                datum="wgs84", radius_m=500.0, updated_ms=NOW, deleted_ms=NOW))
        session.commit()
    user(client, "cole")  # collections: no location data
    assert client.get("/console/places").status_code == 403
    client.cookies.clear()
    user(client, "ana")
    page = client.get("/console/places").text
    assert '<a href="/console/places">Places</a>' in page  # in the navigation
    rows = re.findall(r'<tr data-place="([^"]+)" data-type="([^"]+)">', page)
    assert rows == [("sh-jiading-ucm", "used_car_market"), ("sh-minhang-pawn", "pawn_lot")]  # tombstones hidden
    assert "<td>Pawn lot</td><td>Minhang pawn lot</td>" in page
    only = client.get("/console/places", params={"type": "pawn_lot"}).text
    assert re.findall(r'<tr data-place="([^"]+)"', only) == ["sh-minhang-pawn"]
    assert client.get("/console/places", params={"type": "casino"}).status_code == 422


def test_a_second_tracker_shows_on_the_loan_page_and_among_the_devices(world: tuple) -> None:
    client, engine, _ = world
    with Session(engine) as session:
        session.add(Device(device_id="spy-0002", created_ms=NOW))
        session.add(LoanDeviceRecord(device_id="spy-0002", loan_id="L-1002", added_ms=NOW))
        session.commit()
    user(client, "ana")
    page = client.get("/console/loans/L-1002").text
    assert '<dt>Second tracker</dt><dd class="mono">spy-0002</dd>' in page
    assert "Second tracker" not in client.get("/console/loans/L-1003").text
    client.cookies.clear()
    user(client, "root")
    devices = client.get("/console/devices").text
    row = re.findall(r'<tr data-device="spy-0002">.*?</tr>', devices, flags=re.S)[0]
    assert '<a href="/console/loans/L-1002">L-1002</a>' in row
def test_worklist_orders_by_expected_loss_with_sort_choices_and_a_tier_filter(world: tuple) -> None:
    client, engine, _ = world
    with Session(engine) as session:  # score every loan so the order has five expected losses to rank
        for loan in ("L-1001", "L-1004", "L-1005"):
            reassess_loan(session, loan, NOW)
        session.commit()
    user(client, "ana")
    page = client.get("/console/worklist").text
    order = re.findall(r'<tr data-loan="([^"]+)"', page)
    losses = [float(x) for x in re.findall(r'<td class="num expected-loss">¥([\d.]+)</td>', page)]
    assert len(losses) == 5
    assert losses == sorted(losses, reverse=True)
    assert order[0] == "L-1002"
    assert 'option value="expected_loss" selected' in page
    def loans_of(**params: str) -> list[str]:
        return re.findall(r'<tr data-loan="([^"]+)"', client.get("/console/worklist", params=params).text)

    by_severity = loans_of(sort="severity")
    assert by_severity[:2] == ["L-1002", "L-1003"]
    by_score = client.get("/console/worklist", params={"sort": "score"}).text
    scores = [float(x) for x in re.findall(r'<td class="num score">([\d.]+) %</td>', by_score)]
    assert scores == sorted(scores, reverse=True)
    assert len(scores) == 5
    by_dpd = loans_of(sort="days_past_due")
    assert by_dpd[0] == "L-1002"  # 88 days past due
    assert client.get("/console/worklist", params={"sort": "random"}).status_code == 422

    risky = client.get("/console/worklist", params={"tier": "risk"}).text
    assert sorted(re.findall(r'<tr data-loan="([^"]+)"', risky)) == ["L-1002", "L-1003", "L-1005"]
    assert 'data-tier="risk"' in risky
    assert client.get("/console/worklist", params={"tier": "gold"}).status_code == 422
    exported = list(csv.DictReader(io.StringIO(client.get("/console/worklist.csv", params={"tier": "risk"}).text)))
    assert [r["loan_id"] for r in exported] == re.findall(r'<tr data-loan="([^"]+)"', risky)
    assert all(r["tier"] == "risk" and float(r["expected_loss"]) > 0 for r in exported)

    client.cookies.clear()
    user(client, "cole")  # collections: the same order, no score or expected loss shown or exported
    page = client.get("/console/worklist").text
    assert re.findall(r'<tr data-loan="([^"]+)"', page) == order
    assert "expected-loss" not in page
    assert 'class="num score"' not in page
    exported = list(csv.DictReader(io.StringIO(client.get("/console/worklist.csv").text)))
    assert {r["expected_loss"] for r in exported} == {""}


def test_loan_page_shows_the_score_with_its_explanation_to_analysts_only(world: tuple) -> None:
    client, _, _ = world
    user(client, "ana")
    page = client.get("/console/loans/L-1002").text
    assert 'id="score"' in page
    score = re.search(r'id="score-value" data-score="([\d.]+)"', page)
    assert score is not None
    assert 0.5 < float(score.group(1)) < 1
    assert re.search(r'<h3 class="axis" data-axis="credit">Credit:\s*<span class="badge level-critical"', page)
    assert 'data-tier="risk"' in page
    credit = page[page.index('<table class="grid explanation" data-axis="credit">'):]
    credit = credit[:credit.index("</table>")]
    rows = re.findall(r'<tr data-code="([^"]+)" data-kind="(\w+)" data-log-odds="(-?[\d.]+)">', credit)
    assert ("arrears_installments", "feature") in [(c, k) for c, k, _ in rows]
    assert "cured" not in [c for c, _, _ in rows]  # not on this loan
    # every contribution is shown in probability points and log-odds, both signs (ltv may lower it)
    assert re.search(r'<td class="contribution">credit \+\d+\.\d pts \(log-odds \+\d\.\d\d\)</td>', credit)
    # the reasons list says what each reason contributed
    reasons = page[page.index('id="reasons"'):page.index('id="score"')]
    assert re.search(r'<span class="contribution">credit \+\d+\.\d pts', reasons)
    client.cookies.clear()
    user(client, "li")
    assert "信用风险 +" in client.get("/console/loans/L-1002").text
    client.cookies.clear()
    user(client, "cole")
    seen = client.get("/console/loans/L-1002").text
    assert 'id="score"' not in seen
    assert "pts" not in seen
    assert "log-odds" not in seen
    assert '<span class="contribution">credit</span>' in seen  # the axis, no figure


def test_expected_loss_pages_run_from_scored_loans_into_the_unscored(world: tuple) -> None:
    _, engine, _ = world
    with Session(engine) as session:  # L-1002 and L-1003 are scored, the other three not yet
        pages = [worklist(session, WorklistFilter(), page=n, size=2) for n in (1, 2, 3)]
        by_severity = worklist(session, WorklistFilter(sort="severity"), size=10).rows
    ids = [[r["loan_id"] for r in p.rows] for p in pages]
    assert ids[0] == ["L-1002", "L-1003"]
    assert [p.has_next for p in pages] == [True, True, False]
    unscored = [r["loan_id"] for r in by_severity if r["expected_loss"] is None]
    assert ids[1] + ids[2] == unscored
    assert len(unscored) == 3
    assert float(pages[0].rows[0]["expected_loss"]) > float(pages[0].rows[1]["expected_loss"])


def test_worklist_region_filter(world: tuple) -> None:
    client, engine, _ = world
    with Session(engine) as session:
        for loan_id, region in (("L-1002", "Shanghai"), ("L-1003", "上海 浦东"), ("L-1004", "Shanghai")):
            session.get(LoanRecord, loan_id).region = region  # type: ignore[union-attr]
        session.commit()
    user(client, "ana")
    page = client.get("/console/worklist").text
    assert '<option value="Shanghai"' in page
    assert '<option value="上海 浦东"' in page
    shanghai = client.get("/console/worklist", params={"region": "Shanghai"}).text
    assert sorted(re.findall(r'<tr data-loan="([^"]+)"', shanghai)) == ["L-1002", "L-1004"]
    pudong = client.get("/console/worklist", params={"region": "上海 浦东"}).text
    assert re.findall(r'<tr data-loan="([^"]+)"', pudong) == ["L-1003"]
    assert client.get("/console/worklist", params={"region": "x;drop"}).status_code == 422
    exported_csv = client.get("/console/worklist.csv", params={"region": "Shanghai"}).text
    exported = list(csv.DictReader(io.StringIO(exported_csv)))
    assert {r["region"] for r in exported} == {"Shanghai"}


COORDINATE = re.compile(r"\b(31|121)\.\d{3,}")  # a latitude/longitude of the drive or the market


def _audit_rows(engine: sa.Engine, action: str, loan_id: str = "L-1002") -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action,
                                                                AuditEntry.subject_id == loan_id)
                                    .order_by(AuditEntry.id)))


def test_analyst_sees_the_track_only_after_giving_a_reason_which_the_audit_row_keeps(world: tuple) -> None:
    client, engine, _ = world
    user(client, "ana")
    window = {"from": "2026-11-28T13:00", "to": "2026-11-28T17:40"}
    asked = client.get("/console/loans/L-1002", params=window).text
    assert 'id="track-reason-form"' in asked
    assert "<svg" not in asked
    assert not COORDINATE.search(asked)  # neither the map nor the alert's evidence coordinates
    assert "Jiading used-car market" in asked  # the reason sentence still names the market
    assert _audit_rows(engine, "view_track") == []
    assert client.get("/console/loans/L-1002/track.geojson", params=window).status_code == 422
    blank = client.get("/console/loans/L-1002", params=window | {"reason": "  "}).text
    assert 'id="track-refusal"' in blank
    assert "<svg" not in blank
    assert not COORDINATE.search(blank)
    denied = _audit_rows(engine, "location_access_denied")
    assert len(denied) == 2
    assert all(e.actor == "user:ana" and e.detail["scope"] == "track" for e in denied)

    shown = client.get("/console/loans/L-1002", params=window | {"reason": "recovery visit planned"}).text
    assert 'class="track-map"' in shown
    assert COORDINATE.search(shown)  # the evidence coordinates come with the authorised read
    assert 'data-basis="role"' in shown
    geojson_url = re.search(r'href="(/console/loans/L-1002/track\.geojson\?[^"]+)"', shown)
    assert geojson_url is not None
    assert "reason=recovery+visit+planned" in geojson_url.group(1)
    exported = client.get(geojson_url.group(1).replace("&amp;", "&"))
    assert exported.status_code == 200
    assert exported.json()["features"][0]["properties"]["kind"] == "track"
    (view,) = _audit_rows(engine, "view_track")
    assert view.actor == "user:ana"
    assert view.detail["access_basis"] == "role"
    assert view.detail["grant_id"] is None
    assert view.detail["access_reason"] == "recovery visit planned"
    (export,) = _audit_rows(engine, "export_track_geojson")
    assert export.detail["access_reason"] == "recovery visit planned"


def _no_coordinates(response: Any) -> None:
    assert not COORDINATE.search(response.text), response.request.url
    assert '"lat"' not in response.text
    assert "<trkpt" not in response.text


def test_collections_see_the_track_only_under_an_approved_grant(world: tuple) -> None:
    from collector.loans.access import decide_access

    client, engine, clock = world
    csrf = user(client, "cole")
    page = client.get("/console/loans/L-1002")
    assert 'id="track-grant-needed"' in page.text
    assert 'id="access-request-form"' in page.text
    assert 'id="emergency-form"' not in page.text  # no theft signature open
    assert "<svg" not in page.text
    _no_coordinates(page)
    for kind in ("geojson", "gpx"):
        refused = client.get(f"/console/loans/L-1002/track.{kind}", params={"reason": "I say so"})
        assert refused.status_code == 403
        _no_coordinates(refused)
    assert len(_audit_rows(engine, "location_access_denied")) == 2
    assert _audit_rows(engine, "view_track") == []

    assert client.post("/console/loans/L-1002/access-request",
                       data={"reason": "visit booked", "minutes": "60"}).status_code == 403  # no CSRF token
    bad = client.post("/console/loans/L-1002/access-request",
                      data={"csrf_token": csrf, "reason": "visit booked", "minutes": "5"}, follow_redirects=False)
    assert bad.status_code == 422
    assert _audit_rows(engine, "access_request_refused")[0].detail["error"].startswith("duration")
    for minutes in ("", "abc", "1" * 40, "６０"):
        assert client.post("/console/loans/L-1002/access-request", follow_redirects=False,
                           data={"csrf_token": csrf, "reason": "visit", "minutes": minutes}).status_code == 422
    filed = client.post("/console/loans/L-1002/access-request",
                        data={"csrf_token": csrf, "reason": "visit booked", "minutes": "60"}, follow_redirects=False)
    assert filed.status_code == 303
    (request_row,) = _audit_rows(engine, "request_location_access")
    grant_id = request_row.detail["grant_id"]
    pending = client.get("/console/loans/L-1002")
    assert f'data-request="{grant_id}"' in pending.text
    assert "<svg" not in pending.text
    _no_coordinates(pending)

    with Session(engine) as session:
        decide_access(session, grant_id, actor="user:ana", role="risk_analyst", approve=True, note=None,
                      now_ms=clock.now)
        session.commit()
    shown = client.get("/console/loans/L-1002", params={"from": "2026-11-28T13:00", "to": "2026-11-28T17:40"})
    assert 'class="track-map"' in shown.text
    assert 'data-basis="grant"' in shown.text
    reasons = re.search(r'<section class="card" id="reasons">.*?</section>', shown.text, flags=re.S)
    assert reasons is not None
    assert "Jiading" not in reasons.group(0)  # the map shows the market; reasons stay redacted for collections
    geo = client.get("/console/loans/L-1002/track.geojson", params={"from": "2026-11-28T05:00:00Z"})
    assert geo.status_code == 200
    assert len(geo.json()["features"][0]["geometry"]["coordinates"]) == 150
    (view,) = _audit_rows(engine, "view_track")
    assert (view.actor, view.detail["access_basis"], view.detail["grant_id"]) == ("user:cole", "grant", grant_id)
    assert view.detail["access_reason"] == "visit booked"
    assert _audit_rows(engine, "export_track_geojson")[0].detail["grant_id"] == grant_id

    clock.now += 61 * MIN  # the grant has run out (and the idle session: sign in again)
    client.cookies.clear()
    user(client, "cole")
    expired = client.get("/console/loans/L-1002")
    assert 'id="track-grant-needed"' in expired.text
    assert "<svg" not in expired.text
    _no_coordinates(expired)
    assert client.get("/console/loans/L-1002/track.geojson").status_code == 403


def test_collections_take_the_emergency_access_while_a_theft_signature_is_open(world: tuple) -> None:
    client, engine, clock = world
    csrf = user(client, "cole")
    refused = client.post("/console/loans/L-1002/emergency-access", data={"csrf_token": csrf, "reason": "towed?"},
                          follow_redirects=False)
    assert refused.status_code == 403  # no theft signature
    assert _audit_rows(engine, "emergency_access_refused")
    with Session(engine) as session:
        batch_id = session.scalar(sa.select(BatchRecord.id))
        session.add(AlertRecord(batch_id=batch_id, device_id="tbox-0002", rule="power_cut", severity=3, state=0,
                                time_ms=clock.now - MIN, episode="cut-1", evidence={"volts": 0.0}))
        session.commit()
    assert 'id="emergency-form"' in client.get("/console/loans/L-1002").text
    taken = client.post("/console/loans/L-1002/emergency-access",
                        data={"csrf_token": csrf, "reason": "power cut, car moving"}, follow_redirects=False)
    assert taken.status_code == 303
    page = client.get("/console/loans/L-1002")
    assert 'class="track-map"' in page.text
    assert 'data-basis="emergency"' in page.text
    (view,) = _audit_rows(engine, "view_track")
    assert view.detail["access_basis"] == "emergency"
    assert view.detail["access_reason"].startswith("power cut, car moving [emergency: power_cut]")
    assert client.post("/console/loans/L-1002/emergency-access", data={"csrf_token": csrf, "reason": "x"},
                       follow_redirects=False).status_code == 303
    client.cookies.clear()
    analyst_csrf = user(client, "ana")
    assert client.post("/console/loans/L-1002/access-request", follow_redirects=False,
                       data={"csrf_token": analyst_csrf, "reason": "r", "minutes": "60"}).status_code == 403


def test_reversed_payments_are_marked_and_left_out_of_the_total(world: tuple) -> None:
    client, engine, _ = world
    with Session(engine) as session:
        payment = session.scalar(sa.select(RepaymentRecord).where(RepaymentRecord.payment_id == "P1002-202608"))
        assert payment is not None
        payment.reversal_id, payment.reversed_ms = "R-bounce-1", NOW - MIN
        session.commit()
    user(client, "cole")
    page = client.get("/console/loans/L-1002").text
    rows = dict(re.findall(r'<tr data-payment="([^"]+)"([^>]*)>', page))
    assert rows["P1002-202608"] == ' class="reversed" data-reversed="R-bounce-1"'
    assert rows["P1002-202606"] == rows["P1002-202607"] == ""
    assert '<span class="badge reversed">reversed</span> R-bounce-1' in page
    assert '<td class="num" id="payments-total">¥7000.00</td>' in page
    assert "<dt>Paid</dt><dd>¥7000.00</dd>" in page  # the facts agree


def _feed_reads(engine: sa.Engine, action: str) -> list[AuditEntry]:
    with Session(engine) as session:
        return list(session.scalars(sa.select(AuditEntry).where(AuditEntry.action == action).order_by(AuditEntry.id)))


def test_alert_feed_shows_evidence_coordinates_only_after_a_reason_audited_per_loan(world: tuple) -> None:
    from collector.loans.compliance import compliance_report

    client, engine, _ = world
    user(client, "ana")
    asked = client.get("/console/alerts", params={"rule": "stationary_near_market"})
    assert asked.status_code == 200
    assert 'id="alerts-reason-form"' in asked.text
    assert '<input type="hidden" name="rule" value="stationary_near_market">' in asked.text  # the filter stays
    assert not COORDINATE.search(asked.text)  # no centre_lat / centre_lon in the evidence
    assert "Jiading used-car market" in asked.text  # the rest of the evidence is there, as on the loan page
    assert "dwell_s" in asked.text
    plain = client.get("/console/alerts.csv")
    assert plain.status_code == 200
    (row,) = [r for r in csv.DictReader(io.StringIO(plain.text)) if r["rule"] == "stationary_near_market"]
    assert json.loads(row["evidence"]) == {"market_id": "sh-jiading-ucm", "market_name": "Jiading used-car market",
                                           "dwell_s": 259_200.0}
    assert _feed_reads(engine, "view_alert_locations") == _feed_reads(engine, "export_alert_locations_csv") == []
    (view,) = _feed_reads(engine, "view_alerts")
    assert view.detail["located"] == 0
    assert "access_basis" not in view.detail

    blank = client.get("/console/alerts", params={"reason": "  "})
    assert 'id="alerts-refusal"' in blank.text
    assert not COORDINATE.search(blank.text)
    refused_csv = client.get("/console/alerts.csv", params={"reason": ""})
    assert refused_csv.status_code == 422
    assert not COORDINATE.search(refused_csv.text)
    denied = _feed_reads(engine, "location_access_denied")
    assert [(e.actor, e.subject_type, e.subject_id, e.detail["scope"]) for e in denied] == [
        ("user:ana", "alert", "*", "alerts")] * 2

    shown = client.get("/console/alerts", params={"rule": "stationary_near_market", "reason": "dwell review"})
    assert COORDINATE.search(shown.text)
    assert 'data-basis="role"' in shown.text
    assert 'id="alerts-reason-form"' not in shown.text
    csv_url = re.search(r'href="(/console/alerts\.csv\?[^"]+)" id="alerts-csv"', shown.text)
    assert csv_url is not None
    assert "reason=dwell+review" in csv_url.group(1)
    exported = client.get(csv_url.group(1).replace("&amp;", "&"))
    (row,) = list(csv.DictReader(io.StringIO(exported.text)))
    assert json.loads(row["evidence"])["centre_lat"] == MARKET[0]
    for action in ("view_alert_locations", "export_alert_locations_csv"):
        (read,) = _feed_reads(engine, action)  # one row per loan whose coordinates were shown
        assert (read.actor, read.subject_type, read.subject_id) == ("user:ana", "loan", "L-1002")
        assert read.detail == {"alerts": 1, "access_basis": "role", "grant_id": None,
                               "access_reason": "dwell review"}
    assert _feed_reads(engine, "view_alerts")[-1].detail["access_reason"] == "dwell review"
    with Session(engine) as session:
        report = compliance_report(session, NOW - DAY, NOW + DAY)
    assert {r["action"] for r in report["location_reads"]} == {"view_alert_locations", "export_alert_locations_csv"}
    assert report["summary"]["location_reads"] == {"role": 2}

    client.cookies.clear()
    user(client, "cole")  # collections: no coordinates, no places; a reason opens nothing (grants are per loan)
    for params in ({}, {"reason": "recovery"}):
        page = client.get("/console/alerts", params=params)
        assert page.status_code == 200
        assert 'id="alerts-reason-form"' not in page.text
        assert not COORDINATE.search(page.text)
        assert "Jiading" not in page.text
    refused = client.get("/console/alerts.csv", params={"reason": "recovery"})
    assert refused.status_code == 403
    assert not COORDINATE.search(refused.text)
    assert [e.actor for e in _feed_reads(engine, "location_access_denied")][-2:] == ["user:cole"] * 2
    assert len(_feed_reads(engine, "view_alert_locations")) == 1


def _api(client: TestClient, path: str, role: str, **params: str) -> Any:
    return client.get(path, params=params, headers={"Authorization": f"Bearer {KEYS[role]}"})


def test_v1_alerts_give_coordinates_only_with_a_reason_audited_per_loan_like_the_console_feed(world: tuple) -> None:
    client, engine, _ = world
    for role in ("risk_analyst", "admin", "collections"):
        plain = _api(client, "/v1/alerts", role)
        assert plain.status_code == 200
        assert "market_id" in plain.text
        assert not COORDINATE.search(plain.text)
    assert _feed_reads(engine, "view_alert_locations") == []
    assert {e.detail["located"] for e in _feed_reads(engine, "list_alerts")} == {0}
    assert not any("access_basis" in e.detail for e in _feed_reads(engine, "list_alerts"))

    for bad in ("", "   ", "x" * 501):
        refused = _api(client, "/v1/alerts", "risk_analyst", reason=bad)
        assert refused.status_code == 422, bad
        assert not COORDINATE.search(refused.text)
    denied = _api(client, "/v1/alerts", "collections", reason="recovery")  # a grant is per loan, never the book
    assert denied.status_code == 403
    assert not COORDINATE.search(denied.text)
    refusals = _feed_reads(engine, "location_access_denied")
    assert [(e.role, e.subject_type, e.subject_id, e.detail["scope"]) for e in refusals] == [
        ("risk_analyst", "alert", "*", "alerts")] * 2 + [("collections", "alert", "*", "alerts")]

    shown = _api(client, "/v1/alerts", "risk_analyst", reason=" dwell review ")
    assert shown.status_code == 200
    (row,) = [r for r in shown.json() if r["rule"] == "stationary_near_market"]
    assert (row["evidence"]["centre_lat"], row["evidence"]["centre_lon"]) == MARKET
    (read,) = _feed_reads(engine, "view_alert_locations")  # one row per loan located, as the console writes
    assert (read.role, read.subject_type, read.subject_id) == ("risk_analyst", "loan", "L-1002")
    assert read.detail == {"alerts": 1, "access_basis": "role", "grant_id": None, "access_reason": "dwell review"}
    listed = _feed_reads(engine, "list_alerts")[-1]
    assert (listed.detail["located"], listed.detail["access_reason"]) == (1, "dwell review")
    nothing_located = _api(client, "/v1/alerts", "admin", reason="audit sample", rule="no_such_rule")
    assert nothing_located.json() == []
    assert len(_feed_reads(engine, "view_alert_locations")) == 1  # no loan located, no location read


def _frames(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event, data) of every event frame of a text/event-stream body."""
    out = []
    for frame in text.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in frame.split("\n") if ": " in line)
        if "event" in fields:
            out.append((fields["event"], json.loads(fields["data"])))
    return out


def test_risk_stream_sends_coordinates_only_with_a_reason_audited_per_loan(world: tuple) -> None:
    client, engine, _ = world
    backlog = {"follow": "false", "alerts": "true"}
    for role in ("risk_analyst", "admin", "collections"):
        plain = _api(client, "/v1/risk/stream", role, **backlog)
        assert plain.status_code == 200
        events = _frames(plain.text)
        assert {"risk", "alert"} <= {e for e, _ in events}
        assert any(e == "alert" and d["evidence"].get("market_id") == "sh-jiading-ucm" for e, d in events)
        assert not COORDINATE.search(plain.text), role  # neither the alerts nor the alerts behind risk reasons
    assert _feed_reads(engine, "view_alert_locations") == []
    assert not any("access_basis" in e.detail for e in _feed_reads(engine, "subscribe_risk_stream"))

    assert _api(client, "/v1/risk/stream", "risk_analyst", reason=" ", **backlog).status_code == 422
    assert _api(client, "/v1/risk/stream", "risk_analyst", reason="x" * 501, **backlog).status_code == 422
    assert _api(client, "/v1/risk/stream", "collections", reason="recovery", **backlog).status_code == 403
    assert [e.role for e in _feed_reads(engine, "location_access_denied")] == ["risk_analyst", "collections"]

    shown = _api(client, "/v1/risk/stream", "risk_analyst", reason="dwell review", **backlog)
    (alert,) = [d for e, d in _frames(shown.text) if e == "alert" and d["rule"] == "stationary_near_market"]
    assert (alert["evidence"]["centre_lat"], alert["evidence"]["centre_lon"]) == MARKET
    risk_located = [d["loan_id"] for e, d in _frames(shown.text) if e == "risk" and COORDINATE.search(json.dumps(d))]
    assert set(risk_located) == {"L-1002"}  # its risk reasons rest on the market alert
    (subscribed,) = [e for e in _feed_reads(engine, "subscribe_risk_stream") if "access_reason" in e.detail]
    assert subscribed.detail["access_reason"] == "dwell review"
    reads = _feed_reads(engine, "view_alert_locations")  # per loan, for what each batch sent
    assert [(e.role, e.subject_type, e.subject_id) for e in reads] == [("risk_analyst", "loan", "L-1002")] * 2
    assert [e.detail for e in reads] == [
        {"risk_events": len(risk_located), "access_basis": "role", "grant_id": None, "access_reason": "dwell review"},
        {"alerts": 1, "access_basis": "role", "grant_id": None, "access_reason": "dwell review"},
    ]


def _stream_url(page: str) -> str:
    found = re.search(r'id="live" data-stream="([^"]+)"', page)
    assert found is not None
    return found.group(1).replace("&amp;", "&")


def test_the_alert_page_opens_the_stream_with_coordinates_only_after_the_reason(world: tuple) -> None:
    client, engine, _ = world
    user(client, "ana")
    before = _stream_url(client.get("/console/alerts").text)
    after = _stream_url(client.get("/console/alerts", params={"reason": "dwell review"}).text)
    page_reads = len(_feed_reads(engine, "view_alert_locations"))  # the page's own, for its rows
    assert "reason" not in before
    assert "reason=dwell+review" in after
    assert "reason" not in _stream_url(client.get("/console/worklist").text)
    with Session(engine) as session:  # a new alert arrives after the pages were rendered
        session.add(AlertRecord(batch_id=1, device_id="tbox-0002", rule="stationary_near_market", severity=2,
                                state=1, time_ms=NOW, episode="dwell-1",
                                evidence={"market_id": "sh-jiading-ucm", "centre_lat": MARKET[0],
                                          "centre_lon": MARKET[1]}))
        session.commit()

    unasked = client.get(before + "&follow=false")  # what the browser receives before any reason
    assert unasked.status_code == 200
    (alert,) = [d for e, d in _frames(unasked.text) if e == "alert"]
    assert alert["evidence"] == {"market_id": "sh-jiading-ucm"}
    assert not COORDINATE.search(unasked.text)
    assert len(_feed_reads(engine, "view_alert_locations")) == page_reads

    live = client.get(after + "&follow=false")
    (alert,) = [d for e, d in _frames(live.text) if e == "alert"]
    assert (alert["state"], alert["evidence"]["centre_lat"]) == ("cleared", MARKET[0])
    streamed = [e for e in _feed_reads(engine, "view_alert_locations")[page_reads:] if "alerts" in e.detail]
    assert [(e.actor, e.subject_id, e.detail["alerts"], e.detail["access_reason"]) for e in streamed] == [
        ("user:ana", "L-1002", 1, "dwell review")]
