"""Pytest plugin (``-p tests.tbox_mode``): run protocol tests as a 32-bit ARM T-BOX would.

There, numpy has no wheel and cbor2 is the 5.x pure-Python line without the strict decoder
options. This plugin hides numpy (any import of it fails) and switches the strict CBOR
decoder to the path it takes on cbor2 5.x (the well-formedness scan, then a lenient decode),
so the same test modules prove both paths. Used by ``tests/test_protocol_portable.py``.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType

import protocol._strict_cbor


class _HiddenModules(importlib.abc.MetaPathFinder):
    """Makes ``import numpy`` fail as it does where numpy is not installed."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname == "numpy" or fullname.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden by tests.tbox_mode)", name=fullname)
        return None


if "numpy" in sys.modules:
    raise RuntimeError("tests.tbox_mode must load before anything imports numpy")
sys.meta_path.insert(0, _HiddenModules())
protocol._strict_cbor.NATIVE_STRICTNESS = False


def pytest_report_header() -> str:
    return "tbox mode: numpy hidden, strict CBOR via the cbor2 5.x scan path"
