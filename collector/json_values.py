"""JSON-ready copies of values decoded from the wire.

The protocol hands alert evidence over as CBOR decodes it: frozen mappings and tuples,
possibly nested. The collector stores it as JSON (ingest) and shows it in risk reasons
(API, webhooks); :func:`json_ready` is the one conversion both use.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["json_ready"]


def json_ready(value: Any) -> Any:
    """A copy of ``value`` with every mapping a ``dict`` (keys as text) and every sequence a ``list``."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value
