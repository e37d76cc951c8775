"""``lienwatch inspect``: verify a captured message and print it as JSON.

What a field engineer does with a payload captured from the broker::

    mosquitto_sub -h BROKER -t lw/v1/car-0001/batch -C 1 -N > batch.cose
    lienwatch inspect batch.cose --public-key keys/car-0001.pub --topic lw/v1/car-0001/batch

The topic decides the message kind (batch, state, config); ``--public-key`` is the
device's key for batch and state, the collector's for config. The message is opened with
exactly the checks the collector applies (``protocol.open_batch`` and friends). On any
failure the typed reason (``bad_signature``, ``device_mismatch``, ...) goes to stderr and
the exit status is 1 (after ``bad_signature`` a hint: the topic is signed too, and the
topic it does verify on, if any); unusable arguments or files (an empty capture) give 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import cbor2

from protocol import (
    Batch,
    DeviceConfig,
    DeviceState,
    ProtocolError,
    open_batch,
    open_config,
    open_state,
    parse_topic,
)
from protocol.cli.key_files import load_public_key
from protocol.cose import MAX_MESSAGE_BYTES, decode_sign1
from protocol.errors import KeyFileError
from protocol.topics import TopicKind, batch_topic, config_topic, state_topic

__all__ = ["main", "message_as_json"]

EXIT_OK, EXIT_REJECTED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lienwatch inspect",
        description="Verify a captured signed message (COSE_Sign1) and print it as JSON. "
        "Exit status: 0 verified, 1 rejected (reason on stderr), 2 bad arguments or unreadable files.",
    )
    parser.add_argument(
        "file", metavar="FILE", help="captured message bytes ('-' for stdin), e.g. from mosquitto_sub -C 1 -N"
    )
    parser.add_argument("--public-key", required=True, metavar="PEM", help="sender's Ed25519 public key (PEM)")
    parser.add_argument("--topic", required=True, metavar="T", help="topic the message was published on")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="print the verified COSE headers and the payload's raw CBOR structure (integer keys, "
        "byte strings as h'hex') instead of the decoded records",
    )
    return parser


def _json_value(value: Any) -> Any:
    """Records, enums and bytes as JSON-friendly values (bytes as lower-case hex)."""
    if isinstance(value, enum.Enum):
        return getattr(value, "label", value.name.lower())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _json_value(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def _raw_json(value: Any) -> Any:
    """A decoded CBOR item as JSON: map keys as text, byte strings as ``h'hex'``."""
    if isinstance(value, bytes):
        return f"h'{value.hex()}'"
    if isinstance(value, Mapping):
        return {str(k): _raw_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_raw_json(v) for v in value]
    return value


def _utc(time_ms: int) -> str:
    return datetime.fromtimestamp(time_ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def message_as_json(record: Batch | DeviceState | DeviceConfig) -> dict[str, Any]:
    """The JSON view ``lienwatch inspect`` prints for an opened message."""
    body: dict[str, Any] = _json_value(record)
    if isinstance(record, Batch):
        body["created_utc"] = _utc(record.created_ms)
        body["summary"] = {
            "fixes": len(record.fixes),
            "samples": len(record.samples),
            "alerts": len(record.alerts),
            "stats": len(record.stats),
            "first_fix_utc": _utc(record.fixes[0].time_ms) if record.fixes else None,
            "last_fix_utc": _utc(record.fixes[-1].time_ms) if record.fixes else None,
            "highest_severity": record.highest_severity.label if record.highest_severity is not None else None,
        }
    elif isinstance(record, DeviceState):
        body["time_utc"] = _utc(record.time_ms)
    else:
        body["issued_utc"] = _utc(record.issued_ms)
    return body


def _read_capped(stream: BinaryIO) -> bytes:
    # One byte over the limit is enough for the protocol to refuse it as oversized.
    return stream.read(MAX_MESSAGE_BYTES + 1)


def _read_message(name: str) -> bytes:
    if name == "-":
        return _read_capped(sys.stdin.buffer)
    with Path(name).open("rb") as stream:
        return _read_capped(stream)


def _open(message: bytes, topic: str, key: Any) -> Batch | DeviceState | DeviceConfig:
    parsed = parse_topic(topic)
    if parsed.kind is TopicKind.BATCH:
        return open_batch(message, topic, {parsed.device_id: key})
    if parsed.kind is TopicKind.STATE:
        return open_state(message, topic, {parsed.device_id: key})
    return open_config(message, topic, key)


def _signature_hint(message: bytes, topic: str, key: Any) -> str:
    """Why a signature may not verify: the topic is signed too. Names the topic it verifies on, if any."""
    try:
        device = parse_topic(topic).device_id
    except ProtocolError:
        return ""
    for other in (batch_topic(device), state_topic(device), config_topic(device)):
        if other == topic:
            continue
        try:
            _open(message, other, key)
        except ProtocolError:
            continue
        return f"hint: it verifies as {other}: give --topic {other} (the topic is part of what is signed)"
    return (
        "hint: the topic is part of what is signed: --topic must be the exact topic the message was "
        "published on, and --public-key the sender's key (the device's for batch/state, the collector's for config)"
    )


def _print_json(output: Mapping[str, Any]) -> None:
    try:
        print(json.dumps(output, indent=2, ensure_ascii=False), flush=True)
    except BrokenPipeError:  # `lienwatch inspect ... | head -3`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: list[str]) -> int:
    """Run ``lienwatch inspect``; see the module docstring for exit statuses."""
    args = _parser().parse_args(argv)
    try:
        key = load_public_key(args.public_key)
    except KeyFileError as exc:
        print(f"lienwatch inspect: {exc.reason}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        message = _read_message(args.file)
    except OSError as exc:
        print(f"lienwatch inspect: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    if not message:
        where = "stdin" if args.file == "-" else args.file
        print(
            f"lienwatch inspect: {where} is empty (0 bytes): nothing was captured "
            "(mosquitto_sub -C 1 -N > FILE writes one message)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        record = _open(message, args.topic, key)
    except ProtocolError as exc:
        print(f"lienwatch inspect: rejected: {exc.reason}: {exc}", file=sys.stderr)
        if exc.reason == "bad_signature":
            print(f"lienwatch inspect: {_signature_hint(message, args.topic, key)}", file=sys.stderr)
        return EXIT_REJECTED
    if args.raw:
        # The message passed every strict check above, so plain cbor2 may decode it again.
        envelope = decode_sign1(message)
        output: dict[str, Any] = {
            "topic": args.topic,
            "verified": True,
            "size_bytes": len(message),
            "protected": _raw_json(envelope.protected),
            "unprotected": _raw_json(envelope.unprotected),
            "payload": _raw_json(cbor2.loads(envelope.payload)),
            "signature": _raw_json(envelope.signature),
        }
    else:
        output = {
            "topic": args.topic,
            "kind": parse_topic(args.topic).kind.value,
            "verified": True,
            "size_bytes": len(message),
            "message": message_as_json(record),
        }
    _print_json(output)
    return EXIT_OK
