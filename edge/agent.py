"""The edge agent: sources -> rules -> batcher -> signed batches -> outbox -> MQTT.

How this works
--------------
Threads: one reader thread per blocking source (GNSS, CAN) puts records on one bounded
queue; the engine thread (the caller of :meth:`Agent.run`) owns the rules engine, the
batcher, the sequence allocator and writes to the outbox; the uplink thread owns the
MQTT client and reads/acks the outbox. Downlink configurations and SIGHUP reloads arrive
on the same queue as records, so the engine is only ever touched by one thread.

Observation clock: rules and batches run on observation time, not host time. GNSS fixes
carry their own time; CAN frames do not (python-can stamps them with the host clock), so
CAN samples are stamped on a GNSS-disciplined clock: the time of the last GNSS epoch plus the
host *monotonic* time elapsed since that epoch arrived. Until the first GNSS epoch, CAN samples
are held (at most ``HOLD_S`` seconds and ``HOLD_MAX`` samples) and then stamped at the first
epoch's time, and the engine gets no clock ticks: feeding it host time first would put its
clock ahead of GNSS time and make it refuse every later fix as stale. A box with no GNSS at
all falls back to host time after ``HOLD_S``.
Why: host clocks on a T-BOX drift or are simply wrong after a cold start, and the
simulator plays scenarios with time acceleration: GNSS time runs at the scenario's speed
while the host clock does not. Anchoring on the last fix keeps CAN and GNSS on one time
line (errors bounded by one fix interval) in both cases, and monotonic time keeps a host
clock step (NTP, RTC reset) out of the picture.

Shutdown (SIGTERM): sources stop, the open batch is flushed into the outbox, the rule
state is snapshotted, the uplink gets ``shutdown_grace_s`` to publish what is left and
then publishes a signed offline state. Anything unsent stays in the outbox for next time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol import (
    Alert,
    Batch,
    DailyStats,
    DeviceConfig,
    DeviceState,
    Fix,
    NoFix,
    SignalSample,
    batch_topic,
    seal_batch,
    seal_state,
    state_topic,
)
from protocol.errors import LocalProtocolError

from .batcher import Batcher, ClosedBatch
from .config import AgentConfig, AgentError, load_config
from .outbox import Outbox
from .sequence import ConnectionCounter, SequenceAllocator, SequenceError, write_atomically
from .uplink import ConfigGate, DownlinkRejectedError, Uplink

__all__ = [
    "Agent",
    "ObservationClock",
    "RecordSource",
    "RulesEngine",
    "StructuredFormatter",
    "build_engine",
    "load_rules_places",
]

log = logging.getLogger("lienwatch.agent")
AGENT_VERSION = "0.1.0"
SourceRecord = Fix | NoFix | SignalSample


def _event(level: int, name: str, **fields: Any) -> None:
    log.log(level, name, extra={"fields": fields})


class StructuredFormatter(logging.Formatter):
    """One log line per record: JSON objects or ``key=value`` pairs.

    The record's message is the event name; structured fields come from
    ``extra={"fields": {...}}``.
    """

    def __init__(self, style: str = "json") -> None:
        super().__init__()
        self.style = style

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields.update(getattr(record, "fields", {}) or {})
        if record.exc_info:
            fields["exc"] = self.formatException(record.exc_info)
        if self.style == "json":
            return json.dumps(fields, default=str, separators=(",", ":"))
        return " ".join(f"{k}={json.dumps(v, default=str) if isinstance(v, str) and ' ' in v else v}"
                        for k, v in fields.items())


# ----------------------------------------------------------------------------- seams


class RecordSource(Protocol):
    """What the agent needs from a source (edge.gnss.GnssSource fits as is)."""

    def read(self, timeout: float = 1.0) -> list[Any]:
        """Records available within ``timeout`` seconds (possibly none)."""
        ...

    def close(self) -> None:
        """Release the device."""
        ...


class RulesEngine(Protocol):
    """What the agent needs from edge.rules.Engine."""

    @property
    def active_rules(self) -> frozenset[str]:
        """Rules with an open episode."""
        ...

    def feed(self, event: Any) -> list[Any]:
        """Feed one observation; return alerts and statistics."""
        ...

    def tick(self, time_ms: int) -> list[Any]:
        """Let time pass without an event."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """JSON-serialisable rule state."""
        ...

    def set_markets(self, markets: Any) -> None:
        """Replace the market list."""
        ...

    def set_regions(self, regions: Any) -> None:
        """Replace the allowed regions."""
        ...

    def set_config(self, config: Any) -> None:
        """Replace the thresholds."""
        ...


#: CAN samples held while waiting for the first GNSS epoch (time and count bounds).
HOLD_S = 10.0
HOLD_MAX = 10_000


class ObservationClock:
    """GNSS-disciplined clock (see the module docstring for why).

    Args:
        monotonic: host monotonic clock, seconds.
        wall: host wall clock, seconds since the epoch.
        hold_s: how long to wait for a first GNSS epoch before running on host time.
    """

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        hold_s: float = HOLD_S,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        self._lock = threading.Lock()
        self._anchor: tuple[int, float] | None = None  # (epoch time_ms, monotonic at arrival)
        self._started = monotonic()
        self._hold_s = hold_s
        self.free_running = False  # True when anchored on host time for want of GNSS

    @property
    def anchored(self) -> bool:
        """True once a GNSS epoch has been seen, or the hold time ran out (host time then)."""
        with self._lock:
            if self._anchor is None and self._monotonic() - self._started >= self._hold_s:
                self._anchor = (int(self._wall() * 1000), self._monotonic())
                self.free_running = True
            return self._anchor is not None

    def on_fix(self, time_ms: int) -> None:
        """Re-anchor on a GNSS epoch (fix or no-fix with a valid time) that just arrived."""
        with self._lock:
            self._anchor = (time_ms, self._monotonic())
            self.free_running = False

    def now_ms(self) -> int:
        """Observation time now, epoch milliseconds (host time while not anchored)."""
        with self._lock:
            anchor = self._anchor
        if anchor is None:
            return int(self._wall() * 1000)
        fix_ms, at = anchor
        return fix_ms + int((self._monotonic() - at) * 1000)

    def stamp(self, host_ts: float) -> int:
        """Observation time of a frame python-can stamped at host wall time ``host_ts``.

        The frame arrived ``wall() - host_ts`` seconds ago (clamped to 0..10 s); that age is
        subtracted from :meth:`now_ms`.
        """
        age = min(max(self._wall() - host_ts, 0.0), 10.0)
        return self.now_ms() - int(age * 1000)

    def first_epoch_ms(self) -> int | None:
        """Time of the current anchor (what held samples are stamped with)."""
        with self._lock:
            return None if self._anchor is None else self._anchor[0]


@dataclass
class _Message:
    kind: str  # record | config | reload | source_error
    payload: Any = None
    extra: Any = None


@dataclass
class _SourceThread:
    name: str
    source: RecordSource
    thread: threading.Thread | None = None
    errors: int = 0
    records: int = 0
    last_error: str | None = None


def load_rules_places(config: Any) -> tuple[list[Any], list[Any]]:
    """Markets and regions named by a RulesConfig (``markets_file``/``regions_file``)."""
    from edge.rules import load_markets, load_regions

    markets = load_markets(config.markets_file) if config.markets_file else []
    regions = load_regions(config.regions_file) if config.regions_file else []
    return list(markets), list(regions)


def build_engine(config: AgentConfig, state: Mapping[str, Any] | None) -> RulesEngine:
    """The real rules engine from [rules] (markets and regions loaded from their files)."""
    from edge.rules import Engine, RulesConfig

    rules_config = RulesConfig.from_dict(config.rules, config.base_dir)
    markets, regions = load_rules_places(rules_config)
    engine: RulesEngine = Engine(rules_config, markets=markets, regions=regions, state=state)
    return engine


# ----------------------------------------------------------------------------- the agent


@dataclass
class _BootReport:
    """Counters sent once, in the first batch stored in this run."""

    counters: dict[str, int] = field(default_factory=dict)


class Agent:
    """The edge agent, wired from one :class:`~edge.config.AgentConfig`.

    Args:
        config: the settings.
        private_key: device signing key (default: loaded with edge.keys.load_private_key,
            which refuses a key file readable by others).
        engine: the rules engine (default: edge.rules.Engine built from [rules] and the
            persisted snapshot).
        sources: record sources (default: edge.gnss / edge.canbus from [gnss] / [can]).
        boot_id: 16 bytes identifying this run (default: random).
        engine_factory: how to build an engine from (config, snapshot) on start; used when
            ``engine`` is None.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        private_key: Ed25519PrivateKey | None = None,
        engine: RulesEngine | None = None,
        sources: Mapping[str, RecordSource] | None = None,
        boot_id: bytes | None = None,
        engine_factory: Callable[[AgentConfig, Mapping[str, Any] | None], RulesEngine] = build_engine,
        queue_size: int = 20_000,
    ) -> None:
        self.config = config
        self.device_id = config.device.id
        self.boot_id = boot_id or secrets.token_bytes(16)
        self.clock = ObservationClock()
        self.counters: dict[str, int] = dict.fromkeys(
            (
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
            ),
            0,
        )
        self._started_mono = time.monotonic()
        data_dir = config.device.data_dir
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.snapshot_path = data_dir / "rules_state.json"
        if private_key is None:
            from edge.keys import load_private_key

            private_key = load_private_key(config.device.key_file)
        self._key = private_key
        self.outbox = Outbox(config.outbox.path, max_bytes=config.outbox.max_bytes)
        # A missing sequence file cannot be told from a wiped data directory: start at the
        # clock floor (docs/protocol.md, "Sequence identity") so a wiped box is never muted.
        self.sequence = SequenceAllocator(
            data_dir / "sequence",
            committed_high=self.outbox.committed_high,
            block=config.outbox.seq_block,
            floor_when_missing=True,
        )
        self._boot = _BootReport()
        if self.sequence.skipped is not None:
            self._boot.counters["seq_skipped_from"] = self.sequence.skipped.first
            self._boot.counters["seq_skipped"] = self.sequence.skipped.count
        if self.sequence.file_lost:
            self._boot.counters["seq_file_lost"] = 1
        if self.sequence.clock_floor:
            self._boot.counters["seq_floor"] = self.sequence.peek()
        # State messages carry a connection counter that never repeats (docs/protocol.md
        # section 5): a replayed Last Will of an earlier connection is stale at the collector.
        self.connections = ConnectionCounter(data_dir / "connection")
        self._connection: int | None = None
        self.engine = engine if engine is not None else self._build_engine(engine_factory)
        self.batcher = Batcher(config.batch)
        self.gate: ConfigGate | None = None
        if config.downlink.enabled:
            from edge.keys import load_public_key

            assert config.downlink.collector_public_key is not None
            self.gate = ConfigGate(
                self.device_id,
                load_public_key(config.downlink.collector_public_key),
                config.downlink.state_file,
                config.downlink.floor_file,
            )
            if self.gate.current is not None:
                try:
                    self._apply_config_body(self.gate.current)
                except Exception as exc:  # noqa: BLE001 - the stored body verified but no longer applies: say so, go on
                    _event(logging.WARNING, "stored_config_not_applied", version=self.gate.version, error=str(exc))
        self._queue: queue.Queue[_Message] = queue.Queue(maxsize=queue_size)
        self._stop = threading.Event()
        self._sources = {name: _SourceThread(name, src) for name, src in (sources or {}).items()}
        self._sources_given = sources is not None
        self.uplink = Uplink(
            config.mqtt,
            device_id=self.device_id,
            outbox=self.outbox,
            make_state=self._state_message,
            on_config=self._on_config if self.gate is not None else None,
            on_connecting=self._new_connection,
        )
        for note in self.outbox.events:
            _event(logging.ERROR, "outbox_corruption", detail=note)

    # ------------------------------------------------------------------ persistence of rule state

    def _load_snapshot(self) -> Mapping[str, Any] | None:
        try:
            data = self.snapshot_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            state = json.loads(data)
        except ValueError as exc:
            problem = f"not JSON: {exc}"
        else:
            if isinstance(state, dict):
                return state
            problem = "not a JSON object"
        self.counters["rule_state_lost"] += 1
        aside = self.snapshot_path.with_name(f"{self.snapshot_path.name}.corrupt-{int(time.time())}")
        with contextlib.suppress(OSError):
            self.snapshot_path.replace(aside)
        _event(logging.ERROR, "rule_state_lost", path=str(self.snapshot_path), error=problem)
        return None

    def _build_engine(self, factory: Callable[[AgentConfig, Mapping[str, Any] | None], RulesEngine]) -> RulesEngine:
        snapshot = self._load_snapshot()
        if snapshot is None:
            return factory(self.config, None)
        try:
            return factory(self.config, snapshot)
        except Exception as exc:  # noqa: BLE001 - the owner's error tree: a snapshot it refuses is lost state
            self.counters["rule_state_lost"] += 1
            _event(logging.ERROR, "rule_state_lost", path=str(self.snapshot_path), error=str(exc))
            return factory(self.config, None)

    def save_snapshot(self) -> None:
        """Write the engine's rule state atomically into the data folder."""
        try:
            data = json.dumps(self.engine.snapshot(), separators=(",", ":"), sort_keys=True).encode()
            write_atomically(self.snapshot_path, data)
        except (OSError, TypeError, ValueError) as exc:
            self.counters["snapshot_failures"] += 1
            _event(logging.ERROR, "snapshot_failed", error=str(exc))

    # ------------------------------------------------------------------ counters and state

    def all_counters(self) -> dict[str, int]:
        """Every counter of the agent and its parts (for the state message).

        Called from the uplink thread while the engine thread updates the counters: a dict
        that grows during the copy raises RuntimeError, so the copy is simply retried.
        """
        for _ in range(10):
            try:
                return self._collect_counters()
            except RuntimeError:
                continue
        return dict(self.counters)

    def _collect_counters(self) -> dict[str, int]:
        out: dict[str, int] = {}
        out.update(self.counters)
        out.update(self.batcher.counters)
        out.update({f"outbox_total_{k}": v for k, v in self.outbox.totals.items()})
        out.update(self.uplink.counters)
        if self.gate is not None:
            out.update(self.gate.counters)
            out["config_version"] = self.gate.version
        out["seq_next"] = self.sequence.peek()
        for src in self._sources.values():
            out[f"{src.name}_records"] = src.records
            out[f"{src.name}_errors"] = src.errors
            for key, value in _source_counters(src.source).items():
                out[f"{src.name}_{key}"] = value
        engine_counters = getattr(self.engine, "counters", None)
        for key, value in _as_int_map(engine_counters).items():
            out[f"rules_{key}"] = value
        out["uptime_s"] = int(time.monotonic() - self._started_mono)
        cleaned = {k: v for k, v in out.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0}
        return dict(list(cleaned.items())[:250])

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
            time_ms=int(time.time() * 1000),
            boot_id=self.boot_id,
            versions={"agent": AGENT_VERSION, "protocol": "1"},
            counters=self.all_counters(),
            connection=self._connection,
        )
        return seal_state(state, self._key, state_topic(self.device_id))

    # ------------------------------------------------------------------ downlink

    def _on_config(self, topic: str, payload: bytes) -> None:
        self._offer(_Message("config", payload, topic))

    def _apply_config_body(self, config: DeviceConfig) -> None:
        """Validate every known section of a config body first, then apply them together."""
        from edge.rules import RulesConfig, load_markets, load_regions

        body = config.body
        unknown = set(body) - {"markets", "regions", "rules"}
        if unknown:
            raise AgentError(f"configuration body has unknown sections {sorted(unknown)}")
        markets = load_markets(body["markets"]) if "markets" in body else None
        regions = load_regions(body["regions"]) if "regions" in body else None
        rules = None
        if "rules" in body:
            if not isinstance(body["rules"], Mapping):
                raise AgentError("configuration body 'rules' must be a map")
            rules = RulesConfig.from_dict(_deep_merge(self.config.rules, body["rules"]), self.config.base_dir)
        if rules is not None:
            self.engine.set_config(rules)
        if markets is not None:
            self.engine.set_markets(markets)
        if regions is not None:
            self.engine.set_regions(regions)

    def _handle_config(self, topic: str, payload: bytes) -> None:
        assert self.gate is not None
        try:
            config = self.gate.check(topic, payload)
        except DownlinkRejectedError as exc:
            _event(logging.WARNING, "config_rejected", reason=exc.reason, detail=str(exc))
            return
        if config is None:
            return
        try:
            self._apply_config_body(config)
        except Exception as exc:  # noqa: BLE001 - owner-specific validation errors: refuse, count, report
            rejected = self.gate.refuse("invalid_body", f"configuration version {config.version} not applied: {exc}")
            _event(logging.WARNING, "config_rejected", reason=rejected.reason, detail=str(rejected))
            return
        self.gate.commit(config, payload)
        _event(logging.INFO, "config_applied", version=config.version, sections=sorted(config.body))

    # ------------------------------------------------------------------ reload (SIGHUP)

    def request_reload(self) -> None:
        """Reload the config file (safe from a signal handler)."""
        self._offer(_Message("reload"), block=False)

    def _handle_reload(self) -> None:
        self.counters["reloads"] += 1
        if self.config.source is None:
            return
        try:
            new = load_config(self.config.source)
            from edge.rules import RulesConfig

            rules = RulesConfig.from_dict(new.rules, new.base_dir)
            markets, regions = load_rules_places(rules)
        except Exception as exc:  # noqa: BLE001 - keep running on the old settings
            self.counters["reload_failures"] += 1
            _event(logging.ERROR, "reload_failed", error=str(exc))
            return
        self.engine.set_config(rules)
        self.engine.set_markets(markets)
        self.engine.set_regions(regions)
        self.batcher.set_settings(new.batch)
        restart = [name for name in ("device", "outbox", "mqtt", "downlink", "gnss", "can")
                   if _section_of(new, name) != _section_of(self.config, name)]
        self.config = new
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

            self._sources["gnss"] = _SourceThread("gnss", gnss_source(self.config.gnss, self.config.base_dir))
        if self.config.can is not None:
            from edge.canbus import source_from_config as can_source

            can = can_source(self.config.can, self.config.base_dir)
            self._sources["can"] = _SourceThread("can", _StampedCan(can, self.clock))

    def _read_loop(self, src: _SourceThread) -> None:
        while not self._stop.is_set():
            try:
                records = src.source.read(0.5)
            except Exception as exc:  # noqa: BLE001 - a source failure must not kill the agent: count, log, retry
                src.errors += 1
                self.counters["source_errors"] += 1
                if src.last_error != str(exc):
                    _event(logging.ERROR, "source_error", source=src.name, error=str(exc))
                src.last_error = str(exc)
                self._stop.wait(1.0)
                continue
            for record in records:
                if isinstance(record, (Fix, NoFix)):
                    self.clock.on_fix(record.time_ms)
                src.records += 1
                self._offer(_Message("record", record))

    # ------------------------------------------------------------------ the engine thread

    def request_stop(self) -> None:
        """Ask :meth:`run` to shut down cleanly (safe from a signal handler)."""
        self._stop.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_Message("wake"))

    def run(self) -> int:
        """Run until :meth:`request_stop`; return a process exit code."""
        self._default_sources()
        for src in self._sources.values():
            src.thread = threading.Thread(target=self._read_loop, args=(src,), name=f"lw-{src.name}", daemon=True)
            src.thread.start()
        self.uplink.start()
        _event(logging.INFO, "agent_started", device=self.device_id, boot_id=self.boot_id.hex(),
               seq_next=self.sequence.peek(), sources=sorted(self._sources), **self._boot.counters)
        next_snapshot = time.monotonic() + self.config.device.snapshot_interval_s
        exit_code = 0
        next_tick = time.monotonic() + 1.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                active = bool(self.engine.active_rules)
                wait = max(0.0, min(self.batcher.deadline(active=active), next_tick, next_snapshot) - now)
                try:
                    message = self._queue.get(timeout=min(wait, 0.5))
                except queue.Empty:
                    message = None
                if message is not None:
                    self._dispatch(message)
                    self._drain_queue(limit=512)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + 1.0
                    self._feed_engine_tick()
                    if not self.uplink.alive:  # it logged why; exit so the supervisor restarts us
                        _event(logging.ERROR, "uplink_died")
                        exit_code = 1
                        break
                self._store_all(self.batcher.poll(now, active=bool(self.engine.active_rules)))
                if now >= next_snapshot:
                    next_snapshot = now + self.config.device.snapshot_interval_s
                    self.save_snapshot()
        finally:
            self._shutdown()
        return exit_code

    def _drain_queue(self, limit: int) -> None:
        for _ in range(limit):
            try:
                message = self._queue.get_nowait()
            except queue.Empty:
                return
            self._dispatch(message)

    def _dispatch(self, message: _Message) -> None:
        if message.kind == "record":
            self._feed_record(message.payload)
        elif message.kind == "config":
            self._handle_config(message.extra, message.payload)
        elif message.kind == "reload":
            self._handle_reload()

    def _feed_record(self, record: SourceRecord) -> None:
        self.counters["records_in"] += 1
        try:
            produced = self.engine.feed(record)
        except Exception as exc:  # noqa: BLE001 - a rules bug must not stop telemetry: count and log it
            self.counters["engine_errors"] += 1
            _event(logging.ERROR, "engine_error", error=str(exc), record=type(record).__name__)
            produced = []
        now = time.monotonic()
        active = bool(self.engine.active_rules)
        if isinstance(record, (Fix, SignalSample)):
            self._store_all(self.batcher.add(record, now, active=active))
        self._add_produced(produced, now, active)

    def _feed_engine_tick(self) -> None:
        if not self.clock.anchored:
            return  # no observation time yet (see the module docstring)
        try:
            produced = self.engine.tick(self.clock.now_ms())
        except Exception as exc:  # noqa: BLE001 - see _feed_record
            self.counters["engine_errors"] += 1
            _event(logging.ERROR, "engine_error", error=str(exc), record="tick")
            return
        self._add_produced(produced, time.monotonic(), bool(self.engine.active_rules))

    def _add_produced(self, produced: Iterable[Any], now: float, active: bool) -> None:
        for item in produced:
            if isinstance(item, Alert):
                self.counters["alerts"] += 1
                _event(logging.WARNING, "alert", rule=item.rule, severity=item.severity.label,
                       state=item.state.name.lower(), time_ms=item.time_ms, episode=item.episode)
            if isinstance(item, (Alert, DailyStats)):
                self._store_all(self.batcher.add(item, now, active=active))

    # ------------------------------------------------------------------ numbering, signing, storing

    def _store_all(self, closed: Sequence[ClosedBatch]) -> None:
        for batch in closed:
            self.store(batch)

    def store(self, closed: ClosedBatch) -> int | None:
        """Number, sign and durably store one closed batch; return its sequence number."""
        if closed.empty and not self._boot.counters:
            return None
        reported = {**self.outbox.unreported()}
        counters = {**reported, **self._boot.counters}
        seq = self.sequence.next()
        batch = Batch(
            device_id=self.device_id,
            boot_id=self.boot_id,
            seq=seq,
            created_ms=int(time.time() * 1000),
            fixes=closed.fixes,
            samples=closed.samples,
            alerts=closed.alerts,
            stats=closed.stats,
            counters=counters,
        )
        try:
            message = seal_batch(batch, self._key, batch_topic(self.device_id))
        except LocalProtocolError as exc:
            self.counters["seal_failures"] += 1
            _event(logging.ERROR, "seal_failed", seq=seq, error=str(exc))
            total = len(closed.fixes) + len(closed.samples) + len(closed.alerts) + len(closed.stats)
            if total > 1:  # too large: the skipped number is harmless, the halves get new ones
                first, second = closed.split()
                self.store(first)
                self.store(second)
            return None
        evicted = self.outbox.put(
            seq,
            message,
            priority=closed.priority,
            fixes=len(closed.fixes),
            samples=len(closed.samples),
            stats=len(closed.stats),
            alerts=len(closed.alerts),
            reported=reported,
        )
        self._boot.counters.clear()
        self.counters["batches_stored"] += 1
        if evicted:
            _event(logging.WARNING, "outbox_evicted", seqs=evicted[:20], count=len(evicted))
        for note in self.outbox.events:
            _event(logging.ERROR, "outbox_corruption", detail=note)
        self.outbox.events.clear()
        self.uplink.wake()
        return seq

    # ------------------------------------------------------------------ shutdown

    def _shutdown(self) -> None:
        self._stop.set()
        for src in self._sources.values():
            if src.thread is not None:
                src.thread.join(timeout=5.0)
            with contextlib.suppress(Exception):
                src.source.close()
        self._drain_queue(limit=self._queue.qsize() + 1)
        self._store_all(self.batcher.flush())
        self.save_snapshot()
        drained = self.uplink.stop(self.config.mqtt.shutdown_grace_s)
        left = self.outbox.stats()
        self.outbox.close()
        _event(logging.INFO, "agent_stopped", drained=drained, **left)


