"""Long fuzz campaigns: schemathesis on the API and hypothesis on ``Ingestor.handle``.

The normal suite runs both with a bounded budget (tests/security/test_openapi_schemathesis.py,
tests/security/test_fuzz_ingest.py); this runs the same tests with a larger one and
reports the time taken. Rerun:

    .venv/bin/python bench/fuzz_bench.py [--api-examples 200] [--ingest-examples 5000]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(test: str, env_name: str, examples: int) -> tuple[int, float]:
    started = time.monotonic()
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"tests/security/{test}"],
        cwd=ROOT,
        env={**os.environ, env_name: str(examples)},
    )
    return code, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--api-examples", type=int, default=200, help="schemathesis examples per operation")
    parser.add_argument("--ingest-examples", type=int, default=5000, help="hypothesis examples per ingest test")
    args = parser.parse_args()
    results = {
        f"schemathesis, {args.api_examples} examples per operation x 5 callers": run(
            "test_openapi_schemathesis.py", "LIENWATCH_API_EXAMPLES", args.api_examples
        ),
        f"Ingestor.handle fuzz, {args.ingest_examples} examples per test": run(
            "test_fuzz_ingest.py", "LIENWATCH_FUZZ_EXAMPLES", args.ingest_examples
        ),
    }
    for name, (code, seconds) in results.items():
        print(f"{name}: {'PASS' if code == 0 else 'FAIL'} in {seconds:.0f} s")
    return max(code for code, _ in results.values())


if __name__ == "__main__":
    sys.exit(main())
