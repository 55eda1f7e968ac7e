"""What the handheld GATT servers share, whichever stack serves them (docs/handheld.md, 8.1).

No Bluetooth stack is imported here: the bumble server (ble.py) and the BlueZ server
(ble_bluez.py) both build on it, and a gateway needs only the stack its adapter uses.
`ChunkedFrameStream` is one handheld link as the HandheldService sees it: RX writes are
reassembled into frames (FrameReassembler, with its cap), answers are cut to the link's ATT
MTU and handed to the stack one notification at a time.
"""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import ProtocolError
from gateway.handheld.transport import MessageStream
from gateway.protocol.handheld import (
    PROTOCOL_VERSION,
    Message,
    decode_message,
    encode_frame,
    encode_message,
)
from gateway.protocol.handheld_gatt import FrameReassembler, chunk_frame

__all__ = [
    "ADVERTISED_NAME_ROOM",
    "HANDHELD_URGENCY",
    "PENDING_FRAMES",
    "ChunkedFrameStream",
    "ConnectionHandler",
    "LinkSlots",
    "advertised_name",
]

_log = logging.getLogger(__name__)

HANDHELD_URGENCY = 0
"""The scheduler's most urgent class (handheld work): a handheld link waits behind nothing."""
PENDING_FRAMES = 2
"""Frames received but not yet read; more stalls the handheld's writes (ATT back-pressure)."""
ADVERTISED_NAME_ROOM = 31 - 3 - (2 + 16) - 2
"""Bytes of local name that fit a legacy advert beside the flags and the 128-bit service UUID."""

ConnectionHandler = Callable[[MessageStream], Awaitable[None]]


class LinkSlots(Protocol):
    """Slots of the BLE connection budget (the lock scheduler's PriorityGate)."""

    async def acquire(self, urgency: int) -> None: ...

    def release(self) -> None: ...


def advertised_name(name: str) -> str:
    """The local name as advertised: cut to the room a legacy advert leaves (whole characters)."""
    encoded = name.encode("utf-8")[:ADVERTISED_NAME_ROOM]
    return encoded.decode("utf-8", errors="ignore")


class ChunkedFrameStream(ABC):
    """Handheld protocol messages over one GATT link: RX writes in, TX notifications out."""

    def __init__(self) -> None:
        self._reassembler = FrameReassembler()
        self._frames: asyncio.Queue[bytes | None] = asyncio.Queue(PENDING_FRAMES)
        self._closing: asyncio.Task[None] | None = None
        self._ending: asyncio.Task[None] | None = None
        self._closed = False

    @property
    @abstractmethod
    def peer(self) -> str:
        """The handheld's LE address (for per-source limits)."""

    @property
    @abstractmethod
    def att_mtu(self) -> int:
        """The link's ATT MTU now."""

    @abstractmethod
    async def _notify(self, chunk: bytes) -> None:
        """Send one chunk as a TX notification."""

    @abstractmethod
    async def _disconnect(self) -> None:
        """End the link (quiet when it is already gone)."""

    @property
    def closed(self) -> bool:
        """True once the link ended or is being ended."""
        return self._closed

    async def feed(self, chunk: bytes) -> None:
        """An RX write: reassemble; a frame over the cap raises ProtocolError and ends the link."""
        try:
            payloads = self._reassembler.feed(chunk)
        except ProtocolError as exc:
            _log.warning("handheld %s: %s; dropping the link", self.peer, exc)
            self._closing = asyncio.get_running_loop().create_task(self.close())
            raise
        for payload in payloads:
            await self._frames.put(payload)

    def on_disconnect(self) -> None:
        """The link is gone: the reader sees the end of the stream (after the frames queued)."""
        self._closed = True
        try:
            self._frames.put_nowait(None)
        except asyncio.QueueFull:
            self._ending = asyncio.get_running_loop().create_task(self._frames.put(None))

    async def read(self) -> Message:
        """The next message; ProtocolError on a bad frame, IncompleteReadError at disconnect."""
        payload = await self._frames.get()
        if payload is None:
            self._frames.put_nowait(None)  # every later read sees the end too
            raise asyncio.IncompleteReadError(b"", None)
        return decode_message(payload)

    async def write(self, message: Message, *, version: int = PROTOCOL_VERSION) -> None:
        """Send one message as notifications of at most ATT_MTU - 3 bytes."""
        frame = encode_frame(encode_message(message, version))
        for chunk in chunk_frame(frame, self.att_mtu):
            if self._closed:
                raise ConnectionError("handheld link is gone")
            await self._notify(chunk)

    async def close(self) -> None:
        """Disconnect (idempotent, quiet when the handheld already left)."""
        if self._closed:
            return
        self._closed = True
        await self._disconnect()
