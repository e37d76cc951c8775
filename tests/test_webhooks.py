"""Webhook signing, retries against a local receiver, and the outbox surviving a restart."""

from __future__ import annotations

import http.server
import itertools
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from collector.jobs.webhooks import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    DeliveryRound,
    RetryPolicy,
    WebhookError,
    WebhookSender,
    WebhookSignatureError,
    WebhookWorker,
    check_webhook_url,
    enqueue_risk_change,
    event_body,
    sign_body,
    verify_signature,
)
from collector.risk.engine import NextStep, Reason, RiskChange, RiskLevel
from collector.storage.tables import Base, WebhookDelivery

SECRET = b"0123456789abcdef-test-secret"
T0 = 1_780_000_000_000
CHANGE = RiskChange(
    "L-1002",
    T0,
    RiskLevel.WATCH,
    RiskLevel.HIGH,
    NextStep.ON_SITE_CHECK,
    (Reason("late_streak_near_market", RiskLevel.HIGH, NextStep.ON_SITE_CHECK, "ep-1", {"repayment": {"dpd": 63}}),),
)


def test_signature_golden() -> None:
    # Computed independently:
    # printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac 0123456789abcdef-test-secret
    header = sign_body(b'{"a":1}', SECRET, 1_700_000_000)
    assert header == "t=1700000000,v1=4b920c71aed49854d1b6a9969fa5afcdca1733ceb8df4f49ea395c3da17ca179"
    assert verify_signature(header, b'{"a":1}', SECRET, 1_700_000_100) == 1_700_000_000


@pytest.mark.parametrize(
    ("header", "body", "now", "reason"),
    [
        ("", b"x", 100, "malformed"),
        ("t=100", b"x", 100, "malformed"),
        ("v1=abc", b"x", 100, "malformed"),
        ("t=abc,v1=00", b"x", 100, "malformed"),
        ("t=100,t=100,v1=00", b"x", 100, "malformed"),
        ("t=100;v1=00", b"x", 100, "malformed"),
        ("t=100,v1=" + "0" * 600, b"x", 100, "malformed"),
        (sign_body(b"x", SECRET, 100), b"x", 401, "stale"),
        (sign_body(b"x", SECRET, 500), b"x", 100, "stale"),
        (sign_body(b"x", SECRET, 100), b"y", 100, "mismatch"),  # forged body
        (sign_body(b"x", b"another-secret-of-16", 100), b"x", 100, "mismatch"),  # forged key
        (sign_body(b"x", SECRET, 100).replace("t=100", "t=101"), b"x", 101, "mismatch"),  # replayed with new t
    ],
)
def test_verify_rejects(header: str, body: bytes, now: int, reason: str) -> None:
    with pytest.raises(WebhookSignatureError) as info:
        verify_signature(header, body, SECRET, now)
    assert info.value.reason == reason


def test_verify_accepts_rotated_secret_list() -> None:
    good = sign_body(b"x", SECRET, 100)
    header = f"t=100,v1={'0' * 64},{good.split(',')[1]}"
    assert verify_signature(header, b"x", SECRET, 100) == 100


def test_event_body() -> None:
    body = json.loads(event_body("ev-1", CHANGE))
    assert body == {
        "id": "ev-1",
        "type": "risk.level_changed",
        "created_ms": T0,
        "data": {
            "loan_id": "L-1002",
            "time_ms": T0,
            "old_level": "watch",
            "new_level": "high",
            "next_step": "on_site_check",
            "reasons": [
                {
                    "code": "late_streak_near_market",
                    "level": "high",
                    "next_step": "on_site_check",
                    "alert_episode": "ep-1",
                    "evidence": {"repayment": {"dpd": 63}},
                }
            ],
        },
    }


@pytest.mark.parametrize("url", ["ftp://x/y", "/relative", "http://", "x" * 3000, "https://" + "a" * 2050])
def test_bad_urls(url: str) -> None:
    with pytest.raises(WebhookError):
        check_webhook_url(url)


def test_retry_policy() -> None:
    policy = RetryPolicy()
    assert [policy.delay_ms(n) for n in (1, 2, 3, 12, 20)] == [2000, 4000, 8000, 3_600_000, 3_600_000]
    with pytest.raises(WebhookError):
        RetryPolicy(initial_s=0)
    with pytest.raises(WebhookError):
        WebhookSender(lambda: None, b"short")  # type: ignore[arg-type, return-value]


