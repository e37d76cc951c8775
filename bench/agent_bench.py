"""Resource cost of the whole edge agent at the reference load, beside the bare input drivers.

Reference load (a busy car): ``lienwatch sim load --can-link PATH --fps 2000
--mapped-share 0.05 --gnss-link PATH --gnss-hz 10`` in its own process: 2,000 CAN frames/s
over SLCAN on a pseudo-terminal (5% of them DBC messages the signal map knows) and a 10 Hz
NMEA receiver on another pseudo-terminal.

Measured in one run, each in its own process fed by its own simulator:

1. the agent: ``lienwatch agent run`` (GNSS source, CAN source, rules engine with the sample
   markets and regions, batcher, signing, SQLite outbox, MQTT to a private Mosquitto);
2. the baseline: the bare input drivers at the same load: a pyserial ``readline()`` loop on
   the NMEA link (thread) and a python-can ``slcan`` ``recv()`` loop on the CAN link.

Figures: CPU share of one core (utime+stime from /proc over a window after warm-up), peak
RSS (VmHWM), batches/s received by a subscriber on the broker, and the agent/baseline CPU
ratio. The machine may be shared: the ratio, measured side by side, is the figure to watch.

Run: .venv/bin/python bench/agent_bench.py [--seconds 20] [--warmup 4] [--batch-age 5]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from firmware_sim.rig import Mosquitto  # noqa: E402
from protocol.cli import key_files as keys  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEVICE = "bench-car"

BARE_DRIVERS = r"""
import sys, threading, can, serial
gnss_link, can_link = sys.argv[1], sys.argv[2]
counts = {"lines": 0, "frames": 0}
stop = threading.Event()

def gnss():
    port = serial.serial_for_url(gnss_link, baudrate=9600, timeout=0.5)
    while not stop.is_set():
        if port.readline():
            counts["lines"] += 1

threading.Thread(target=gnss, daemon=True).start()
bus = can.Bus(interface="slcan", channel=can_link, bitrate=500000, sleep_after_open=0)
try:
    while True:
        try:
            msg = bus.recv(timeout=0.5)
        except can.CanOperationError:
            break
        if msg is not None:
            counts["frames"] += 1
except KeyboardInterrupt:
    pass
finally:
    stop.set()
    print(counts, flush=True)
"""


@dataclass
class Figures:
    name: str
    cpu_share: float
    peak_rss_mib: float
    rss_mib: float
    batches_per_s: float
    window_s: float


def proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (all threads)


def proc_memory_mib(pid: int) -> tuple[float, float]:
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(status["VmHWM"].split()[0]) / 1024, int(status["VmRSS"].split()[0]) / 1024


def start_load(workdir: Path, seconds: float) -> tuple[subprocess.Popen[str], Path, Path]:
    can_link, gnss_link = workdir / "can.pty", workdir / "gnss.pty"
    command = [
        sys.executable, "-m", "firmware_sim", "load", "--can-link", str(can_link), "--fps", "2000",
        "--mapped-share", "0.05", "--gnss-link", str(gnss_link), "--gnss-hz", "10",
        "--seconds", str(seconds), "--open-timeout", "60",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not (can_link.exists() and gnss_link.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise SystemExit(f"lienwatch sim load did not create its links: exit {proc.returncode}\n{out}\n{err}")
        time.sleep(0.02)
    return proc, can_link, gnss_link


def finish_load(proc: subprocess.Popen[str]) -> dict[str, object]:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    reports = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    return reports[-1] if reports else {"error": f"no report (exit {proc.returncode}): {err[-500:]}"}


class BatchCounter:
    def __init__(self, port: int) -> None:
        self.count = 0
        self.bytes = 0
        self._lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bench-counter", protocol=mqtt.MQTTv5)
        self.last_state: bytes | None = None
        self.client.on_connect = lambda c, *_: c.subscribe([(f"lw/v1/{DEVICE}/batch", 1), (f"lw/v1/{DEVICE}/state", 1)])
        self.client.on_subscribe = lambda *_: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not ready.wait(20):
            raise SystemExit("bench subscriber could not subscribe")

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/state"):
            self.last_state = bytes(msg.payload)
            return
        with self._lock:
            self.count += 1
            self.bytes += len(msg.payload)

    def snapshot(self) -> tuple[int, int]:
        with self._lock:
            return self.count, self.bytes

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure(name: str, proc: subprocess.Popen[str], warmup: float, seconds: float,
            counter: BatchCounter | None) -> Figures:  # fmt: skip
    time.sleep(warmup)
    if proc.poll() is not None:
        raise SystemExit(f"{name} exited early ({proc.returncode}): {proc.communicate()[1][-3000:]}")
    cpu0, wall0 = proc_cpu_seconds(proc.pid), time.monotonic()
    batches0 = counter.snapshot()[0] if counter else 0
    time.sleep(seconds)
    cpu1, wall1 = proc_cpu_seconds(proc.pid), time.monotonic()
    batches1 = counter.snapshot()[0] if counter else 0
    peak, rss = proc_memory_mib(proc.pid)
    window = wall1 - wall0
    return Figures(name, (cpu1 - cpu0) / window, peak, rss, (batches1 - batches0) / window, window)


def final_counters(counter: BatchCounter, public_key_path: Path) -> dict[str, int]:
    """Counters from the agent's signed offline state message (published at shutdown)."""
    from protocol import open_state

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if counter.last_state is not None:
            public = {DEVICE: keys.load_public_key(public_key_path)}
            state = open_state(counter.last_state, f"lw/v1/{DEVICE}/state", public)
            if not state.online:
                return dict(state.counters)
        time.sleep(0.05)
    return {}


