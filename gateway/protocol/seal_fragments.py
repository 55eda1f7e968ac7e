"""GATT identifiers and fragmentation of seal messages across the ATT MTU (docs/protocol.md, 2-3).

Each GATT write or notification carries one fragment. Its first byte is
`FIRST(bit 7) | reserved(bits 6..4, zero) | seq(bits 3..0)`; a first fragment (seq 0) adds the
total message length as two big-endian bytes. Continuations count seq up by one, modulo 16.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass

from gateway.errors import ProtocolError
from gateway.protocol.seal_frames import HEADER_LEN, MAX_MESSAGE_LEN

__all__ = [
    "ATT_OVERHEAD",
    "COMMAND_CHAR_UUID",
    "FIRST_FLAG",
    "MIN_ATT_MTU",
    "REASSEMBLY_TIMEOUT_S",
    "RESPONSE_CHAR_UUID",
    "SERVICE_UUID",
    "STATE_CHAR_UUID",
    "Fragment",
    "FragmentTimeoutError",
    "Reassembler",
    "decode_fragment",
    "encode_fragment",
    "fragment",
]

_log = logging.getLogger(__name__)

SERVICE_UUID = "5ea10001-7c1d-4b52-9e0a-2f6b1c3d4e50"
COMMAND_CHAR_UUID = "5ea10002-7c1d-4b52-9e0a-2f6b1c3d4e50"
RESPONSE_CHAR_UUID = "5ea10003-7c1d-4b52-9e0a-2f6b1c3d4e50"
STATE_CHAR_UUID = "5ea10004-7c1d-4b52-9e0a-2f6b1c3d4e50"

FIRST_FLAG = 0x80
RESERVED_MASK = 0x70
SEQ_MASK = 0x0F
ATT_OVERHEAD = 3
MIN_ATT_MTU = 23
MAX_ATT_MTU = 517
REASSEMBLY_TIMEOUT_S = 2.0
_TOTAL = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class Fragment:
    """One fragment; `total` is set on first fragments only."""

    first: bool
    seq: int
    payload: bytes
    total: int | None = None


def fragment(message: bytes, att_mtu: int = MIN_ATT_MTU) -> list[bytes]:
    """Split one message into fragments that each fit an ATT value of `att_mtu - 3` bytes."""
    if not MIN_ATT_MTU <= att_mtu <= MAX_ATT_MTU:
        raise ProtocolError(f"ATT MTU {att_mtu} outside {MIN_ATT_MTU}..{MAX_ATT_MTU}")
    if not HEADER_LEN <= len(message) <= MAX_MESSAGE_LEN:
        raise ProtocolError(f"message of {len(message)} bytes cannot be fragmented")
    room = att_mtu - ATT_OVERHEAD
    head = room - 1 - _TOTAL.size
    out = [encode_fragment(Fragment(True, 0, message[:head], len(message)))]
    for seq, start in enumerate(range(head, len(message), room - 1), start=1):
        out.append(
            encode_fragment(Fragment(False, seq & SEQ_MASK, message[start : start + room - 1]))
        )
    return out


def encode_fragment(frag: Fragment) -> bytes:
    """The bytes of one fragment."""
    if not 0 <= frag.seq <= SEQ_MASK:
        raise ProtocolError(f"fragment seq {frag.seq} out of range")
    if frag.first:
        if frag.total is None or not 0 <= frag.total <= 0xFFFF:
            raise ProtocolError("a first fragment needs a total length")
        return bytes([FIRST_FLAG | frag.seq]) + _TOTAL.pack(frag.total) + frag.payload
    return bytes([frag.seq]) + frag.payload


def decode_fragment(data: bytes) -> Fragment:
    """Parse one fragment; raise ProtocolError when it breaks the header rules."""
    if not data:
        raise ProtocolError("empty fragment")
    control = data[0]
    if control & RESERVED_MASK:
        raise ProtocolError(f"fragment reserved bits set: {control:#04x}")
    seq = control & SEQ_MASK
    if not control & FIRST_FLAG:
        if len(data) < 2:
            raise ProtocolError("empty continuation fragment")
        return Fragment(False, seq, bytes(data[1:]))
    if seq != 0:
        raise ProtocolError("a first fragment must have seq 0")
    if len(data) < 1 + _TOTAL.size:
        raise ProtocolError("first fragment too short for its total length")
    (total,) = _TOTAL.unpack_from(data, 1)
    if not HEADER_LEN <= total <= MAX_MESSAGE_LEN:
        raise ProtocolError(f"fragment total length {total} out of range")
    payload = bytes(data[1 + _TOTAL.size :])
    if len(payload) > total:
        raise ProtocolError("first fragment carries more than its total length")
    return Fragment(True, 0, payload, total)


class FragmentTimeoutError(ProtocolError):
    """A continuation came after its partial message was dropped for the 2 s gap (ERROR TIMEOUT)."""


class Reassembler:
    """Collects fragments of one direction into messages; one message in flight at a time."""

    def __init__(self, timeout_s: float = REASSEMBLY_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._parts = bytearray()
        self._total = 0
        self._next_seq = 0
        self._last_at = 0.0
        self._timed_out = False

    @property
    def pending(self) -> bool:
        """True while a message is partly received."""
        return self._total > 0

    def reset(self) -> None:
        """Drop any partial message (on disconnect or after an error)."""
        self._parts.clear()
        self._total = 0
        self._next_seq = 0

    def feed(self, data: bytes, now: float) -> bytes | None:
        """Take one fragment received at monotonic time `now`; return a message when complete."""
        self._expire(now)
        try:
            frag = decode_fragment(data)
            self._accept(frag)
        except ProtocolError:
            self.reset()
            raise
        self._last_at = now
        return self._complete()

    def _expire(self, now: float) -> None:
        if self.pending and now - self._last_at > self._timeout_s:
            _log.debug("partial message dropped after %.1f s idle", now - self._last_at)
            self.reset()
            self._timed_out = True

    def _accept(self, frag: Fragment) -> None:
        timed_out, self._timed_out = self._timed_out, False
        if frag.first:
            if self.pending:
                _log.debug("new first fragment replaces a partial message")
            self.reset()
            self._total = frag.total or 0
        elif not self.pending and timed_out:
            raise FragmentTimeoutError("continuation after its message timed out")
        elif not self.pending:
            raise ProtocolError("continuation fragment without a first fragment")
        elif frag.seq != self._next_seq:
            raise ProtocolError(f"fragment seq {frag.seq}, expected {self._next_seq}")
        if len(self._parts) + len(frag.payload) > self._total:
            raise ProtocolError("fragments overrun the announced total length")
        self._parts += frag.payload
        self._next_seq = (frag.seq + 1) & SEQ_MASK

    def _complete(self) -> bytes | None:
        if len(self._parts) < self._total:
            return None
        message = bytes(self._parts)
        self.reset()
        return message
