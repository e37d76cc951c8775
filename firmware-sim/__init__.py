"""Vehicle + receiver simulator: NMEA and an SLCAN adapter on pseudo-terminals.

An independent peer of the agent: it shares no parsing code with ``edge``.
"""

__all__: list[str] = []
