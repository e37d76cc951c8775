"""GnssSource over real pyserial ports: pseudo-terminals (with a reopen), loop://, socket://; and config."""

from __future__ import annotations

import datetime as dt
import os
import socket
import threading
import time
import tomllib
from collections.abc import Callable
from functools import reduce
from pathlib import Path

import pytest

from edge.config import ConfigError, GnssSettings, parse_config
from edge.gnss import GnssSource, NmeaDecoder, PortUnavailable, source_from_config
from protocol import Fix, NoFix


def nmea(body: str) -> bytes:
    return f"${body}*{reduce(lambda a, c: a ^ ord(c), body, 0):02X}\r\n".encode()


def epoch(second: int) -> bytes:
    hms = f"1235{second:02d}"
    return nmea(f"GPRMC,{hms},A,4807.038,N,01131.000,E,022.4,084.4,230324,,,A") + nmea(
        f"GPGGA,{hms},4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,"
    )


def seconds(records: list[Fix | NoFix]) -> list[int]:
    return [r.time_ms // 1000 % 60 for r in records]


def read_until(
    source: GnssSource, done: Callable[[list[Fix | NoFix]], bool], limit_s: float = 20.0
) -> list[Fix | NoFix]:
    """Read until ``done(records)`` holds; bounded in time (generous: the machine is shared)."""
    got: list[Fix | NoFix] = []
    deadline = time.monotonic() + limit_s
    while not done(got):
        assert time.monotonic() < deadline, f"timed out; got {got}, counters {source.counters.as_dict()}"
        got += source.read(timeout=0.2)
    return got


def new_pty(link: Path) -> int:
    """Open a pty pair, point ``link`` at the slave, keep only the master (the 'receiver')."""
    master, slave = os.openpty()
    target = os.ttyname(slave)
    os.close(slave)
    tmp = link.with_suffix(".new")
    os.symlink(target, tmp)
    os.replace(tmp, link)
    return master


def test_pty_receiver_disappears_and_the_source_reopens_it(tmp_path: Path) -> None:
    link = tmp_path / "gnss0"
    master = new_pty(link)
    source = GnssSource(str(link), 9600, backoff_initial_s=0.01, backoff_max_s=0.05)
    try:
        source.open()
        os.write(master, epoch(19) + epoch(20))
        assert seconds(read_until(source, bool)) == [19]
        os.close(master)  # the receiver is unplugged: the slave reads EIO
        master = -1
        # The open epoch (12:35:20) is flushed when the port goes away.
        assert seconds(read_until(source, bool)) == [20]
        assert source.counters.port_losses == 1
        read_until(source, lambda _: source.counters.open_failures > 0)
        master = new_pty(link)  # plugged back in at the same path
        read_until(source, lambda _: source.port is not None)
        os.write(master, epoch(21) + epoch(22))
        # 21 closes when 22 starts; by then the decoder has seen two cycles end with the same
        # sentence, so 22 is emitted at its last sentence instead of one cycle later.
        assert seconds(read_until(source, bool)) == [21, 22]
        counters = source.counters
        assert counters.port_reopens == 1
        assert counters.reopen_attempts == counters.open_failures + 1
        assert counters.fixes_emitted == 4
        assert counters.epochs_closed_early == 1
    finally:
        source.close()
        if master >= 0:
            os.close(master)
    assert source.at_end
    assert source.port is None
    assert source.read(0.01) == []


def test_noise_on_the_pty_is_survived(tmp_path: Path) -> None:
    link = tmp_path / "gnss1"
    master = new_pty(link)
    try:
        with GnssSource(str(link), 115200) as source:
            source.open()
            os.write(master, b"\xff\x00\x13garbage\r\n$GPGGA,12" + epoch(19) + b"$GPRMC,1235*00\r\n" + epoch(20))
            assert seconds(read_until(source, bool)) == [19]
            c = source.counters
            assert c.unparsable_lines == 1
            assert c.truncated_sentences == 1
            assert c.bad_checksums == 1
    finally:
        os.close(master)


def test_loop_url() -> None:
    with GnssSource("loop://") as source:
        source.open()
        assert source.port is not None
        source.port.write(epoch(19) + epoch(20))
        assert seconds(source.read(timeout=5.0)) == [19]
        assert source.read(timeout=0.05) == []  # 12:35:20 stays open until the next epoch
        assert seconds(source.decoder.flush()) == [20]


def test_socket_url_ends_when_the_peer_closes() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    opened = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            # pyserial drains what is already buffered when it opens a socket:// URL
            if opened.wait(timeout=20):
                conn.sendall(epoch(19) + epoch(20) + epoch(21))

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        source = GnssSource(f"socket://127.0.0.1:{port}", reopen=False)
        source.open()
        opened.set()
        got = read_until(source, lambda _: source.at_end)
        assert seconds(got) == [19, 20, 21]
        assert source.counters.port_losses == 1
        assert source.read(0.01) == []
        source.close()
    finally:
        thread.join(timeout=10)
        server.close()


def test_reopen_backoff_doubles_up_to_the_limit(tmp_path: Path) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(s: float) -> None:
        sleeps.append(round(s, 6))
        now[0] += s

    source = GnssSource(
        str(tmp_path / "no-such-device"),
        backoff_initial_s=0.1,
        backoff_max_s=0.5,
        clock=lambda: now[0],
        sleep=sleep,
    )
    assert source.read(timeout=1.0) == []
    # attempts at t = 0, 0.1, 0.3, 0.7; the next (1.2) is past the deadline
    assert sleeps == [0.1, 0.2, 0.4, 0.3]
    assert source.counters.open_failures == 4
    assert source.counters.reopen_attempts == 3
    assert isinstance(source.last_port_error, PortUnavailable)
    assert "no-such-device" in str(source.last_port_error)
    sleeps.clear()
    source.read(timeout=2.0)
    assert sleeps
    assert max(sleeps) <= 0.5
    assert not source.at_end


def test_open_errors_are_typed(tmp_path: Path) -> None:
    source = GnssSource(str(tmp_path / "missing"), reopen=False)
    with pytest.raises(PortUnavailable, match="missing"):
        source.open()
    assert source.at_end
    assert source.counters.open_failures == 1
    with pytest.raises(ConfigError, match="not a valid pyserial URL"):
        GnssSource("nosuchscheme://x").open()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": ""}, "url"),
        ({"url": "loop://", "baud": 0}, "baud"),
        ({"url": "loop://", "baud": True}, "baud"),
        ({"url": "loop://", "backoff_initial_s": 0}, "backoff"),
        ({"url": "loop://", "backoff_initial_s": 2, "backoff_max_s": 1}, "backoff"),
        ({"url": "loop://", "poll_s": 0}, "poll_s"),
    ],
)
def test_invalid_source_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        GnssSource(**kwargs)  # type: ignore[arg-type]


