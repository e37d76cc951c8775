"""Test helpers shared by the suites that run ``lienwatch collector serve`` as a subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

WAIT_S = 60.0  # generous: two shared cores


def wait_until(condition: Callable[[], Any], timeout: float = WAIT_S, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy (returned); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


def collector_command() -> list[str]:
    """argv prefix that runs ``lienwatch collector`` with this interpreter (``python -m collector``)."""
    return [sys.executable, "-m", "collector"]


class CollectorProcess:
    """``lienwatch collector serve [ARGS] --config F`` in a subprocess; stderr kept for asserts."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*collector_command(), "serve", *args, "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace"))

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, ready: Callable[[], bool] = lambda: True) -> None:
        """Wait until the ingest has subscribed and ``ready()`` holds; fail if the process exits."""

        def subscribed() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"collector exited:\n{self.log}")
            return "subscribed to" in self.log and ready()

        try:
            wait_until(subscribed, what="collector ready")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; the collector's log ends:\n{self.log[-3000:]}") from None

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(WAIT_S)
        self._reader.join(WAIT_S)

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(WAIT_S)
        self._reader.join(WAIT_S)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._reader.join(WAIT_S)
