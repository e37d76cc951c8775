"""Can the receipt job keep up with a fleet? Device merges per second of one receipt round.

One receipt round (collector.jobs.receipts.ReceiptPublisher.run_once, no broker: the signed
receipts stay in ``unsent``) merges, for every device that had a commit since the last
round, its new seqs into its ``seq_ledgers`` row and signs a receipt. At 120,000 vehicles
reporting once a minute that is 2,000 devices per one-second round.

Measured in one run, per database:

1. baseline: signing the same number of receipts alone (Ed25519 + CBOR, no database);
2. the first round for N devices (rows created, seeded from ``batches``: empty here);
3. steady state: the next rounds, one new seq per device (rows read FOR UPDATE, merged,
   written, receipts signed), ``--rounds`` of them.

Printed: devices merged per second and the ratio to the signing baseline. Rerun:

    .venv/bin/python bench/receipts_bench.py [--devices 2000] [--rounds 5] [--no-postgres]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collector.jobs.receipts import ReceiptPublisher
from collector.storage.database import create_engine, migrate
from firmware_sim.rig import Postgres
from protocol import Receipt, receipt_topic, seal_receipt

KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"bench-collector").digest())
T0 = 1_700_000_000_000


def sign_only(devices: list[str]) -> float:
    start = time.perf_counter()
    for i, device_id in enumerate(devices):
        seal_receipt(Receipt(device_id, 1, 100, ((102, 110),), T0, T0 + i), KEY, receipt_topic(device_id))
    return len(devices) / (time.perf_counter() - start)


def rounds(url: str, devices: list[str], count: int) -> tuple[float, float]:
    engine = create_engine(url)
    migrate(engine)
    job = ReceiptPublisher(engine, KEY, None, clock_ms=lambda: T0)
    job.committed([(d, 1) for d in devices])
    start = time.perf_counter()
    job.run_once()
    first = len(devices) / (time.perf_counter() - start)
    elapsed = 0.0
    for seq in range(2, count + 2):
        job.committed([(d, seq) for d in devices])
        start = time.perf_counter()
        job.run_once()
        elapsed += time.perf_counter() - start
    engine.dispose()
    return first, len(devices) * count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    devices = [f"car-{i:06d}" for i in range(args.devices)]
    baseline = sign_only(devices)
    print(f"signing receipts alone: {baseline:,.0f}/s")
    targets = [("sqlite", None)] + ([] if args.no_postgres else [("postgresql", Postgres())])
    with tempfile.TemporaryDirectory() as tmp:
        for name, server in targets:
            if server is not None:
                server.start()
            try:
                url = server.url if server is not None else f"sqlite:///{Path(tmp) / 'bench.db'}"
                first, steady = rounds(url, devices, args.rounds)
            finally:
                if server is not None:
                    server.stop()
            print(f"{name:<10} first round {first:,.0f} devices/s; steady {steady:,.0f} devices/s "
                  f"({steady / baseline:.2f} of signing alone)")  # fmt: skip
    print(f"rerun: .venv/bin/python bench/receipts_bench.py --devices {args.devices} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
