"""The batch form's constants, shared by its encoder and decoder (gateway/protocol/batch.py).

Format 1: a header byte, then CBOR (RFC 8949), raw-deflated with the preset DICTIONARY when
that is smaller. docs/mqtt.md ("Batch form") specifies the bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import cbor2

from gateway.errors import ProtocolError
from gateway.protocol.events import Priority

__all__ = [
    "CROCKFORD",
    "DICTIONARY",
    "DICTIONARY_WORDS",
    "HEADER_DEFLATE",
    "HEADER_PLAIN",
    "MAX_DECODED_BYTES",
    "MAX_EVENTS",
    "MAX_EXPONENT",
    "BatchDecodeError",
    "BatchEncodeError",
    "DecodedBatch",
    "format_ms",
    "parse_ms",
]

HEADER_PLAIN = 0x10  # batch format 1, CBOR as is
HEADER_DEFLATE = 0x11  # batch format 1, CBOR in raw deflate (RFC 1951) with DICTIONARY
MAX_DECODED_BYTES = 8 * 1024 * 1024
MAX_EVENTS = 65_536
MAX_EXPONENT = 400
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # a ULID's base32 alphabet

DICTIONARY_WORDS = (
    "meter.reading", "meter.event", "meter.read_failed", "meter.read_recovered",
    "gateway.health", "gateway.checkpoint", "gateway.started", "gateway.stopped",
    "gateway.command", "gateway.telemetry_evicted", "seal.sealed", "seal.unsealed",
    "seal.op_requested", "seal.op_allowed", "seal.op_denied", "seal.op_failed", "seal.tamper",
    "seal.battery_low", "seal.log_entry", "seal.online", "seal.offline", "theft.suspected",
    "handheld.request", "handheld.session_opened", "handheld.session_closed",
    "meter", "protocol", "modbus", "dlt645", "seal", "values", "value", "unit", "source",
    "lock_id", "log_index", "operator", "ticket_id", "ticket_tag", "operator_tag", "audit_tag",
    "work_order", "result", "state", "wire", "entry", "rtc", "event", "tag", "ok", "log",
    "answer", "advert", "sealed", "unsealed", "intact", "covers_seq", "covers_hash", "sig",
    "key_id", "uptime_s", "buffer_depth", "drain_rate_per_s", "broker_connected", "locks",
    "meters", "polls", "configured", "failing", "never_read", "read_success_rate",
    "disk_free_mb", "cpu_temp_c", "cpu_pct", "rss_mb", "tasks", "storage_full",
    "operations_refused", "alarm", "audit", "telemetry", "voltage_l1", "voltage_l2",
    "voltage_l3", "voltage_l1_l2", "voltage_l2_l3", "voltage_l3_l1", "current_l1",
    "current_l2", "current_l3", "power_total", "power_l1", "power_l2", "power_l3",
    "reactive_power_total", "reactive_power_l1", "reactive_power_l2", "reactive_power_l3",
    "power_factor_total", "power_factor_l1", "power_factor_l2", "power_factor_l3",
    "frequency", "energy_import", "energy_export", "energy_total", "voltage", "current",
    "power", "power_factor", "kWh", "kvarh", "var", "Hz", "W", "V", "A",
)  # fmt: skip
"""The preset dictionary's words; never change them for format 1 (a new header byte would)."""

DICTIONARY = cbor2.dumps(list(DICTIONARY_WORDS))
"""The deflate preset dictionary: the CBOR encoding of DICTIONARY_WORDS (1,293 bytes)."""


class BatchEncodeError(ValueError):
    """These events cannot be put in one batch (not a run); send them one by one instead."""


class BatchDecodeError(ProtocolError):
    """A batch message that does not decode to a verified run of events."""


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    """The events of one batch, rebuilt: canonical JSON payloads in seq order, and the hash
    each one's content gives (computed while rebuilding them, so a reader need not again)."""

    priority: Priority
    first_seq: int
    payloads: tuple[bytes, ...]
    hashes: tuple[str, ...] = ()

    @property
    def last_seq(self) -> int:
        return self.first_seq + len(self.payloads) - 1


def parse_ms(ts: str) -> int:
    """Milliseconds since 1970 of an RFC 3339 UTC `ts` ending in `Z`."""
    moment = datetime.fromisoformat(ts[:-1] + "+00:00")
    return (moment - _EPOCH) // _MILLISECOND


def format_ms(millis: int) -> str:
    """The RFC 3339 UTC form with milliseconds and `Z` of `millis` since 1970."""
    moment = _EPOCH + timedelta(milliseconds=millis)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)
