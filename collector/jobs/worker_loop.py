"""The one background-thread loop every collector job runs on: start, stop, wake.

How this works
--------------
A :class:`WorkerLoop` owns one non-daemon thread. The thread waits ``initial_delay_s``
(interruptible by :meth:`~WorkerLoop.stop`), then repeats: clear the wake flag, run one
round, wait for the delay the round returned or until :meth:`~WorkerLoop.wake` is called,
whichever comes first. Clearing the flag *before* the round means a wake that arrives
during a round triggers the next one at once instead of being lost.

The thread must survive a failing round, so the loop is the thread boundary: any
``Exception`` from a round goes to the job's ``on_error`` (which counts and logs it the
job's way and returns how long to wait before retrying). Nothing broader is caught
anywhere else in the jobs.

:meth:`~WorkerLoop.stop` sets the stop flag, wakes the thread and joins it: a round in
progress finishes first. Jobs check :attr:`~WorkerLoop.stopping` inside long rounds.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import sqlalchemy as sa

from protocol.errors import ProtocolError

from ..errors import CollectorError

__all__ = ["WorkerLoop", "WorkerLoopError", "log_round_failure"]

log = logging.getLogger(__name__)


#: what a round can meet in normal operation (database or broker trouble, a refused key or
#: message): logged as a warning; anything else is a bug and keeps its traceback
EXPECTED_ROUND_ERRORS: tuple[type[Exception], ...] = (sa.exc.SQLAlchemyError, CollectorError, ProtocolError)


def log_round_failure(logger: logging.Logger, what: str, exc: Exception, delay_s: float) -> None:
    """Log a failed round of ``what`` the jobs' way (see :data:`EXPECTED_ROUND_ERRORS`)."""
    if isinstance(exc, EXPECTED_ROUND_ERRORS):
        logger.warning("%s failed, retrying in %.1f s: %s", what, delay_s, exc)
    else:
        logger.error("%s failed unexpectedly, retrying in %.1f s", what, delay_s, exc_info=exc)


class WorkerLoopError(CollectorError):
    """A worker loop was started twice."""


class WorkerLoop:
    """Runs ``run_round`` on its own thread until stopped.

    Args:
        name: thread name (also in log lines).
        run_round: one round of work; returns the seconds to wait before the next round
            (a :meth:`wake` cuts the wait short).
        on_error: called with the exception of a failed round (on the loop's thread);
            returns the seconds to wait before the next round.
        initial_delay_s: wait before the first round (a periodic job's first run comes one
            interval after start); a :meth:`wake` does not cut it short.
    """

    def __init__(
        self,
        name: str,
        run_round: Callable[[], float],
        *,
        on_error: Callable[[Exception], float],
        initial_delay_s: float = 0.0,
    ) -> None:
        self.name = name
        self._run_round = run_round
        self._on_error = on_error
        self._initial_delay_s = initial_delay_s
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (long rounds check it to end early)."""
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread.

        Raises:
            WorkerLoopError: already started.
        """
        if self._thread is not None:
            raise WorkerLoopError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=False)
        self._thread.start()

    def wake(self) -> None:
        """Run the next round now instead of when the current wait ends."""
        self._wake.set()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop after the round in progress and wait up to ``timeout`` seconds for the thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("%s did not stop within %.0f s", self.name, timeout)
            self._thread = None

    def _run(self) -> None:
        if self._initial_delay_s > 0 and self._stop.wait(self._initial_delay_s):
            return
        while not self._stop.is_set():
            self._wake.clear()  # before the round: a wake() during it triggers the next one at once
            try:
                delay = self._run_round()
            except Exception as exc:  # noqa: BLE001 - the thread boundary: a failed round must not end the job
                delay = self._on_error(exc)
            self._wake.wait(max(0.0, delay))
