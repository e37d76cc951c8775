"""Edge input throughput and CPU cost: NMEA decoding, CAN decoding, the CAN source over SLCAN.

Measures, in one run:

1. NMEA sentences/s through ``edge.gnss.NmeaDecoder`` (bytes in, epochs out), beside a bare
   ``pynmea2.parse(line, check=True)`` loop over the same sentences (baseline).
2. CAN frames/s through ``edge.canbus.SignalDecoder.decode`` in-process, for a stream of
   mapped sample frames and for a bus-like mix (5% mapped, the rest unknown ids), beside a
   bare cantools ``Message.decode`` loop over the mapped frames (baseline).
3. CPU share of one core for the CAN source (``CanSource.read`` over python-can ``slcan``)
   at 500, 2,000 and 4,000 frames/s, fed by the simulator's ``lienwatch sim load`` in
   another process over a pseudo-terminal, beside a bare python-can ``recv()`` loop at the
   same rates (baseline), and the frames lost. 4,000 frames/s is about a saturated
   500 kbit/s bus. The load generator numbers its unknown-id frames, so the bare loop can
   count gaps; for the CAN source (whose bus filter drops unknown ids) losses are
   mapped frames sent minus frames received.

Timing uses ``time.perf_counter`` (throughput) and ``time.process_time`` (CPU of this
process only: the load generator runs in its own process). The machine may be shared:
compare the ratios, which are measured side by side in the same run.

Run: .venv/bin/python bench/edge_inputs_bench.py [--seconds 4] [--rates 500,2000,4000]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import can
import pynmea2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from edge.canbus import SAMPLE_DBC, SAMPLE_MAP, CanSource, SignalDecoder, load_dbc  # noqa: E402
from edge.gnss import NmeaDecoder  # noqa: E402

T0 = 1_714_550_400.0
NMEA_SAMPLE = ROOT / "tests" / "data" / "nmea" / "ublox_gn_multi.nmea"


def rate(fn: Callable[[], int], min_seconds: float = 1.0) -> tuple[float, int]:
    """Run ``fn`` (returns items done) until ``min_seconds`` pass; items per second."""
    done, start = 0, time.perf_counter()
    while True:
        done += fn()
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return done / elapsed, done


# --- 1. NMEA ----------------------------------------------------------------------------


def nmea_lines() -> list[bytes]:
    if NMEA_SAMPLE.exists():
        lines = [ln for ln in NMEA_SAMPLE.read_bytes().splitlines() if ln.startswith(b"$")]
        if lines:
            return lines
    from firmware_sim.gnss import GnssReceiver, Truth  # the simulator's receiver as a fallback

    receiver = GnssReceiver(seed=1, noise_m=1.5)
    out: list[bytes] = []
    for i in range(200):
        out += receiver.sentences(int(T0 * 1000) + i * 1000, Truth(31.24, 121.4 + i * 1e-4, 4.0, 50.0, 90.0))
    return [ln.strip() for chunk in out for ln in chunk.splitlines() if ln.strip()]


def bench_nmea(seconds: float) -> dict[str, float]:
    lines = nmea_lines()
    blob = b"\r\n".join(lines) + b"\r\n"
    chunks = [blob[i : i + 4096] for i in range(0, len(blob), 4096)]
    texts = [ln.decode("ascii", "replace") for ln in lines]

    def decoder_pass() -> int:
        decoder = NmeaDecoder()
        for chunk in chunks:
            decoder.feed(chunk)
        decoder.flush()
        return len(lines)

    def pynmea2_pass() -> int:
        for text in texts:
            with contextlib.suppress(pynmea2.ParseError):
                pynmea2.parse(text, check=True)
        return len(texts)

    ours, _ = rate(decoder_pass, seconds)
    base, _ = rate(pynmea2_pass, seconds)
    return {"sentences": len(lines), "decoder_per_s": ours, "pynmea2_per_s": base}


# --- 2. CAN in-process ------------------------------------------------------------------


def can_frames() -> tuple[list[can.Message], list[can.Message]]:
    """Mapped sample frames with changing values, and a 5%-mapped bus-like mix."""
    db = load_dbc(SAMPLE_DBC).database
    mapped_names = ["POWER_STATE", "VEHICLE_SPEED", "SEATS_DOORS", "BATTERY_12V", "ODOMETER", "EV_BATTERY"]
    mapped: list[can.Message] = []
    for i in range(600):
        message = db.get_message_by_name(mapped_names[i % len(mapped_names)])
        changing: dict[str, float] = {
            "IGNITION_STATE": 2, "SPEED_KPH": 40 + (i % 50) * 0.3, "DOOR_OPEN_FL": (i // 60) % 2,
            "BATTERY_VOLTAGE": 12.0 + (i % 7) * 0.1, "ODOMETER_KM": 1000 + i * 0.1,
            "SOC_DISPLAYED": 80 - (i % 10) * 0.5,
        }
        values = {s.name: changing.get(s.name, 0) for s in message.signals}
        data = message.encode(values, strict=False)
        mapped.append(can.Message(arbitration_id=message.frame_id, data=data, timestamp=T0 + i * 0.01,
                                  is_extended_id=False))
    mix: list[can.Message] = []
    for i in range(2000):
        if i % 20 == 0:
            src = mapped[(i // 20) % len(mapped)]
            mix.append(can.Message(arbitration_id=src.arbitration_id, data=src.data, timestamp=T0 + i * 0.00025,
                                   is_extended_id=False))
        else:
            mix.append(can.Message(arbitration_id=0x500 + i % 32, data=i.to_bytes(4, "big") + b"\x00\x5a\xa5\xff",
                                   timestamp=T0 + i * 0.00025, is_extended_id=False))
    return mapped, mix


def bench_can_decode(seconds: float) -> dict[str, float]:
    mapped, mix = can_frames()
    db = load_dbc(SAMPLE_DBC).database
    by_id = {m.frame_id: m for m in db.messages}

    decoder = SignalDecoder.from_files([SAMPLE_DBC], SAMPLE_MAP)

    def decoder_pass(frames: list[can.Message]) -> Callable[[], int]:
        def run() -> int:
            decoder.reset()  # emission state from the previous pass must not suppress everything
            for msg in frames:
                decoder.decode(msg)
            return len(frames)

        return run

    def cantools_pass() -> int:
        for msg in mapped:
            by_id[msg.arbitration_id].decode(bytes(msg.data))
        return len(mapped)

    ours_mapped, _ = rate(decoder_pass(mapped), seconds)
    ours_mix, _ = rate(decoder_pass(mix), seconds)
    base, _ = rate(cantools_pass, seconds)
    return {"decoder_mapped_per_s": ours_mapped, "decoder_mix_per_s": ours_mix, "cantools_per_s": base}


# --- 3. CAN source over SLCAN, fed by `lienwatch sim load` ------------------------------


@dataclass
class SlcanRun:
    mode: str
    fps: int
    cpu_share: float
    frames_received: int
    lost: int
    feeder: dict[str, object]


def start_feeder(link: Path, fps: int, seconds: float) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "firmware_sim", "load", "--can-link", str(link), "--fps", str(fps),
               "--seconds", str(seconds), "--open-timeout", "30"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + 30
    while not link.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            out, err = proc.communicate()
            raise SystemExit(f"lienwatch sim load did not create {link}: exit {proc.returncode}\n{out}\n{err}")
        time.sleep(0.02)
    return proc


def finish_feeder(proc: subprocess.Popen[str]) -> dict[str, object]:
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    reports = [json.loads(ln) for ln in out.splitlines() if ln.startswith("{")]
    if not reports:
        raise SystemExit(f"lienwatch sim load printed no report (exit {proc.returncode}):\n{out}\n{err}")
    report: dict[str, object] = reports[-1]
    return report


class Window:
    """CPU and wall time over [warmup, warmup + length) after the reader opened the bus."""

    def __init__(self, warmup: float, length: float) -> None:
        self.opened = time.monotonic()
        self.start_at = self.opened + warmup
        self.end_at = self.start_at + length
        self.cpu0 = self.wall0 = self.cpu = self.wall = 0.0
        self.state = "warmup"

    def tick(self) -> None:
        now = time.monotonic()
        if self.state == "warmup" and now >= self.start_at:
            self.cpu0, self.wall0, self.state = time.process_time(), now, "measuring"
        elif self.state == "measuring" and now >= self.end_at:
            self.cpu, self.wall, self.state = time.process_time() - self.cpu0, now - self.wall0, "done"

    @property
    def share(self) -> float:
        return self.cpu / self.wall if self.wall else float("nan")


def run_bare(link: Path, fps: int, seconds: float) -> SlcanRun:
    proc = start_feeder(link, fps, seconds + 1.5)
    bus = can.Bus(interface="slcan", channel=str(link), bitrate=500_000, sleep_after_open=0)
    window = Window(0.5, seconds)
    received = 0
    seqs: list[int] = []
    try:
        while True:
            try:
                msg = bus.recv(timeout=0.2)
            except can.CanOperationError:
                break  # the feeder finished and removed the pty
            window.tick()
            if msg is None:
                if proc.poll() is not None:
                    break
                continue
            received += 1
            if msg.arbitration_id not in DBC_IDS:  # the generator numbers its unknown-id frames
                seqs.append(int.from_bytes(bytes(msg.data[:4]), "big"))
    finally:
        with contextlib.suppress(can.CanError):
            bus.shutdown()
    report = finish_feeder(proc)
    gaps = (max(seqs) - min(seqs) + 1 - len(set(seqs))) if seqs else 0
    return SlcanRun("bare recv()", fps, window.share, received, gaps, report)


def run_source(link: Path, fps: int, seconds: float) -> SlcanRun:
    proc = start_feeder(link, fps, seconds + 1.5)
    decoder = SignalDecoder.from_files([SAMPLE_DBC], SAMPLE_MAP)
    source = CanSource("slcan", str(link), bitrate=500_000, decoder=decoder)
    window = Window(0.5, seconds)
    try:
        while proc.poll() is None or source.is_open:
            source.read(timeout=0.2)
            window.tick()
            if proc.poll() is not None and source.counters.bus_errors:
                break
    finally:
        source.close()
    report = finish_feeder(proc)
    received = source.counters.frames_received
    # The generator cycles through every DBC message in file order; the map uses all but
    # ENGINE_DATA, which the bus filter drops, so only the mapped ones are expected here.
    wanted = {frame_id for frame_id, _ in decoder.frame_ids}
    order = [m.frame_id for m in load_dbc(SAMPLE_DBC).database.messages]
    dbc_sent = int(str(report.get("frames_mapped", 0)))
    expected = sum(1 for i in range(dbc_sent) if order[i % len(order)] in wanted)
    return SlcanRun("CanSource.read()", fps, window.share, received, expected - received, report)


DBC_IDS = {m.frame_id for m in load_dbc(SAMPLE_DBC).database.messages}


def bench_slcan(rates: list[int], seconds: float) -> list[SlcanRun]:
    workdir = Path(tempfile.mkdtemp(prefix="lw-bench-can-"))
    runs: list[SlcanRun] = []
    try:
        for fps in rates:
            for runner in (run_bare, run_source):
                link = workdir / f"can-{fps}-{runner.__name__}"
                runs.append(runner(link, fps, seconds))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measuring window per SLCAN run (default 4)")
    parser.add_argument("--rates", default="500,2000,4000", help="SLCAN frame rates (default 500,2000,4000)")
    parser.add_argument("--decode-seconds", type=float, default=1.5, help="time per in-process throughput figure")
    parser.add_argument("--skip-slcan", action="store_true", help="in-process figures only")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",") if r]
    rerun = " ".join(["rerun:", ".venv/bin/python bench/edge_inputs_bench.py", *(argv or sys.argv[1:])])
    logging.getLogger("edge").setLevel(logging.ERROR)  # dropped-frame warnings are expected here

    print("== NMEA decoding (in-process)")
    nmea = bench_nmea(args.decode_seconds)
    print(f"  edge.gnss.NmeaDecoder.feed: {nmea['decoder_per_s']:>10,.0f} sentences/s "
          f"({nmea['sentences']} distinct sentences from {NMEA_SAMPLE.name if NMEA_SAMPLE.exists() else 'simulator'})")
    print(f"  bare pynmea2.parse(check):  {nmea['pynmea2_per_s']:>10,.0f} sentences/s (baseline)")
    print(f"  ratio decoder / baseline:   {nmea['decoder_per_s'] / nmea['pynmea2_per_s']:.2f}")

    print("== CAN decoding (in-process)")
    dec = bench_can_decode(args.decode_seconds)
    print(f"  SignalDecoder, all mapped:  {dec['decoder_mapped_per_s']:>10,.0f} frames/s")
    print(f"  SignalDecoder, 5% mapped:   {dec['decoder_mix_per_s']:>10,.0f} frames/s (unfiltered bus-like mix)")
    print(f"  bare cantools decode:       {dec['cantools_per_s']:>10,.0f} frames/s (baseline, mapped frames)")
    print(f"  ratio decoder / baseline:   {dec['decoder_mapped_per_s'] / dec['cantools_per_s']:.2f} (mapped frames)")

    if not args.skip_slcan:
        print(f"== CAN source over SLCAN, fed by `lienwatch sim load` in another process ({args.seconds:g} s windows)")
        print(f"  {'fps':>6} {'reader':<18} {'CPU % of a core':>15} {'frames recv':>12} {'lost':>6} "
              f"{'feeder sent':>12} {'feeder dropped':>15}")
        runs = bench_slcan(rates, args.seconds)
        for run in runs:
            print(f"  {run.fps:>6} {run.mode:<18} {run.cpu_share * 100:>14.1f}% {run.frames_received:>12,} "
                  f"{run.lost:>6} {run.feeder.get('frames_sent', '?'):>12} {run.feeder.get('frames_dropped', '?'):>15}")
        for fps in rates:
            bare = next(r for r in runs if r.fps == fps and r.mode.startswith("bare"))
            ours = next(r for r in runs if r.fps == fps and not r.mode.startswith("bare"))
            print(f"  at {fps:>5} frames/s: CanSource / bare recv() CPU = {ours.cpu_share / bare.cpu_share:.2f}")
        print("  lost: bare = gaps in the generator's sequence numbers;")
        print("        CanSource = frames of mapped ids sent - frames received")
        print("  feeder dropped: frames the generator could not write because the pty was full (reader behind)")
        print("  (the CanSource's bus filter passes only the mapped 5%; python-can still reads every line)")
    print(rerun)
    return 0


if __name__ == "__main__":
    sys.exit(main())
