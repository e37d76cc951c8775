"""What the HIL tests check, as plain functions over the chain's files (no pytest here).

How this works
--------------
* :func:`check_ledger` reads the collector's SQLite database directly (not its API) and
  answers "was anything lost or counted twice?" for one device: no duplicate ``(device,
  seq)``, no duplicate fix (same device and observation time), every batch's stored rows
  match the counts in its ledger entry, and every sequence number from 1 to the highest
  present is stored unless the agent said it never will be (``seq_skipped_from`` /
  ``seq_skipped`` in the first batch of a boot) or reported it evicted: the sum of the
  ``evicted_batches`` counters (plus ``evicted_acked_batches``: rows the broker had
  acknowledged, kept for a receipt, then evicted) must cover every unexplained gap, and the
  never-published ones may exceed them by at most the agent's in-flight window (a batch
  evicted while its PUBACK was lost to the outage did reach the broker: at-least-once cannot
  tell, so it is counted evicted *and* stored). When the agent announces its evicted seqs
  (``seq_evicted_{i}_from``/``_count``, docs/protocol.md section 13) it is checked per seq
  as well: every missing seq must be announced, an announced one may be stored only if the
  broker had acknowledged it before the eviction (at most ``evicted_acked_batches``, plus
  the in-flight window), and each announced seq is counted once: every batch evicted before
  its PUBACK is announced, and an acknowledged one only when its receipt showed it lost, so
  ``evicted_batches <= announced <= evicted_batches + evicted_acked_batches``. A refused
  announcement is a problem.
* :func:`agent_committed_high` reads the agent's outbox (after the agent stopped) for the
  highest sequence number it ever committed: the collector must end up with that one.
* :class:`ScenarioClock` maps scenario time to wall time from the simulator's ``clock``
  lines, so latency can be measured from the moment the simulated world reached a time.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from collector.ingest.seq_ledger import SeqLedger
from protocol import evicted_ranges
from protocol.errors import AnnouncementRefused

LEVELS = ("normal", "watch", "high", "critical")


@dataclass(frozen=True)
class LedgerReport:
    """The result of :func:`check_ledger`; ``problems`` is empty when nothing was lost or doubled."""

    batches: int
    max_seq: int
    fixes: int
    alerts: int
    skipped: frozenset[int]
    evicted_batches: int
    missing: tuple[int, ...]
    problems: tuple[str, ...] = field(default=())
    evicted_acked_batches: int = 0
    announced_evicted: frozenset[int] = frozenset()

    def summary(self) -> str:
        return (
            f"{self.batches} batches (max seq {self.max_seq}), {self.fixes} fixes, {self.alerts} alert rows, "
            f"{len(self.skipped)} seq announced skipped, {self.evicted_batches} reported evicted "
            f"(+{self.evicted_acked_batches} acknowledged), {len(self.announced_evicted)} seq announced evicted, "
            f"{len(self.missing)} gaps"
        )


def _connect(db_path: Path) -> sqlite3.Connection:
    # read-only, so a test can never change what it checks
    return sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)


def _seq(value: int) -> int:
    return value + 2**64 if value < 0 else value  # collector.storage.tables.UInt64


def ledger_rows(db_path: Path, device_id: str) -> list[tuple[int, dict[str, Any]]]:
    """``(seq, counters)`` of every stored batch of ``device_id``, by seq."""
    with _connect(db_path) as db:
        rows = db.execute("SELECT seq, counters FROM batches WHERE device_id = ? ORDER BY seq", (device_id,)).fetchall()
    return [(_seq(seq), json.loads(counters) if counters else {}) for seq, counters in rows]


def check_ledger(db_path: Path, device_id: str, *, expected_high: int | None = None) -> LedgerReport:
    """Nothing lost, nothing counted twice, for one device (see the module docstring).

    Args:
        db_path: the collector's SQLite file.
        device_id: the device to check.
        expected_high: the highest sequence number the agent committed; it must be stored.
    """
    problems: list[str] = []
    with _connect(db_path) as db:
        dup_seq = db.execute(
            "SELECT seq, COUNT(*) FROM batches WHERE device_id = ? GROUP BY seq HAVING COUNT(*) > 1", (device_id,)
        ).fetchall()
        if dup_seq:
            problems.append(f"duplicate (device, seq) in the ledger: {dup_seq[:10]}")
        dup_fix = db.execute(
            "SELECT time_ms, COUNT(*) FROM fixes WHERE device_id = ? GROUP BY time_ms HAVING COUNT(*) > 1",
            (device_id,),
        ).fetchall()
        if dup_fix:
            problems.append(f"{len(dup_fix)} fix times stored more than once, e.g. {dup_fix[:5]}")
        dup_alert = db.execute(
            "SELECT rule, episode, state, COUNT(*) FROM alerts WHERE device_id = ? "
            "GROUP BY rule, episode, state HAVING COUNT(*) > 1",
            (device_id,),
        ).fetchall()
        if dup_alert:
            problems.append(f"alert records stored more than once: {dup_alert[:5]}")
        mismatched = db.execute(
            """
            SELECT b.seq, b.fix_count, b.sample_count, b.alert_count,
                   (SELECT COUNT(*) FROM fixes f WHERE f.batch_id = b.id),
                   (SELECT COUNT(*) FROM samples s WHERE s.batch_id = b.id),
                   (SELECT COUNT(*) FROM alerts a WHERE a.batch_id = b.id)
            FROM batches b WHERE b.device_id = ?
            """,
            (device_id,),
        ).fetchall()
        bad = [row for row in mismatched if row[1:4] != row[4:7]]
        if bad:
            problems.append(f"stored rows differ from the ledger counts (seq, counts, rows): {bad[:5]}")
        fixes = db.execute("SELECT COUNT(*) FROM fixes WHERE device_id = ?", (device_id,)).fetchone()[0]
        alerts = db.execute("SELECT COUNT(*) FROM alerts WHERE device_id = ?", (device_id,)).fetchone()[0]
    rows = ledger_rows(db_path, device_id)
    seqs = {seq for seq, _ in rows}
    skipped: set[int] = set()
    evicted = evicted_acked = 0
    announced: set[int] = set()
    for seq, counters in rows:
        if counters.get("seq_file_lost"):
            problems.append(f"batch {seq} reports seq_file_lost (the sequence file was lost)")
        first, count = counters.get("seq_skipped_from"), counters.get("seq_skipped")
        if isinstance(first, int) and isinstance(count, int) and count > 0:
            if count > 1_000_000:
                problems.append(f"batch {seq} announces an implausible skip of {count} numbers from {first}")
            else:
                skipped.update(range(first, first + count))
        evicted += int(counters.get("evicted_batches", 0) or 0)
        evicted_acked += int(counters.get("evicted_acked_batches", 0) or 0)
        try:
            for first, last in evicted_ranges(counters, seq):
                announced.update(range(first, last + 1))
        except AnnouncementRefused as exc:
            problems.append(f"batch {seq}: evicted-seq announcement refused: {exc}")
    max_seq = max(seqs, default=0)
    if skipped & seqs:
        problems.append(f"numbers announced as skipped were stored: {sorted(skipped & seqs)[:10]}")
    # an agent's first boot starts at the clock floor it announces (docs/protocol.md, "Sequence identity")
    first_seq = min((c["seq_floor"] for _, c in rows if isinstance(c.get("seq_floor"), int)), default=1)
    missing = tuple(n for n in range(first_seq, max_seq + 1) if n not in seqs and n not in skipped)
    if not len(missing) <= evicted + evicted_acked or evicted > len(missing) + INFLIGHT_WINDOW:
        problems.append(
            f"{len(missing)} sequence numbers missing ({_ranges(missing)}) but the agent reported "
            f"{evicted} evicted batches and {evicted_acked} acknowledged ones (expected at least {len(missing)} "
            f"together, and at most {len(missing) + INFLIGHT_WINDOW} never published)"
        )
    if announced:  # the agent names its evicted seqs: check them one by one, and against the counts
        unexplained = sorted(set(missing) - announced)
        if unexplained:
            problems.append(f"{len(unexplained)} missing seqs never announced as evicted ({_ranges(unexplained)})")
        landed = announced & seqs
        if len(landed) > evicted_acked + INFLIGHT_WINDOW:
            problems.append(
                f"{len(landed)} seqs announced as evicted were stored ({_ranges(landed)}), but only "
                f"{evicted_acked} evicted rows had been acknowledged by the broker"
            )
        if not evicted <= len(announced) <= evicted + evicted_acked:
            problems.append(
                f"{len(announced)} seqs announced as evicted, but the agent reported {evicted} evicted batches "
                f"and {evicted_acked} acknowledged ones (each announced seq is counted once: expected at least "
                f"{evicted} and at most {evicted + evicted_acked} announced)"
            )
    if expected_high is not None and expected_high not in seqs:
        problems.append(f"the agent committed seq {expected_high} but the collector stored up to {max_seq}")
    return LedgerReport(
        batches=len(seqs),
        max_seq=max_seq,
        fixes=fixes,
        alerts=alerts,
        skipped=frozenset(skipped),
        evicted_batches=evicted,
        missing=missing,
        problems=tuple(problems),
        evicted_acked_batches=evicted_acked,
        announced_evicted=frozenset(announced),
    )


def seq_ledger_receipt_view(db_path: Path, device_id: str) -> tuple[int, int, tuple[tuple[int, int], ...]] | None:
    """``(low, high, ranges)`` the collector's seq ledger gives a receipt of ``device_id`` now."""
    with _connect(db_path) as db:
        row = db.execute("SELECT ranges FROM seq_ledgers WHERE device_id = ?", (device_id,)).fetchone()
    return None if row is None else SeqLedger.from_json(json.loads(row[0])).receipt_view()


