"""The thread and MQTT client of a job that publishes to the devices (receipts, downlink).

How this works
--------------
A :class:`PublishingWorker` owns a :class:`~collector.jobs.worker_loop.WorkerLoop` that runs
the job's round every ``interval_s`` (sooner on :meth:`~PublishingWorker.wake`) and, when
``[mqtt]`` is given, the job's own MQTT 5 client (client id ``{client_id[:55]}-{job}``, no
manual acks). :meth:`~PublishingWorker.start` connects in the background (paho reconnects by
itself) and starts the thread; :attr:`~PublishingWorker.connected` follows the connection;
:meth:`~PublishingWorker.stop` stops the thread, runs the job's ``before_disconnect`` (the
receipts' last round) and disconnects. A failed round is counted (``errors``) and logged the
jobs' way (:func:`~collector.jobs.worker_loop.log_round_failure`); the next round comes one
interval later.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from ..ingest.service import make_mqtt_client
from ..ingest.settings import MqttSettings
from .worker_loop import WorkerLoop, WorkerLoopError, log_round_failure

__all__ = ["PublishingWorker"]


class PublishingWorker:
    """Runs a publishing job's rounds on its own thread, with its own MQTT 5 client.

    Args:
        job: short name: the thread is ``lw-{job}``, the client id ends in ``-{job}``, log
            lines say ``the {job} connection`` / ``{job} publisher``.
        mqtt_settings: ``[mqtt]``; None: no client (the rounds run, nothing connects).
        run_round: one round of the job's work (its exceptions are counted and logged).
        interval_s: seconds between rounds.
        counters: the job's counters (a failed round adds to ``errors``).
        logger: the job's logger.
        title: names the job in the "already started" error (``receipt publisher``).
        round_name: names a round in log lines (``receipt round``).
        on_connected: called on paho's thread after each accepted connection.
    """

    def __init__(
        self,
        job: str,
        mqtt_settings: MqttSettings | None,
        run_round: Callable[[], object],
        *,
        interval_s: float,
        counters: Counter[str],
        logger: logging.Logger,
        title: str,
        round_name: str,
        on_connected: Callable[[], None] | None = None,
    ) -> None:
        self.job = job
        self.settings = mqtt_settings
        self.interval_s = interval_s
        self.counters = counters
        self.connected = threading.Event()
        self._run_round = run_round
        self._log = logger
        self._title = title
        self._round_name = round_name
        self._on_connected = on_connected
        self._loop = WorkerLoop(f"lw-{job}", self._round, on_error=self._failed)
        self.client: mqtt.Client | None = None
        if mqtt_settings is not None:
            self.client = make_mqtt_client(mqtt_settings, f"{mqtt_settings.client_id[:55]}-{job}", manual_ack=False)
            self.client.on_connect = self._on_connect
            self.client.on_disconnect = self._on_disconnect

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (long rounds check it to end early)."""
        return self._loop.stopping

    def wake(self) -> None:
        """Run a round now instead of at the next interval."""
        self._loop.wake()

    # ------------------------------------------------------------ paho callbacks

    def _on_connect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            self._log.error("broker refused the %s connection: %s", self.job, reason)
            return
        self.connected.set()
        if self._on_connected is not None:
            self._on_connected()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        self.connected.clear()
        if not self._loop.stopping:
            self._log.warning("%s publisher disconnected (%s); reconnecting", self.job, reason)

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect (paho reconnects by itself) and start the round thread.

        Raises:
            WorkerLoopError: already started.
        """
        if self._loop.running:
            raise WorkerLoopError(f"{self._title} already started")
        if self.client is not None and self.settings is not None:
            s = self.settings
            self.client.connect_async(s.host, s.port, keepalive=s.keepalive_s, clean_start=True)
            self.client.loop_start()
        self._loop.start()

    def stop(self, timeout: float = 15.0, *, before_disconnect: Callable[[], None] | None = None) -> None:
        """Stop the thread (a round in progress finishes first), run ``before_disconnect``, disconnect."""
        self._loop.stop(timeout)
        if before_disconnect is not None:
            before_disconnect()
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    def _round(self) -> float:
        self._run_round()
        return self.interval_s

    def _failed(self, exc: Exception) -> float:
        self.counters["errors"] += 1
        log_round_failure(self._log, self._round_name, exc, self.interval_s)
        return self.interval_s
