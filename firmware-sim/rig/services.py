"""Private instances of the system services the chain needs: Mosquitto and PostgreSQL.

Tests, benchmarks, the HIL rig and ``make demo`` start their own broker and database on a
free loopback port in a temporary directory and stop them afterwards; nothing depends on a
service someone else left running. Running as root: Mosquitto needs ``user root`` in its
config, and PostgreSQL refuses root, so ``initdb``/``postgres`` run as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from protocol import MAX_PUBLISH_PACKET_BYTES

from .errors import ServiceError

__all__ = [
    "BrokerAuth",
    "BrokerTls",
    "Mosquitto",
    "Postgres",
    "ServiceError",
    "find_binary",
    "free_port",
    "wait_for_port",
]


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"process exited with code {proc.returncode} before opening port {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise ServiceError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


def find_binary(name: str, extra_globs: tuple[str, ...] = ()) -> str:
    """Locate a system binary on PATH, in sbin, or in versioned install folders."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if found:
        return found
    for pattern in extra_globs:
        matches = sorted(glob.glob(pattern), reverse=True)
        if matches:
            return matches[0]
    raise ServiceError(f"{name} not found; run 'make test' or 'make demo' as root, or apt-get install it")


@dataclass(frozen=True, slots=True)
class BrokerAuth:
    """Authentication and ACL of a private broker (files written by ``lienwatch collector broker``).

    Attributes:
        password_file: Mosquitto password file (``user:$7$...`` lines).
        acl_file: Mosquitto ACL file.
    """

    password_file: Path
    acl_file: Path


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """TLS on every listener of a private broker, and a second listener for client certificates.

    Attributes:
        ca_file: the deployment's CA (PEM): signs the server certificate and the devices'
            client certificates.
        cert_file: the broker's server certificate (PEM).
        key_file: its private key (PEM).
    """

    ca_file: Path
    cert_file: Path
    key_file: Path


