"""Two trackers per car (#17): the pure tracker_divergence detector, the loan link, and the loan's risk.

The detector tests are plain values; the loan tests store real signed batches of both
trackers through the ingest path and read the risk back through the loans API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.cli.commands import main
from collector.ingest.ingestor import Ingestor, Outcome
from collector.ingest.settings import Limits
from collector.jobs.downlink import config_targets
from collector.loans.store import TrackerLinkError, link_second_tracker, unlink_second_tracker
from collector.risk.assessment import reassess_loans
from collector.risk.engine import RiskConfig, RiskConfigError
from collector.risk.trackers import TrackerView, TrackFix, tracker_divergence
from protocol import Alert, Batch, Fix, Severity, seal_batch
from tests.fake_devices import BOOT_A, FakeDevice, register
from tests.loan_api_app import NOW, Api, cli_config, open_loan_api

MIN = 60_000
HOUR = 60 * MIN
CONFIG = RiskConfig()
HOME = (31.2000, 121.4000)
KM_NORTH = 1 / 111.2  # degrees of latitude per km


def track(start_ms: int, end_ms: int, lat: float, lon: float, every_ms: int = 5 * MIN, dlat: float = 0.0) -> list[
        TrackFix]:
    n = (end_ms - start_ms) // every_ms + 1
    return [TrackFix(start_ms + i * every_ms, lat + i * dlat, lon) for i in range(n)]


def view(device: str, fixes: list[TrackFix], last_seen_ms: int | None = None) -> TrackerView:
    return TrackerView(device, last_seen_ms if last_seen_ms is not None else (fixes[-1].time_ms if fixes else None),
                       fixes[-1] if fixes else None, tuple(fixes))


# ------------------------------------------------------------------ the detector


def test_two_trackers_parked_or_driving_together_agree() -> None:
    together = track(NOW - 5 * HOUR, NOW, *HOME, dlat=0.001)
    jitter = [TrackFix(f.time_ms + 7_000, f.lat + 0.0002, f.lon - 0.0002) for f in together]  # ~30 m apart
    assert tracker_divergence(view("box", together), view("spy", jitter), NOW, CONFIG) is None


def test_the_wired_box_unplugged_while_the_backup_keeps_moving() -> None:
    box = track(NOW - 5 * HOUR, NOW - 3 * HOUR, *HOME)
    spy = track(NOW - 5 * HOUR, NOW - 3 * HOUR, *HOME) + track(
        NOW - 3 * HOUR + 5 * MIN, NOW - 10 * MIN, HOME[0] + 0.5 * KM_NORTH, HOME[1], dlat=0.2 * KM_NORTH)
    found = tracker_divergence(view("box", box), view("spy", spy), NOW, CONFIG)
    assert found is not None
    assert (found.rule, found.raised_ms, found.episode) == (
        "tracker_divergence", NOW - 3 * HOUR, f"tracker_divergence:silent:box:{NOW - 3 * HOUR}")
    assert found.evidence["kind"] == "silent_while_other_moves"
    assert (found.evidence["silent_device"], found.evidence["reporting_device"]) == ("box", "spy")
    assert found.evidence["distance_m"] > 2000
    assert not {"lat", "lon"} & set(found.evidence)  # distances and times, never coordinates
    # the reverse holds too: the hidden backup removed while the wired box keeps reporting
    again = tracker_divergence(view("spy", spy), view("box", box), NOW, CONFIG)
    assert again is not None
    assert again.evidence["silent_device"] == "box"
    backwards = tracker_divergence(view("box", spy), view("spy", box), NOW, CONFIG)
    assert backwards is not None
    assert backwards.evidence["silent_device"] == "spy"


def test_silence_alone_or_short_silence_is_not_divergence() -> None:
    box = track(NOW - 5 * HOUR, NOW - 3 * HOUR, *HOME)
    parked_spy = track(NOW - 5 * HOUR, NOW - 10 * MIN, *HOME)  # the car stayed where the box went quiet
    assert tracker_divergence(view("box", box), view("spy", parked_spy), NOW, CONFIG) is None
    both_quiet = track(NOW - 5 * HOUR, NOW - 3 * HOUR, *HOME)  # underground garage: nobody reports
    assert tracker_divergence(view("box", box), view("spy", both_quiet), NOW, CONFIG) is None
    # both quiet, their last reports far apart: the hourly backup's last one was 30 km back on
    # the drive into the garage, the box's at the entrance; nobody reports now, nothing to compare
    drive_in = track(NOW - 4 * HOUR, NOW - 3 * HOUR, HOME[0] - 30 * KM_NORTH, HOME[1], every_ms=5 * MIN,
                     dlat=2.5 * KM_NORTH)
    hourly_spy = [drive_in[0]]
    assert tracker_divergence(view("box", drive_in), view("spy", hourly_spy), NOW, CONFIG) is None
    assert tracker_divergence(view("spy", hourly_spy), view("box", drive_in), NOW, CONFIG) is None
    sparse_spy = track(NOW - 90 * MIN, NOW - 90 * MIN, *HOME)  # a battery tracker reporting every few hours
    moving_box = track(NOW - 90 * MIN, NOW, *HOME, dlat=0.5 * KM_NORTH)
    assert tracker_divergence(view("box", moving_box), view("spy", sparse_spy), NOW, CONFIG) is None


def test_positions_that_disagree_long_enough() -> None:
    box = track(NOW - 2 * HOUR, NOW, *HOME)
    far = track(NOW - 2 * HOUR + MIN, NOW + MIN, HOME[0] + 3 * KM_NORTH, HOME[1])
    found = tracker_divergence(view("box", box), view("spy", far), NOW + MIN, CONFIG)
    assert found is not None
    assert found.evidence["kind"] == "positions_disagree"
    assert found.raised_ms == NOW - 2 * HOUR
    assert found.evidence["apart_minutes"] == 120.0
    # 20 minutes apart is under the 30-minute window; a single outlier pair too
    late = far[-4:]
    assert tracker_divergence(view("box", box), view("spy", late), NOW + MIN, CONFIG) is None
    outlier = [*box[:-1], TrackFix(box[-1].time_ms, HOME[0] + 5 * KM_NORTH, HOME[1])]
    assert tracker_divergence(view("spy", box), view("box", outlier), NOW, CONFIG) is None
    # back together at the newest pair: the episode has ended
    rejoined = [*far[:-1], TrackFix(far[-1].time_ms, *HOME)]
    assert tracker_divergence(view("box", box), view("spy", rejoined), NOW + MIN, CONFIG) is None
    # fixes too far apart in time are never paired
    every_10 = track(NOW - 2 * HOUR, NOW, *HOME, every_ms=10 * MIN)
    between = track(NOW - 2 * HOUR + 5 * MIN, NOW - 5 * MIN, HOME[0] + 3 * KM_NORTH, HOME[1], every_ms=10 * MIN)
    assert tracker_divergence(view("box", every_10), view("spy", between), NOW, CONFIG) is None


def test_thresholds_come_from_the_risk_config() -> None:
    box = track(NOW - 2 * HOUR, NOW, *HOME)
    far = track(NOW - 2 * HOUR, NOW, HOME[0] + 3 * KM_NORTH, HOME[1])
    assert tracker_divergence(view("b", box), view("s", far), NOW, RiskConfig(tracker_divergence_m=5000)) is None
    assert tracker_divergence(view("b", box), view("s", far), NOW, RiskConfig(tracker_window_minutes=180)) is None
    assert RiskConfig.from_dict({"tracker_silent_hours": 6, "tracker_moved_m": 500}).tracker_silent_hours == 6
    assert RiskConfig(tracker_silent_hours=0.01).tracker_silent_hours == 0.01  # 36 s, the HIL rig's live clock
    with pytest.raises(RiskConfigError, match=r"tracker_silent_hours=0\.005 must be a number in \[0\.01, "):
        RiskConfig(tracker_silent_hours=0.005)
    with pytest.raises(RiskConfigError, match="tracker_divergence_m=10 must be a number in"):
        RiskConfig(tracker_divergence_m=10)


def test_nothing_to_compare_and_bad_input() -> None:
    box = track(NOW - 2 * HOUR, NOW, *HOME)
    assert tracker_divergence(view("box", box), view("spy", []), NOW, CONFIG) is None
    assert tracker_divergence(view("box", []), view("spy", []), NOW, CONFIG) is None
    with pytest.raises(RiskConfigError, match="fixes must be in time order"):
        TrackerView("box", NOW, box[-1], tuple(reversed(box)))


# ------------------------------------------------------------------ loans with two trackers


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    with open_loan_api(tmp_path) as app:
        yield app


def store_track(ingestor: Ingestor, device: FakeDevice, seq: int, fixes: list[TrackFix]) -> None:
    batch = Batch(device.device_id, BOOT_A, seq, fixes[-1].time_ms,
                  fixes=tuple(Fix(f.time_ms, f.lat, f.lon, speed_mps=8.0) for f in fixes))
    assert ingestor.handle(device.topic, seal_batch(batch, device.key, device.topic)).outcome is Outcome.STORED


def test_a_loan_escalates_when_its_wired_box_is_unplugged_and_the_backup_moves(api: Api) -> None:
    box, spy = FakeDevice("tbox-0001"), FakeDevice("spy-0001")
    register(api.engine, box, spy)
    ingestor = Ingestor(api.engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    store_track(ingestor, box, 1, track(NOW - 5 * HOUR, NOW - 3 * HOUR, *HOME))
    store_track(ingestor, spy, 1, track(NOW - 5 * HOUR, NOW - 3 * HOUR, *HOME))
    before = api.call("GET", "/v1/loans/L-1001", "admin").json()["risk"]
    assert before["level"] == "normal"

    assert api.call("PUT", "/v1/loans/L-1001/second-tracker", "risk_analyst",
                    json={"device_id": "spy-0001"}).status_code == 403
    put = api.call("PUT", "/v1/loans/L-1001/second-tracker", "admin", json={"device_id": "spy-0001"})
    assert put.json() == {"loan_id": "L-1001", "second_tracker": "spy-0001", "changed": True}
    assert api.call("GET", "/v1/loans/L-1001", "admin").json()["second_tracker"] == "spy-0001"
    assert api.call("GET", "/v1/loans/L-1001", "admin").json()["risk"]["level"] == "normal"  # they agree

    store_track(ingestor, spy, 2, track(NOW - 3 * HOUR + 5 * MIN, NOW - 10 * MIN, HOME[0] + KM_NORTH, HOME[1],
                                        dlat=0.2 * KM_NORTH))
    with Session(api.engine) as session:
        changes = reassess_loans(session, NOW, device_ids=["spy-0001"])  # an ingest commit of the backup
        session.commit()
    assert [(c.loan_id, c.new_level.name) for c in changes] == [("L-1001", "HIGH")]
    risk = api.call("GET", "/v1/loans/L-1001", "admin").json()["risk"]
    assert (risk["level"], risk["next_step"]) == ("high", "on_site_check")
    [reason] = risk["reasons"]
    assert reason["code"] == "tracker_divergence"
    assert reason["evidence"]["alert"]["evidence"]["silent_device"] == "tbox-0001"

    # unlinking the backup ends the comparison
    assert api.call("DELETE", "/v1/loans/L-1001/second-tracker", "admin").json()["removed"] == "spy-0001"
    assert api.call("GET", "/v1/loans/L-1001", "admin").json()["risk"]["level"] == "normal"
    assert api.call("DELETE", "/v1/loans/L-1001/second-tracker", "admin").status_code == 404


def test_link_rules(api: Api) -> None:
    with Session(api.engine) as session:
        assert link_second_tracker(session, "L-1001", "spy-1", now_ms=NOW)
        assert not link_second_tracker(session, "L-1001", "spy-1", now_ms=NOW)  # already linked
        for loan, device, message in [
            ("L-1001", "tbox-0001", "already the main tracker of loan L-1001"),
            ("L-1001", "tbox-0002", "the main tracker of loan L-1002"),
            ("L-1002", "spy-1", "the second tracker of loan L-1001"),
            ("L-1002", "bad id", "must match"),
            ("L-1002", "x" * 65, "must match"),
        ]:
            with pytest.raises(TrackerLinkError, match=message):
                link_second_tracker(session, loan, device, now_ms=NOW)
        assert link_second_tracker(session, "L-1001", "spy-2", now_ms=NOW)  # replaces spy-1
        assert "spy-2" in config_targets(session)
        assert "spy-1" not in config_targets(session)
        assert unlink_second_tracker(session, "L-1001") == "spy-2"
        assert unlink_second_tracker(session, "L-1001") is None
    assert api.call("PUT", "/v1/loans/L-9999/second-tracker", "admin", json={"device_id": "s"}).status_code == 404
    assert api.call("PUT", "/v1/loans/L-1001/second-tracker", "admin",
                    json={"device_id": "tbox-0002"}).status_code == 409
    assert api.call("PUT", "/v1/loans/L-1001/second-tracker", "admin", json={"device_id": "a b"}).status_code == 422
    with Session(api.engine) as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(sa.table("loan_devices"))) == 0


def test_loans_link_tracker_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = cli_config(tmp_path, monkeypatch)
    assert main(["loans", "import", "--sample", "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["loans", "link-tracker", "L-1001", "spy-0001", "--config", str(config)]) == 0
    linked = json.loads(capsys.readouterr().out)
    assert (linked["second_tracker"], linked["changed"], linked["level"]) == ("spy-0001", True, "normal")
    assert main(["loans", "link-tracker", "L-1002", "spy-0001", "--config", str(config)]) == 1
    assert "the second tracker of loan L-1001" in capsys.readouterr().err
    assert main(["loans", "unlink-tracker", "L-1001", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is True
    assert main(["loans", "unlink-tracker", "L-9999", "--config", str(config)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_second_trackers_own_alerts_count_for_the_loan(api: Api) -> None:
    spy = FakeDevice("spy-0001")
    register(api.engine, spy)
    api.call("PUT", "/v1/loans/L-1001/second-tracker", "admin", json={"device_id": "spy-0001"})
    ingestor = Ingestor(api.engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    fixes = track(NOW - HOUR, NOW - 30 * MIN, *HOME)
    cut = Alert("power_cut", Severity.PANIC, NOW - 30 * MIN, "cut-1", evidence={"voltage_v": 0.0})
    batch = Batch("spy-0001", BOOT_A, 1, NOW - 30 * MIN,
                  fixes=tuple(Fix(f.time_ms, f.lat, f.lon) for f in fixes), alerts=(cut,))
    assert ingestor.handle(spy.topic, seal_batch(batch, spy.key, spy.topic)).outcome is Outcome.STORED
    with Session(api.engine) as session:
        reassess_loans(session, NOW, device_ids=["spy-0001"])
        session.commit()
    assert [a["rule"] for a in api.call("GET", "/v1/loans/L-1001/alerts", "risk_analyst").json()] == ["power_cut"]
    risk = api.call("GET", "/v1/loans/L-1001", "admin").json()["risk"]
    assert [r["code"] for r in risk["reasons"]] == ["power_cut"]


def test_trackers_far_apart_through_the_database(api: Api) -> None:
    box, spy = FakeDevice("tbox-0001"), FakeDevice("spy-0001")
    register(api.engine, box, spy)
    ingestor = Ingestor(api.engine, Limits(key_cache_ttl_s=0), clock_ms=lambda: NOW)
    store_track(ingestor, box, 1, track(NOW - 2 * HOUR, NOW - MIN, *HOME))
    store_track(ingestor, spy, 1, track(NOW - 2 * HOUR + MIN, NOW, HOME[0] + 3 * KM_NORTH, HOME[1]))
    api.call("PUT", "/v1/loans/L-1001/second-tracker", "admin", json={"device_id": "spy-0001"})
    [reason] = api.call("GET", "/v1/loans/L-1001", "admin").json()["risk"]["reasons"]
    assert reason["code"] == "tracker_divergence"
    evidence = reason["evidence"]["alert"]["evidence"]
    assert (evidence["kind"], evidence["devices"], evidence["distance_m"]) == (
        "positions_disagree", ["tbox-0001", "spy-0001"], 3000)
