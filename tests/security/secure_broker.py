"""A private Mosquitto with authentication and the LienWatch ACL (collector.cli.broker_auth)."""

from __future__ import annotations

from pathlib import Path

from collector.cli.broker_auth import BrokerAccounts, mosquitto_conf_lines
from firmware_sim.rig import Mosquitto


class AuthenticatedMosquitto(Mosquitto):
    """:class:`firmware_sim.rig.Mosquitto` with anonymous access off, a password file and the ACL."""

    def __init__(self, accounts: BrokerAccounts, workdir: Path) -> None:
        super().__init__(workdir=workdir, persistence=False)
        self.accounts = accounts

    def _write_config(self) -> Path:
        conf = super()._write_config()
        auth = mosquitto_conf_lines(self.accounts.password_file.resolve(), self.accounts.acl_file.resolve())
        lines = [line for line in conf.read_text().splitlines() if not line.startswith("allow_anonymous")]
        conf.write_text("\n".join([*lines, *auth]) + "\n")
        return conf