# ------------------------------------------------------------------ a local receiver


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that fails the first ``failures`` requests with 500."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.requests: list[tuple[int, dict[str, str], bytes]] = []
        self.delivered = threading.Event()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = 500 if len(outer.requests) < outer.failures else 204
                outer.requests.append((status, dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status == 204:
                    outer.delivered.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(failures=2)
    yield r
    r.close()


def make_db(path: Path) -> tuple[sa.Engine, sessionmaker[Session]]:
    engine = sa.create_engine(f"sqlite:///{path}")
    Base.metadata.create_all(engine)
    return engine, sessionmaker(engine, expire_on_commit=False)


def queue(sessions: sessionmaker[Session], urls: list[str]) -> None:
    with sessions() as session:
        enqueue_risk_change(session, "ev-1", CHANGE, urls, now_ms=T0)
        session.commit()


def test_fails_twice_then_succeeds(tmp_path: Path, receiver: Receiver) -> None:
    engine, sessions = make_db(tmp_path / "c.db")
    queue(sessions, [receiver.url, receiver.url])  # the duplicate URL is queued once
    sender = WebhookSender(sessions, SECRET)
    try:
        assert sender.deliver_due(T0) == DeliveryRound(0, 1, 0)
        assert sender.deliver_due(T0 + 1999) == DeliveryRound(0, 0, 0)  # backoff: not due yet
        assert sender.deliver_due(T0 + 2000) == DeliveryRound(0, 1, 0)
        assert sender.next_due_ms() == T0 + 2000 + 4000
        assert sender.deliver_due(T0 + 6000) == DeliveryRound(1, 0, 0)
        assert sender.deliver_due(T0 + 10**9) == DeliveryRound(0, 0, 0)
    finally:
        sender.close()
    assert [status for status, _, _ in receiver.requests] == [500, 500, 204]
    _, headers, body = receiver.requests[-1]
    assert headers[EVENT_HEADER] == "ev-1"
    assert headers["X-LienWatch-Delivery-Attempt"] == "3"
    assert body == event_body("ev-1", CHANGE)
    assert verify_signature(headers[SIGNATURE_HEADER], body, SECRET, (T0 + 6000) // 1000) == (T0 + 6000) // 1000
    assert dict(sender.counters) == {"http_5xx": 2, "retried": 2, "delivered": 1}
    with sessions() as session:
        row = session.scalars(sa.select(WebhookDelivery)).one()
        assert (row.status, row.attempts, row.delivered_ms, row.last_error) == ("delivered", 3, T0 + 6000, None)
    engine.dispose()


def test_gives_up_after_max_attempts_and_counts_transport_errors(tmp_path: Path) -> None:
    engine, sessions = make_db(tmp_path / "c.db")
    from firmware_sim.rig import free_port

    queue(sessions, [f"http://127.0.0.1:{free_port()}/nobody-listens"])
    sender = WebhookSender(sessions, SECRET, policy=RetryPolicy(initial_s=1, max_attempts=3, timeout_s=5))
    try:
        rounds = [sender.deliver_due(T0 + t) for t in (0, 1000, 3000)]
    finally:
        sender.close()
    assert rounds == [DeliveryRound(0, 1, 0), DeliveryRound(0, 1, 0), DeliveryRound(0, 0, 1)]
    assert sender.counters["transport_error"] == 3
    with sessions() as session:
        row = session.scalars(sa.select(WebhookDelivery)).one()
        assert row.status == "failed"
        assert row.last_error is not None
        assert row.last_error.startswith("ConnectError")
    engine.dispose()


def test_queue_survives_restart_and_worker_thread_delivers(tmp_path: Path, receiver: Receiver) -> None:
    db = tmp_path / "c.db"
    engine, sessions = make_db(db)
    queue(sessions, [receiver.url])
    first = WebhookSender(sessions, SECRET)
    assert first.deliver_due(T0) == DeliveryRound(0, 1, 0)  # one failure, then the process "dies"
    first.close()
    engine.dispose()

    engine, sessions = make_db(db)  # a new process opens the same database
    ticks = itertools.count(T0 + 2000, 1000)
    sender = WebhookSender(sessions, SECRET, policy=RetryPolicy(initial_s=0.001, max_s=0.001))
    assert sender.pending() == 1
    worker = WebhookWorker(sender, interval_s=0.05, clock_ms=lambda: next(ticks))
    worker.start()
    try:
        worker.wake()
        assert receiver.delivered.wait(30), receiver.requests
    finally:
        worker.stop()
        sender.close()
    assert [s for s, _, _ in receiver.requests] == [500, 500, 204]
    assert sender.pending() == 0
    engine.dispose()
