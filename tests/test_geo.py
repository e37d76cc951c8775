"""Datum conversion against published reference points, distances, polygons, place loading.

Reference pairs:
* googollee/eviltransform, python/test.py (``TESTS``): WGS-84 -> GCJ-02 for Shanghai,
  Shenzhen and Beijing, compared there to 6 decimals; its gcj2wgs_exact must land within
  0.5 m. (The same file's two BD-09 pairs, ``TESTS_bd``, are 10 m and 41 m away from
  what the BD-09 formula shared by every open implementation, theirs included, gives;
  they are not usable as vectors and are not used here.)
* Glatzel/pyxis, python/tests/test_crypto.py: one WGS-84 / GCJ-02 / BD-09 triple near
  Shanghai (121.0917077, 30.6107779), compared there with pytest.approx.
* docs/interfaces.md: the demo market, GCJ-02 (31.3000, 121.2500) is WGS-84 about
  (31.301992, 121.245568).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.place_files import load_markets_file, load_regions_file
from protocol.errors import PlacesError
from protocol.geo import (
    bd09_to_gcj02,
    bd09_to_wgs84,
    distance_m,
    gcj02_to_bd09,
    gcj02_to_wgs84,
    in_gcj02_area,
    to_wgs84,
    wgs84_to_bd09,
    wgs84_to_gcj02,
)
from protocol.places import Place, PlaceType, load_places, load_regions, places_from_text

EVILTRANSFORM_TESTS = [
    # wgsLat, wgsLng, gcjLat, gcjLng
    (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215),  # shanghai
    (22.543847, 113.912316, 22.540796131694766, 113.9171764808363),  # shenzhen
    (39.911954, 116.377817, 39.91334545536069, 116.38404722455657),  # beijing
]
PYXIS_WGS = (30.6107779, 121.0917077)
PYXIS_GCJ = (30.608604331756705, 121.09626935575027)
PYXIS_BD = (30.61484572185035, 121.10271732371203)


@pytest.mark.parametrize(("wlat", "wlon", "glat", "glon"), EVILTRANSFORM_TESTS)
def test_wgs84_to_gcj02_matches_eviltransform(wlat: float, wlon: float, glat: float, glon: float) -> None:
    lat, lon = wgs84_to_gcj02(wlat, wlon)
    assert lat == pytest.approx(glat, abs=1e-6)
    assert lon == pytest.approx(glon, abs=1e-6)
    back = gcj02_to_wgs84(glat, glon)
    assert distance_m(*back, wlat, wlon) < 0.5
    assert 300 < distance_m(wlat, wlon, glat, glon) < 700  # the famous offset


def test_pyxis_triple_round_trips_to_millimetres() -> None:
    assert distance_m(*wgs84_to_gcj02(*PYXIS_WGS), *PYXIS_GCJ) < 0.01
    assert distance_m(*gcj02_to_wgs84(*PYXIS_GCJ), *PYXIS_WGS) < 0.01
    assert distance_m(*gcj02_to_bd09(*PYXIS_GCJ), *PYXIS_BD) < 0.01
    assert distance_m(*bd09_to_gcj02(*PYXIS_BD), *PYXIS_GCJ) < 0.01
    assert distance_m(*wgs84_to_bd09(*PYXIS_WGS), *PYXIS_BD) < 0.01
    assert distance_m(*bd09_to_wgs84(*PYXIS_BD), *PYXIS_WGS) < 0.01


def test_demo_market_converts_to_the_documented_wgs84_position() -> None:
    lat, lon = to_wgs84(31.3000, 121.2500, "gcj02")
    assert (round(lat, 6), round(lon, 6)) == (31.301992, 121.245568)
    [market] = load_markets_file(Path(__file__).resolve().parents[1] / "edge" / "data" / "markets.sample.toml")
    assert (market.id, market.datum, market.radius_m) == ("sh-jiading-ucm", "gcj02", 400)
    assert (round(market.lat, 6), round(market.lon, 6)) == (31.301992, 121.245568)


def test_no_offset_outside_mainland_china() -> None:
    berlin = (52.52, 13.405)
    assert not in_gcj02_area(*berlin)
    assert wgs84_to_gcj02(*berlin) == berlin
    assert gcj02_to_wgs84(*berlin) == berlin
    with pytest.raises(ValueError, match="datum 'utm'"):
        to_wgs84(0.0, 0.0, "utm")


def test_distance_known_values() -> None:
    assert distance_m(0.0, 0.0, 0.0, 1.0) == pytest.approx(111_195.08, abs=0.5)
    assert distance_m(31.2304, 121.4737, 39.9042, 116.4074) == pytest.approx(1_067_000, rel=0.01)


# ------------------------------------------------------------------ markets and regions files


def test_markets_json_items_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    item = {"id": "x", "name": "X", "lat": 31.0, "lon": 121.0, "radius_m": 50, "datum": "bd09"}
    path.write_text(json.dumps({"markets": [item]}))
    [m] = load_markets_file(path)
    assert m.datum == "bd09"
    assert distance_m(m.lat, m.lon, 31.0, 121.0) > 500
    assert load_places([m]) == [m]
    good = {"id": "a", "name": "A", "lat": 31.0, "lon": 121.0, "radius_m": 100, "datum": "wgs84"}
    cases = [
        ([{k: v for k, v in good.items() if k != "datum"}], "lacks required key 'datum'"),
        ([good | {"datum": "wgs-84"}], "datum 'wgs-84' must be one of"),
        ([good | {"lat": 91}], "lat=91 is outside"),
        ([good | {"lat": "31"}], "lat must be a number"),
        ([good | {"radius_m": 0}], "radius_m=0 must be a number in"),
        ([good | {"id": "a b"}], "market id 'a b' must match"),
        ([good | {"colour": "red"}], "unknown key 'colour'"),
        ([good, good], "market id 'a' is repeated"),
        (["not a table"], "must be a table/map"),
    ]
    for items, message in cases:
        with pytest.raises(PlacesError, match=message):
            load_places(items)


def test_market_files_malformed_truncated_oversized(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[market]]\nid = "a"\nname = "unterminated')
    with pytest.raises(PlacesError, match="is not valid toml"):
        load_markets_file(bad)
    with pytest.raises(PlacesError, match="cannot read markets file"):
        load_markets_file(tmp_path / "missing.toml")
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"shops": []}')
    with pytest.raises(PlacesError, match="has none of the keys"):
        load_markets_file(wrong)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(PlacesError, match="is not valid json"):
        load_markets_file(binary)
    huge = tmp_path / "huge.json"
    with huge.open("wb") as fh:
        fh.truncate(33 * 1024 * 1024)
    with pytest.raises(PlacesError, match="over the 33554432 byte limit"):
        load_markets_file(huge)


def test_regions_toml_geojson_flat_coords_and_holes(tmp_path: Path) -> None:
    [sample] = load_regions_file(Path(__file__).resolve().parents[1] / "edge" / "data" / "regions.sample.toml")
    assert sample.contains(31.23, 121.47)
    assert not sample.contains(32.06, 118.79)
    square = [[121.0, 31.0], [122.0, 31.0], [122.0, 32.0], [121.0, 32.0], [121.0, 31.0]]
    hole = [[121.4, 31.4], [121.6, 31.4], [121.6, 31.6], [121.4, 31.6]]
    geojson = {
        "type": "FeatureCollection",
        "features": [
            {
                "type": "Feature",
                "properties": {"id": "sq", "name": "Square"},
                "geometry": {"type": "Polygon", "coordinates": [square, hole]},
            }
        ],
    }
    path = tmp_path / "r.geojson"
    path.write_text(json.dumps(geojson))
    [region] = load_regions_file(path)
    assert region.contains(31.2, 121.2)
    assert not region.contains(31.5, 121.5)  # in the hole
    assert not region.contains(30.9, 121.5)
    flat = [v for point in square for v in point]
    [region] = load_regions([{"id": "flat", "name": "Flat", "datum": "wgs84", "coords": flat}])
    assert region.contains(31.5, 121.5)
    # Declared GCJ-02 vertices are moved to WGS-84 (~500 m here).
    [gcj] = load_regions([{"id": "g", "name": "G", "datum": "gcj02", "polygon": square}])
    assert distance_m(*gcj.polygons[0][0][0], 31.0, 121.0) > 300
    cases = [
        ([{"id": "x", "name": "X", "datum": "wgs84"}], "lacks required key 'polygon'"),
        ([{"id": "x", "name": "X", "datum": "wgs84", "polygon": [[121, 31], [122, 31]]}], "needs at least 3"),
        ([{"id": "x", "name": "X", "datum": "wgs84", "coords": [121, 31, 122]}], "needs an even count"),
        ([{"id": "x", "name": "X", "datum": "wgs84", "polygon": [[121, 95], [122, 31], [1, 1]]}], "lat=95 is outside"),
        ([{"id": "x", "name": "X", "datum": "wgs84", "polygon": "square"}], "must be a list of"),
        ([{"type": "Feature", "properties": {"id": "l"}, "geometry": {"type": "LineString"}}], "must be Polygon"),
    ]
    for items, message in cases:
        with pytest.raises(PlacesError, match=message):
            load_regions(items)


def test_market_record_validates() -> None:
    with pytest.raises(ValueError, match="radius_m"):
        Place(id="m", name="M", lat=0.0, lon=0.0, radius_m=100_000)


def test_place_type_defaults_to_used_car_market_and_is_checked() -> None:
    item = {"id": "a", "name": "A", "lat": 31.0, "lon": 121.0, "radius_m": 100, "datum": "wgs84"}
    [place] = load_places([item])
    assert place.type is PlaceType.USED_CAR_MARKET
    [typed] = load_places([item | {"type": "used_car_market"}])
    assert typed == place
    with pytest.raises(PlacesError, match="type 'pawn_shop' must be one of"):
        load_places([item | {"type": "pawn_shop"}])
    with pytest.raises(ValueError, match="type 'pawn_shop' must be one of"):
        Place(id="m", name="M", lat=0.0, lon=0.0, radius_m=100, type="pawn_shop")  # type: ignore[arg-type]


def test_places_from_text_converts_the_datum_once() -> None:
    text = '[[market]]\nid = "g"\nname = "G"\nlat = 31.3\nlon = 121.25\nradius_m = 400\ndatum = "gcj02"\n'
    [place] = places_from_text(text, "toml", label="inline")
    assert (round(place.lat, 6), round(place.lon, 6)) == (31.301992, 121.245568)
    assert place.datum == "gcj02"
    assert load_places([place]) == [place]  # a Place is already WGS-84: not converted again
    with pytest.raises(PlacesError, match="inline is not valid json"):
        places_from_text(b"\xff", "json", label="inline")
    with pytest.raises(PlacesError, match="format 'yaml' is not one of"):
        places_from_text("", "yaml")
    with pytest.raises(PlacesError, match="over the 33554432 byte limit"):
        places_from_text(b" " * (32 * 1024 * 1024 + 1), "json")
