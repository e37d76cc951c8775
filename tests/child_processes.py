"""Child processes a test starts, none left running after it (the ``processes`` fixture)."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Sequence
from typing import Any

#: a child process a test started is killed if it has not exited this long after the test
CHILD_EXIT_S = 10.0


class ChildProcesses:
    """Child processes of one test: started here, and none left running after it.

    Same arguments as :func:`subprocess.run` / :class:`subprocess.Popen`.
    """

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[Any]] = []

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` to completion (like :func:`subprocess.run`)."""
        return subprocess.run(argv, **kwargs)  # noqa: PLW1510  # callers pass check= when they mean it

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` (like :class:`subprocess.Popen`); the test stops it, or teardown kills it."""
        proc = subprocess.Popen(argv, **kwargs)
        self.started.append(proc)
        return proc

    def kill_leftovers(self) -> list[str]:
        """Kill what is still running after :data:`CHILD_EXIT_S`; return their command lines."""
        left: list[str] = []
        for proc in self.started:
            try:
                proc.wait(CHILD_EXIT_S)
            except subprocess.TimeoutExpired:
                left.append(" ".join(map(str, proc.args)))  # type: ignore[arg-type]
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        return left
