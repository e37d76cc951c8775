"""The protocol's error tree.

Every failure to open a batch raises a subclass of :class:`ProtocolError` whose
``reason`` is a short stable slug (used as a metrics label and a dead-letter reason)
and whose message names the input and the limit it broke.

``LocalProtocolError`` means *our* caller built something invalid (a bug on this side);
``RemoteProtocolError`` means the bytes we were handed are bad (the sender's fault).
``KeyFileError`` and ``PlacesError`` are about documents both sides share (Ed25519 key
files, place and region lists): the message names the file or item and the key.
"""

# The class names are a published contract (docs/interfaces.md) that predates the
# "Error" suffix convention, so N818 is waived for this module only.
# ruff: noqa: N818

from __future__ import annotations

__all__ = [
    "REASONS",
    "AnnouncementAboveSeq",
    "AnnouncementMalformed",
    "AnnouncementOversized",
    "AnnouncementRefused",
    "BadSignature",
    "ColumnLengthMismatch",
    "DepthExceeded",
    "DetachedPayload",
    "DeviceMismatch",
    "DuplicateKey",
    "ForbiddenTag",
    "IndefiniteLength",
    "InsecureKeyFile",
    "InvalidEnvelope",
    "InvalidKeyFile",
    "InvalidRecord",
    "InvalidValue",
    "KeyFileError",
    "KeyFileExists",
    "LocalProtocolError",
    "MalformedCBOR",
    "MisplacedHeader",
    "OversizedMessage",
    "PlacesError",
    "ProtocolError",
    "RemoteProtocolError",
    "SchemaError",
    "TierSectionError",
    "TopicError",
    "TrailingBytes",
    "TruncatedMessage",
    "UnknownDevice",
    "UnsupportedAlgorithm",
    "UnsupportedVersion",
]


class ProtocolError(Exception):
    """Root of every error raised by :mod:`protocol`."""

    reason = "protocol_error"


class LocalProtocolError(ProtocolError):
    """The caller asked the protocol to build something invalid (a bug on this side)."""

    reason = "local_error"


class RemoteProtocolError(ProtocolError):
    """Bytes received from a peer are not acceptable (the sender is to blame)."""

    reason = "remote_error"


class OversizedMessage(RemoteProtocolError):
    """The message is larger than the size limit; it was not decoded at all."""

    reason = "oversized"


class TruncatedMessage(RemoteProtocolError):
    """The CBOR data ends in the middle of an item."""

    reason = "truncated"


class MalformedCBOR(RemoteProtocolError):
    """The bytes are not well-formed CBOR."""

    reason = "malformed_cbor"


class TrailingBytes(RemoteProtocolError):
    """Bytes follow the single top-level CBOR item."""

    reason = "trailing_bytes"


class IndefiniteLength(RemoteProtocolError):
    """An indefinite-length string, array or map was found (never used by this schema)."""

    reason = "indefinite_length"


class DuplicateKey(RemoteProtocolError):
    """A CBOR map repeats a key."""

    reason = "duplicate_key"


class ForbiddenTag(RemoteProtocolError):
    """A CBOR tag the schema does not use (regex, MIME, shared refs, bignums, ...)."""

    reason = "forbidden_tag"


class DepthExceeded(RemoteProtocolError):
    """Containers are nested deeper than the schema allows."""

    reason = "too_deep"


class InvalidEnvelope(RemoteProtocolError):
    """The COSE_Sign1 structure is not as RFC 9052 and this profile require."""

    reason = "invalid_envelope"


class DetachedPayload(InvalidEnvelope):
    """The COSE_Sign1 payload is ``nil`` (detached); this profile always attaches it."""

    reason = "detached_payload"


class MisplacedHeader(InvalidEnvelope):
    """``alg`` sits in the unprotected bucket, or a label appears in both buckets."""

    reason = "misplaced_header"


class UnsupportedAlgorithm(RemoteProtocolError):
    """The protected header names an algorithm other than EdDSA (-8)."""

    reason = "unsupported_algorithm"


class UnknownDevice(RemoteProtocolError):
    """The ``kid`` names a device with no (active) key in the key ring."""

    reason = "unknown_device"


class BadSignature(RemoteProtocolError):
    """The Ed25519 signature does not verify over the Sig_structure."""

    reason = "bad_signature"


class TopicError(RemoteProtocolError):
    """A topic string is not one of ``lw/v1/{device_id}/{kind}``."""

    reason = "bad_topic"


class DeviceMismatch(RemoteProtocolError):
    """The device id in the payload, the ``kid`` and the topic do not agree."""

    reason = "device_mismatch"


class UnsupportedVersion(RemoteProtocolError):
    """The payload's schema version is not one this code understands."""

    reason = "unsupported_version"


class SchemaError(RemoteProtocolError):
    """The payload decodes as CBOR but does not follow the batch schema."""

    reason = "schema"


class InvalidValue(SchemaError):
    """A field has the right type but an impossible value (NaN, latitude 91, ...)."""

    reason = "invalid_value"


class ColumnLengthMismatch(SchemaError):
    """The columns of a column-wise table (fixes, samples) hold different numbers of items."""

    reason = "column_mismatch"


class InvalidRecord(LocalProtocolError, ValueError):
    """A record was constructed with an impossible value (raised by ``__post_init__``)."""

    reason = "invalid_record"


class KeyFileError(ProtocolError):
    """An Ed25519 key file is not acceptable; the message names the file."""

    reason = "key_file"


class InsecureKeyFile(KeyFileError):
    """A private key file is readable or writable by group or others."""

    reason = "insecure_key_file"


class InvalidKeyFile(KeyFileError):
    """The file is missing, unreadable, not PEM, or not an Ed25519 key of the expected kind."""

    reason = "invalid_key_file"


class KeyFileExists(KeyFileError):
    """Writing a key would overwrite an existing key file (the caller must ask to overwrite)."""

    reason = "key_file_exists"


class PlacesError(ProtocolError, ValueError):
    """A place or region list (document or items) is malformed; the message names the item and key."""

    reason = "bad_places"


class TierSectionError(ProtocolError, ValueError):
    """The ``tier`` section of a device configuration is malformed (the message names the key)."""

    reason = "bad_tier_section"


class AnnouncementRefused(RemoteProtocolError):
    """A verified batch announces evicted seqs (counters ``seq_evicted_*``) that cannot be true.

    The batch itself is fine and stored; only the announcement is ignored (docs/protocol.md
    section 13, "Evicted seqs").
    """

    reason = "announcement_refused"


class AnnouncementMalformed(AnnouncementRefused):
    """The ``seq_evicted_*`` counters do not form numbered ``from``/``count`` pairs."""

    reason = "announcement_malformed"


class AnnouncementOversized(AnnouncementRefused):
    """More ranges than one batch may carry, or a range longer than the span limit."""

    reason = "announcement_oversized"


class AnnouncementAboveSeq(AnnouncementRefused):
    """A range reaches the seq of the batch that carries it (a device announces only older seqs)."""

    reason = "announcement_above_seq"


def _all_subclasses(cls: type[ProtocolError]) -> list[type[ProtocolError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_all_subclasses(sub))
    return found


#: Every ``reason`` slug this package can raise, e.g. to pre-register metric labels.
REASONS: tuple[str, ...] = tuple(dict.fromkeys(c.reason for c in _all_subclasses(ProtocolError)))