def gnss_settings(section: dict[str, object], base_dir: Path) -> GnssSettings:
    """The [gnss] section as agent.toml's one loader parses it."""
    config = parse_config({"device": {"id": "a", "key_file": "k"}, "gnss": section}, base_dir, environ={})
    assert config.gnss is not None
    return config.gnss


def test_source_from_config(tmp_path: Path) -> None:
    section = tomllib.loads('url = "links/gnss"\nbaud = 115200\nearliest_date = 2023-01-01\nbackoff_max_s = 2\n')
    source = source_from_config(gnss_settings(section, tmp_path))
    assert source.url == str(tmp_path / "links" / "gnss")
    assert source.baud == 115200
    assert source.decoder.earliest_date == dt.date(2023, 1, 1)
    assert source.backoff_max_s == 2.0
    assert source_from_config(gnss_settings({"url": "/dev/ttyS1"}, tmp_path)).url == "/dev/ttyS1"
    assert source_from_config(gnss_settings({"url": "socket://127.0.0.1:1"}, tmp_path)).url == "socket://127.0.0.1:1"
    assert source_from_config(
        gnss_settings({"url": "loop://", "earliest_date": "2021-05-01"}, tmp_path)
    ).decoder.earliest_date == dt.date(2021, 5, 1)


@pytest.mark.parametrize(
    ("section", "match"),
    [
        ({}, "url"),
        ({"url": 5}, "url"),
        ({"url": "loop://", "bauds": 9600}, "has unknown key 'bauds'"),
        ({"url": "loop://", "baud": "fast"}, "baud"),
        ({"url": "loop://", "earliest_date": "yesterday"}, "earliest_date"),
        ({"url": "loop://", "earliest_date": dt.date(1980, 1, 6)}, "earliest_date"),
        ({"url": "loop://", "max_sentence": 5}, "max_sentence"),
        ({"url": "loop://", "backoff_max_s": "1"}, "backoff_max_s"),
    ],
)
def test_source_from_config_rejects_bad_sections(section: dict[str, object], match: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=match):
        source_from_config(gnss_settings(section, tmp_path))


def test_decoder_is_shared_with_the_source() -> None:
    decoder = NmeaDecoder()
    source = GnssSource("loop://", decoder=decoder)
    assert source.decoder is decoder
    assert source.counters is decoder.counters
