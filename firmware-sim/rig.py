"""The chain rig: every part of LienWatch in its own process, wired on loopback.

simulator (NMEA + SLCAN ptys) -> agent -> private Mosquitto -> collector (SQLite) -> HTTP API

Used by ``lienwatch demo`` and the HIL suite (hil-tests/). Each process is started with
``python -m edge ...`` (the ``lienwatch`` command), in its own session so that a stop kills
its whole tree, with stdout/stderr in a log file under the rig's work directory; the logs
are what a failing HIL test prints. Everything listens on free loopback ports only.

To point the same rig at a real T-BOX, give ``gnss_url``/``can_interface``/``can_channel``
instead of starting the simulator (see docs/hil.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .services import Mosquitto, ServiceError, free_port

__all__ = ["API_KEYS", "ChainRig", "ManagedProcess", "RigError"]

#: Demo/test bearer keys per role (plain keys are hashed by the collector when loaded).
API_KEYS = {
    "admin": "rig-admin-key-0123456789",
    "risk_analyst": "rig-analyst-key-0123456789",
    "collections": "rig-collections-key-0123456789",
    "auditor": "rig-auditor-key-0123456789",
}
PACKAGE_DATA = Path(__file__).resolve().parent.parent / "edge" / "data"


class RigError(RuntimeError):
    """A part of the chain did not start or did not behave; the message names the part."""


@dataclass
class ManagedProcess:
    """A child process of the rig with its log file."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> ManagedProcess:
        if self.running:
            return self
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts + 1}: {' '.join(self.argv)}\n".encode())
        log.flush()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.env}
        self.proc = subprocess.Popen(
            self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
        )
        log.close()
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, not a shutdown)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait, then SIGKILL; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        # Reap anything left in the group (e.g. a grandchild).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.returncode

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def lienwatch_argv(*args: str) -> list[str]:
    """argv that runs ``lienwatch ARGS`` with this interpreter."""
    return [sys.executable, "-m", "edge", *args]


