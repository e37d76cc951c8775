"""``lienwatch collector``: run and administer the cloud collector.

Subcommands: ``serve`` (MQTT ingest + HTTP API + background jobs, or a part of them),
``migrate``, ``devices add|rotate|list|revoke``, ``dead-letters``, ``gaps``, ``api-key new``, and (in
collector.cli.loans) ``loans import|list|show``, ``repayments add``, ``retention run``,
``places import|list|delete``, ``markets import``, and (in collector.cli.people)
``users add|list|passwd``. Every subcommand reads ``--config`` (or the file named by
``LIENWATCH_CONFIG``) and the ``LIENWATCH_*`` environment; see docs/collector.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from wsgiref.simple_server import WSGIServer

import sqlalchemy as sa
import uvicorn
from prometheus_client import CollectorRegistry, start_http_server
from sqlalchemy.orm import Session

from ..api.app import discover_routers
from ..clock import wall_clock_ms
from ..errors import CollectorError, DatabaseUnavailableError
from ..files import FileReadError, read_bounded
from ..ingest.ingestor import DEAD_LETTER_REASONS
from ..ingest.registry import MAX_PEM_BYTES, DeviceRegistry, load_public_key_pem
from ..jobs.downlink import announce_next_key
from ..jobs.receipts import device_gaps, fleet_gaps
from ..runtime import CollectorRuntime
from ..settings import ROLES, Settings, hash_api_key
from ..storage.tables import Base
from .broker_auth import BrokerAccounts, mosquitto_conf_lines
from .cases import add_subcommands as add_case_subcommands
from .compliance import add_subcommands as add_compliance_subcommands
from .context import audit_cli, open_settings_database, settings_from_args
from .loans import add_subcommands
from .people import add_subcommands as add_people_subcommands

__all__ = ["main"]

log = logging.getLogger("collector")




def _serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s, shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    delay = settings.limits.db_retry_initial_s
    while True:
        try:
            engine = open_settings_database(settings)
            break
        except DatabaseUnavailableError as exc:
            log.warning("database unreachable at start, retrying in %.1f s: %s", delay, exc)
            if stop.wait(delay):
                return 1
            delay = min(delay * 2, settings.limits.db_retry_max_s)
    log.info("database ready: %s", engine.url.render_as_string(hide_password=True))

    runtime = None
    metrics_server = None
    server = None
    server_thread = None
    try:
        runtime = CollectorRuntime(settings, engine, ingest=not (args.api_only or args.workers_only))
        runtime.start()
        if args.ingest_only or args.workers_only:
            metrics_server = _serve_metrics_only(settings, runtime.metrics.registry)
        else:
            app = runtime.create_app(routers=discover_routers())
            config = uvicorn.Config(
                app, host=settings.api.host, port=settings.api.port, log_level=settings.log_level.lower()
            )
            server = uvicorn.Server(config)
            # Not the main thread, so uvicorn leaves the signal handlers to us.
            server_thread = threading.Thread(target=server.run, name="lw-api", daemon=True)
            server_thread.start()
            log.info("API on http://%s:%s", settings.api.host, settings.api.port)
        while not stop.wait(0.5):
            if server_thread is not None and not server_thread.is_alive():
                log.error("the API server stopped")
                return 1
        return 0
    finally:
        if server is not None and server_thread is not None:
            server.should_exit = True
            server_thread.join(15)
        if runtime is not None:
            runtime.stop()
            if runtime.ingest is not None:
                service = runtime.ingest
                log.info("ingest stopped: %s acknowledged; counters %s", service.acked, dict(service.ingestor.counters))
            log.info("risk worker counters %s", dict(runtime.risk.counters))
        if metrics_server is not None:
            metrics_server.shutdown()
            metrics_server.server_close()
        engine.dispose()


def _serve_metrics_only(settings: Settings, registry: CollectorRegistry | None) -> WSGIServer | None:
    """``--ingest-only`` / ``--workers-only``: serve ``/metrics`` alone on the API address (no API).

    A port already taken (several ingest-only processes on one host) is logged, not fatal.
    """
    try:
        server, _thread = start_http_server(settings.api.port, settings.api.host, registry or CollectorRegistry())
    except OSError as exc:
        log.warning("cannot serve /metrics on %s:%s: %s", settings.api.host, settings.api.port, exc)
        return None
    log.info("metrics on http://%s:%s/metrics", settings.api.host, server.server_port)
    return server


def _migrate(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    engine = open_settings_database(settings)
    engine.dispose()
    print(f"migrated {settings.resolved_database_url.split('@')[-1]} to head")
    return 0


def _devices(args: argparse.Namespace) -> int:
    """``devices add|rotate|revoke|list``: every change is audited like the API's (actor ``cli:{OS user}``)."""
    engine = open_settings_database(settings_from_args(args))
    registry = DeviceRegistry(engine)
    try:
        if args.action in ("add", "rotate"):
            try:
                pem = read_bounded(Path(args.public_key), MAX_PEM_BYTES, "public key file")
            except FileReadError as exc:
                print(f"lienwatch collector: {exc}", file=sys.stderr)
                return 2
            if args.action == "add":
                info = registry.add(args.device, pem, label=args.label)
                detail: dict[str, object] = {"fingerprint": info.fingerprint}
            else:
                overlap_ms = round(args.overlap_hours * 3_600_000)
                info = registry.rotate(args.device, pem, overlap_ms=overlap_ms)
                retiring = registry.retiring(args.device)
                detail = {"fingerprint": info.fingerprint, "overlap_ms": overlap_ms,
                          "retiring": [{"fingerprint": fp, "until_ms": until} for fp, until in retiring]}  # fmt: skip
            out = info.as_dict() | ({"retiring": detail["retiring"]} if args.action == "rotate" else {})
            if args.action == "add" and args.broker_dir:  # the device's own broker account (docs/security.md)
                credentials = BrokerAccounts(Path(args.broker_dir)).add_device(args.device)
                out |= {"mqtt_username": credentials.username, "mqtt_password": credentials.password}
                detail["mqtt_account"] = True
            audit_cli(engine, f"{args.action}_device", kind="device", subject=args.device, **detail)
            print(json.dumps(out))
        elif args.action == "revoke":
            out = registry.revoke(args.device_id).as_dict()
            if args.broker_dir:
                out["mqtt_account_removed"] = bool(BrokerAccounts(Path(args.broker_dir)).remove([args.device_id]))
            audit_cli(engine, "revoke_device", kind="device", subject=args.device_id,
                      mqtt_account_removed=bool(out.get("mqtt_account_removed", False)))  # fmt: skip
            print(json.dumps(out))
        else:
            for info in registry.list_devices():
                print(json.dumps(info.as_dict()))
        return 0
    finally:
        engine.dispose()


