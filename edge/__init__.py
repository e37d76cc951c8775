"""LienWatch edge agent: GNSS and CAN sources, on-device rules, batching and uplink.

The public names below are imported lazily (PEP 562), so ``python -m edge`` and the
``lienwatch`` dispatcher start without loading python-can, cantools or numpy.

Subpackages and modules: :mod:`edge.gnss`, :mod:`edge.canbus`, :mod:`edge.rules`,
:mod:`edge.config`, :mod:`edge.batcher`, :mod:`edge.outbox`, :mod:`edge.sequence`,
:mod:`edge.uplink`, :mod:`edge.agent`, :mod:`edge.place_files`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Agent": "edge.agent",
    "AgentConfig": "edge.config",
    "load_config": "edge.config",
    "GnssSource": "edge.gnss",
    "NmeaDecoder": "edge.gnss",
    "read_nmea_file": "edge.gnss",
    "CanSource": "edge.canbus",
    "SignalDecoder": "edge.canbus",
    "Engine": "edge.rules",
    "RulesConfig": "edge.rules",
    "load_markets_file": "edge.place_files",
    "load_regions_file": "edge.place_files",
    "Batcher": "edge.batcher",
    "Outbox": "edge.outbox",
    "SequenceAllocator": "edge.sequence",
    "Uplink": "edge.uplink",
}

__all__ = [
    "Agent",
    "AgentConfig",
    "Batcher",
    "CanSource",
    "Engine",
    "GnssSource",
    "NmeaDecoder",
    "Outbox",
    "RulesConfig",
    "SequenceAllocator",
    "SignalDecoder",
    "Uplink",
    "load_config",
    "load_markets_file",
    "load_regions_file",
    "read_nmea_file",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