def write_config(workdir: Path, port: int, can_link: Path, gnss_link: Path, batch_age: float) -> Path:
    keys.generate(workdir / "keys", DEVICE)
    data = ROOT / "edge" / "data"
    config = workdir / "agent.toml"
    config.write_text(
        f"""
[device]
id = "{DEVICE}"
key_file = "keys/{DEVICE}.key"
log_format = "kv"
[gnss]
url = "{gnss_link}"
[can]
interface = "slcan"
channel = "{can_link}"
bitrate = 500000
dbc = ["{data / 'generic_car.dbc'}"]
signal_map = "{data / 'generic_car_map.toml'}"
bus_options = {{ sleep_after_open = 0 }}
[rules]
markets_file = "{data / 'markets.sample.toml'}"
regions_file = "{data / 'regions.sample.toml'}"
[batch]
max_age_s = {batch_age}
max_age_active_s = {batch_age}
[mqtt]
port = {port}
"""
    )
    return config


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err or ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measurement window per process (s)")
    parser.add_argument("--warmup", type=float, default=4.0, help="time after start before measuring (s)")
    parser.add_argument("--batch-age", type=float, default=5.0, help="[batch] max_age_s for the agent (s)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="lw-agent-bench-"))
    load_seconds = args.warmup + args.seconds + 3
    results: list[Figures] = []
    loads: dict[str, dict[str, object]] = {}
    (workdir / "broker").mkdir()
    broker = Mosquitto(workdir=workdir / "broker")
    broker.start()
    counter = BatchCounter(broker.port)
    try:
        # 1. the whole agent
        (workdir / "agent-run").mkdir()
        load, can_link, gnss_link = start_load(workdir / "agent-run", load_seconds)
        config = write_config(workdir, broker.port, can_link, gnss_link, args.batch_age)
        agent = subprocess.Popen(
            [sys.executable, "-m", "edge", "agent", "run", "--config", str(config), "--log-level", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            results.append(measure("agent (lienwatch agent run)", agent, args.warmup, args.seconds, counter))
        finally:
            err = stop(agent)
            loads["agent"] = finish_load(load)
        if agent.returncode not in (0, -signal.SIGTERM):
            print(f"agent exited with {agent.returncode}:\n{err[-3000:]}", file=sys.stderr)
        agent_counters = final_counters(counter, workdir / "keys" / f"{DEVICE}.pub")
        # 2. the bare input drivers
        (workdir / "bare-run").mkdir()
        load, can_link, gnss_link = start_load(workdir / "bare-run", load_seconds)
        bare = subprocess.Popen(
            [sys.executable, "-c", BARE_DRIVERS, str(gnss_link), str(can_link)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        try:
            results.append(measure("bare drivers (pyserial readline + slcan recv)", bare, args.warmup, args.seconds,
                                   None))  # fmt: skip
        finally:
            stop(bare, signal.SIGINT)
            loads["bare"] = finish_load(load)
    finally:
        counter.close()
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)

    print("== LienWatch edge agent at the reference load "
          "(sim load --fps 2000 --mapped-share 0.05 --gnss-hz 10)")  # fmt: skip
    print(f"{'process':<48} {'CPU (1 core)':>12} {'peak RSS':>10} {'RSS':>9} {'batches/s':>10}")
    for f in results:
        print(f"{f.name:<48} {f.cpu_share:>11.1%} {f.peak_rss_mib:>7.1f} MiB {f.rss_mib:>5.1f} MiB "
              f"{f.batches_per_s:>10.2f}")  # fmt: skip
    if len(results) == 2 and results[1].cpu_share > 0:
        print(f"agent / bare drivers CPU ratio: {results[0].cpu_share / results[1].cpu_share:.2f}x; "
              f"RSS ratio: {results[0].peak_rss_mib / results[1].peak_rss_mib:.2f}x")  # fmt: skip
    wanted = ("records_in", "gnss_records", "can_records", "alerts", "batches_stored", "batches_acked",
              "queue_full_drops", "source_errors", "engine_errors")  # fmt: skip
    print("agent counters at shutdown: " + json.dumps({k: agent_counters.get(k) for k in wanted}))
    for name, report in loads.items():
        print(f"load generator report ({name}): {json.dumps(report)}")
    fps = [loads.get(k, {}).get("fps_achieved") for k in ("agent", "bare")]
    if len(results) == 2 and all(isinstance(x, (int, float)) and x > 0 for x in fps):
        per = [f.cpu_share / (float(x) / 1000) for f, x in zip(results, fps, strict=True)]  # type: ignore[arg-type]
        print(f"CPU per 1,000 frames/s actually sent: agent {per[0]:.1%}, bare drivers {per[1]:.1%} "
              f"(ratio {per[0] / per[1]:.2f}x)")  # fmt: skip
    print(f"window {args.seconds:g} s after {args.warmup:g} s warm-up; batch max_age_s = {args.batch_age:g}")
    print(f"rerun: .venv/bin/python bench/agent_bench.py --seconds {args.seconds:g} --warmup {args.warmup:g} "
          f"--batch-age {args.batch_age:g}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
