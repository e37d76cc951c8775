"""The agent as a subprocess, killed with SIGKILL at random moments, then restarted.

Every sequence number from 1 to the last must be delivered at least once (or announced as
skipped by the agent itself), and a sequence number must always carry the same bytes.
"""

from __future__ import annotations

import hashlib
import random
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.outbox import Outbox
from protocol import batch_topic, open_batch, open_state, state_topic
from protocol.cli import key_files as keys
from tests.mqtt_subscriber import Collector
from tests.secure_broker import SecureBroker

DEVICE = "car-kill"

CHILD = r'''
import logging, signal, sys, threading, time
from edge.agent import Agent, StructuredFormatter
from edge.config import load_config
from protocol import Fix


class Ticker:
    """20 fixes every 10 ms: a 2,000 fixes/s receiver."""

    def __init__(self):
        self.t = int(time.time() * 1000) // 10 * 10
        self._closed = threading.Event()

    def read(self, timeout=1.0):
        self._closed.wait(0.01)
        out = []
        for _ in range(20):
            self.t += 10
            out.append(Fix(time_ms=self.t, lat=31.3, lon=121.25, sats_used=9))
        return out

    def close(self):
        self._closed.set()


class NullEngine:
    active_rules = frozenset()
    counters = {}

    def feed(self, event):
        return []

    def tick(self, time_ms):
        return []

    def snapshot(self):
        return {}

    def set_markets(self, m): pass
    def set_regions(self, r): pass
    def set_config(self, c): pass


handler = logging.StreamHandler()
handler.setFormatter(StructuredFormatter("json"))
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)
agent = Agent(load_config(sys.argv[1]), engine=NullEngine(), sources={"gnss": Ticker()})
signal.signal(signal.SIGTERM, lambda *_: agent.request_stop())
sys.exit(agent.run())
'''


def wait_for_batches(collector: Collector, count: int) -> bool:
    return collector.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/batch")]) >= count, timeout=60)


@pytest.fixture
def collector(mosquitto: SecureBroker) -> Iterator[Collector]:
    c = Collector(mosquitto, [batch_topic(DEVICE), state_topic(DEVICE)], client_id="kill-collector")
    yield c
    c.close()


def test_sigkill_at_random_moments_loses_nothing_and_never_reuses_a_number(
    mosquitto: SecureBroker, collector: Collector, tmp_path: Path
) -> None:
    generated = keys.generate(tmp_path / "keys", DEVICE)
    public = {DEVICE: generated.public_key}
    login = mosquitto.login(DEVICE)
    (tmp_path / "agent.toml").write_text(
        f"""
[device]
id = "{DEVICE}"
key_file = "keys/{DEVICE}.key"
[batch]
max_age_s = 0.5
max_fixes = 100
[outbox]
seq_block = 8
[mqtt]
port = {mosquitto.port}
username = "{login.username}"
password = "{login.password}"
backoff_min_s = 0.05
backoff_max_s = 0.3
shutdown_grace_s = 10
"""
    )
    child = tmp_path / "child.py"
    child.write_text(CHILD)
    rng = random.Random(20_260_101)
    argv = [sys.executable, str(child), str(tmp_path / "agent.toml")]

    def delivered() -> int:
        return len(collector.on(batch_topic(DEVICE)))

    kills = 20
    for _ in range(kills):
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # a random moment: after 1..6 more batches have reached the broker from this run
            target = delivered() + rng.randint(1, 6)
            assert wait_for_batches(collector, target)
        finally:
            proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]

    # one last run, stopped cleanly: it drains what the killed runs left in the outbox
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        final_target = delivered() + 3
        assert wait_for_batches(collector, final_target)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-2000:]
    assert b'"event":"agent_stopped","drained":true' in err
    box = Outbox(tmp_path / "data" / "outbox.db")
    assert box.stats()["outbox_batches"] == 0
    box.close()

    contents: dict[int, set[str]] = {}
    skipped: set[int] = set()
    floors: set[int] = set()
    boots: set[bytes] = set()
    for message in collector.on(batch_topic(DEVICE)):
        batch = open_batch(bytes(message.payload), message.topic, public)
        contents.setdefault(batch.seq, set()).add(hashlib.sha256(message.payload).hexdigest())
        boots.add(batch.boot_id)
        if "seq_floor" in batch.counters:  # the first boot starts at the clock floor
            floors.add(batch.counters["seq_floor"])
        if "seq_skipped_from" in batch.counters:
            first = batch.counters["seq_skipped_from"]
            skipped.update(range(first, first + batch.counters["seq_skipped"]))
    last = max(contents)
    assert all(len(digests) == 1 for digests in contents.values()), "a sequence number carried two contents"
    assert not skipped & set(contents), "a number announced as skipped was also used"
    missing = set(range(min(floors, default=1), last + 1)) - set(contents) - skipped
    assert not missing, f"sequence numbers never delivered: {sorted(missing)[:20]}"
    # a run may be killed after re-sending its predecessors' batches and before storing its own
    assert kills // 2 < len(boots) <= kills + 1
    # each SIGKILL left a signed Last Will (offline) on the retained state topic
    offline = [
        s
        for s in (open_state(bytes(m.payload), m.topic, public) for m in collector.on(state_topic(DEVICE)))
        if not s.online
    ]
    assert len({s.boot_id for s in offline}) == kills + 1  # 20 wills + the clean shutdown's offline state
