"""Protocol on the T-BOX's dependency set: no numpy, cbor2 5.x (no strict decoder options).

The batch codec's pure-Python column arithmetic must give the same bytes as numpy's; the
strict CBOR scan used on cbor2 5.x must accept and refuse what cbor2 6's strict options do,
with the same typed errors; and the whole hostile-input suite must pass in a process where
numpy cannot be imported and the scan path is in force.
"""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import pytest

import protocol
from protocol import _batch_codec, _strict_cbor, decode_batch, encode_batch
from protocol import errors as e
from protocol.examples import minute_batch, tiny_batch
from tests.child_processes import ChildProcesses

ROOT = Path(__file__).resolve().parent.parent


def _long_batch() -> protocol.Batch:
    """One batch whose columns are long enough for the numpy path (36,000 fixes is the limit)."""
    base = minute_batch()
    fixes = []
    rng = random.Random(7)
    t, lat, lon = base.fixes[0].time_ms, 31.2304, 121.4737
    for _ in range(6000):
        t += rng.choice((100, 100, 200, 1000))
        lat += rng.uniform(-2e-5, 2e-5)
        lon += rng.uniform(-2e-5, 2e-5)
        fixes.append(
            protocol.Fix(
                time_ms=t,
                lat=lat,
                lon=lon,
                alt_m=rng.choice((None, rng.uniform(-20.0, 900.0))),
                speed_mps=rng.uniform(0.0, 40.0),
                course_deg=rng.uniform(0.0, 360.0),
                mode=protocol.FixMode.THREE_D,
                hdop=rng.choice((None, 0.75, 1.25, 2.5)),
                sats_used=rng.choice((None, 7, 12)),
                mean_snr=rng.uniform(20.0, 45.0),
            )
        )
    return protocol.Batch(
        device_id=base.device_id,
        boot_id=base.boot_id,
        seq=base.seq,
        created_ms=t,
        catalog=base.catalog,
        fixes=tuple(fixes),
        samples=base.samples,
        alerts=base.alerts,
        stats=base.stats,
        counters=base.counters,
    )


@pytest.mark.parametrize("make", [tiny_batch, minute_batch, _long_batch], ids=["tiny", "minute", "6000-fixes"])
def test_numpy_and_pure_python_columns_give_identical_bytes(make: object, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = make()  # type: ignore[operator]
    monkeypatch.setattr(_batch_codec, "NUMPY_MIN_VALUES", 1)
    with_numpy = encode_batch(batch)
    decoded_numpy = decode_batch(with_numpy)
    monkeypatch.setattr(_batch_codec, "NUMPY_MIN_VALUES", 10**9)
    pure = encode_batch(batch)
    decoded_pure = decode_batch(pure)
    assert pure == with_numpy
    assert decoded_pure == decoded_numpy
    assert len(decoded_pure.fixes) == len(batch.fixes)
    assert encode_batch(decoded_pure) == pure  # decoding loses nothing the wire carries


def test_out_of_range_delta_is_refused_the_same_on_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    for threshold in (1, 10**9):
        monkeypatch.setattr(_batch_codec, "NUMPY_MIN_VALUES", threshold)
        with pytest.raises(e.InvalidValue, match="outside 64 bits"):
            _batch_codec._undelta([0, 2**64], "fix column lat")
        with pytest.raises(e.InvalidValue, match=r"outside \+-2\*\*47"):
            _batch_codec._undelta([0, 2**47 + 1], "fix column lat")


def _outcome(native: bool, blob: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[str, object]:
    monkeypatch.setattr(_strict_cbor, "NATIVE_STRICTNESS", native)
    try:
        value = _strict_cbor.decode_strict(blob, what="payload", max_size=1 << 20, max_depth=6)
        return "ok", _strict_cbor._opaque_simple_values(value)  # one type for simple values on both paths
    except e.RemoteProtocolError as exc:
        return type(exc).__name__, None


def test_scan_path_agrees_with_cbor2_strict_options_on_mutated_payloads(monkeypatch: pytest.MonkeyPatch) -> None:
    if not _strict_cbor.NATIVE_STRICTNESS:
        pytest.fail("this differential test needs cbor2 6 installed (the development set-up)")
    rng = random.Random(20261202)
    good = encode_batch(tiny_batch())
    same = differ = accepted = 0
    for _ in range(2000):
        blob = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            k = rng.randrange(len(blob))
            if rng.random() < 0.6:
                blob[k] = rng.randrange(256)
            elif rng.random() < 0.5:
                del blob[k]
            else:
                blob.insert(k, rng.randrange(256))
        if rng.random() < 0.2:
            blob = blob[: rng.randrange(len(blob))]
        native = _outcome(True, bytes(blob), monkeypatch)
        scanned = _outcome(False, bytes(blob), monkeypatch)
        if native[0] == "ok" or scanned[0] == "ok":
            assert native == scanned, blob.hex()  # whatever one path accepts, the other decodes the same
            accepted += 1
        if native[0] == scanned[0]:
            same += 1
        else:
            differ += 1
    # Both always raise a typed error; on inputs with two faults the first reported may differ.
    assert differ <= 0.005 * (same + differ), (same, differ)
    assert accepted > 50


def test_scan_path_accepts_every_example_payload(monkeypatch: pytest.MonkeyPatch) -> None:
    for batch in (tiny_batch(), minute_batch()):
        payload = encode_batch(batch)
        assert _strict_cbor._check_well_formed(payload, "payload", 10) == (len(payload), False)
        assert _outcome(False, payload, monkeypatch) == _outcome(True, payload, monkeypatch)


def test_hostile_input_suite_passes_without_numpy_on_the_cbor2_5_path(processes: ChildProcesses) -> None:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    modules = ["tests/test_protocol_hostile.py", "tests/test_protocol_batch.py", "tests/test_protocol_cose.py"]
    probe = "tests/tbox_mode_probe.py"
    result = processes.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.tbox_mode", "-p", "no:cacheprovider", *modules, probe],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout
    assert " failed" not in result.stdout