class _StampedCan:
    """A CanSource whose samples are stamped on the observation clock.

    Before the clock is anchored, samples are held (bounded) and released stamped with the
    anchor's time, so the first ignition/door states of a boot are not lost or misdated.
    """

    def __init__(self, source: Any, clock: ObservationClock) -> None:
        self._source = source
        self._clock = clock
        self._held: list[SignalSample] = []
        self.dropped_before_clock = 0
        self.counters = getattr(source, "counters", None)

    def read(self, timeout: float = 1.0) -> list[Any]:
        if self._clock.anchored:
            samples = list(self._source.read(timeout, time_ms=self._clock.stamp))
            if self._held:
                first = self._clock.first_epoch_ms() or self._clock.now_ms()
                held, self._held = self._held, []
                # Held samples happened before the first epoch: stamp them at it, in order.
                samples = [dataclasses.replace(s, time_ms=first) for s in held] + [
                    s if s.time_ms >= first else dataclasses.replace(s, time_ms=first) for s in samples
                ]
            return samples
        for sample in self._source.read(timeout, time_ms=lambda ts: int(ts * 1000)):
            if len(self._held) < HOLD_MAX:
                self._held.append(sample)
            else:
                self.dropped_before_clock += 1
        return []

    def close(self) -> None:
        self._source.close()


def _as_int_map(counters: object) -> dict[str, int]:
    if counters is None:
        return {}
    as_dict = getattr(counters, "as_dict", None)
    raw = as_dict() if callable(as_dict) else counters
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): int(v) for k, v in raw.items() if isinstance(v, int) and not isinstance(v, bool)}


def _source_counters(source: object) -> dict[str, int]:
    return _as_int_map(getattr(source, "counters", None))


def _section_of(config: AgentConfig, name: str) -> Any:
    return getattr(config, name)


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out

