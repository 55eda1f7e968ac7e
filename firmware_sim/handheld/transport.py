"""The simulated handheld's side of the bench transport: frames over TCP or a Unix socket.

The handheld dials the gateway's listener (`tcp:HOST:PORT` or `unix:PATH`, the strings of
`handheld.listen`) and speaks length-prefixed frames of the codec in gateway/protocol/handheld.py.
It shares only that codec with the gateway, so the simulator stays the far end of the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.errors import ProtocolError
from gateway.protocol.handheld import (
    FRAME_HEADER_LEN,
    Message,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
)

__all__ = ["Dialer", "HandheldLink", "HandheldStream", "connect"]


class HandheldLink(Protocol):
    """One connection to the gateway, over TCP, a Unix socket or BLE (ble.py)."""

    async def read(self) -> Message: ...

    async def write(self, message: Message) -> None: ...

    async def close(self) -> None: ...


Dialer = Callable[[str], Awaitable[HandheldLink]]
"""Opens a HandheldLink to an address; `connect` is the default."""


class HandheldStream:
    """Handheld protocol messages over one client connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self) -> Message:
        """The next message; ProtocolError on a bad frame, IncompleteReadError at EOF."""
        header = await self._reader.readexactly(FRAME_HEADER_LEN)
        decode_frame(header)  # an oversized length raises before its body is read
        body = await self._reader.readexactly(int.from_bytes(header, "big"))
        _, payload = decode_frame(header + body)
        if payload is None:  # pragma: no cover - readexactly returned the whole frame
            raise ProtocolError("incomplete frame")
        return decode_message(payload)

    async def write(self, message: Message) -> None:
        """Send one message."""
        self._writer.write(encode_frame(encode_message(message)))
        await self._writer.drain()

    async def close(self) -> None:
        """Close the connection (idempotent, quiet when the gateway is already gone)."""
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


async def connect(address: str) -> HandheldLink:
    """Dial a gateway's handheld listener at `tcp:HOST:PORT` or `unix:PATH`."""
    scheme, _, rest = address.partition(":")
    if scheme == "unix" and rest:
        reader, writer = await asyncio.open_unix_connection(rest)
        return HandheldStream(reader, writer)
    host, _, port = rest.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if scheme != "tcp" or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{address!r} is not tcp:HOST:PORT or unix:PATH")
    reader, writer = await asyncio.open_connection(host, int(port))
    return HandheldStream(reader, writer)
