"""Reading a file an operator names (a markets list, a device's public key), with a size limit.

The size is checked before the content is read, and the read itself stops one byte past
the limit, so a huge or growing file never ends up in memory.
"""

from __future__ import annotations

from pathlib import Path

from .errors import CollectorError

__all__ = ["FileReadError", "read_bounded"]


class FileReadError(CollectorError):
    """A named file cannot be read, or is larger than its limit."""


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """Return the bytes of ``path`` if it holds at most ``limit`` bytes.

    Args:
        path: the file.
        limit: largest accepted size in bytes.
        what: what the file is, for messages (``"markets file"``).

    Raises:
        FileReadError: unreadable (the OS reason named) or over ``limit`` (the size named).
    """
    try:
        size = path.stat().st_size
        if size > limit:
            raise FileReadError(f"{what} {path} is {size} bytes, over the {limit} byte limit")
        with path.open("rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise FileReadError(f"cannot read {what} {path}: {exc.strerror}") from exc
    if len(data) > limit:
        raise FileReadError(f"{what} {path} grew over the {limit} byte limit while being read")
    return data
