"""Console worklist over 100,000 loans: first page and searches, server time, beside a bare SELECT.

Measured in one run on one SQLite file with ``--loans`` loans (default 100,000; a fifth of
them assessed above normal, with repayment facts like the risk engine stores):

1. the worklist query alone (``collector.loans.queries.worklist``): the first page (50 rows,
   by expected loss, the default; and by level, then overdue amount, then days past due), a
   level filter, a tier filter, and searches by loan id, VIN prefix and device id;
2. the same through the whole app in this process (``GET /console/worklist`` with a signed-in
   session: session lookup, query, audit row, template): the server time of a page;
3. the baseline: a bare ``SELECT`` of exactly the rows each query returned (by primary key,
   no ordering, no filter), in the same run.

p50 / p95 in milliseconds over ``--repeat`` runs each (after one warm-up). Rerun:

    .venv/bin/python bench/console_bench.py [--loans 100000] [--repeat 40]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from collector.api.app import create_app
from collector.console.web import router as console_router
from collector.loans.queries import WorklistFilter, worklist
from collector.settings import Settings
from collector.storage.database import create_engine, migrate
from collector.storage.people import add_user
from collector.storage.tables import LoanRecord, RiskStateRecord

VIN_CHARS = "ABCDEFGHJKLMNPRSTUVWXYZ0123456789"
LEVELS = (("normal", "monitor"), ("watch", "call"), ("high", "on_site_check"), ("critical", "recovery"))
NOW = 1_796_180_000_000


def populate(engine: sa.Engine, count: int) -> None:
    """``count`` loans and risk states (80 % normal, 15 % watch, 4 % high, 1 % critical)."""
    rng = random.Random(7)
    loans, states = [], []
    for i in range(count):
        loan_id = f"L-{i:07d}"
        vin = "".join(rng.choice(VIN_CHARS) for _ in range(17))
        loans.append({"loan_id": loan_id, "device_id": f"tbox-{i:07d}", "vin": vin, "borrower_ref": f"B-{i:07x}",
                      "principal_cents": rng.randrange(3_000_000, 30_000_000), "created_ms": NOW})
        roll = rng.random()
        level, step = LEVELS[0 if roll < 0.80 else 1 if roll < 0.95 else 2 if roll < 0.99 else 3]
        late = 0 if level == "normal" else rng.randrange(1, 6)
        facts = {"days_past_due": late * 30, "consecutive_late": late, "total_overdue": f"{late * 3500}.00",
                 "overdue": late > 0}
        reasons = [] if level == "normal" else [{"code": "past_due" if late else "overdue", "level": level,
                                                  "next_step": step, "alert_episode": None, "evidence": {}}]
        score = min(0.99, 0.01 + 0.2 * late * rng.random())
        states.append({"loan_id": loan_id, "level": level, "next_step": step, "reasons": reasons, "facts": facts,
                       "evaluated_ms": NOW, "changed_ms": NOW - rng.randrange(0, 86_400_000), "score": score,
                       "expected_loss_cents": int(score * 0.5 * loans[-1]["principal_cents"]),
                       "tier": "risk" if late else "on_time_12m"})
    with engine.begin() as conn:
        for start in range(0, count, 10_000):
            conn.execute(sa.insert(LoanRecord.__table__), loans[start : start + 10_000])
            conn.execute(sa.insert(RiskStateRecord.__table__), states[start : start + 10_000])


def timed(fn: Callable[[], Any], repeat: int) -> tuple[list[float], Any]:
    fn()
    samples, result = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples, result


def p95(samples: list[float]) -> float:
    return sorted(samples)[max(0, round(0.95 * len(samples)) - 1)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loans", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=40)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        migrate(engine)
        t0 = time.perf_counter()
        populate(engine, args.loans)
        with Session(engine) as session:
            add_user(session, username="bench", display_name="Bench", role="risk_analyst",
                     password="bench password 1", now_ms=NOW)
            session.commit()
            probe = session.execute(sa.select(LoanRecord.loan_id, LoanRecord.vin, LoanRecord.device_id)
                                    .where(LoanRecord.loan_id == f"L-{args.loans * 3 // 4:07d}")).one()
        print(f"{args.loans:,} loans populated in {time.perf_counter() - t0:.1f} s; cores: {os.cpu_count()}; "
              f"load: {os.getloadavg()[0]:.2f}")
        cases = {
            "first page (all loans)": (WorklistFilter(), {}),  # by expected loss, the default
            "first page by severity": (WorklistFilter(sort="severity"), {"sort": "severity"}),
            "tier = risk": (WorklistFilter(tier="risk"), {"tier": "risk"}),
            "level = high": (WorklistFilter(level="high"), {"level": "high"}),
            "search loan id": (WorklistFilter(search=probe.loan_id), {"q": probe.loan_id}),
            "search VIN prefix (8)": (WorklistFilter(search=probe.vin[:8]), {"q": probe.vin[:8]}),
            "search device id": (WorklistFilter(search=probe.device_id), {"q": probe.device_id}),
        }
        app = create_app(Settings(), engine=engine, routers=[console_router], clock_ms=lambda: NOW)
        rows_out: dict[str, Any] = {}
        with TestClient(app, base_url="http://127.0.0.1") as client:
            form = client.get("/console/sign-in").text
            token = form.split('name="login_token" value="', 1)[1].split('"', 1)[0]
            client.post("/console/sign-in", data={"login_token": token, "username": "bench",
                                                  "password": "bench password 1"})
            print(f"\n{'worklist':<26} {'rows':>5} {'query p50':>10} {'query p95':>10} {'page p95':>9} "
                  f"{'bare SELECT p95':>16} {'query/bare':>11}")
            for name, (filters, params) in cases.items():
                with Session(engine) as session:
                    query_ms, page = timed(lambda f=filters, s=session: worklist(s, f, page=1, size=50), args.repeat)
                    ids = [r["loan_id"] for r in page.rows]
                    bare = (sa.select(LoanRecord.loan_id, LoanRecord.device_id, LoanRecord.vin, LoanRecord.borrower_ref,
                                      RiskStateRecord.level, RiskStateRecord.next_step, RiskStateRecord.reasons,
                                      RiskStateRecord.facts, RiskStateRecord.changed_ms)
                            .outerjoin(RiskStateRecord, RiskStateRecord.loan_id == LoanRecord.loan_id)
                            .where(LoanRecord.loan_id.in_(ids)))
                    bare_ms, bare_rows = timed(lambda b=bare, s=session: s.execute(b).all(), args.repeat)
                    assert len(bare_rows) == len(ids)
                page_ms, response = timed(lambda p=params: client.get("/console/worklist", params=p), args.repeat)
                assert response.status_code == 200
                ratio = p95(query_ms) / max(p95(bare_ms), 1e-6)
                print(f"{name:<26} {len(ids):>5} {statistics.median(query_ms):>10.2f} {p95(query_ms):>10.2f} "
                      f"{p95(page_ms):>9.2f} {p95(bare_ms):>16.2f} {ratio:>10.1f}x")
                rows_out[name] = {"rows": len(ids), "query_p95_ms": round(p95(query_ms), 2),
                                  "page_p95_ms": round(p95(page_ms), 2), "bare_select_p95_ms": round(p95(bare_ms), 2)}
        engine.dispose()
    print("\n" + json.dumps({"loans": args.loans, "repeat": args.repeat, "results": rows_out}))
    print(f"rerun: .venv/bin/python bench/console_bench.py --loans {args.loans} --repeat {args.repeat}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