#: [mqtt] inflight default: at most this many batches were published and unacknowledged
INFLIGHT_WINDOW = 10


def _ranges(numbers: Iterable[int]) -> str:
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out[:20]) or "none"


def agent_committed_high(agent_data_dir: Path) -> tuple[int, int]:
    """``(highest seq ever committed, batches still waiting)`` from a stopped agent's outbox."""
    with _connect(agent_data_dir / "outbox.db") as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'high_seq'").fetchone()
        waiting = db.execute("SELECT COUNT(*) FROM batches").fetchone()[0]
    return (int(row[0]) if row else 0), int(waiting)


def agent_evicted_unsettled(agent_data_dir: Path) -> int:
    """Evicted batches the broker had acknowledged whose fate no receipt settled yet (a stopped agent's outbox)."""
    with _connect(agent_data_dir / "outbox.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM evicted_acked").fetchone()[0])


def stored_seq_count(db_path: Path, device_id: str) -> tuple[int, int]:
    """``(batches stored, highest seq)`` for a device (0, 0 before the database exists)."""
    if not db_path.exists():
        return 0, 0
    try:
        with _connect(db_path) as db:
            count, high = db.execute(
                "SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM batches WHERE device_id = ?", (device_id,)
            ).fetchone()
    except sqlite3.OperationalError:  # not migrated yet
        return 0, 0
    return int(count), _seq(int(high))


