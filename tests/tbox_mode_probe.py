"""Run only under ``-p tests.tbox_mode`` (by tests/test_protocol_portable.py): the mode is in force."""

from __future__ import annotations

import sys

import pytest

import protocol
from protocol import _strict_cbor
from protocol.examples import minute_batch


def test_numpy_cannot_be_imported_and_was_not() -> None:
    with pytest.raises(ModuleNotFoundError):
        import numpy  # noqa: F401
    protocol.decode_batch(protocol.encode_batch(minute_batch()))
    assert "numpy" not in sys.modules
    assert _strict_cbor.NATIVE_STRICTNESS is False
