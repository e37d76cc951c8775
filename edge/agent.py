"""The edge agent: sources -> rules -> batcher -> signed batches -> outbox -> MQTT.

How this works
--------------
Threads: one reader thread per blocking source (GNSS, CAN) puts records on one bounded
queue; the engine thread (the caller of :meth:`Agent.run`) owns the rules engine, the
batcher, the sequence allocator and writes to the outbox; the uplink thread owns the
MQTT client and reads/acks the outbox. Downlink configurations and SIGHUP reloads arrive
on the same queue as records, so the engine is only ever touched by one thread. Each
thread publishes its counters as an immutable snapshot (:mod:`edge.counter_board`) that
the uplink thread merges into the signed state message.

The parts, one job each: :mod:`edge.observation_clock` (CAN on GNSS time),
:mod:`edge.stamped_can` (holding CAN until that clock runs), :mod:`edge.rule_state_file`
(the persisted rule state), :mod:`edge.downlink_apply` (pushed configurations),
:mod:`edge.sealing` (numbering, signing, storing), :mod:`edge.structured_log` (log lines).

Shutdown (SIGTERM): sources stop, the open batch is flushed into the outbox, the rule
state is snapshotted, the uplink gets ``shutdown_grace_s`` to publish what is left and
then publishes a signed offline state. Anything unsent stays in the outbox for next time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import Alert, DailyStats, DeviceState, Fix, NoFix, SignalSample, seal_state, state_topic
from protocol.cli import lienwatch_version
from protocol.errors import ProtocolError
from protocol.tier_section import TierSection

from .batcher import Batcher, ClosedBatch
from .config import AgentConfig, BatchSettings, load_config
from .counter_board import OMITTED, PublishedCounters, counter_values, state_counters
from .downlink_apply import DownlinkApplier, Tracking
from .errors import ConfigError, EdgeError, InputError
from .observation_clock import ObservationClock, host_wall_ms
from .outbox import Outbox
from .place_files import load_rules_places
from .receipts import ReceiptGate, ReceiptMode
from .reporting import ReportingPolicy
from .rule_state_file import RuleStateFile
from .sealing import BatchSealer
from .seams import EngineOutput, RecordSource, RulesEngine, SourceRecord
from .sequence import ConnectionCounter, SequenceAllocator, SequenceError
from .stamped_can import StampedCanSource
from .structured_log import StructuredFormatter, log_event
from .uplink import ConfigGate, Uplink

__all__ = [
    "Agent",
    "ObservationClock",
    "RecordSource",
    "RulesEngine",
    "StructuredFormatter",
    "build_engine",
]

log = logging.getLogger("lienwatch.agent")
#: How often the engine thread publishes its counters, seconds (and at every state message need).
COUNTER_PUBLISH_S = 0.25
#: The agent's own counters (the engine thread's).
AGENT_COUNTERS = (
    "records_in",
    "queue_full_drops",
    "alerts",
    "batches_stored",
    "seal_failures",
    "snapshot_failures",
    "rule_state_lost",
    "engine_errors",
    "source_errors",
    "reloads",
    "reload_failures",
    "fixes_not_tracked",
)
#: Config sections whose change needs a restart (a reload applies [rules] and [batch] only).
RESTART_SECTIONS = ("device", "outbox", "mqtt", "downlink", "gnss", "can")


def _event(level: int, name: str, **fields: object) -> None:
    log_event(log, level, name, **fields)


class MessageKind(Enum):
    """What travels on the engine thread's queue."""

    RECORD = "record"  # a Fix, NoFix or SignalSample from a source thread
    CONFIG = "config"  # a configuration message from the uplink thread
    RELOAD = "reload"  # SIGHUP
    WAKE = "wake"  # request_stop: end the wait now


@dataclass(frozen=True, slots=True)
class _Message:
    kind: MessageKind
    record: SourceRecord | None = None
    topic: str = ""
    payload: bytes = b""


@dataclass
class _SourceThread:
    """A source and its reader thread; ``published`` is what the uplink thread may read."""

    name: str
    source: RecordSource
    thread: threading.Thread | None = None
    errors: int = 0
    records: int = 0
    last_error: str | None = None
    published: PublishedCounters = field(default_factory=PublishedCounters)
    next_publish: float = 0.0

    def publish_due(self, now: float) -> None:
        """Publish if the last snapshot is older than COUNTER_PUBLISH_S (keeps the read loop cheap)."""
        if now >= self.next_publish:
            self.next_publish = now + COUNTER_PUBLISH_S
            self.publish()

    def publish(self) -> None:
        counters = {f"{self.name}_records": self.records, f"{self.name}_errors": self.errors}
        for key, value in counter_values(getattr(self.source, "counters", None)).items():
            counters[f"{self.name}_{key}"] = value
        self.published.publish(counters)


