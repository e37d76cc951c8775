"""A job run on a thread every ``interval_s`` (the first run one interval after start).

Used for retention. A failing run is logged with its traceback and counted; the job goes
on with the next interval. :meth:`PeriodicJob.stop` waits for a run in progress to finish.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable

from .errors import CollectorError

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
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread."""
        if self._thread is not None:
            raise CollectorError(f"job {self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"lw-{self.name}", daemon=False)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the thread (a run in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("job %s did not stop within %.0f s", self.name, timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                result = self.action()
            except Exception:  # one failed run must not end the job
                self.counters["errors"] += 1
                log.exception("job %s failed; next run in %.0f s", self.name, self.interval_s)
            else:
                self.counters["runs"] += 1
                log.info("job %s done: %s", self.name, result)
            self.ran.set()
