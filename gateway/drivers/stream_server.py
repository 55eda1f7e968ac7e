"""Start and stop of the gateway's local stream servers (control socket, handheld bench link).

Each caller keeps its own policy for a socket file left at the path: the control socket refuses
to replace a live one, the handheld listener always replaces it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path

__all__ = ["STREAM_LIMIT", "ClientConnected", "listen_unix", "stop_serving"]

STREAM_LIMIT = 64 * 1024
"""asyncio's default line and buffer limit for a stream."""

ClientConnected = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def listen_unix(
    path: Path, serve: ClientConnected, *, mode: int, limit: int = STREAM_LIMIT
) -> asyncio.Server:
    """Serve on a Unix socket at `path` (a missing directory is made 0700) with file mode `mode`."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    server = await asyncio.start_unix_server(serve, path=str(path), limit=limit)
    os.chmod(path, mode)
    return server


async def stop_serving(server: asyncio.Server, clients: Collection[asyncio.Task[None]]) -> None:
    """Stop accepting, cancel the clients' tasks and wait for them and for the server."""
    server.close()
    for task in list(clients):
        task.cancel()
    await asyncio.gather(*clients, return_exceptions=True)
    await server.wait_closed()
