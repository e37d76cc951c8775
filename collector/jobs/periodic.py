"""A job run on a thread every ``interval_s`` (the first run one interval after start).

Used for retention; runs on the shared :class:`~collector.jobs.worker_loop.WorkerLoop`. A
failing run is logged with its traceback and counted; the job goes on with the next
interval. :meth:`PeriodicJob.stop` waits for a run in progress to finish.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from ..errors import CollectorError
from .worker_loop import WorkerLoop

__all__ = ["PeriodicJob"]

log = logging.getLogger(__name__)


class PeriodicJob:
    """Calls ``action`` every ``interval_s`` seconds on its own thread.

    Args:
        name: shown in logs and as the thread name.
        interval_s: time between runs; the first run happens one interval after :meth:`start`.
        action: the work; its return value is logged at INFO.
    """

    def __init__(self, name: str, interval_s: float, action: Callable[[], object]) -> None:
        if not interval_s > 0:
            raise CollectorError(f"job {name}: interval_s={interval_s!r} must be > 0")
        self.name = name
        self.interval_s = interval_s
        self.action = action
        self.counters: Counter[str] = Counter()
        #: Set after each run (successful or not).
        self.ran = threading.Event()
        self._loop = WorkerLoop(f"lw-{name}", self._run_once, on_error=self._failed, initial_delay_s=interval_s)

    def start(self) -> None:
        """Start the thread.

        Raises:
            WorkerLoopError: already started.
        """
        self._loop.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread (a run in progress finishes first)."""
        self._loop.stop(timeout)

    def _run_once(self) -> float:
        result = self.action()
        self.counters["runs"] += 1
        log.info("job %s done: %s", self.name, result)
        self.ran.set()
        return self.interval_s

    def _failed(self, exc: Exception) -> float:
        self.counters["errors"] += 1
        log.error("job %s failed; next run in %.0f s", self.name, self.interval_s, exc_info=exc)
        self.ran.set()
        return self.interval_s
