"""Seal/open throughput for a one-minute batch, beside raw Ed25519 in the same run.

A one-minute batch is 600 fixes (10 Hz), 600 CAN samples and 2 alerts
(``protocol.examples.minute_batch``). The baseline is the bare Ed25519 sign and verify
of the same Sig_structure bytes, so the ratios show what the CBOR encoding, the strict
decoder and the record validation cost on top of the cryptography, whatever the machine.

    .venv/bin/python bench/protocol_bench.py            # figures
    .venv/bin/python bench/protocol_bench.py --profile  # plus where open_batch spends its time
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from importlib.metadata import version

import protocol
from protocol import batch_topic, decode_batch, encode_batch, open_batch, seal_batch
from protocol.cose import decode_sign1, sig_structure
from protocol.examples import EXAMPLE_DEVICE, example_key, minute_batch


def calibrate(action: Callable[[], object], seconds: float) -> int:
    """How many calls of ``action`` take about ``seconds``."""
    action()  # warm up (caches, lazy imports)
    calls = 1
    while True:
        start = time.perf_counter()
        for _ in range(calls):
            action()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds / 4:
            return max(1, int(calls * seconds / elapsed))
        calls *= 2


def interleaved_rates(
    actions: dict[str, Callable[[], object]], seconds: float, repeats: int
) -> dict[str, tuple[float, float]]:
    """Best and median ops/s per action. Rounds of all actions alternate, so a busy
    machine slows the baseline and the protocol alike and the ratios stay meaningful."""
    calls = {name: calibrate(action, seconds) for name, action in actions.items()}
    rates: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(repeats):
        for name, action in actions.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                action()
            rates[name].append(calls[name] / (time.perf_counter() - start))
    return {name: (max(r), statistics.median(r)) for name, r in rates.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one timed round (default 0.5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds per figure; the best is reported")
    parser.add_argument("--profile", action="store_true", help="profile open_batch and print the top functions")
    args = parser.parse_args(argv)

    key = example_key()
    public = key.public_key()
    topic = batch_topic(EXAMPLE_DEVICE)
    keys = {EXAMPLE_DEVICE: public}
    batch = minute_batch()
    message = seal_batch(batch, key, topic)
    payload = encode_batch(batch)
    envelope = decode_sign1(message)
    to_be_signed = sig_structure(envelope.protected_bytes, payload, topic.encode())
    signature = key.sign(to_be_signed)
    assert open_batch(message, topic, keys).seq == batch.seq

    figures = interleaved_rates(
        {
            "ed25519 sign (baseline)": lambda: key.sign(to_be_signed),
            "ed25519 verify (baseline)": lambda: public.verify(signature, to_be_signed),
            "seal_batch": lambda: seal_batch(batch, key, topic),
            "open_batch": lambda: open_batch(message, topic, keys),
            "encode_batch (no crypto)": lambda: encode_batch(batch),
            "decode_batch (no crypto)": lambda: decode_batch(payload),
        },
        args.seconds,
        args.repeats,
    )

    versions = f"python {sys.version.split()[0]}, cbor2 {version('cbor2')}, cryptography {version('cryptography')}"
    print(f"{versions}, protocol schema v{protocol.SCHEMA_VERSION}")
    print(
        f"one-minute batch: {len(batch.fixes)} fixes, {len(batch.samples)} samples, {len(batch.alerts)} alerts -> "
        f"payload {len(payload)} B, sealed message {len(message)} B "
        f"({len(message) / len(batch.fixes):.1f} B per fix epoch)"
    )
    print(f"{'operation':<28}{'best ops/s':>12}{'median ops/s':>14}{'best ms/op':>12}")
    for name, (best, median) in figures.items():
        print(f"{name:<28}{best:>12,.0f}{median:>14,.0f}{1000 / best:>12.3f}")
    sign, verify = figures["ed25519 sign (baseline)"][0], figures["ed25519 verify (baseline)"][0]
    seal, opened = figures["seal_batch"][0], figures["open_batch"][0]
    print(f"ratio seal_batch / raw sign  : {seal / sign:.3f}  (raw sign is {sign / seal:.1f}x faster)")
    print(f"ratio open_batch / raw verify: {opened / verify:.3f}  (raw verify is {verify / opened:.1f}x faster)")
    print("rerun: .venv/bin/python bench/protocol_bench.py" + (" --profile" if args.profile else ""))

    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(200):
            open_batch(message, topic, keys)
        profiler.disable()
        print("\nopen_batch x200, top functions by own time:")
        pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(12)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
