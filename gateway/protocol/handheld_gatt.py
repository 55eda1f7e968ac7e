"""The handheld GATT transport (docs/handheld.md, section 8): identifiers, chunking, reassembly.

Pure. Handheld frames (4-byte length prefix, then the message) are cut into chunks of at most
ATT_MTU - 3 bytes, one per GATT write (handheld -> gateway) or notification (gateway ->
handheld). Chunks carry no header of their own: the link is ordered and reliable, and the
frame's length prefix tells the receiver where a frame ends. `FrameReassembler` buffers
chunks, returns each complete frame's payload, and refuses a frame that would make it hold
more than its cap, so a hostile peer cannot make the receiver buffer without bound.
"""

from __future__ import annotations

from gateway.errors import ProtocolError
from gateway.protocol.handheld import FRAME_HEADER_LEN, MAX_FRAME, decode_frame

__all__ = [
    "ATT_OVERHEAD",
    "DEFAULT_ATT_MTU",
    "HANDHELD_RX_CHAR_UUID",
    "HANDHELD_SERVICE_UUID",
    "HANDHELD_TX_CHAR_UUID",
    "MAX_BUFFERED",
    "PREFERRED_ATT_MTU",
    "FrameReassembler",
    "chunk_frame",
]

HANDHELD_SERVICE_UUID = "5ea1a001-0ee8-4d9f-a121-c2c016aaa90f"
HANDHELD_RX_CHAR_UUID = "5ea1a002-0ee8-4d9f-a121-c2c016aaa90f"
"""Write with response, handheld -> gateway: chunks of frames."""
HANDHELD_TX_CHAR_UUID = "5ea1a003-0ee8-4d9f-a121-c2c016aaa90f"
"""Notify, gateway -> handheld: chunks of frames."""

ATT_OVERHEAD = 3
"""Bytes of an ATT Write Request or Handle Value Notification besides the value."""
DEFAULT_ATT_MTU = 23
"""The ATT MTU before (or without) an MTU exchange; the smallest an LE link may use."""
PREFERRED_ATT_MTU = 247
"""What each side asks for in the MTU exchange: 244-byte chunks, one LE data PDU with DLE."""
MAX_ATT_VALUE = 512
MAX_BUFFERED = FRAME_HEADER_LEN + MAX_FRAME
"""The most a reassembler holds: one whole frame of the largest size."""


def chunk_frame(frame: bytes, att_mtu: int) -> list[bytes]:
    """Cut an encoded frame into values of at most `att_mtu - 3` bytes (at most 512)."""
    if att_mtu < DEFAULT_ATT_MTU:
        raise ProtocolError(f"ATT MTU {att_mtu} is below the LE minimum {DEFAULT_ATT_MTU}")
    if not frame:
        raise ProtocolError("an empty frame cannot be sent")
    size = min(att_mtu - ATT_OVERHEAD, MAX_ATT_VALUE)
    return [frame[start : start + size] for start in range(0, len(frame), size)]


class FrameReassembler:
    """Chunks in, frame payloads out; ProtocolError on a frame larger than the cap."""

    def __init__(self, max_buffered: int = MAX_BUFFERED) -> None:
        if max_buffered <= FRAME_HEADER_LEN:
            raise ValueError("the cap must leave room for a frame header")
        self.max_buffered = max_buffered
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame held now."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add one chunk; return the payloads of the frames it completed, in order.

        After a ProtocolError the stream cannot be resynced: drop the link.
        """
        self._buffer += chunk
        payloads: list[bytes] = []
        while (end := self._frame_end()) is not None:
            used, payload = decode_frame(bytes(self._buffer[:end]))
            assert payload is not None and used == end
            del self._buffer[:end]
            payloads.append(payload)
        return payloads

    def reset(self) -> None:
        """Forget a partial frame (a new connection starts clean)."""
        self._buffer.clear()

    def _frame_end(self) -> int | None:
        """Where the first buffered frame ends, None while it is incomplete; checks the cap."""
        if len(self._buffer) < FRAME_HEADER_LEN:
            return None
        length = int.from_bytes(self._buffer[:FRAME_HEADER_LEN], "big")
        end = FRAME_HEADER_LEN + length
        if end > self.max_buffered:
            self._buffer.clear()
            raise ProtocolError(
                f"frame announces {length} bytes, more than the {self.max_buffered}-byte cap"
            )
        return end if len(self._buffer) >= end else None
