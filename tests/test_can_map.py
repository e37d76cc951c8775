"""Signal map and DBC loading: the sample files, and every way a map or DBC can be wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.canbus import (
    SAMPLE_DBC,
    SAMPLE_MAP,
    DbcError,
    SignalDecoder,
    SignalMapError,
    SignalType,
    load_dbc,
    load_signal_map,
    parse_dbc,
    parse_signal_map,
)
from edge.canbus._signal_map import MAX_MAP_BYTES, MAX_MAP_ENTRIES

ROOT = Path(__file__).resolve().parent.parent

GOOD_ENTRY = """
[[signal]]
name = "Vehicle.Speed"
dbc_message = "VEHICLE_SPEED"
dbc_signal = "SPEED_KPH"
"""


def contract_signal_names() -> set[str]:
    """The canonical names in docs/interfaces.md's table (the contract)."""
    text = (ROOT / "docs" / "interfaces.md").read_text()
    table = text.split("## Canonical signals", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`(Vehicle\.[A-Za-z0-9.]+)`", table))
    # "(and `Row1.PassengerSide`, ...)" abbreviations expand against the driver door path
    for short in re.findall(r"`(Row\d\.\w+)`", table):
        names.add(f"Vehicle.Cabin.Door.{short}.IsOpen")
    return names


def test_sample_map_covers_exactly_the_contract_names() -> None:
    signal_map = load_signal_map(SAMPLE_MAP)
    assert signal_map.names == contract_signal_names()
    assert len(signal_map.names) == 15  # 10, plus 5 traction-battery signals (#17)


def test_signals_doc_lists_every_sample_name() -> None:
    doc = (ROOT / "docs" / "signals.md").read_text()
    for name in load_signal_map(SAMPLE_MAP).names:
        assert f"`{name}`" in doc


def test_sample_map_defaults_and_options() -> None:
    entries = {e.name: e for e in load_signal_map(SAMPLE_MAP).entries}
    state = entries["Vehicle.LowVoltageSystemState"]
    assert state.type is SignalType.STRING
    assert dict(state.values or {}) == {v: v for v in ("OFF", "ACC", "ON", "START", "LOCK")}
    speed = entries["Vehicle.Speed"]
    assert (speed.type, speed.on_change, speed.min_interval_ms, speed.deadband) == (SignalType.FLOAT, True, 1000, 0.5)
    assert entries["Vehicle.LowVoltageBattery.CurrentVoltage"].heartbeat_ms == 30000
    assert entries["Vehicle.Body.Trunk.Rear.IsOpen"].type is SignalType.BOOL


def test_latin1_dbc_loads(tmp_path: Path) -> None:
    text = SAMPLE_DBC.read_text().replace("Odometer, 1 s.", "Kilometerz\u00e4hler, 1 s.")
    path = tmp_path / "latin1.dbc"
    path.write_bytes(text.encode("latin-1"))
    assert load_dbc(path).database.get_message_by_name("ODOMETER").comment == "Kilometerz\u00e4hler, 1 s."


# --- malformed map files: each error names the file, the entry and the problem ----------


def write_map(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "car_map.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[signal]\nname = 1", r"car_map\.toml: not valid TOML"),
        ("", r"car_map\.toml: no \[\[signal\]\] entries"),
        ("signals = []", r"unknown top-level key\(s\) signals"),
        ("signal = 3", r"no \[\[signal\]\] entries"),
        (GOOD_ENTRY + "min_interval = 5\n", r"#1 \('Vehicle\.Speed'\): unknown key\(s\) min_interval"),
        (
            '[[signal]]\nname = "Vehicle.Speed"\ndbc_message = "X"\n',
            r"#1 \('Vehicle\.Speed'\): missing required key 'dbc_signal'",
        ),
        (GOOD_ENTRY.replace("Vehicle.Speed", "Vehicle..Speed"), r"name 'Vehicle\.\.Speed' is not a dotted VSS path"),
        (GOOD_ENTRY.replace('"Vehicle.Speed"', "42"), r"name 42 is not a dotted VSS path"),
        (GOOD_ENTRY + 'type = "double"\n', r"type 'double' is not one of bool, int, float, string"),
        (GOOD_ENTRY + 'type = "bool"\nscale = 2\n', r"scale, offset and deadband apply to int/float"),
        (GOOD_ENTRY + "scale = 0\n", r"scale must not be 0"),
        (GOOD_ENTRY + "scale = nan\n", r"scale must be a finite number"),
        (GOOD_ENTRY + 'offset = "1"\n', r"offset must be a finite number"),
        (GOOD_ENTRY + "deadband = -1\n", r"deadband must be >= 0"),
        (GOOD_ENTRY + "on_change = 1\n", r"on_change must be true or false"),
        (GOOD_ENTRY + "min_interval_ms = true\n", r"min_interval_ms must be an int"),
        (GOOD_ENTRY + "min_interval_ms = 1.5\n", r"min_interval_ms must be an int"),
        (GOOD_ENTRY + "heartbeat_ms = 86400001\n", r"heartbeat_ms must be an int in \[0, 86400000\]"),
        (
            GOOD_ENTRY + "min_interval_ms = 1000\nheartbeat_ms = 500\n",
            r"heartbeat_ms=500 is shorter than min_interval_ms=1000",
        ),
        (GOOD_ENTRY + "values = 3\n", r"values must be a table"),
        (GOOD_ENTRY + "values = {}\n", r"values must be a table of 1\.\.1024 entries"),
        (GOOD_ENTRY + 'type = "bool"\nvalues = { "1" = "yes" }\n', r"values\['1'\] = 'yes' is not a valid bool value"),
        (GOOD_ENTRY + 'values = { "1" = true }\n', r"values\['1'\] = True is not a valid string value"),
        (GOOD_ENTRY + 'type = "float"\nvalues = { "1" = 2 }\nscale = 2\n', r"values and scale/offset cannot be"),
        (GOOD_ENTRY + GOOD_ENTRY, r"#2: name 'Vehicle\.Speed' is already mapped by entry #1"),
        ('[[signal]]\ndbc_message = "A"\ndbc_signal = ""\nname = "X.Y"\n', r"dbc_signal must be a non-empty string"),
    ],
)
def test_malformed_map_is_refused_with_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = write_map(tmp_path, text)
    with pytest.raises(SignalMapError, match=message) as info:
        load_signal_map(path)
    assert str(path) in str(info.value)
    assert info.value.reason == "bad_signal_map"


