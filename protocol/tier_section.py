"""The ``tier`` section of a device configuration (docs/protocol.md section 6): the loan's risk
tier and the reporting policy it asks of the device.

Shared by the collector (which builds it from the loan's customer tier, issue 15) and the
agent (which applies it). Pure.

``{"name": "risk", "batch_interval_s": 60}``:

* ``name``: the customer tier (``on_time_12m``, ``minor_lates_cured``, ``new``, ``risk``;
  any ``[a-z0-9_]{1,32}``, so a new tier needs no agent upgrade);
* ``batch_interval_s``: seconds between uploaded batches while no rule has an open episode
  (the agent's ``[batch] max_age_s`` while this section is in force), 10..86,400.

Other keys are ignored (a newer collector may add some), so old agents keep working.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import TierSectionError

__all__ = ["MAX_BATCH_INTERVAL_S", "MIN_BATCH_INTERVAL_S", "TierSection", "load_tier_section"]

MIN_BATCH_INTERVAL_S = 10
MAX_BATCH_INTERVAL_S = 86_400
_NAME = re.compile(r"[a-z0-9_]{1,32}")


@dataclass(frozen=True, slots=True)
class TierSection:
    """A validated ``tier`` section."""

    name: str
    batch_interval_s: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise TierSectionError(f"tier name {self.name!r:.40} must match [a-z0-9_]{{1,32}}")
        value = self.batch_interval_s
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not MIN_BATCH_INTERVAL_S <= value <= MAX_BATCH_INTERVAL_S
        ):
            raise TierSectionError(
                f"tier batch_interval_s={value!r:.40} must be a number in "
                f"[{MIN_BATCH_INTERVAL_S}, {MAX_BATCH_INTERVAL_S}]"
            )

    def as_dict(self) -> dict[str, Any]:
        """The section as it goes into a configuration body."""
        return {"name": self.name, "batch_interval_s": self.batch_interval_s}


def load_tier_section(section: object) -> TierSection:
    """Validate a ``tier`` section (unknown keys are ignored).

    Raises:
        TierSectionError: not a map, a key missing, or a value out of range.
    """
    if not isinstance(section, Mapping):
        raise TierSectionError(f"tier section must be a map, got {type(section).__name__}")
    missing = [k for k in ("name", "batch_interval_s") if k not in section]
    if missing:
        raise TierSectionError(f"tier section lacks {missing}")
    return TierSection(section["name"], section["batch_interval_s"])