def _downlink_key(args: argparse.Namespace) -> int:
    """``downlink-key announce|status``: rotating the collector's downlink signing key (docs/security.md)."""
    engine = open_settings_database(settings_from_args(args))
    table = Base.metadata.tables["downlink_keys"]
    try:
        if args.action == "announce":
            try:
                key = load_public_key_pem(read_bounded(Path(args.public_key), MAX_PEM_BYTES, "public key file"))
            except FileReadError as exc:
                print(f"lienwatch collector: {exc}", file=sys.stderr)
                return 2
            with Session(engine) as session:
                announced = announce_next_key(session, key, now_ms=wall_clock_ms())
                fingerprint, announced_ms = announced.fingerprint, announced.announced_ms
                session.commit()
            audit_cli(engine, "announce_downlink_key", kind="downlink_key", subject=fingerprint)
            print(json.dumps({"fingerprint": fingerprint, "announced_ms": announced_ms}))
        else:
            with engine.connect() as conn:
                for listed in conn.execute(sa.select(table).order_by(table.c.id)).mappings():
                    print(json.dumps({k: listed[k] for k in ("fingerprint", "announced_ms", "promoted_ms")}))
        return 0
    finally:
        engine.dispose()


def _broker(args: argparse.Namespace) -> int:
    accounts = BrokerAccounts(Path(args.broker_dir))
    if args.action == "device":  # a new password for a registered device (lost or leaked)
        credentials = accounts.add_device(args.device)
    else:
        credentials = accounts.collector_account()
        for line in mosquitto_conf_lines(accounts.password_file.resolve(), accounts.acl_file.resolve()):
            print(f"mosquitto.conf: {line}", file=sys.stderr)
    print(json.dumps({"mqtt_username": credentials.username, "mqtt_password": credentials.password}))
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    table = Base.metadata.tables["dead_letters"]
    engine = open_settings_database(settings_from_args(args))
    try:
        stmt = sa.select(
            table.c.id, table.c.received_ms, table.c.topic, table.c.device_id, table.c.reason, table.c.detail,
            table.c.payload_bytes,
        )
        if args.reason:
            stmt = stmt.where(table.c.reason == args.reason)
        with engine.connect() as conn:
            for row in conn.execute(stmt.order_by(table.c.id.desc()).limit(args.limit)).mappings():
                print(json.dumps(dict(row)))
    finally:
        engine.dispose()
    return 0


def _gaps(args: argparse.Namespace) -> int:
    engine = open_settings_database(settings_from_args(args))
    try:
        with Session(engine) as session:
            if args.device:
                row = device_gaps(session, args.device)
                if row is None:
                    print(f"no batch of device {args.device!r} has been merged into the seq ledger", file=sys.stderr)
                    return 1
                rows = [row]
            else:
                rows = fleet_gaps(session, limit=args.limit, include_complete=args.all)
        for row in rows:
            print(json.dumps(row))
    finally:
        engine.dispose()
    return 0


