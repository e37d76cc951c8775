"""LienWatch wire protocol: records, the CBOR batch schema and COSE_Sign1 envelopes.

Sans-I/O: nothing here reads a clock, a file or a socket. See docs/protocol.md.
"""

from . import cose, errors, topics
from ._batch_codec import LIMITS, SCHEMA_VERSION, decode_batch, decode_batch_columns, encode_batch
from ._envelopes import (
    DeviceConfig,
    DeviceState,
    open_batch,
    open_batch_columns,
    open_config,
    open_state,
    seal_batch,
    seal_config,
    seal_state,
)
from ._evicted_seqs import MAX_EVICTED_RANGES, MAX_EVICTED_SPAN, evicted_counters, evicted_ranges
from ._receipts import MAX_RECEIPT_RANGES, Receipt, open_receipt, seal_receipt
from .errors import ProtocolError
from .records import (
    MAX_SEQ,
    Alert,
    AlertState,
    Batch,
    ColumnarBatch,
    DailyStats,
    Fix,
    FixColumns,
    FixMode,
    NoFix,
    Severity,
    SignalSample,
    check_device_id,
)
from .topics import MAX_PUBLISH_PACKET_BYTES, batch_topic, config_topic, parse_topic, receipt_topic, state_topic

__all__ = [
    "LIMITS",
    "MAX_EVICTED_RANGES",
    "MAX_EVICTED_SPAN",
    "MAX_PUBLISH_PACKET_BYTES",
    "MAX_RECEIPT_RANGES",
    "MAX_SEQ",
    "SCHEMA_VERSION",
    "Alert",
    "AlertState",
    "Batch",
    "ColumnarBatch",
    "DailyStats",
    "DeviceConfig",
    "DeviceState",
    "Fix",
    "FixColumns",
    "FixMode",
    "NoFix",
    "ProtocolError",
    "Receipt",
    "Severity",
    "SignalSample",
    "batch_topic",
    "check_device_id",
    "config_topic",
    "cose",
    "decode_batch",
    "decode_batch_columns",
    "encode_batch",
    "errors",
    "evicted_counters",
    "evicted_ranges",
    "open_batch",
    "open_batch_columns",
    "open_config",
    "open_receipt",
    "open_state",
    "parse_topic",
    "receipt_topic",
    "seal_batch",
    "seal_config",
    "seal_receipt",
    "seal_state",
    "state_topic",
    "topics",
]
