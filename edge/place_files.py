"""Reading the markets and regions files named in ``agent.toml`` (the schema is :mod:`protocol.places`).

Bounded reads: the size is checked before a byte is read; the format follows the suffix
(``.toml``, ``.json`` or ``.geojson``; anything else is read as JSON).
"""

from __future__ import annotations

from pathlib import Path

from edge.rules import RulesConfig
from protocol.errors import PlacesError
from protocol.places import MAX_DOCUMENT_BYTES, Place, Region, places_from_text, regions_from_text

__all__ = ["load_markets_file", "load_regions_file", "load_rules_places"]


def _read(path: Path, what: str) -> tuple[bytes, str]:
    try:
        size = path.stat().st_size
        if size > MAX_DOCUMENT_BYTES:
            raise PlacesError(f"{what} file {path} is {size} bytes, over the {MAX_DOCUMENT_BYTES} byte limit")
        data = path.read_bytes()
    except OSError as exc:
        raise PlacesError(f"cannot read {what} file {path}: {exc.strerror or exc}") from exc
    suffix = path.suffix.lower().lstrip(".")
    return data, suffix if suffix in {"toml", "geojson"} else "json"


def load_markets_file(path: str | Path) -> list[Place]:
    """The used-car markets (and other places) of a TOML ``[[market]]`` or JSON file, in WGS-84.

    Raises:
        PlacesError: unreadable, too large, malformed, or an invalid item (the message
            names the file, the item and the key).
    """
    file = Path(path)
    data, fmt = _read(file, "markets")
    return places_from_text(data, fmt, label=f"markets file {file}")


def load_regions_file(path: str | Path) -> list[Region]:
    """The allowed regions of a TOML ``[[region]]``, JSON or GeoJSON file, in WGS-84.

    Raises:
        PlacesError: unreadable, too large, malformed, or an invalid item.
    """
    file = Path(path)
    data, fmt = _read(file, "regions")
    return regions_from_text(data, fmt, label=f"regions file {file}")


def load_rules_places(rules: RulesConfig) -> tuple[list[Place], list[Region]]:
    """The markets and regions named by ``[rules]`` (``markets_file``/``regions_file``; none if unset).

    Raises:
        PlacesError: a named file is unreadable or invalid.
    """
    markets = load_markets_file(rules.markets_file) if rules.markets_file else []
    regions = load_regions_file(rules.regions_file) if rules.regions_file else []
    return markets, regions
