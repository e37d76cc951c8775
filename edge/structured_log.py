"""The agent's log lines: one JSON object (or ``key=value`` line) per event.

The record's message is the event name; structured fields come from
``extra={"fields": {...}}``, which :func:`log_event` fills.
"""

from __future__ import annotations

import json
import logging

__all__ = ["StructuredFormatter", "log_event"]


def log_event(logger: logging.Logger, level: int, name: str, **fields: object) -> None:
    """Log event ``name`` with structured ``fields``."""
    logger.log(level, name, extra={"fields": fields})


class StructuredFormatter(logging.Formatter):
    """One log line per record: JSON objects or ``key=value`` pairs.

    Args:
        style: ``json`` or ``kv``.
    """

    def __init__(self, style: str = "json") -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line."""
        fields: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.style == "json":
            return json.dumps(fields, default=str, separators=(",", ":"))
        return " ".join(f"{k}={json.dumps(v, default=str) if isinstance(v, str) and ' ' in v else v}"
                        for k, v in fields.items())