def test_missing_oversized_and_binary_map_files(tmp_path: Path) -> None:
    with pytest.raises(SignalMapError, match=r"nope\.toml: cannot read signal map"):
        load_signal_map(tmp_path / "nope.toml")
    big = tmp_path / "big.toml"
    big.write_text("#" * (MAX_MAP_BYTES + 1))
    with pytest.raises(SignalMapError, match=rf"big\.toml: signal map is {MAX_MAP_BYTES + 1} bytes, limit"):
        load_signal_map(big)
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe[[signal]]")
    with pytest.raises(SignalMapError, match=r"bin\.toml: signal map is not UTF-8"):
        load_signal_map(binary)
    many = "".join(GOOD_ENTRY.replace("Vehicle.Speed", f"A.S{i}") for i in range(MAX_MAP_ENTRIES + 1))
    with pytest.raises(SignalMapError, match=rf"{MAX_MAP_ENTRIES + 1} \[\[signal\]\] entries, limit {MAX_MAP_ENTRIES}"):
        parse_signal_map(many, "many")


# --- maps that do not match the DBC -----------------------------------------------------


def bind(map_text: str, dbc_texts: dict[str, str] | None = None) -> SignalDecoder:
    dbcs = [load_dbc(SAMPLE_DBC)] if dbc_texts is None else [parse_dbc(t, s) for s, t in dbc_texts.items()]
    return SignalDecoder(dbcs, parse_signal_map(map_text, "car_map.toml"))


def test_unknown_message_names_map_entry_and_dbc() -> None:
    text = GOOD_ENTRY + GOOD_ENTRY.replace("Vehicle.Speed", "Vehicle.Foo").replace("VEHICLE_SPEED", "WHEEL_SPEED")
    with pytest.raises(SignalMapError) as info:
        bind(text)
    assert str(info.value) == (
        f"car_map.toml: [[signal]] #2 ('Vehicle.Foo'): dbc_message 'WHEEL_SPEED' is not defined in {SAMPLE_DBC}"
    )