def alert_rows(db_path: Path, device_id: str) -> list[dict[str, Any]]:
    """Every stored alert record of a device (state 0 = raised, 1 = cleared), by time."""
    with _connect(db_path) as db:
        rows = db.execute(
            "SELECT rule, severity, state, time_ms, episode FROM alerts WHERE device_id = ? ORDER BY time_ms, id",
            (device_id,),
        ).fetchall()
    return [dict(zip(("rule", "severity", "state", "time_ms", "episode"), row, strict=True)) for row in rows]


_ALERT_LINE = re.compile(
    r"event=alert rule=(?P<rule>\S+) severity=\S+ state=(?P<state>\S+) "
    r"time_ms=(?P<time_ms>\d+) episode=(?P<episode>\S+)"
)


def agent_logged_alerts(log_text: str) -> set[tuple[str, int, int, str]]:
    """``(rule, state, time_ms, episode)`` of every alert the agent logged (state 0 raised, 1 cleared)."""
    return {
        (m["rule"], 0 if m["state"] == "raised" else 1, int(m["time_ms"]), m["episode"])
        for m in _ALERT_LINE.finditer(log_text)
    }


def stored_alerts(db_path: Path, device_id: str) -> set[tuple[str, int, int, str]]:
    """The same tuples for the alert rows the collector stored."""
    return {(a["rule"], a["state"], a["time_ms"], a["episode"]) for a in alert_rows(db_path, device_id)}


