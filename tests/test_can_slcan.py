"""CAN source against the simulator's SLCAN adapter on a pseudo-terminal in another process.

The peer process drives ``firmware_sim``'s sans-I/O ``SlcanAdapter`` behind its
``PtyLink`` (a pty published at a symlink), so python-can's unmodified ``slcan`` driver
talks to an emulated adapter exactly as it would to a USB one. The test steers it over
stdin (``frame ID#HEX``, ``raw LINE``, ``unplug``, ``plug``) and waits on the lines it
prints (``ready``, ``open``) with bounded timeouts.
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.backoff import Backoff
from edge.canbus import SAMPLE_DBC, SAMPLE_MAP, CanSource, SignalDecoder
from protocol import SignalSample
from tests.child_processes import ChildProcesses

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 30.0  # generous: the machine is shared

PEER = r"""
import os, select, sys
from firmware_sim.pty import PtyLink
from firmware_sim.slcan import CanFrame, SlcanAdapter

def say(word):
    sys.stdout.write(word + "\n")
    sys.stdout.flush()

link, adapter, was_open = PtyLink(sys.argv[1]), SlcanAdapter(), False
link.plug()
say("ready")
pending = b""
while True:
    fds = [0] + ([link.fileno()] if link.plugged else [])
    readable, _, _ = select.select(fds, [], [], 1.0)
    if link.plugged and link.fileno() in readable:
        data = link.read()
        if data:
            link.write(adapter.feed(data).reply)
            if adapter.is_open and not was_open:
                say("open")
            was_open = adapter.is_open
    if 0 in readable:
        chunk = os.read(0, 65536)
        if not chunk:
            break
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            command, _, argument = line.decode().partition(" ")
            if command == "frame":
                ident, _, payload = argument.partition("#")
                out = adapter.encode_for_host(CanFrame(int(ident, 16), bytes.fromhex(payload)))
                say("sent" if out and link.write(out) else "refused")
            elif command == "raw":
                link.write(argument.encode() + b"\r")
                say("sent")
            elif command == "unplug":
                link.unplug()
                adapter, was_open = SlcanAdapter(), False
                say("unplugged")
            elif command == "plug":
                link.plug()
                say("ready")
link.close()
"""


class Peer:
    """The SLCAN adapter process and a reader thread for its replies."""

    def __init__(self, link: Path, processes: ChildProcesses) -> None:
        self.proc = processes.start(
            [sys.executable, "-c", PEER, str(link)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._pump, name="slcan-peer-reader", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())

    def expect(self, word: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"SLCAN peer did not say {word!r} within {timeout} s") from None
            if got == word:
                return

    def tell(self, command: str, reply: str | None = "sent") -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        if reply is not None:
            self.expect(reply)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def peer(tmp_path: Path, processes: ChildProcesses) -> Iterator[Peer]:
    adapter = Peer(tmp_path / "can0", processes)
    try:
        adapter.expect("ready")
        yield adapter
    finally:
        adapter.close()


def read_until(source: CanSource, count: int, clock: object = None) -> list[SignalSample]:
    samples: list[SignalSample] = []
    deadline = time.monotonic() + TIMEOUT
    while len(samples) < count and time.monotonic() < deadline:
        samples += source.read(timeout=0.5, time_ms=clock)  # type: ignore[arg-type]
    return samples


def test_python_can_slcan_against_the_simulated_adapter(peer: Peer, tmp_path: Path) -> None:
    decoder = SignalDecoder.from_files([SAMPLE_DBC], SAMPLE_MAP)
    source = CanSource("slcan", str(tmp_path / "can0"), bitrate=500_000, decoder=decoder,
                       backoff=Backoff(initial_s=0.05, max_s=0.5))
    try:
        assert source.is_open
        peer.expect("open")
        peer.tell("frame 0C0#0000000000000000")  # not mapped: python-can's filter drops it
        peer.tell("frame 120#0208050000000000")
        peer.tell("raw tXYZ80011223344556677")  # garbled id
        peer.tell("raw r1208")  # remote frame for a mapped id
        peer.tell("frame 3C0#30")  # short: the 16-bit voltage is not in 1 byte
        peer.tell("frame 1A0#C409010700000000")
        times = iter(range(1_714_550_400_000, 1_714_550_500_000, 100))
        samples = read_until(source, 2, clock=lambda _host_seconds: next(times))
        assert samples == [
            SignalSample("Vehicle.LowVoltageSystemState", 1_714_550_400_000, "ON"),
            SignalSample("Vehicle.Speed", 1_714_550_400_300, 25.0),
        ]
        counts = source.counters.as_dict()
        assert (counts["malformed_frames"], counts["remote_frames"], counts["short_frames"]) == (1, 1, 1)
        assert (counts["signals_missing"], counts["unknown_id"], counts["frames_received"]) == (1, 0, 4)

        # the adapter is unplugged: the port vanishes; the source survives and reopens
        peer.tell("unplug", reply="unplugged")
        assert source.read(timeout=1.0) == []
        assert source.counters.bus_errors == 1
        assert not source.is_open
        peer.tell("plug", reply="ready")
        deadline = time.monotonic() + TIMEOUT
        while not source.is_open and time.monotonic() < deadline:
            source.read(timeout=0.2)
        peer.expect("open")
        peer.tell("frame 120#0300000000000000")
        assert [s.value for s in read_until(source, 1)] == ["START"]
        assert source.counters.bus_reopens == 1
        assert source.counters.bus_open_failures >= 1  # tried while the port was gone
    finally:
        source.close()


def test_lienwatch_can_cli_over_slcan(peer: Peer, tmp_path: Path, processes: ChildProcesses) -> None:
    cli = processes.start(
        [sys.executable, "-m", "edge", "can", "--interface", "slcan", "--channel", str(tmp_path / "can0"),
         "--bitrate", "500000", "--dbc", str(SAMPLE_DBC), "--map", str(SAMPLE_MAP), "--jsonl", "--max-samples", "6"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, text=True,
    )
    try:
        peer.expect("open")
        peer.tell("frame 3B0#0100000000000000")
        peer.tell("frame 3E0#9600000000000000")
        out, err = cli.communicate(timeout=TIMEOUT)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.communicate()
    assert cli.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [(d["name"], d["value"]) for d in lines] == [
        ("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", True),
        ("Vehicle.Cabin.Door.Row1.PassengerSide.IsOpen", False),
        ("Vehicle.Cabin.Door.Row2.DriverSide.IsOpen", False),
        ("Vehicle.Cabin.Door.Row2.PassengerSide.IsOpen", False),
        ("Vehicle.Body.Trunk.Rear.IsOpen", False),
        ("Vehicle.Powertrain.TractionBattery.StateOfCharge.Displayed", 75.0),
    ]
    assert all(d["time"].endswith("Z") and len(d["time"]) == 24 for d in lines)
    counters = json.loads(err.strip().splitlines()[-1])["counters"]
    assert (counters["frames_received"], counters["samples_emitted"]) == (2, 6)
