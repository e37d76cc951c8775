"""The chain rig: every part of LienWatch in its own process, wired on loopback.

simulator (NMEA + SLCAN ptys) -> agent -> private Mosquitto -> collector (SQLite) -> HTTP API

Used by ``lienwatch demo`` and the HIL suite (hil-tests/). Each process is started with
``python -m protocol ...`` (the ``lienwatch`` command), in its own session so that a stop kills
its whole tree, with stdout/stderr in a log file under the rig's work directory; the logs
are what a failing HIL test prints. Everything listens on free loopback ports only.

GNSS first, then CAN (why the agent's CAN channel is a second symlink): the agent stamps CAN
samples on its GNSS-disciplined observation clock, which falls back to the *host* wall clock
until the first fix (docs/agent.md). The scenarios play dates in the past, so a CAN frame
read before the first fix would move the rules engine's clock months ahead and every later
record would be dropped as stale. A real vehicle wakes its bus after the T-BOX's receiver
has been running (it sits on the backup battery); the rig reproduces that order: the
simulator holds its clock (``--wait-open``) with its SLCAN pty at ``can0.sim``; the agent
starts with ``[can] channel = can0``, which does not exist yet (its CAN source retries);
once the agent has the GNSS pty open, the rig opens the SLCAN channel itself (``O``: the
scenario clock starts), waits ``can_after_fix_s`` for the first fixes and then links
``can0 -> can0.sim``. Following the symlink chain also survives the simulator's
unplug/re-plug (a new pty behind ``can0.sim``).

To point the same rig at a real T-BOX, give ``gnss_url``/``can_interface``/``can_channel``
to :meth:`ChainRig.write_agent_config` instead of starting the simulator (see docs/hil.md).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import RigError, ServiceError
from .services import BrokerAuth, Mosquitto, free_port
from .tls import CertificateAuthority

__all__ = ["API_KEYS", "ChainRig", "LinkCutter", "ManagedProcess"]

#: Demo/test bearer keys per role (plain keys are hashed by the collector when loaded).
API_KEYS = {
    "admin": "rig-admin-key-0123456789",
    "risk_analyst": "rig-analyst-key-0123456789",
    "collections": "rig-collections-key-0123456789",
    "auditor": "rig-auditor-key-0123456789",
}


def _edge_data() -> Path:
    """The agent's shipped data folder (DBC, signal map, sample markets), located without
    importing ``edge``: the rig drives the agent only through its command line."""
    spec = importlib.util.find_spec("edge")
    if spec is None or not spec.submodule_search_locations:
        raise RigError("the edge package is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data"


PACKAGE_DATA = _edge_data()


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

    def group_alive(self) -> bool:
        """True while the process or anything left in its process group still exists."""
        if self.proc is None:
            return False
        if self.proc.poll() is None:
            return True
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class LinkCutter:
    """A TCP relay on a free loopback port that can cut the line (a network outage).

    The agent connects to it instead of the broker. Two kinds of outage, while the broker
    and the collector stay up:

    * :meth:`cut` closes every relayed connection and refuses new ones until
      :meth:`restore` (the peer sees FIN/RST at once: a link that is plainly gone);
    * :meth:`blackhole` moves no byte in either direction and closes nothing (no RST, no
      FIN), like a cellular link that silently stops carrying packets: the ends only notice
      through their own timeouts (MQTT keepalive). Connections made during the black hole
      are accepted by the kernel but not relayed (like a SYN that gets no answer); when the
      link returns (:meth:`restore`) the frozen connections carry on (whatever their ends
      did meanwhile: a broker that timed the client out has closed its side, which then
      reaches the client), and a connection opened during the black hole is relayed if its
      client is still waiting and dropped if the client gave up (a late SYN-ACK to a closed
      socket is answered with RST).

    Threads are daemons and :meth:`close` joins them.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._up = threading.Event()
        self._up.set()
        self._flowing = threading.Event()  # cleared during a black hole
        self._flowing.set()
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name="lw-rig-cutter", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._up.is_set():
                client.close()
                continue
            with self._lock:
                self._sockets.append(client)
            if self._flowing.is_set():
                self._relay(client, b"")
            else:
                self._spawn(self._hold, client)

    def _relay(self, client: socket.socket, early: bytes) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            upstream.settimeout(None)
            if early:
                upstream.sendall(early)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.append(upstream)
        self._spawn(self._pipe, client, upstream)
        self._spawn(self._pipe, upstream, client)

    def _hold(self, client: socket.socket) -> None:
        """A connection opened during a black hole: relay it once the link returns, if still wanted."""
        while not self._flowing.wait(0.1):
            if self._closing.is_set() or not self._up.is_set():
                return
        early = bytearray()
        client.setblocking(False)
        try:
            while chunk := client.recv(65536):
                early += chunk
            gave_up = True  # EOF: the client closed the socket while its connect hung
        except BlockingIOError:
            gave_up = False
        except OSError:
            gave_up = True
        client.setblocking(True)
        if gave_up:
            with contextlib.suppress(OSError):
                client.close()
            return
        self._relay(client, bytes(early))

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError, ValueError):
            while not self._closing.is_set():
                if not self._flowing.is_set():  # black hole: read nothing, send nothing, close nothing
                    self._flowing.wait(0.1)
                    continue
                readable, _, _ = select.select([src], [], [], 0.1)
                if not readable or not self._flowing.is_set():  # the black hole may have begun meanwhile
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        """Drop every relayed connection and refuse new ones."""
        self._up.clear()
        self._flowing.set()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def blackhole(self) -> None:
        """Stop carrying bytes without closing anything (see the class docstring)."""
        self._flowing.clear()

    @property
    def blackholed(self) -> bool:
        """True during a black hole."""
        return not self._flowing.is_set()

    def restore(self) -> None:
        """Accept and relay connections again (after :meth:`cut` or :meth:`blackhole`)."""
        self._up.set()
        self._flowing.set()

    def close(self) -> None:
        self._closing.set()
        self.cut()
        self._server.close()
        for thread in self._threads:
            thread.join(timeout=5)


