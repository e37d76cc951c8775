"""The rig's TCP relay: a black hole carries nothing and closes nothing; the link comes back."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from firmware_sim.rig import LinkCutter


class Echo:
    """A loopback echo server on a free port (threads, no process)."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.server.accept()
                self.accepted += 1
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self.server.close()
        self._thread.join(5)


@pytest.fixture
def relay() -> Iterator[tuple[LinkCutter, Echo]]:
    echo = Echo()
    cutter = LinkCutter(echo.port)
    yield cutter, echo
    cutter.close()
    echo.close()


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def test_black_hole_carries_nothing_closes_nothing_and_the_link_resumes(relay: tuple[LinkCutter, Echo]) -> None:
    cutter, _echo = relay
    with _connect(cutter.port) as sock:
        sock.sendall(b"hello")
        assert sock.recv(100) == b"hello"
        cutter.blackhole()
        sock.sendall(b"lost?")
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):  # no answer, and no EOF (recv would return b"") nor RST
            sock.recv(100)
        cutter.restore()
        sock.settimeout(5)
        assert sock.recv(100) == b"lost?"  # held, not dropped: TCP delivers late


def test_connections_opened_in_a_black_hole_are_relayed_only_if_still_wanted(relay: tuple[LinkCutter, Echo]) -> None:
    cutter, echo = relay
    cutter.blackhole()
    gave_up = _connect(cutter.port)  # the kernel completes the handshake; nothing is relayed
    gave_up.sendall(b"CONNECT-1")
    waiting = _connect(cutter.port)
    waiting.sendall(b"CONNECT-2")
    gave_up.close()
    waiting.settimeout(0.5)
    with pytest.raises(TimeoutError):
        waiting.recv(100)
    assert echo.accepted == 0
    cutter.restore()
    waiting.settimeout(5)
    assert waiting.recv(100) == b"CONNECT-2"
    waiting.close()
    assert echo.accepted == 1  # the abandoned connection's bytes never reached the server


def test_cut_closes_and_refuses(relay: tuple[LinkCutter, Echo]) -> None:
    cutter, _echo = relay
    with _connect(cutter.port) as sock:
        cutter.cut()
        assert sock.recv(100) == b""
    cutter.restore()
    with _connect(cutter.port) as sock:
        sock.sendall(b"back")
        assert sock.recv(100) == b"back"
