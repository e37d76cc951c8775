"""The edge has one error tree: every exception class it defines derives from EdgeError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import edge
from edge.errors import ConfigError, DeviceError, EdgeError, InputError, UsageError

#: Every module of the edge package (drivers are installed in the test environment).
MODULES = sorted(m.name for m in pkgutil.walk_packages(edge.__path__, "edge.") if not m.name.endswith("__main__"))


def edge_exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    for name in MODULES:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if inspect.isclass(value) and issubclass(value, BaseException) and value.__module__.startswith("edge."):
                found[f"{value.__module__}.{attr}"] = value
    return found


def test_every_edge_exception_is_in_the_one_tree() -> None:
    classes = edge_exception_classes()
    assert len(classes) > 20
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, EdgeError))
    assert outside == []


def test_errors_say_who_is_to_blame() -> None:
    from edge.batcher import BatcherError
    from edge.canbus import DbcError, SignalMapError
    from edge.canbus.errors import CanLogError
    from edge.gnss import PortUnavailable
    from edge.gnss.errors import BadChecksum, StaleEpoch
    from edge.outbox import OutboxError
    from edge.rules import EventError, StateError
    from edge.sequence import SequenceError
    from edge.uplink import DownlinkRejectedError, UplinkError

    assert all(issubclass(c, ConfigError) for c in (DbcError, SignalMapError))
    assert all(issubclass(c, DeviceError) for c in (PortUnavailable, OutboxError, SequenceError))
    assert all(issubclass(c, InputError) for c in (BadChecksum, StaleEpoch, StateError, CanLogError,
                                                    DownlinkRejectedError))  # fmt: skip
    assert all(issubclass(c, UsageError) for c in (EventError, BatcherError, UplinkError))
    assert issubclass(PortUnavailable, OSError)  # still an OSError for code that catches those