class ChainRig:
    """Start, fault and stop the whole chain; query its API.

    Args:
        workdir: folder for keys, configs, databases, ptys and logs (kept for post-mortems).
        device_id: the simulated vehicle's device id.
        say: where progress lines go (``print`` for the demo, a list for tests).
    """

    def __init__(self, workdir: Path, *, device_id: str = "car-0001", say: Callable[[str], None] = print) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device_id = device_id
        self.say = say
        self.broker: Mosquitto | None = None
        self.api_port = free_port()
        self.processes: dict[str, ManagedProcess] = {}
        self.keys_dir = self.workdir / "keys"
        self.gnss_link = self.workdir / "gnss0"
        self.can_link = self.workdir / "can0"
        self.events_path = self.workdir / "sim-events.jsonl"
        self.collector_config = self.workdir / "collector.toml"
        self.agent_config = self.workdir / "agent.toml"
        self.agent_extra: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ parts

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def run_cli(self, *args: str, timeout: float = 60.0) -> str:
        """Run a ``lienwatch`` command to completion; raise RigError with its output on failure."""
        result = subprocess.run(lienwatch_argv(*args), capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise RigError(f"lienwatch {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}")
        return result.stdout

    def start_broker(self) -> Mosquitto:
        try:
            self.broker = Mosquitto(workdir=self.workdir / "broker").start()
        except ServiceError as exc:
            raise RigError(f"broker: {exc}") from exc
        self.say(f"broker     Mosquitto on 127.0.0.1:{self.broker.port}")
        return self.broker

    def generate_keys(self) -> None:
        self.run_cli("keys", "generate", "--device", self.device_id, "--out", str(self.keys_dir))
        self.run_cli("keys", "generate", "--collector", "--out", str(self.keys_dir))
        self.say(f"keys       Ed25519 keys for {self.device_id} and the collector in {self.keys_dir}")

    def write_collector_config(self, **extra_sections: dict[str, Any]) -> None:
        assert self.broker is not None
        lines = [
            f'data_dir = "{self.workdir / "collector-data"}"',
            'log_level = "INFO"',
            "",
            "[mqtt]",
            'host = "127.0.0.1"',
            f"port = {self.broker.port}",
            'client_id = "rig-collector-1"',
            "",
            "[api]",
            'host = "127.0.0.1"',
            f"port = {self.api_port}",
            "",
            "[api_keys]",
            *(f'"{key}" = "{role}"' for role, key in API_KEYS.items()),
        ]
        for section, values in extra_sections.items():
            lines += ["", f"[{section}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
        self.collector_config.write_text("\n".join(lines) + "\n")

    def start_collector(self) -> ManagedProcess:
        if not self.collector_config.exists():
            self.write_collector_config()
        proc = self.processes.setdefault(
            "collector",
            ManagedProcess(
                "collector",
                lienwatch_argv("collector", "serve", "--config", str(self.collector_config)),
                self.workdir / "collector.log",
            ),
        )
        proc.start()
        self.wait_http("/healthz", timeout=60, proc=proc)
        self.say(f"collector  ingest + API on {self.api_url} (SQLite in {self.workdir / 'collector-data'})")
        return proc

    def provision_device(self) -> None:
        self.run_cli(
            "collector", "devices", "add", "--config", str(self.collector_config),
            "--device", self.device_id, "--public-key", str(self.keys_dir / f"{self.device_id}.pub"),
        )  # fmt: skip
        self.say(f"registry   device {self.device_id} registered with its public key")

    def import_loans(self, csv_path: Path) -> str:
        out = self.run_cli("collector", "loans", "import", "--config", str(self.collector_config), str(csv_path))
        self.say(f"loans      imported {csv_path.name}: {out.strip().splitlines()[-1] if out.strip() else 'ok'}")
        return out

    def start_sim(self, scenario: str, *, speed: float | None = None, extra: tuple[str, ...] = ()) -> ManagedProcess:
        argv = lienwatch_argv(
            "sim", "run", "--scenario", scenario, "--gnss-link", str(self.gnss_link),
            "--can-link", str(self.can_link), "--events-jsonl", str(self.events_path),
        )  # fmt: skip
        if speed is not None:
            argv += ["--speed", str(speed)]
        argv += list(extra)
        proc = self.processes.setdefault("sim", ManagedProcess("sim", argv, self.workdir / "sim.log"))
        proc.argv = argv
        proc.start()
        deadline = time.monotonic() + 30
        while not (self.gnss_link.exists() and self.can_link.exists()):
            if not proc.running:
                raise RigError(f"simulator exited early:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RigError(f"simulator did not create its ptys:\n{proc.tail()}")
            time.sleep(0.05)
        self.say(f"simulator  scenario {scenario}: NMEA on {self.gnss_link}, SLCAN on {self.can_link}")
        return proc

    def write_agent_config(self, *, gnss_url: str | None = None, can_interface: str = "slcan",
                           can_channel: str | None = None) -> None:  # fmt: skip
        assert self.broker is not None
        sections: dict[str, dict[str, Any]] = {
            "device": {
                "id": self.device_id,
                "key_file": str(self.keys_dir / f"{self.device_id}.key"),
                "data_dir": str(self.workdir / "agent-data"),
                "log_format": "kv",
            },
            "gnss": {"url": gnss_url or str(self.gnss_link), "baud": 9600},
            "can": {
                "interface": can_interface,
                "channel": can_channel or str(self.can_link),
                "bitrate": 500000,
                "dbc": [str(PACKAGE_DATA / "generic_car.dbc")],
                "signal_map": str(PACKAGE_DATA / "generic_car_map.toml"),
            },
            "rules": {
                "timezone": "Asia/Shanghai",
                "markets_file": str(PACKAGE_DATA / "markets.sample.toml"),
            },
            "batch": {"max_age_s": 10.0, "max_age_active_s": 5.0},
            "mqtt": {"host": "127.0.0.1", "port": self.broker.port, "backoff_min_s": 0.2, "backoff_max_s": 2.0},
            "downlink": {"collector_public_key": str(self.keys_dir / "collector.pub")},
        }
        if can_interface == "slcan":
            sections["can"]["bus_options"] = {"sleep_after_open": 0}
        for name, values in self.agent_extra.items():
            sections.setdefault(name, {}).update(values)
        self.agent_config.write_text(_toml(sections))

    def start_agent(self) -> ManagedProcess:
        if not self.agent_config.exists():
            self.write_agent_config()
        proc = self.processes.setdefault(
            "agent",
            ManagedProcess(
                "agent", lienwatch_argv("agent", "run", "--config", str(self.agent_config)), self.workdir / "agent.log"
            ),
        )
        proc.start()
        time.sleep(0.2)
        if not proc.running:
            raise RigError(f"agent exited at start:\n{proc.tail()}")
        self.say(f"agent      device {self.device_id} reading the simulator, publishing to the broker")
        return proc

    # ------------------------------------------------------------------ API

    def http(self, method: str, path: str, *, role: str = "admin", **kwargs: Any) -> Any:
        import httpx

        headers = {"Authorization": f"Bearer {API_KEYS[role]}"}
        response = httpx.request(method, self.api_url + path, headers=headers, timeout=10.0, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def get(self, path: str, *, role: str = "admin", **params: Any) -> Any:
        return self.http("GET", path, role=role, params=params or None)

    def wait_http(self, path: str, *, timeout: float, proc: ManagedProcess | None = None) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if proc is not None and not proc.running:
                raise RigError(f"{proc.name} exited:\n{proc.tail()}")
            try:
                if httpx.get(self.api_url + path, timeout=2.0).status_code < 500:
                    return
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.1)
        raise RigError(f"{self.api_url}{path} did not answer within {timeout:.0f} s ({last})")

    def sim_events(self) -> Iterator[dict[str, Any]]:
        """Every JSON line the simulator has written so far."""
        try:
            text = self.events_path.read_text()
        except FileNotFoundError:
            return
        for line in text.splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                yield json.loads(line)

    # ------------------------------------------------------------------ teardown

    def logs(self, lines: int = 80) -> str:
        parts = [f"----- {name} ({p.log_path})\n{p.tail(lines)}" for name, p in self.processes.items()]
        if self.broker is not None:
            with contextlib.suppress(FileNotFoundError):
                tail = "\n".join(self.broker.log_path.read_text(errors="replace").splitlines()[-lines:])
                parts.append(f"----- broker\n{tail}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop everything, agent first so it can flush, broker last."""
        for name in ("sim", "agent", "collector"):
            if name in self.processes:
                self.processes[name].stop()
        for proc in self.processes.values():
            proc.stop()
        if self.broker is not None:
            self.broker.close()

    def __enter__(self) -> ChainRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _toml(sections: dict[str, dict[str, Any]]) -> str:
    out: list[str] = []
    for name, values in sections.items():
        out.append(f"[{name}]")
        for key, value in values.items():
            if isinstance(value, dict):
                inner = ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items())
                out.append(f"{key} = {{ {inner} }}")
            else:
                out.append(f"{key} = {json.dumps(value)}")
        out.append("")
    return "\n".join(out)
