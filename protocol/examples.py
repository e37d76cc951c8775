"""Example messages: the worked example of docs/protocol.md and the benchmark's minute.

Deterministic (fixed key seed, fixed values), so tests can pin their exact bytes and
partners can check their own encoder against the documentation.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .records import Alert, AlertState, Batch, Fix, FixMode, Severity, SignalSample

__all__ = ["EXAMPLE_DEVICE", "EXAMPLE_KEY_SEED", "example_key", "minute_batch", "tiny_batch"]

#: Device id used by the examples.
EXAMPLE_DEVICE = "car-0001"
#: Ed25519 private key seed of the examples (RFC 8032 test 1 seed; never use it for real).
EXAMPLE_KEY_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
_T0 = 1_735_689_600_000  # 2025-01-01T00:00:00Z


def example_key() -> Ed25519PrivateKey:
    """The examples' private key (public key d75a9801...511a, RFC 8032 test 1)."""
    return Ed25519PrivateKey.from_private_bytes(EXAMPLE_KEY_SEED)


def tiny_batch() -> Batch:
    """The worked example: two fixes, two samples, one alert, one counter."""
    return Batch(
        device_id=EXAMPLE_DEVICE,
        boot_id=bytes(range(16)),
        seq=7,
        created_ms=_T0 + 1_000,
        fixes=(
            Fix(_T0, 31.2304, 121.4737, alt_m=4.5, speed_mps=0.0, mode=FixMode.THREE_D, hdop=0.9, sats_used=9),
            Fix(_T0 + 100, 31.2305, 121.4736, alt_m=4.5, speed_mps=1.25, mode=FixMode.THREE_D, hdop=0.9, sats_used=9),
        ),
        samples=(
            SignalSample("Vehicle.Speed", _T0, 4.5),
            SignalSample("Vehicle.Cabin.Door.Row1.DriverSide.IsOpen", _T0 + 50, True),
        ),
        alerts=(Alert("door_open_at_night", Severity.WARNING, _T0 + 50, "e1", AlertState.RAISED, {"count": 3}),),
        counters={"dropped_samples": 0},
    )


_MINUTE_SIGNALS = (
    "Vehicle.Speed",
    "Vehicle.LowVoltageBattery.CurrentVoltage",
    "Vehicle.TraveledDistance",
    "Vehicle.LowVoltageSystemState",
    "Vehicle.Cabin.Door.Row1.DriverSide.IsOpen",
)


def minute_batch(seq: int = 1) -> Batch:
    """One minute of a moving car: 600 fixes at 10 Hz, 600 CAN samples, 2 alerts.

    Values look like real data (speeds with 0.01 km/h resolution, a voltage that wanders,
    a growing odometer), so the encoded size is representative.
    """
    fixes = tuple(
        Fix(
            _T0 + 100 * i,
            31.2304 + i * 1.1e-6,
            121.4737 + i * 1.4e-6,
            alt_m=4.5 + (i % 10) * 0.1,
            speed_mps=13.0 + (i % 17) * 0.07,
            course_deg=87.5 + (i % 5) * 0.3,
            mode=FixMode.THREE_D,
            hdop=0.9,
            sats_used=12,
            mean_snr=38.5,
        )
        for i in range(600)
    )
    samples = []
    for i in range(600):
        which = i % 5
        value: bool | float | str
        if which == 0:
            value = round(47.0 + (i % 23) * 0.37, 2)
        elif which == 1:
            value = round(13.8 + (i % 7) * 0.01, 2)
        elif which == 2:
            value = round(12_345.6 + i * 0.0013, 3)
        elif which == 3:
            value = "ON"
        else:
            value = False
        samples.append(SignalSample(_MINUTE_SIGNALS[which], _T0 + 100 * i, value))
    alerts = (
        Alert(
            "stationary_near_market",
            Severity.HIGH,
            _T0,
            "ep-1",
            evidence={"market": "sh-jiading-ucm", "dwell_s": 259_200, "distance_m": 120.5},
        ),
        Alert("night_door_openings", Severity.WARNING, _T0 + 30_000, "ep-2", evidence={"count": 4}),
    )
    return Batch(EXAMPLE_DEVICE, bytes(16), seq, _T0 + 60_000, fixes=fixes, samples=tuple(samples), alerts=alerts)
