"""The private Mosquitto of the tests, with authentication and the LienWatch ACL.

Anonymous access is off; every client logs in with an account made by
:class:`collector.cli.broker_auth.BrokerAccounts` (the code behind ``lienwatch collector
broker init`` and ``devices add --broker-dir``): the collector's account
(``lw-collector``, reads every uplink, writes every configuration) or a device's (user name
= device id, its own topics only). :meth:`SecureBroker.login` makes an account on first use
and reloads the running broker; the same user name gets the same password afterwards.
"""

from __future__ import annotations

import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from collector.cli.broker_auth import COLLECTOR_USER, BrokerAccounts, Credentials
from firmware_sim.rig import BrokerAuth, BrokerTls, Mosquitto

__all__ = ["COLLECTOR_USER", "SecureBroker", "connack"]


def connack(
    port: int, credentials: Credentials | None, *, timeout: float = 10.0, ca_file: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
) -> int | None:  # fmt: skip
    """The CONNACK reason code the broker gives these credentials (None: no answer, or the
    connection failed); TLS with ``ca_file``, and a client certificate and key with ``client_cert``."""
    answer: list[int] = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    if credentials is not None:
        client.username_pw_set(credentials.username, credentials.password)
    if ca_file is not None:
        certfile, keyfile = client_cert if client_cert is not None else (None, None)
        client.tls_set(ca_certs=str(ca_file), certfile=certfile and str(certfile), keyfile=keyfile and str(keyfile))

    def on_connect(_c: object, _u: object, _f: object, reason: mqtt.ReasonCode, _p: object) -> None:
        answer.append(reason.value)
        done.set()

    client.on_connect = on_connect
    try:
        client.connect("127.0.0.1", port)
    except OSError:  # ssl.SSLError included: refused at the handshake
        return None
    client.loop_start()
    try:
        done.wait(timeout)
    finally:
        client.disconnect()
        client.loop_stop()
    return answer[0] if answer else None


class SecureBroker(Mosquitto):
    """A :class:`firmware_sim.rig.Mosquitto` with anonymous access off, a password file and the ACL.

    Args:
        workdir: the broker's folder; the accounts live in ``workdir/accounts``.
        persistence: as :class:`~firmware_sim.rig.Mosquitto`.
        tls: TLS listeners (see :class:`~firmware_sim.rig.BrokerTls`), or None for plain TCP.
    """

    def __init__(self, workdir: Path, *, persistence: bool = True, tls: BrokerTls | None = None) -> None:
        self.accounts = BrokerAccounts(Path(workdir) / "accounts")
        self._logins: dict[str, Credentials] = {COLLECTOR_USER: self.accounts.collector_account()}
        auth = BrokerAuth(self.accounts.password_file, self.accounts.acl_file)
        super().__init__(workdir=Path(workdir) / "broker", persistence=persistence, auth=auth, tls=tls)

    def login(self, username: str = COLLECTOR_USER) -> Credentials:
        """The account of ``username`` (a device id, or the collector by default), made on first use."""
        known = self._logins.get(username)
        if known is not None:
            return known
        made = self.accounts.add_device(username)
        self._logins[username] = made
        if self.proc is not None and self.proc.poll() is None:
            self.reload()
            # SIGHUP is handled in the broker's own loop: wait until it takes the new account.
            ca_file = self.tls.ca_file if self.tls is not None else None
            for _ in range(100):
                if connack(self.port, made, timeout=2.0, ca_file=ca_file) == 0:
                    break
                threading.Event().wait(0.05)
        return made

    def authenticate(self, client: mqtt.Client, username: str = COLLECTOR_USER) -> mqtt.Client:
        """Set ``username``'s account (the collector's by default) on a paho client before it connects."""
        login = self.login(username)
        client.username_pw_set(login.username, login.password)
        return client