#: the level each alert rule gives an overdue loan with 3 late instalments (docs/risk.md)
RULE_LEVEL_WHEN_OVERDUE = {
    "power_cut": "critical",
    "towing": "critical",
    "gnss_lost": "critical",
    "gnss_jamming": "critical",
    "stationary_near_market": "high",
    "region_exit": "high",
    "night_door_openings": "watch",
    "relocation": "high",
    "hv_disconnect": "high",
    "soh_drop": "watch",
}


#: the floor each alert rule puts under the v2 collateral axis of an overdue loan with 3 late
#: instalments (docs/risk.md, hard rules); "normal" = no hard rule for it
RULE_COLLATERAL_FLOOR_WHEN_OVERDUE = {
    "power_cut": "critical",
    "towing": "critical",
    "gnss_lost": "critical",
    "gnss_jamming": "critical",
    "night_door_openings": "high",
    "stationary_near_market": "normal",
    "region_exit": "normal",
    # #17's signals have no v2 feature: the v2 collateral axis does not move; their v1 rows
    # floor the loan's level instead (collector.risk.decision.V1_FLOOR_CODES)
    "soh_drop": "normal",
    "hv_disconnect": "normal",
    "relocation": "normal",
}


def open_alert_rules(alerts: Iterable[Mapping[str, Any]]) -> set[str]:
    """Rules with a raised episode that was not cleared."""
    alerts = list(alerts)
    cleared = {a["episode"] for a in alerts if a["state"] == 1}
    return {a["rule"] for a in alerts if a["state"] == 0 and a["episode"] not in cleared}


def loan_base_level(csv_text: str, loan_id: str, today: date) -> str:
    """The level a loan has from its repayments alone, per docs/risk.md, computed independently.

    Only what the sample book needs: payments cover instalments oldest first; days past due
    count from the oldest instalment not covered. Any instalment unpaid after its 3 grace
    days is ``overdue`` (watch); >= 90 days past due is ``severely_past_due`` (high).
    """
    import csv
    import io

    row = next(r for r in csv.DictReader(io.StringIO(csv_text)) if r["loan_id"] == loan_id)
    schedule = [(date.fromisoformat(d), float(a)) for d, a in (i.split(":") for i in row["schedule"].split(";"))]
    paid = sum(float(p.split(":")[2]) for p in row["payments"].split(";") if p)
    covered = 0.0
    oldest_open: date | None = None
    for due, amount in schedule:
        covered += amount
        if covered > paid + 0.005:
            oldest_open = due
            break
    if oldest_open is None or (today - oldest_open).days <= 3:
        return "normal"
    return "high" if (today - oldest_open).days >= 90 else "watch"


def max_level(*levels: str) -> str:
    """The most severe of ``levels``."""
    return max(levels, key=LEVELS.index)


class ScenarioClock:
    """Scenario time -> wall time, from the simulator's ``clock`` and ``event`` lines."""

    def __init__(self, events: Iterable[Mapping[str, Any]]) -> None:
        points = [
            (int(e["scenario_time_ms"]), float(e["wall_time"]))
            for e in events
            if e.get("type") in ("clock", "event") and "scenario_time_ms" in e and "wall_time" in e
        ]
        self.points = sorted(set(points))

    def wall_at(self, scenario_ms: int) -> float | None:
        """Wall time at which the simulation reached ``scenario_ms`` (linear between known points)."""
        before = [p for p in self.points if p[0] <= scenario_ms]
        after = [p for p in self.points if p[0] >= scenario_ms]
        if not before or not after:
            return None
        (s0, w0), (s1, w1) = before[-1], after[0]
        if s1 == s0:
            return w0
        return w0 + (w1 - w0) * (scenario_ms - s0) / (s1 - s0)


def iso(ms: int) -> str:
    """Epoch ms as an ISO UTC string (for messages)."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="seconds")
