"""The simulator's error tree.

Every error carries a short stable ``reason`` slug and a message that names the input
and the limit it broke. Bad bytes *received* by the simulator (SLCAN commands from the
host) never raise: the adapter answers BEL and counts them, like real hardware.
"""

from __future__ import annotations

__all__ = ["LinkError", "ScenarioError", "SimError"]


class SimError(Exception):
    """Root of every error raised by :mod:`firmware_sim`."""

    reason = "sim_error"


class ScenarioError(SimError):
    """A scenario file (or text) is not valid: unknown key, bad value, impossible timeline.

    Attributes:
        source: the file name or label of the scenario text.
        where: the key path inside the scenario (``segment[2].event[0].at``), or ``""``.
    """

    reason = "bad_scenario"

    def __init__(self, source: str, where: str, message: str) -> None:
        self.source = source
        self.where = where
        location = f"{source}: {where}: " if where else f"{source}: "
        super().__init__(location + message)


class LinkError(SimError):
    """A pseudo-terminal link could not be created, symlinked or removed."""

    reason = "link_error"