def lienwatch_argv(*args: str) -> list[str]:
    """argv that runs ``lienwatch ARGS`` with this interpreter."""
    return [sys.executable, "-m", "protocol", *args]


class ChainRig:
    """Start, fault and stop the whole chain; query its API.

    Args:
        workdir: folder for keys, configs, databases, ptys and logs (kept for post-mortems).
        device_id: the simulated vehicle's device id.
        say: where progress lines go (``print`` for the demo, a list for tests).
        agent_identity: how the agent logs in to the broker: ``password`` (its account from
            ``devices add --broker-dir``) or ``certificate`` (a client certificate from the
            rig's CA whose CN is the device id, on the broker's certificate listener).
    """

    def __init__(
        self, workdir: Path, *, device_id: str = "car-0001", say: Callable[[str], None] = print,
        agent_identity: str = "password",
    ) -> None:  # fmt: skip
        if agent_identity not in ("password", "certificate"):
            raise RigError(f"agent_identity must be 'password' or 'certificate', not {agent_identity!r}")
        self.agent_identity = agent_identity
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
        self.sim_can_link = self.workdir / "can0.sim"
        #: wall seconds between starting the scenario clock and giving the agent its CAN channel
        self.can_after_fix_s = 1.5
        self._sim_wait_open = False
        self._broker_pids: list[int] = []
        self._agent_started = 0.0
        #: set by :meth:`relay_agent_link`: the agent reaches the broker through it
        self.agent_link: LinkCutter | None = None
        self.events_path = self.workdir / "sim-events.jsonl"
        self.collector_config = self.workdir / "collector.toml"
        self.agent_config = self.workdir / "agent.toml"
        self.agent_extra: dict[str, dict[str, Any]] = {}
        #: the broker's password file and ACL (``lienwatch collector broker init``)
        self.broker_accounts = self.workdir / "broker-accounts"
        #: the throwaway CA of the broker's TLS listeners, made at the first broker start
        self.ca: CertificateAuthority | None = None
        #: MQTT user name -> password, as ``broker init`` and ``devices add --broker-dir`` printed them
        self.mqtt_logins: dict[str, str] = {}
        self.collector_user = ""
        #: more devices on this rig's broker and collector (:meth:`add_tracker`)
        self.trackers: list[ChainRig] = []
        self._owns_services = True  # False for a tracker: the broker and the link are its parent's

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
        """Start the private broker, or start it again on the same port after :meth:`stop_broker`.

        The first start makes the broker's accounts with ``lienwatch collector broker init``
        (the collector's account and the ACL; anonymous access off) and a throwaway CA with
        the broker's server certificate: the broker listens with TLS only, user name and
        password on :attr:`Mosquitto.port`, a client certificate from the CA on
        :attr:`Mosquitto.cert_port` (docs/security.md).
        """
        try:
            if self.broker is None:
                init = self.run_cli("collector", "broker", "init", "--broker-dir", str(self.broker_accounts))
                login = json.loads(init)
                self.collector_user = str(login["mqtt_username"])
                self.mqtt_logins[self.collector_user] = str(login["mqtt_password"])
                self.ca = CertificateAuthority(self.workdir / "tls")
                auth = BrokerAuth(self.broker_accounts / "passwd", self.broker_accounts / "acl")
                self.broker = Mosquitto(workdir=self.workdir / "broker", auth=auth, tls=self.ca.server())
            self.broker.start()
        except ServiceError as exc:
            raise RigError(f"broker: {exc}") from exc
        if self.broker.proc is not None:
            self._broker_pids.append(self.broker.proc.pid)
        self.say(f"broker     Mosquitto on 127.0.0.1:{self.broker.port} (TLS, per-device accounts and ACL)")
        return self.broker

    def _mqtt_tls(self) -> dict[str, Any]:
        assert self.ca is not None
        return {"tls": True, "ca_file": str(self.ca.ca_file)}

    @property
    def agent_broker_port(self) -> int:
        """The broker listener the agent logs in on (password or certificate listener)."""
        assert self.broker is not None
        if self.agent_identity == "certificate":
            assert self.broker.cert_port is not None
            return self.broker.cert_port
        return self.broker.port

    def _agent_login(self) -> dict[str, Any]:
        """``[mqtt]`` identity lines of the agent: its user name, or its client certificate."""
        assert self.ca is not None
        if self.agent_identity == "certificate":
            cert = self.ca.client(self.device_id)
            return {"cert_file": str(cert.cert_file), "key_file": str(cert.key_file)}
        return {"username": self.device_id}  # the password comes from the environment (start_agent)

    def stop_broker(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with ``kill``); the port and persistence file stay."""
        if self.broker is not None:
            self.broker.stop(kill=kill)
            self.say(f"broker     stopped ({'SIGKILL' if kill else 'SIGTERM'})")

    def generate_keys(self, source: Path | None = None) -> None:
        """Ed25519 keys for the device and the collector (copied from ``source`` if given: faster)."""
        if source is not None and (source / f"{self.device_id}.key").exists():
            shutil.copytree(source, self.keys_dir, dirs_exist_ok=True)
            self.say(f"keys       Ed25519 keys for {self.device_id} and the collector copied from {source}")
            return
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
            *(f"{k} = {json.dumps(v)}" for k, v in self._mqtt_tls().items()),
            f'username = "{self.collector_user}"',
            f'password = "{self.mqtt_logins[self.collector_user]}"',
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
        """``devices add --broker-dir``: the device's key in the registry and its broker account."""
        out = self.run_cli(
            "collector", "devices", "add", "--config", str(self.collector_config),
            "--device", self.device_id, "--public-key", str(self.keys_dir / f"{self.device_id}.pub"),
            "--broker-dir", str(self.broker_accounts),
        )  # fmt: skip
        added = json.loads(out)
        self.mqtt_logins[str(added["mqtt_username"])] = str(added["mqtt_password"])
        if self.broker is not None:
            self.broker.reload()  # the broker reads the new account on SIGHUP
        self.say(f"registry   device {self.device_id} registered with its public key and its broker account")

    def add_tracker(self, device_id: str) -> ChainRig:
        """A second device on this chain, e.g. a car's hidden backup tracker (docs/hil.md).

        The returned rig has its own simulator, agent, ptys, agent data and logs in the
        sub-folder ``device_id`` of this rig's work dir, and shares this rig's broker (its TLS
        CA and accounts), collector and key folder: its key pair is generated there and it is
        registered with its broker account, so call this after :meth:`start_collector`. Its
        agent starts with a copy of this rig's :attr:`agent_extra` (the fleet's settings). This
        rig's :meth:`stop` stops it first, and :meth:`logs` and :meth:`leftovers` include it.
        """
        if self.broker is None or not self.collector_config.exists():
            raise RigError("add_tracker needs the broker and the collector's configuration: start them first")
        tracker = ChainRig(self.workdir / device_id, device_id=device_id, say=self.say,
                           agent_identity=self.agent_identity)  # fmt: skip
        tracker._owns_services = False
        tracker.broker, tracker.ca, tracker.api_port = self.broker, self.ca, self.api_port
        tracker.keys_dir, tracker.broker_accounts = self.keys_dir, self.broker_accounts
        tracker.collector_config, tracker.collector_user = self.collector_config, self.collector_user
        tracker.mqtt_logins = self.mqtt_logins  # one set of broker accounts
        tracker.agent_extra = {section: dict(values) for section, values in self.agent_extra.items()}
        self.run_cli("keys", "generate", "--device", device_id, "--out", str(self.keys_dir))
        tracker.provision_device()
        self.trackers.append(tracker)
        return tracker

    def import_sample_loans(self) -> str:
        """Import the shipped sample loan book re-dated to today (``loans import --sample``)."""
        out = self.run_cli("collector", "loans", "import", "--sample", "--config", str(self.collector_config))
        self.say(f"loans      sample loan book imported (re-dated to today): {out.strip()}")
        return out

    def import_loans(self, csv_path: Path) -> str:
        out = self.run_cli("collector", "loans", "import", "--config", str(self.collector_config), str(csv_path))
        self.say(f"loans      imported {csv_path.name}: {out.strip().splitlines()[-1] if out.strip() else 'ok'}")
        return out

    def start_sim(
        self,
        scenario: str,
        *,
        speed: float | None = None,
        speed_factor: float | None = None,
        wait_open: float | None = 120.0,
        extra: tuple[str, ...] = (),
    ) -> ManagedProcess:
        """Start the simulator with its ptys at ``gnss0`` and ``can0.sim``.

        Args:
            scenario: shipped scenario name or TOML file.
            speed: play everything at this speed (``--speed``).
            speed_factor: multiply the scenario's speeds, 1x windows stay 1x (``--speed-factor``).
            wait_open: hold the scenario clock until the SLCAN channel is opened, at most this
                many seconds (``--wait-open``); :meth:`start_agent` opens it once the agent
                reads GNSS. None: start the clock at once.
            extra: more ``lienwatch sim run`` options.
        """
        for stale in (self.can_link, self.events_path):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        argv = lienwatch_argv(
            "sim", "run", "--scenario", scenario, "--gnss-link", str(self.gnss_link),
            "--can-link", str(self.sim_can_link), "--events-jsonl", str(self.events_path),
        )  # fmt: skip
        if speed is not None:
            argv += ["--speed", str(speed)]
        if speed_factor is not None:
            argv += ["--speed-factor", str(speed_factor)]
        if wait_open:
            argv += ["--wait-open", str(wait_open)]
        argv += list(extra)
        proc = self.processes.setdefault("sim", ManagedProcess("sim", argv, self.workdir / "sim.log"))
        proc.argv = argv
        proc.start()
        self._sim_wait_open = bool(wait_open)
        self.wait_for(
            lambda: self.sim_event("ready") is not None and self.gnss_link.exists() and self.sim_can_link.exists(),
            timeout=60,
            what="the simulator's ptys",
            proc=proc,
        )
        if not wait_open:
            self._link_can()
        self.say(f"simulator  scenario {scenario}: NMEA on {self.gnss_link}, SLCAN on {self.sim_can_link}")
        return proc

    def sim_event(self, kind: str, name: str | None = None) -> dict[str, Any] | None:
        """The first simulator line of ``type`` ``kind`` (and ``event`` ``name``), if written yet."""
        for event in self.sim_events():
            if event.get("type") == kind and (name is None or event.get("event") == name):
                return event
        return None

    def _link_can(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.can_link.unlink()
        self.can_link.symlink_to(self.sim_can_link.name)  # relative: follows the simulator's re-plugs

    def _agent_has_open(self, proc: ManagedProcess, device: str) -> bool:
        """True once ``proc`` holds ``device`` open (Linux /proc; elsewhere: after a second)."""
        fd_dir = Path(f"/proc/{proc.pid}/fd")
        if not fd_dir.is_dir():
            return time.monotonic() - self._agent_started > 1.0
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) == device:
                        return True
        return False

    def _open_slcan_channel(self) -> None:
        """Send ``O`` to the simulated adapter: the scenario clock starts (``--wait-open``)."""
        ready = self.sim_event("ready")
        device = str(ready["can_device"]) if ready else str(self.sim_can_link)
        fd = os.open(device, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            os.write(fd, b"O\r")
        finally:
            os.close(fd)

    def _hand_over_can(self, proc: ManagedProcess) -> None:
        """GNSS first, then CAN (see the module docstring)."""
        ready = self.sim_event("ready")
        if ready is not None:
            self.wait_for(
                lambda: self._agent_has_open(proc, str(ready["gnss_device"])),
                timeout=60,
                what="the agent opening the GNSS pty",
                proc=proc,
            )
        if self.sim_event("start") is None:
            self._open_slcan_channel()
            self.wait_for(lambda: self.sim_event("start") is not None, timeout=30, what="the scenario start")
        time.sleep(self.can_after_fix_s)
        self._link_can()

    def write_agent_config(self, *, gnss_url: str | None = None, can_interface: str = "slcan",
                           can_channel: str | None = None, with_can: bool = True) -> None:  # fmt: skip
        """The agent's ``agent.toml``; ``with_can=False`` leaves ``[can]`` out (a GNSS-only box)."""
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
                "markets_file": str(PACKAGE_DATA / "places.sample.toml"),  # the market plus typed places (#17)
            },
            "batch": {"max_age_s": 10.0, "max_age_active_s": 5.0},
            # The rig shows a parked car each minute (a fix and a batch); the production default
            # is a fix every 15 minutes and a batch an hour (docs/agent.md, "Reporting policy").
            "reporting": {"parked_fix_interval_s": 60.0, "parked_batch_s": 60.0},
            "mqtt": {
                "host": "127.0.0.1",
                "port": self.agent_link.port if self.agent_link else self.agent_broker_port,
                **self._mqtt_tls(),
                **self._agent_login(),
                "backoff_min_s": 0.2,
                "backoff_max_s": 2.0,
            },
            "downlink": {"collector_public_key": str(self.keys_dir / "collector.pub")},
        }
        if not with_can:
            del sections["can"]
        elif can_interface == "slcan":
            sections["can"]["bus_options"] = {"sleep_after_open": 0}
        for name, values in self.agent_extra.items():
            sections.setdefault(name, {}).update(values)
        self.agent_config.write_text(_toml(sections))

    def start_agent(self) -> ManagedProcess:
        """Start (or restart) the agent; with the rig's simulator, GNSS first, then CAN."""
        if not self.agent_config.exists():
            self.write_agent_config()
        proc = self.processes.setdefault(
            "agent",
            ManagedProcess(
                "agent", lienwatch_argv("agent", "run", "--config", str(self.agent_config)), self.workdir / "agent.log"
            ),
        )
        if self.agent_identity == "password":
            password = self.mqtt_logins.get(self.device_id)
            if password is None:
                raise RigError(f"device {self.device_id} has no broker account: provision_device() first")
            proc.env["LIENWATCH_AGENT_MQTT_PASSWORD"] = password
        sim = self.processes.get("sim")
        hand_over = sim is not None and sim.running and self._sim_wait_open and self._agent_reads_sim_can()
        if hand_over:
            with contextlib.suppress(FileNotFoundError):
                self.can_link.unlink()
        self._agent_started = time.monotonic()
        proc.start()
        if hand_over:
            self._hand_over_can(proc)
        else:
            time.sleep(0.2)
        if not proc.running:
            raise RigError(f"agent exited at start:\n{proc.tail()}")
        self.say(f"agent      device {self.device_id} reading the simulator, publishing to the broker")
        return proc

    def _agent_reads_sim_can(self) -> bool:
        try:
            return f'channel = "{self.can_link}"' in self.agent_config.read_text()
        except FileNotFoundError:
            return False

    def relay_agent_link(self) -> LinkCutter:
        """Route the agent's MQTT connection through a :class:`LinkCutter` (call before
        :meth:`write_agent_config`); ``rig.agent_link.cut()`` is then a network outage."""
        assert self.broker is not None
        if self.agent_link is None:
            self.agent_link = LinkCutter(self.agent_broker_port)
        return self.agent_link

    def kill(self, name: str) -> None:
        """SIGKILL a part (``agent``, ``collector``, ``sim``): a crash, no clean-up."""
        self.processes[name].kill()
        self.say(f"{name:<10} SIGKILLed")

    def restart_collector(self) -> ManagedProcess:
        """Start the collector again (same config, database and MQTT session) after a kill or stop."""
        return self.start_collector()

    @property
    def database_path(self) -> Path:
        """The collector's SQLite database."""
        return self.workdir / "collector-data" / "collector.db"

    @property
    def agent_data_dir(self) -> Path:
        """The agent's data folder (outbox, sequence file, rule snapshot)."""
        return self.workdir / "agent-data"

    def wait_for(
        self, condition: Callable[[], object], *, timeout: float, what: str,
        proc: ManagedProcess | None = None, interval: float = 0.05,
    ) -> None:  # fmt: skip
        """Poll ``condition`` until it is true; RigError naming ``what`` on timeout or if ``proc`` dies."""
        deadline = time.monotonic() + timeout
        while not condition():
            if proc is not None and not proc.running:
                raise RigError(f"{proc.name} exited while waiting for {what}:\n{proc.tail()}")
            if time.monotonic() > deadline:
                raise RigError(f"timed out after {timeout:.0f} s waiting for {what}")
            time.sleep(interval)

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
        parts += [f"===== tracker {t.device_id}\n{t.logs(lines)}" for t in self.trackers]
        if self.broker is not None and self._owns_services:
            with contextlib.suppress(FileNotFoundError):
                tail = "\n".join(self.broker.log_path.read_text(errors="replace").splitlines()[-lines:])
                parts.append(f"----- broker\n{tail}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop everything, agent first so it can flush, broker last (a tracker: its own parts only)."""
        for tracker in self.trackers:
            tracker.stop()
        for name in ("sim", "agent", "collector"):
            if name in self.processes:
                self.processes[name].stop()
        for proc in self.processes.values():
            proc.stop()
        if self._owns_services:
            if self.agent_link is not None:
                self.agent_link.close()
            if self.broker is not None:
                self.broker.close()
        with contextlib.suppress(FileNotFoundError):
            self.can_link.unlink()

    def leftovers(self) -> list[str]:
        """Processes the rig started that still exist (empty after a good :meth:`stop`)."""
        left = [f"{name} (pid {p.pid})" for name, p in self.processes.items() if p.group_alive()]
        left += [f"{t.device_id} {what}" for t in self.trackers for what in t.leftovers()]
        for pid in self._broker_pids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, 0)  # the broker runs in its own session: pid == process group
                left.append(f"broker (pid {pid})")
        return left

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
