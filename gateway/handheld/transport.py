"""The stream transports of the handheld protocol: length-prefixed frames over TCP or a Unix socket.

Chosen by a string: `tcp:HOST:PORT` or `unix:PATH` (`ble`, the GATT transport of a
production handheld, is in ble.py). FrameStream serves the gateway (HandheldServer) and local
clients (`connect`); the simulated handheld has its own client in
firmware_sim/handheld/transport.py over the same codec. The HandheldService sees any of them
as a `MessageStream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gateway.drivers.stream_server import listen_unix, stop_serving
from gateway.errors import ConfigError, ProtocolError
from gateway.protocol.handheld import (
    FRAME_HEADER_LEN,
    PROTOCOL_VERSION,
    Message,
    decode_frame,
    decode_message,
    encode_frame,
    encode_message,
)

__all__ = [
    "BLE_LISTEN",
    "FrameStream",
    "HandheldServer",
    "ListenAddress",
    "MessageStream",
    "connect",
    "parse_listen",
]

_log = logging.getLogger(__name__)

SOCKET_MODE = 0o660
DEFAULT_MAX_CONNECTIONS = 8
BLE_LISTEN = "ble"
"""`handheld.listen` for the GATT transport on the `[ble]` adapter (docs/handheld.md, 8.1)."""


class MessageStream(Protocol):
    """One handheld connection as the HandheldService sees it, whatever carries it."""

    @property
    def peer(self) -> str: ...

    async def read(self) -> Message: ...

    async def write(self, message: Message, *, version: int = PROTOCOL_VERSION) -> None: ...

    async def close(self) -> None: ...


ConnectionHandler = Callable[["FrameStream"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A parsed `tcp:HOST:PORT`, `unix:PATH` or `ble`."""

    scheme: str
    host: str = ""
    port: int = 0
    path: str = ""

    def __str__(self) -> str:
        if self.scheme == BLE_LISTEN:
            return BLE_LISTEN
        if self.scheme == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


def parse_listen(text: str) -> ListenAddress:
    """Parse a transport string; raise ConfigError naming `handheld.listen`."""
    if text == BLE_LISTEN:
        return ListenAddress(BLE_LISTEN)
    scheme, sep, rest = text.partition(":")
    if scheme == "unix" and sep and rest:
        return ListenAddress("unix", path=rest)
    if scheme == "tcp" and sep:
        host, _, port = rest.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if host and port.isdigit() and int(port) <= 65535:
            return ListenAddress("tcp", host=host, port=int(port))
    raise ConfigError("handheld.listen", f"{text!r} is not tcp:HOST:PORT, unix:PATH or ble")


class FrameStream:
    """Handheld protocol messages over one stream connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @property
    def peer(self) -> str:
        """Who is connected, for per-source limits: the remote host, or "unix"."""
        name = self._writer.get_extra_info("peername")
        if isinstance(name, tuple) and name:
            return str(name[0])
        return "unix"

    async def read(self) -> Message:
        """The next message; ProtocolError on a bad frame, IncompleteReadError at EOF."""
        header = await self._reader.readexactly(FRAME_HEADER_LEN)
        decode_frame(header)  # rejects an oversized length before reading its body
        length = int.from_bytes(header, "big")
        body = await self._reader.readexactly(length)
        _, payload = decode_frame(header + body)
        if payload is None:  # pragma: no cover - readexactly returned the whole frame
            raise ProtocolError("incomplete frame")
        return decode_message(payload)

    async def write(self, message: Message, *, version: int = PROTOCOL_VERSION) -> None:
        """Send one message (a refusal may be written in an older version, for an old peer)."""
        self._writer.write(encode_frame(encode_message(message, version)))
        await self._writer.drain()

    async def close(self) -> None:
        """Close the connection (idempotent, never raises for a gone peer)."""
        if self._writer.is_closing():
            return
        self._writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self._writer.wait_closed()


async def connect(address: str | ListenAddress) -> FrameStream:
    """Open a FrameStream to a gateway's handheld listener."""
    target = parse_listen(address) if isinstance(address, str) else address
    if target.scheme == "unix":
        reader, writer = await asyncio.open_unix_connection(target.path)
    else:
        reader, writer = await asyncio.open_connection(target.host, target.port)
    return FrameStream(reader, writer)


class HandheldServer:
    """Accepts handheld connections and hands each to `handler` as a FrameStream."""

    def __init__(
        self,
        listen: str,
        handler: ConnectionHandler,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        self._listen = parse_listen(listen)
        if self._listen.scheme == BLE_LISTEN:
            raise ConfigError("handheld.listen", "ble is served by BleHandheldServer")
        self._handler = handler
        self._max = max_connections
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self.address: ListenAddress = self._listen

    async def start(self) -> None:
        """Bind and start accepting; `address` then holds the bound address."""
        if self._listen.scheme == "unix":
            await self._start_unix()
        else:
            self._server = await asyncio.start_server(
                self._serve, self._listen.host, self._listen.port
            )
            host, port = self._server.sockets[0].getsockname()[:2]
            self.address = ListenAddress("tcp", host=host, port=port)
        _log.info("handheld listener on %s", self.address)

    async def stop(self) -> None:
        """Stop accepting, drop the connected handhelds."""
        if self._server is None:
            return
        await stop_serving(self._server, self._clients)
        self._server = None
        if self._listen.scheme == "unix":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._listen.path)

    async def run(self) -> None:
        """Start, serve until cancelled, stop (for the supervisor)."""
        await self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.stop()

    async def _start_unix(self) -> None:
        path = Path(self._listen.path)
        _remove_socket_file(path)
        self._server = await listen_unix(path, self._serve, mode=SOCKET_MODE)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stream = FrameStream(reader, writer)
        if len(self._clients) >= self._max:
            _log.warning("handheld connection refused: %d already connected", self._max)
            await stream.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._handler(stream)
        finally:
            self._clients.discard(task)
            await stream.close()


def _remove_socket_file(path: Path) -> None:
    """Remove a socket file left at the path; this listener always replaces it."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
