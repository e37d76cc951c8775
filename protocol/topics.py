"""MQTT topic names: ``lw/v1/{device_id}/{kind}``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .cose import MAX_MESSAGE_BYTES
from .errors import TopicError
from .records import DEVICE_ID_RE

__all__ = [
    "MAX_PUBLISH_PACKET_BYTES",
    "PREFIX",
    "Topic",
    "TopicKind",
    "batch_topic",
    "config_topic",
    "parse_topic",
    "receipt_topic",
    "state_topic",
]

PREFIX = "lw/v1"

#: The largest MQTT PUBLISH packet a LienWatch message needs: a message of at most
#: ``MAX_MESSAGE_BYTES`` (1 MiB) plus the fixed header (5), the topic (2 + at most 76:
#: ``lw/v1/`` + a 64-character id + ``/receipt``), the packet id (2) and MQTT 5 properties
#: (room for 1 KiB in all). Brokers set ``max_packet_size`` to it, so a larger packet is
#: refused at the broker and never reaches the collector (docs/security.md section 3).
MAX_PUBLISH_PACKET_BYTES = MAX_MESSAGE_BYTES + 1024


class TopicKind(StrEnum):
    """The message kinds a device topic carries."""

    BATCH = "batch"
    STATE = "state"
    CONFIG = "config"
    RECEIPT = "receipt"


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed device topic."""

    device_id: str
    kind: TopicKind

    def __post_init__(self) -> None:
        if not DEVICE_ID_RE.fullmatch(self.device_id):
            raise TopicError(f"device id {self.device_id!r} must match [A-Za-z0-9_-]{{1,64}}")

    def __str__(self) -> str:
        return f"{PREFIX}/{self.device_id}/{self.kind.value}"


def parse_topic(topic: str) -> Topic:
    """Parse ``lw/v1/{device_id}/{kind}``; raise :class:`TopicError` on anything else."""
    parts = topic.split("/") if isinstance(topic, str) else []
    if len(parts) != 4 or f"{parts[0]}/{parts[1]}" != PREFIX:
        raise TopicError(f"topic {topic!r:.120} is not lw/v1/{{device_id}}/{{kind}}")
    try:
        kind = TopicKind(parts[3])
    except ValueError:
        raise TopicError(f"topic {topic!r:.120} has unknown kind {parts[3]!r:.40}") from None
    return Topic(parts[2], kind)


def batch_topic(device_id: str) -> str:
    """``lw/v1/{device_id}/batch``."""
    return str(Topic(device_id, TopicKind.BATCH))


def state_topic(device_id: str) -> str:
    """``lw/v1/{device_id}/state`` (retained birth message and Last Will)."""
    return str(Topic(device_id, TopicKind.STATE))


def config_topic(device_id: str) -> str:
    """``lw/v1/{device_id}/config`` (signed downlink configuration)."""
    return str(Topic(device_id, TopicKind.CONFIG))


def receipt_topic(device_id: str) -> str:
    """``lw/v1/{device_id}/receipt`` (signed receipt of what the collector stored)."""
    return str(Topic(device_id, TopicKind.RECEIPT))
