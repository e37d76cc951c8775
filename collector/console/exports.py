"""Exports: CSV of the worklist and the alert feed, GeoJSON and GPX of a track. Pure."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from ..timefmt import iso_utc
from .track_map import MapPoint, Stop

__all__ = ["alerts_csv", "track_geojson", "track_gpx", "worklist_csv"]

WORKLIST_COLUMNS = ("loan_id", "device_id", "vin", "borrower_ref", "level", "next_step", "reasons", "total_overdue",
                    "days_past_due", "consecutive_late", "level_since", "tier", "expected_loss", "region")
ALERT_COLUMNS = ("time", "loan_id", "device_id", "rule", "severity", "state", "episode", "evidence")


def _safe_cell(value: object) -> str:
    """Text for a spreadsheet cell; a leading ``= + - @`` is quoted so it is never a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _csv(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_safe_cell(v) for v in row])
    return out.getvalue()


def worklist_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The worklist as CSV (times ISO-8601 UTC)."""
    return _csv(WORKLIST_COLUMNS, (
        (r["loan_id"], r["device_id"], r["vin"], r["borrower_ref"], r["level"], r["next_step"],
         " ".join(c for c in r["reason_codes"] if c), r["total_overdue"], r["days_past_due"], r["consecutive_late"],
         iso_utc(r["changed_ms"]) if r["changed_ms"] is not None else "", r.get("tier") or "",
         r.get("expected_loss") or "", r.get("region") or "")
        for r in rows
    ))


def alerts_csv(rows: Iterable[Mapping[str, Any]]) -> str:
    """The alert feed as CSV (evidence as compact JSON, already redacted for the reader)."""
    return _csv(ALERT_COLUMNS, (
        (iso_utc(r["time_ms"]), r["loan_id"] or "", r["device_id"], r["rule"], r["severity"], r["state"],
         r["episode"], json.dumps(r["evidence"], separators=(",", ":"), sort_keys=True, ensure_ascii=False))
        for r in rows
    ))


def track_geojson(loan_id: str, points: Sequence[MapPoint], stops: Sequence[Stop] = ()) -> dict[str, Any]:
    """A GeoJSON FeatureCollection (RFC 7946, WGS-84 lon/lat): the path and its stops."""
    features: list[dict[str, Any]] = []
    if points:
        features.append({
            "type": "Feature",
            "geometry": {"type": "LineString", "coordinates": [[p.lon, p.lat] for p in points]},
            "properties": {
                "kind": "track",
                "loan_id": loan_id,
                "times": [iso_utc(p.time_ms) for p in points],
                "speeds_mps": [p.speed_mps for p in points],
            },
        })
    features.extend(
        {
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [s.lon, s.lat]},
            "properties": {"kind": "stop", "loan_id": loan_id, "start": iso_utc(s.start_ms), "end": iso_utc(s.end_ms),
                           "duration_s": round(s.duration_s), "fixes": s.fixes},
        }
        for s in stops
    )
    return {"type": "FeatureCollection", "features": features}


def track_gpx(loan_id: str, points: Sequence[MapPoint]) -> str:
    """A GPX 1.1 document with one track segment."""
    lines = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<gpx version="1.1" creator="LienWatch" xmlns="http://www.topografix.com/GPX/1/1">',
        f"<trk><name>{escape(loan_id)}</name><trkseg>",
    ]
    lines.extend(
        f"<trkpt lat={quoteattr(f'{p.lat:.7f}')} lon={quoteattr(f'{p.lon:.7f}')}>"
        f"<time>{iso_utc(p.time_ms)}</time></trkpt>"
        for p in points
    )
    lines.append("</trkseg></trk></gpx>")
    return "\n".join(lines) + "\n"
