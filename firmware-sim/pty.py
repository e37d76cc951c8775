"""A pseudo-terminal published at a symlink: the simulator's end of a serial cable.

How this works: :class:`PtyLink` opens a pty pair, puts it in raw mode, keeps both ends
open (so writes never fail with EIO while no host is attached) and points a symlink at
the slave (``/tmp/gnss0 -> /dev/pts/7``). Writes are non-blocking and go through a
bounded buffer: when the host does not read, bytes beyond the limit are refused and
counted, as a UART FIFO would overflow, instead of blocking the simulation. ``unplug``
closes the pty and removes the symlink (the host sees EIO / a vanished device);
``plug`` creates a new pty at the same path, like a USB adapter enumerating again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tty
from collections import Counter
from pathlib import Path

from .errors import LinkError

__all__ = ["PtyLink"]


class PtyLink:
    """One pty published at ``link_path``.

    Args:
        link_path: where the symlink goes; an existing symlink there is replaced, any other
            file is refused.
        max_pending: bytes buffered while the host is not reading before writes are refused.
    """

    def __init__(self, link_path: str | Path, *, max_pending: int = 256 * 1024) -> None:
        self.link_path = Path(link_path)
        self.max_pending = max_pending
        self.counters: Counter[str] = Counter()
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._pending = bytearray()

    @property
    def plugged(self) -> bool:
        """True while the pty exists."""
        return self._master is not None

    @property
    def device(self) -> str:
        """The pty slave path (``/dev/pts/N``), or ``""`` while unplugged."""
        return self._slave_name

    def fileno(self) -> int:
        """The master fd (for select)."""
        if self._master is None:
            raise LinkError(f"{self.link_path}: link is unplugged")
        return self._master

    def plug(self) -> None:
        """Create the pty and publish it at the link path."""
        if self._master is not None:
            return
        if self.link_path.exists() and not self.link_path.is_symlink():
            raise LinkError(f"{self.link_path} exists and is not a symlink; refusing to replace it")
        try:
            master, slave = os.openpty()
        except OSError as exc:
            raise LinkError(f"cannot allocate a pseudo-terminal for {self.link_path}: {exc}") from exc
        tty.setraw(slave)
        os.set_blocking(master, False)
        name = os.ttyname(slave)
        temporary = self.link_path.with_name(f".{self.link_path.name}.{os.getpid()}.tmp")
        try:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            temporary.symlink_to(name)
            temporary.replace(self.link_path)  # atomic: the path never points nowhere
        except OSError as exc:
            os.close(master)
            os.close(slave)
            raise LinkError(f"cannot create the symlink {self.link_path} -> {name}: {exc}") from exc
        self._master, self._slave, self._slave_name = master, slave, name
        self._pending.clear()
        self.counters["plugs"] += 1

    def unplug(self) -> None:
        """Close the pty and remove the symlink (if it still points at our pty)."""
        if self._master is None:
            return
        with contextlib.suppress(OSError):
            if self.link_path.is_symlink() and os.readlink(self.link_path) == self._slave_name:
                self.link_path.unlink()
        for fd in (self._master, self._slave):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = None
        self._slave_name = ""
        self.counters["dropped_bytes"] += len(self._pending)
        self._pending.clear()

    def room(self) -> int:
        """Bytes that :meth:`write` would accept now."""
        return max(0, self.max_pending - len(self._pending)) if self.plugged else 0

    def write(self, data: bytes) -> bool:
        """Queue ``data`` whole and flush what the pty takes; False (and counted) if it does not fit."""
        if not data:
            return True
        if self._master is None or len(self._pending) + len(data) > self.max_pending:
            self.counters["dropped_bytes"] += len(data)
            self.counters["dropped_writes"] += 1
            return False
        self._pending += data
        self.flush()
        return True

    def flush(self) -> None:
        """Write as much of the buffer as the pty accepts without blocking."""
        while self._pending and self._master is not None:
            try:
                written = os.write(self._master, self._pending)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EAGAIN):
                    return
                raise LinkError(f"{self.link_path}: write failed: {exc}") from exc
            self.counters["bytes_written"] += written
            del self._pending[:written]

    @property
    def pending(self) -> int:
        """Bytes waiting for the host to read."""
        return len(self._pending)

    def read(self, limit: int = 65536) -> bytes:
        """Bytes the host wrote, without blocking (``b""`` if none)."""
        if self._master is None:
            return b""
        try:
            data = os.read(self._master, limit)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError as exc:
            if exc.errno == errno.EIO:
                return b""
            raise LinkError(f"{self.link_path}: read failed: {exc}") from exc
        self.counters["bytes_read"] += len(data)
        return data

    def close(self) -> None:
        """Same as :meth:`unplug` (for ``with`` blocks and cleanup paths)."""
        self.unplug()

    def __enter__(self) -> PtyLink:
        self.plug()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