def build_engine(config: AgentConfig, state: Mapping[str, object] | None) -> RulesEngine:
    """The real rules engine from [rules] (markets and regions loaded from their files)."""
    from edge.rules import Engine

    markets, regions = load_rules_places(config.rules)
    return Engine(config.rules, markets=markets, regions=regions, state=state)


EngineFactory = Callable[[AgentConfig, Mapping[str, object] | None], RulesEngine]


class Agent:
    """The edge agent, wired from one :class:`~edge.config.AgentConfig`.

    Args:
        config: the settings.
        private_key: device signing key (default: loaded with protocol.cli.key_files.load_private_key,
            which refuses a key file readable by others).
        engine: the rules engine (default: edge.rules.Engine built from [rules] and the
            persisted snapshot).
        sources: record sources (default: edge.gnss / edge.canbus from [gnss] / [can]).
        boot_id: 16 bytes identifying this run (default: random).
        engine_factory: how to build an engine from (config, snapshot) on start; used when
            ``engine`` is None.
        queue_size: bound of the engine thread's queue.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        private_key: Ed25519PrivateKey | None = None,
        engine: RulesEngine | None = None,
        sources: Mapping[str, RecordSource] | None = None,
        boot_id: bytes | None = None,
        engine_factory: EngineFactory = build_engine,
        queue_size: int = 20_000,
    ) -> None:
        self.config = config
        self.device_id = config.device.id
        self.boot_id = boot_id or secrets.token_bytes(16)
        self.clock = ObservationClock()
        self.counters: dict[str, int] = dict.fromkeys(AGENT_COUNTERS, 0)
        self._published = PublishedCounters()
        self._omitted_logged = False
        self._started_mono = time.monotonic()
        # Keys first: a start that fails on them leaves nothing behind (no data folder made).
        if private_key is None:
            from protocol.cli.key_files import load_private_key

            private_key = load_private_key(config.device.key_file)
        self._key = private_key
        collector_key = None
        if config.downlink.enabled:
            from protocol.cli.key_files import load_public_key

            assert config.downlink.collector_public_key is not None
            collector_key = load_public_key(config.downlink.collector_public_key)
        data_dir = config.device.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.rule_state = RuleStateFile(data_dir / "rules_state.json", self.counters)
        self.snapshot_path = self.rule_state.path
        self.outbox = Outbox(config.outbox.path, max_bytes=config.outbox.max_bytes)
        # A missing sequence file cannot be told from a wiped data directory: start at the
        # clock floor (docs/protocol.md, "Sequence identity") so a wiped box is never muted.
        self.sequence = SequenceAllocator(
            data_dir / "sequence",
            committed_high=self.outbox.committed_high,
            block=config.outbox.seq_block,
            floor_when_missing=True,
        )
        # State messages carry a connection counter that never repeats (docs/protocol.md
        # section 5): a replayed Last Will of an earlier connection is stale at the collector.
        self.connections = ConnectionCounter(data_dir / "connection")
        self._connection: int | None = None
        self.engine = engine if engine is not None else self._build_engine(engine_factory)
        #: the ``tier`` section of the signed configuration in force (None: the local [batch])
        self.tier: TierSection | None = None
        self.batcher = Batcher(config.batch)
        self.reporting = ReportingPolicy(config.reporting)
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._sources = {name: _SourceThread(name, src) for name, src in (sources or {}).items()}
        self._sources_given = sources is not None
        self.gate: ConfigGate | None = None
        self.tracking = Tracking()  # the collector's `tracking` section (docs/protocol.md section 6)
        self._downlink: DownlinkApplier | None = None
        receipts: ReceiptGate | None = None
        if collector_key is not None:
            self.gate = ConfigGate(
                self.device_id,
                collector_key,
                config.downlink.state_file,
                config.downlink.floor_file,
            )
            if config.downlink.receipts != ReceiptMode.OFF:
                receipts = ReceiptGate(self.device_id, collector_key, self.outbox)
            self._downlink = DownlinkApplier(
                self.gate,
                self.engine,
                lambda: self.config.rules,
                config.base_dir,
                local_reporting=lambda: self.config.reporting,
                set_reporting=self.reporting.set_settings,
                set_tracking=self._set_tracking,
                on_tier=self._set_tier,
            )
            self._downlink.apply_stored()
        self.uplink = Uplink(
            config.mqtt,
            device_id=self.device_id,
            outbox=self.outbox,
            make_state=self._state_message,
            on_config=self._on_config if self.gate is not None else None,
            on_connecting=self._new_connection,
            receipts=receipts,
            receipt_mode=ReceiptMode(config.downlink.receipts),
            receipt_timeout_s=config.downlink.receipt_timeout_s,
        )
        self.sealer = BatchSealer(
            self.device_id,
            self.boot_id,
            self._key,
            self.sequence,
            self.outbox,
            stored=self.uplink.wake,
            boot_counters=self._boot_report(),
            counters=self.counters,
        )
        for note in self.outbox.events:
            _event(logging.ERROR, "outbox_corruption", detail=note)
        self._publish_counters()

    def _boot_report(self) -> dict[str, int]:
        """Counters sent once, in the first batch stored in this run."""
        report: dict[str, int] = {}
        if self.sequence.skipped is not None:
            report["seq_skipped_from"] = self.sequence.skipped.first
            report["seq_skipped"] = self.sequence.skipped.count
        if self.sequence.file_lost:
            report["seq_file_lost"] = 1
        if self.sequence.clock_floor:
            report["seq_floor"] = self.sequence.peek()
        return report

    # ------------------------------------------------------------------ persistence of rule state

    def _build_engine(self, factory: EngineFactory) -> RulesEngine:
        snapshot = self.rule_state.load()
        if snapshot is not None:
            try:
                return factory(self.config, snapshot)
            except InputError as exc:  # a snapshot the engine refuses (StateError) is lost state
                self.rule_state.refused(str(exc))
        return factory(self.config, None)

    def save_snapshot(self) -> None:
        """Write the engine's rule state atomically into the data folder."""
        self.rule_state.save(self.engine.snapshot())

    # ------------------------------------------------------------------ counters and state

    def _publish_counters(self) -> None:
        """Publish the engine thread's counters (agent, batcher, gate, engine) as one snapshot."""
        out: dict[str, int] = {}
        out.update(self.counters)
        out.update(self.batcher.counters)
        out.update(self.reporting.counters)
        out.update({f"outbox_total_{k}": v for k, v in self.outbox.totals_snapshot().items()})
        if self.gate is not None:
            out.update(self.gate.counters)
            out["config_version"] = self.gate.version
        out["seq_next"] = self.sequence.peek()
        out["observation_clock_went_back"] = self.clock.time_went_back  # GNSS epochs behind it (docs/gnss.md)
        out.update({f"rules_{k}": v for k, v in counter_values(self.engine.counters).items()})
        self._published.publish(counter_values(out))

    def all_counters(self) -> dict[str, int]:
        """Every counter of the agent and its parts, from their latest published snapshots."""
        parts = [self._published.latest, *(src.published.latest for src in self._sources.values())]
        parts.append(counter_values(self.uplink.counters))  # the uplink thread's own, read on that thread
        if self.uplink.receipts is not None:
            parts.append(counter_values(self.uplink.receipts.counters))
        parts.append({"uptime_s": int(time.monotonic() - self._started_mono)})
        counters = state_counters(parts)
        if OMITTED in counters and not self._omitted_logged:
            self._omitted_logged = True
            _event(logging.WARNING, "state_counters_omitted", count=counters[OMITTED])
        return counters

    def _new_connection(self) -> None:
        """Move to a fresh state connection counter (uplink thread, before each connect)."""
        try:
            self._connection = self.connections.next()
        except SequenceError as exc:  # keep the previous counter: stale states beat no states
            _event(logging.ERROR, "connection_counter_failed", error=str(exc))

    def _state_message(self, online: bool) -> bytes:
        state = DeviceState(
            device_id=self.device_id,
            online=online,
            time_ms=host_wall_ms(),
            boot_id=self.boot_id,
            versions={"agent": lienwatch_version(), "protocol": "1"},
            counters=self.all_counters(),
            connection=self._connection,
        )
        return seal_state(state, self._key, state_topic(self.device_id))

    # ------------------------------------------------------------------ downlink and reload

    def _set_tracking(self, tracking: Tracking) -> None:
        if tracking != self.tracking:
            _event(logging.WARNING if not tracking.enabled else logging.INFO, "tracking_changed",
                   enabled=tracking.enabled, reason=tracking.reason)
        self.tracking = tracking

    def _on_config(self, topic: str, payload: bytes) -> None:
        self._offer(_Message(MessageKind.CONFIG, topic=topic, payload=payload))

    def _batch_settings(self, local: BatchSettings) -> BatchSettings:
        """The local ``[batch]`` with the tier's batch interval in force, if a tier section is."""
        if self.tier is None:
            return local
        age = float(self.tier.batch_interval_s)
        return dataclasses.replace(local, max_age_s=age, max_age_active_s=min(local.max_age_active_s, age))

    def _set_tier(self, tier: TierSection | None) -> None:
        """Apply (or, with None, lift) the risk tier's reporting policy (docs/protocol.md section 6)."""
        changed = tier != self.tier
        self.tier = tier
        self.batcher.set_settings(self._batch_settings(self.config.batch))
        if changed:
            _event(logging.INFO, "tier_applied", tier=tier.name if tier else "local",
                   batch_interval_s=self.batcher.settings.max_age_s)

    def request_reload(self) -> None:
        """Reload the config file (safe from a signal handler)."""
        self._offer(_Message(MessageKind.RELOAD), block=False)

    def _handle_reload(self) -> None:
        self.counters["reloads"] += 1
        if self.config.source is None:
            return
        try:
            new = load_config(self.config.source)
            markets, regions = load_rules_places(new.rules)
        except (ConfigError, ProtocolError) as exc:  # keep running on the old settings
            self.counters["reload_failures"] += 1
            _event(logging.ERROR, "reload_failed", error=str(exc))
            return
        self.engine.set_config(new.rules)
        self.engine.set_markets(markets)
        self.engine.set_regions(regions)
        self.batcher.set_settings(self._batch_settings(new.batch))
        self.reporting.set_settings(new.reporting)
        restart = [name for name in RESTART_SECTIONS if getattr(new, name) != getattr(self.config, name)]
        self.config = new
        if self._downlink is not None:
            self._downlink.apply_stored()  # a downlink 'reporting' section stays merged over the new file
        _event(logging.INFO, "reloaded", needs_restart=restart)

    # ------------------------------------------------------------------ sources

    def _offer(self, message: _Message, *, block: bool = True) -> None:
        try:
            self._queue.put(message, block=block, timeout=1.0 if block else None)
        except queue.Full:
            self.counters["queue_full_drops"] += 1

    def _default_sources(self) -> None:
        if self._sources_given:
            return
        if self.config.gnss is not None:
            from edge.gnss import source_from_config as gnss_source

            self._sources["gnss"] = _SourceThread("gnss", gnss_source(self.config.gnss))
        if self.config.can is not None:
            from edge.canbus import source_from_config as can_source

            can = can_source(self.config.can)
            self._sources["can"] = _SourceThread("can", StampedCanSource(can, self.clock))

    def _read_loop(self, src: _SourceThread) -> None:
        while not self._stop.is_set():
            try:
                records = src.source.read(0.5)
            except Exception as exc:  # noqa: BLE001 - thread boundary: a source thread must survive any failure
                src.errors += 1
                src.publish()
                if src.last_error != str(exc):
                    _event(logging.ERROR, "source_error", source=src.name, error=str(exc))
                src.last_error = str(exc)
                self._stop.wait(1.0)
                continue
            for record in records:
                if isinstance(record, (Fix, NoFix)):
                    self.clock.on_fix(record.time_ms)
                src.records += 1
                self._offer(_Message(MessageKind.RECORD, record=record))
            src.publish_due(time.monotonic())
        src.publish()

    # ------------------------------------------------------------------ the engine thread

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_Message(MessageKind.WAKE))

    def run(self) -> int:
        """Run until :meth:`request_stop`; return a process exit code."""
        self._default_sources()
        for src in self._sources.values():
            src.publish()
            src.thread = threading.Thread(target=self._read_loop, args=(src,), name=f"lw-{src.name}", daemon=True)
            src.thread.start()
        self.uplink.start()
        _event(logging.INFO, "agent_started", device=self.device_id, boot_id=self.boot_id.hex(),
               seq_next=self.sequence.peek(), sources=sorted(self._sources), **self._boot_report())
        try:
            return self._engine_loop()
        finally:
            self._shutdown()

    def _engine_loop(self) -> int:
        next_snapshot = time.monotonic() + self.config.device.snapshot_interval_s
        next_tick = time.monotonic() + 1.0
        next_publish = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            active = bool(self.engine.active_rules)
            wait = max(0.0, min(self.batcher.deadline(active=active), next_tick, next_snapshot) - now)
            with contextlib.suppress(queue.Empty):
                self._dispatch(self._queue.get(timeout=min(wait, 0.5)))
                self._drain_queue(limit=512)
            now = time.monotonic()
            if now >= next_tick:
                next_tick = now + 1.0
                self._feed_engine_tick()
                if not self.uplink.alive:  # it logged why; exit so the supervisor restarts us
                    _event(logging.ERROR, "uplink_died")
                    return 1
            self._store_all(self.batcher.poll(now, active=bool(self.engine.active_rules)))
            if now >= next_snapshot:
                next_snapshot = now + self.config.device.snapshot_interval_s
                self.save_snapshot()
            if now >= next_publish:
                next_publish = now + COUNTER_PUBLISH_S
                self._publish_counters()
        return 0

    def _drain_queue(self, limit: int) -> None:
        for _ in range(limit):
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return
            self._dispatch(message)

    def _dispatch(self, message: _Message) -> None:
        if message.kind is MessageKind.RECORD:
            assert message.record is not None
            self._feed_record(message.record)
        elif message.kind is MessageKind.CONFIG and self._downlink is not None:
            self._downlink.handle(message.topic, message.payload)
        elif message.kind is MessageKind.RELOAD:
            self._handle_reload()

    def _feed_record(self, record: SourceRecord) -> None:
        self.counters["records_in"] += 1
        if not self.tracking.enabled and isinstance(record, (Fix, NoFix)):
            # Tracking stopped (a settled loan): positions are neither judged nor sent. CAN
            # signals and the rules that need no position (power cut, doors) keep running.
            self.counters["fixes_not_tracked"] += 1
            return
        produced = self._run_engine(lambda: self.engine.feed(record), type(record).__name__)
        now = time.monotonic()
        active = bool(self.engine.active_rules)
        if isinstance(record, (Fix, SignalSample)):
            self._upload(record, now, active)
        self._add_produced(produced, now, active)

    def _upload(self, record: Fix | SignalSample | Alert | DailyStats, now: float, active: bool) -> None:
        """Through the reporting policy (edge.reporting) into the batcher."""
        for item in self.reporting.offer(record):
            self._store_all(self.batcher.add(item, now, active=active))
        self.batcher.set_idle_max_age(self.reporting.batch_max_age_s)

    def _feed_engine_tick(self) -> None:
        if not self.clock.anchored:
            return  # no observation time yet (see edge.observation_clock)
        now_ms = self.clock.now_ms()
        produced = self._run_engine(lambda: self.engine.tick(now_ms), "tick")
        self._add_produced(produced, time.monotonic(), bool(self.engine.active_rules))

    def _run_engine(self, call: Callable[[], list[EngineOutput]], what: str) -> list[EngineOutput]:
        """One call into the rules engine; a rules bug is counted and logged, telemetry goes on."""
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - boundary of the engine thread: it must outlive a rules bug
            self.counters["engine_errors"] += 1
            _event(logging.ERROR, "engine_error", error=str(exc), record=what)
            return []

    def _add_produced(self, produced: Iterable[EngineOutput], now: float, active: bool) -> None:
        for item in produced:
            if isinstance(item, Alert):
                self.counters["alerts"] += 1
                _event(logging.WARNING, "alert", rule=item.rule, severity=item.severity.label,
                       state=item.state.name.lower(), time_ms=item.time_ms, episode=item.episode)
            if isinstance(item, (Alert, DailyStats)):
                self._upload(item, now, active)

    def _store_all(self, closed: Sequence[ClosedBatch]) -> None:
        for batch in closed:
            self.store(batch)

    def store(self, closed: ClosedBatch) -> int | None:
        """Number, sign and durably store one closed batch; return its sequence number."""
        return self.sealer.store(closed)

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        self._stop.set()
        for src in self._sources.values():
            if src.thread is not None:
                src.thread.join(timeout=5.0)
            with contextlib.suppress(OSError, EdgeError):
                src.source.close()
        self._drain_queue(limit=self._queue.qsize() + 1)
        self._store_all(self.batcher.flush())
        self.save_snapshot()
        self._publish_counters()
        drained = self.uplink.stop(self.config.mqtt.shutdown_grace_s)
        left = self.outbox.stats()
        self.outbox.close()
        _event(logging.INFO, "agent_stopped", drained=drained, **left)
