"""The names of the on-device alert rules: the ``rule`` of every :class:`~protocol.Alert`.

The agent's rules raise alerts under these names and the collector's risk engine matches
on them, so both sides take them from here.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["RuleName"]


class RuleName(StrEnum):
    """An alert rule's name as it travels in a batch (see docs/rules.md)."""

    STATIONARY_NEAR_MARKET = "stationary_near_market"
    NIGHT_DOOR_OPENINGS = "night_door_openings"
    POWER_CUT = "power_cut"
    GNSS_LOST = "gnss_lost"
    GNSS_JAMMING = "gnss_jamming"
    TOWING = "towing"
    REGION_EXIT = "region_exit"