class Mosquitto:
    """A private Mosquitto broker on a free loopback port.

    Use as a context manager, or call :meth:`start` / :meth:`stop`. :meth:`stop` and
    :meth:`start` can be called again to simulate a broker outage; the port and the
    persistence file are kept, so retained messages and persistent sessions survive.

    Args:
        port: the listener's port (a free one by default).
        workdir: folder for the configuration, the log and the persistence file.
        persistence: keep retained messages and sessions across :meth:`stop`/:meth:`start`.
        auth: anonymous access off, this password file and ACL (None: anonymous, no ACL,
            for tools that test the broker itself).
        tls: TLS on ``port`` (user name + password), and a second listener on
            ``cert_port`` that requires a client certificate signed by the CA and takes the
            certificate's CN as the user name (``use_identity_as_username``); the ACL is
            the same for both.
    """

    def __init__(
        self,
        port: int | None = None,
        workdir: str | Path | None = None,
        *,
        persistence: bool = True,
        auth: BrokerAuth | None = None,
        tls: BrokerTls | None = None,
        max_queued_messages: int = 100_000,
    ) -> None:
        self.port = port or free_port()
        self.max_queued_messages = max_queued_messages
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="lw-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.persistence = persistence
        self.auth = auth
        self.tls = tls
        self.cert_port = free_port() if tls is not None else None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "mosquitto.log"

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _write_config(self) -> Path:
        conf = self.workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            *self._tls_lines(require_certificate=False),
        ]
        if self.tls is not None and self.cert_port is not None:
            lines += [f"listener {self.cert_port} 127.0.0.1", *self._tls_lines(require_certificate=True)]
        if self.auth is None:
            lines.append("allow_anonymous true")
        else:
            lines += [
                "allow_anonymous false",
                f"password_file {self.auth.password_file.resolve()}",
                f"acl_file {self.auth.acl_file.resolve()}",
            ]
        lines += [
            "max_inflight_messages 100",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_packet_size {MAX_PUBLISH_PACKET_BYTES}",  # the protocol's largest message, no more
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        conf.write_text("\n".join(lines) + "\n")
        return conf

    def _tls_lines(self, *, require_certificate: bool) -> list[str]:
        if self.tls is None:
            return []
        lines = [
            f"cafile {self.tls.ca_file.resolve()}",
            f"certfile {self.tls.cert_file.resolve()}",
            f"keyfile {self.tls.key_file.resolve()}",
        ]
        if require_certificate:
            lines += ["require_certificate true", "use_identity_as_username true"]
        return lines

    def reload(self) -> None:
        """Re-read the password file and the ACL (SIGHUP), e.g. after a device was added."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGHUP)

    def start(self) -> Mosquitto:
        binary = find_binary("mosquitto")
        conf = self._write_config()
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=log, stderr=log, start_new_session=True)
        log.close()
        try:
            wait_for_port(self.port, proc=self.proc)
        except ServiceError as exc:
            self.stop()
            raise ServiceError(f"mosquitto did not start: {exc}\n{self.log_path.read_text()[-2000:]}") from exc
        return self

    def stop(self, *, kill: bool = False) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Mosquitto:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


class Postgres:
    """A private PostgreSQL cluster (initdb + postgres) on a free loopback port.

    As root, the cluster is created and run as the ``postgres`` system user.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="lw-postgres-"))
        self.datadir = self.workdir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "postgres.log"
        self.user = "lienwatch"
        self.database = "lienwatch"

    @property
    def url(self) -> str:
        """SQLAlchemy URL (psycopg 3 driver)."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{self.database}"

    def _demote(self) -> tuple[list[str], dict[str, int]]:
        if os.geteuid() != 0:
            return [], {}
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise ServiceError("running as root needs a 'postgres' system user (apt-get install postgresql)") from exc
        os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        return [], {"user": pw.pw_uid, "group": pw.pw_gid}

    def start(self) -> Postgres:
        globs = ("/usr/lib/postgresql/*/bin/{}",)
        initdb = find_binary("initdb", tuple(g.format("initdb") for g in globs))
        postgres = find_binary("postgres", tuple(g.format("postgres") for g in globs))
        _, ids = self._demote()
        kwargs: dict[str, object] = {}
        if ids:
            kwargs = {"user": ids["user"], "group": ids["group"], "extra_groups": []}
        env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run(
            [initdb, "-D", str(self.datadir), "-U", self.user, "-A", "trust", "-E", "UTF8", "--no-sync"],
            capture_output=True,
            env=env,
            check=False,
            cwd=self.workdir,
            **kwargs,  # type: ignore[arg-type]
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed: {result.stderr.decode(errors='replace')[-2000:]}")
        log = self.log_path.open("ab")
        if ids:
            os.chown(self.log_path, ids["user"], ids["group"])
        self.proc = subprocess.Popen(
            [
                postgres, "-D", str(self.datadir), "-p", str(self.port), "-h", "127.0.0.1",
                "-k", str(self.workdir), "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=200",
            ],
            stdout=log, stderr=log, env=env, cwd=self.workdir, start_new_session=True,
            **kwargs,  # type: ignore[arg-type]
        )  # fmt: skip
        log.close()
        try:
            wait_for_port(self.port, timeout=30, proc=self.proc)
            self._create_database(env, kwargs)
        except ServiceError as exc:
            self.stop()
            raise ServiceError(f"postgres did not start: {exc}\n{self.log_path.read_text()[-2000:]}") from exc
        return self

    def _create_database(self, env: dict[str, str], kwargs: dict[str, object]) -> None:
        createdb = find_binary("createdb", ("/usr/lib/postgresql/*/bin/createdb",))
        deadline = time.monotonic() + 20
        while True:
            result = subprocess.run(
                [createdb, "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, self.database],
                capture_output=True, env=env, check=False, cwd=self.workdir,
                **kwargs,  # type: ignore[arg-type]
            )  # fmt: skip
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"createdb failed: {result.stderr.decode(errors='replace')}")
            time.sleep(0.2)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