def test_unknown_signal_lists_the_message_signals() -> None:
    with pytest.raises(SignalMapError) as info:
        bind(GOOD_ENTRY.replace("SPEED_KPH", "SPEED_MPH"))
    assert str(info.value) == (
        f"car_map.toml: [[signal]] #1 ('Vehicle.Speed'): dbc_signal 'SPEED_MPH' is not in message 'VEHICLE_SPEED' "
        f"of {SAMPLE_DBC} (it has: SPEED_KPH, SPEED_VALID, SPEED_COUNTER)"
    )


def test_values_key_must_be_an_enum_name_or_integer() -> None:
    text = """
[[signal]]
name = "Vehicle.LowVoltageSystemState"
dbc_message = "POWER_STATE"
dbc_signal = "IGNITION_STATE"
values = { OFF = "OFF", CRANK = "START" }
"""
    with pytest.raises(SignalMapError, match=r"values key 'CRANK' is neither an integer nor an enum name of "
                       r"POWER_STATE\.IGNITION_STATE \(enum names: OFF, ACC, ON, START, LOCK\)"):
        bind(text)


DBC_A = """VERSION ""
BS_:
BU_: A
BO_ 416 SPEED_A: 8 A
 SG_ V : 0|16@1+ (0.01,0) [0|655.35] "km/h" A
BO_ 500 SHARED: 8 A
 SG_ S : 0|8@1+ (1,0) [0|255] "" A
"""
DBC_B = """VERSION ""
BS_:
BU_: A
BO_ 416 SPEED_B: 8 A
 SG_ V : 0|16@1+ (0.01,0) [0|655.35] "km/h" A
BO_ 501 SHARED: 8 A
 SG_ S : 0|8@1+ (1,0) [0|255] "" A
"""


def test_several_dbcs_bind_by_message_name() -> None:
    text = '[[signal]]\nname = "A.V"\ndbc_message = "SPEED_A"\ndbc_signal = "V"\n'
    decoder = bind(text, {"a.dbc": DBC_A, "b.dbc": DBC_B})
    assert decoder.frame_ids == [(416, False)]


def test_message_in_two_dbcs_is_ambiguous() -> None:
    text = '[[signal]]\nname = "A.S"\ndbc_message = "SHARED"\ndbc_signal = "S"\n'
    message = r"#1 \('A\.S'\): dbc_message 'SHARED' is defined in several DBC files: a\.dbc, b\.dbc"
    with pytest.raises(SignalMapError, match=message):
        bind(text, {"a.dbc": DBC_A, "b.dbc": DBC_B})


def test_two_mapped_messages_on_one_frame_id_are_refused() -> None:
    text = (
        '[[signal]]\nname = "A.V"\ndbc_message = "SPEED_A"\ndbc_signal = "V"\n'
        '[[signal]]\nname = "B.V"\ndbc_message = "SPEED_B"\ndbc_signal = "V"\n'
    )
    with pytest.raises(SignalMapError, match=r"#2 \('B\.V'\): message 'SPEED_B' has frame id 0x1A0, already used by "
                       r"mapped message 'SPEED_A'"):
        bind(text, {"a.dbc": DBC_A, "b.dbc": DBC_B})


# --- DBC files --------------------------------------------------------------------------


def test_missing_garbage_and_oversized_dbc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DbcError, match=r"none\.dbc: cannot read DBC"):
        load_dbc(tmp_path / "none.dbc")
    garbage = tmp_path / "garbage.dbc"
    garbage.write_text("BO_ this is not a DBC")
    with pytest.raises(DbcError, match=r"garbage\.dbc: cannot parse DBC: Invalid syntax at line 1"):
        load_dbc(garbage)
    monkeypatch.setattr("edge.canbus._decoder.MAX_DBC_BYTES", 10)
    with pytest.raises(DbcError, match=r"garbage\.dbc: DBC is 21 bytes, limit 10"):
        load_dbc(garbage)
    with pytest.raises(DbcError, match=r"x: DBC is 11 characters, limit 10"):
        parse_dbc("x" * 11, "x")
    with pytest.raises(DbcError, match="at least one DBC file"):
        SignalDecoder.from_files([], SAMPLE_MAP)


def test_overlapping_signals_load_non_strict() -> None:
    overlapping = DBC_A.replace('SG_ S : 0|8@1+', 'SG_ S : 0|8@1+ (1,0) [0|255] "" A\n SG_ T : 4|8@1+')
    decoder = bind('[[signal]]\nname = "A.T"\ndbc_message = "SHARED"\ndbc_signal = "T"\n', {"o.dbc": overlapping})
    assert decoder.frame_ids == [(500, False)]
