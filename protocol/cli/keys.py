"""``lienwatch keys``: make Ed25519 key pairs for devices and for the collector.

    lienwatch keys generate --device car-0001 --out keys/
    lienwatch keys generate --collector --out keys/

writes ``keys/car-0001.key`` (PKCS #8 PEM, mode 0600) and ``keys/car-0001.pub``
(SubjectPublicKeyInfo PEM) and prints what it wrote as one JSON object.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys

from cryptography.hazmat.primitives import serialization

from protocol.cli.key_files import generate
from protocol.errors import KeyFileError
from protocol.keys import COLLECTOR_KEY_NAME

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lienwatch keys",
        description="Generate Ed25519 key pairs (private: PEM PKCS#8 mode 0600; public: PEM SubjectPublicKeyInfo).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser(
        "generate",
        help="write DIR/NAME.key and DIR/NAME.pub",
        description="Write OUT/NAME.key (private, mode 0600) and OUT/NAME.pub (public). NAME is the device id "
        "(the COSE kid of what it signs) or 'collector' for the downlink configuration key.",
    )
    who = gen.add_mutually_exclusive_group(required=True)
    who.add_argument("--device", metavar="ID", help="device id, [A-Za-z0-9_-]{1,64}")
    who.add_argument("--collector", action="store_true", help="the collector's downlink signing key")
    who.add_argument("--name", help="any other key name (same syntax as a device id)")
    gen.add_argument("--out", required=True, metavar="DIR", help="output directory (created 0700 if missing)")
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")
    return parser


def main(argv: list[str]) -> int:
    """Run ``lienwatch keys``; returns 0 on success, 1 on a key-file error, 2 on bad usage."""
    args = _parser().parse_args(argv)
    name = COLLECTOR_KEY_NAME if args.collector else (args.device or args.name)
    try:
        made = generate(args.out, name, overwrite=args.force)
    except KeyFileError as exc:
        print(f"lienwatch keys: {exc.reason}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lienwatch keys: cannot write to {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    raw_public = made.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    print(
        json.dumps(
            {
                "name": made.name,
                "private_key": str(made.private_path),
                "public_key": str(made.public_path),
                "public_key_b64url": base64.urlsafe_b64encode(raw_public).rstrip(b"=").decode("ascii"),
            }
        )
    )
    return 0