def _api_key(args: argparse.Namespace) -> int:
    key = secrets.token_urlsafe(32)
    # The whole output is valid TOML: paste the table into collector.toml (merge the line into
    # an existing [api_keys] table), give the key on the comment line to its holder.
    print(f"# key: {key}   (give it to its holder; only its hash below is stored)")
    print("[api_keys]")
    print(f'"sha256:{hash_api_key(key)}" = "{args.role}"')
    return 0


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", help="collector.toml (default: $LIENWATCH_CONFIG, else defaults + environment)")
    parser = argparse.ArgumentParser(prog="lienwatch collector", description="Run and administer the collector.")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the MQTT ingest and the HTTP API")
    only = serve.add_mutually_exclusive_group()
    only.add_argument("--ingest-only", action="store_true", help="run only the MQTT ingest")
    only.add_argument("--api-only", action="store_true", help="run only the HTTP API")
    only.add_argument(
        "--workers-only",
        action="store_true",
        help="run only the background workers (risk, webhooks, retention, downlink) and /metrics",
    )
    serve.set_defaults(func=_serve)

    sub.add_parser("migrate", parents=[common], help="upgrade the database schema").set_defaults(func=_migrate)

    devices = sub.add_parser("devices", help="the device registry")
    dsub = devices.add_subparsers(dest="action", required=True)
    add = dsub.add_parser("add", parents=[common], help="register a device and its Ed25519 public key")
    add.add_argument("--device", required=True, help="device id ([A-Za-z0-9_-]{1,64})")
    add.add_argument("--public-key", required=True, help="PEM SubjectPublicKeyInfo file")
    add.add_argument("--label", help="free text shown in listings")
    broker_help = "broker account folder (passwd + acl): also make/remove the device's MQTT account"
    add.add_argument("--broker-dir", help=broker_help)
    dsub.add_parser("list", parents=[common], help="list devices as JSON lines")
    rotate = dsub.add_parser(
        "rotate", parents=[common], help="replace a device's key; the old one still verifies during the overlap"
    )
    rotate.add_argument("--device", required=True, help="device id")
    rotate.add_argument("--public-key", required=True, help="the new key: PEM SubjectPublicKeyInfo file")
    rotate.add_argument(
        "--overlap-hours", type=float, default=168.0,
        help="hours the old key still verifies (batches it signed still in the outbox); 0 = revoke it now",
    )  # fmt: skip
    revoke = dsub.add_parser("revoke", parents=[common], help="revoke a device's key (and any key in overlap)")
    revoke.add_argument("device_id")
    revoke.add_argument("--broker-dir", help=broker_help)
    devices.set_defaults(func=_devices)

    dkey = sub.add_parser("downlink-key", help="rotate the collector's downlink signing key (docs/security.md)")
    kasub = dkey.add_subparsers(dest="action", required=True)
    announce = kasub.add_parser(
        "announce", parents=[common], help="announce the next signing key in every configuration (then sign with it)"
    )
    announce.add_argument("--public-key", required=True, help="the next key's PEM public key (keys generate)")
    kasub.add_parser("status", parents=[common], help="announced and promoted keys as JSON lines")
    dkey.set_defaults(func=_downlink_key)

    broker = sub.add_parser("broker", help="the broker's accounts and ACL (docs/security.md)")
    bsub = broker.add_subparsers(dest="action", required=True)
    init = bsub.add_parser("init", help="write the ACL and (re)make the collector's account; print its password")
    init.add_argument("--broker-dir", required=True, help="folder for passwd and acl")
    device = bsub.add_parser("device", help="(re)make one device's account; print its new password")
    device.add_argument("--device", required=True, help="device id (= its MQTT user name)")
    device.add_argument("--broker-dir", required=True, help="folder for passwd and acl")
    broker.set_defaults(func=_broker)

    dead = sub.add_parser("dead-letters", parents=[common], help="list refused messages as JSON lines")
    dead.add_argument("--limit", type=int, default=50)
    dead.add_argument(
        "--reason",
        choices=DEAD_LETTER_REASONS,
        metavar="REASON",
        help=f"only this reason: {', '.join(DEAD_LETTER_REASONS)}",
    )
    dead.set_defaults(func=_dead_letters)

    gaps = sub.add_parser(
        "gaps", parents=[common], help="devices with missing batch seqs (most missing first) as JSON lines"
    )
    gaps.add_argument("--device", help="only this device (also when it misses nothing)")
    gaps.add_argument("--all", action="store_true", help="also devices that miss nothing")
    gaps.add_argument("--limit", type=int, default=100)
    gaps.set_defaults(func=_gaps)

    add_subcommands(sub, common, settings_from_args)

    add_people_subcommands(sub, common, settings_from_args)
    add_compliance_subcommands(sub, common, settings_from_args)

    add_case_subcommands(sub, common, settings_from_args)

    api_key = sub.add_parser("api-key", help="API keys")
    ksub = api_key.add_subparsers(dest="action", required=True)
    new = ksub.add_parser("new", help="print a new random key and the [api_keys] TOML holding its hash")
    new.add_argument("--role", required=True, choices=ROLES)
    api_key.set_defaults(func=_api_key)
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``lienwatch collector``."""
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args))
    except CollectorError as exc:
        print(f"lienwatch collector: {exc}", file=sys.stderr)
        return 1
