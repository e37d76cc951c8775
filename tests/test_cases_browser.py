"""The case pages in a real browser: Playwright driving Debian's Chromium against ``collector serve``.

A collections user signs in through the form, opens the case list from the navigation, takes
an unassigned case, tries a call the contact rules refuse (the page says why and from when,
in the borrower's zone) and records a note. The collector runs as a subprocess on SQLite with
quiet hours from 00:01 to 00:00 (so the refusal does not depend on the time the test runs).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from collector.loans.csv_import import import_loans, parse_loans
from collector.risk.assessment import reassess_loan
from collector.storage.database import create_engine, migrate
from collector.storage.people import add_user
from collector.storage.tables import CaseRecord
from firmware_sim.rig.services import free_port
from tests.child_processes import ChildProcesses
from tests.collector_process import WAIT_S, wait_until

pytestmark = [pytest.mark.browser]

SAMPLE = Path(__file__).parents[1] / "collector" / "data" / "sample_loans.csv"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
PASSWORD = "demo password 2026"


@pytest.fixture
def collector_url(tmp_path: Path, processes: ChildProcesses) -> Iterator[tuple[str, int]]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make system` (apt-get install chromium)")
    database = tmp_path / "collector.db"
    engine = create_engine(f"sqlite:///{database}")
    migrate(engine)
    now = time.time_ns() // 1_000_000
    with Session(engine) as session:
        import_loans(session, parse_loans(SAMPLE.read_text(encoding="utf-8")), now_ms=now)
        add_user(session, username="cole", display_name="Cole Collections", role="collections", password=PASSWORD,
                 now_ms=now)
        reassess_loan(session, "L-1002", now)
        session.commit()
        case_id = session.scalars(sa.select(CaseRecord.id).where(CaseRecord.loan_id == "L-1002")).one()
    engine.dispose()
    port = free_port()
    config = tmp_path / "collector.toml"
    config.write_text(
        f'database_url = "sqlite:///{database}"\n[api]\nport = {port}\n[retention]\nenabled = false\n'
        '[contact]\nquiet_start = "00:01"\nquiet_end = "00:00"\n',
        encoding="utf-8",
    )
    proc = processes.start([sys.executable, "-m", "collector", "serve", "--api-only", "--config", str(config)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError("collector exited")
        try:
            return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, what="collector API")
        yield base, case_id
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(WAIT_S)


@pytest.fixture
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def test_a_collections_user_works_a_case(browser: Any, collector_url: tuple[str, int], tmp_path: Path) -> None:
    base, case_id = collector_url
    context = browser.new_context(base_url=base, viewport={"width": 1360, "height": 900})
    page = context.new_page()
    page.goto("/console/")
    page.fill("#password-form input[name=username]", "cole")
    page.fill("#password-form input[name=password]", PASSWORD)
    page.click("#password-form button[type=submit]")
    page.wait_for_load_state()

    page.get_by_role("navigation").get_by_role("link", name="Cases").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name="Cases", exact=True).is_visible()
    queue = page.get_by_role("table", name=re.compile(r"^Unassigned \(\d+\)$"))
    assert "L-1002" in queue.inner_text()
    queue.get_by_role("link", name=f"#{case_id}").click()
    page.wait_for_load_state()
    assert page.get_by_role("heading", name=f"Case #{case_id}").is_visible()

    page.get_by_role("button", name="Assign to me").click()
    page.wait_for_load_state()
    assert page.locator("#case-assignee").inner_text() == "cole"

    form = page.locator("#action-form")
    form.get_by_label("Action", exact=True).select_option("call")
    form.get_by_label("Outcome").select_option("contacted")
    form.get_by_role("button", name="Record an action").click()
    page.wait_for_load_state()
    alert = page.get_by_role("alert")
    text = alert.inner_text()
    assert "Contact refused" in text
    assert "quiet_hours" in text
    assert "allowed from" in text
    assert alert.locator("time").get_attribute("datetime").endswith("T00:00:00+08:00")

    form = page.locator("#action-form")
    form.get_by_label("Action", exact=True).select_option("note")
    form.get_by_label("Note").fill("left a card at the door")
    form.get_by_role("button", name="Record an action").click()
    page.wait_for_load_state()
    actions = page.get_by_role("table", name="Actions").inner_text()
    assert "left a card at the door" in actions
    assert "Contact refused" in actions  # the refusal is on the record too
    page.screenshot(path=str(tmp_path / "case.png"), full_page=True)
    context.close()
