"""The local control socket: JSON lines over a Unix stream socket in the state directory.

Each request is one line `{"cmd": NAME}`; each answer is one line, either
`{"ok": true, NAME: {...}}` or `{"ok": false, "error": "..."}`. A connection may carry several
requests. The socket is mode 0660 inside the 0700 state directory, so only the service user
(and root) reach it; it is a local health and admin channel, never exposed to the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from gateway.drivers.stream_server import listen_unix, stop_serving
from gateway.errors import (
    ControlError,
    GatewayError,
    GatewayNotRunningError,
    ProtocolError,
    TransientError,
)

_LOGGER = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
SOCKET_MODE = 0o660
MAX_LINE = 64 * 1024
MAX_REPLY = 1024 * 1024
IDLE_TIMEOUT_S = 30.0
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_PATH_BYTES = 107

Handler = Callable[[], Awaitable[dict[str, Any]]]


def control_socket_path(state_dir: Path) -> Path:
    """Where the daemon listens: `{state_dir}/control.sock`."""
    return Path(state_dir) / SOCKET_NAME


class ControlServer:
    """Serves JSON-line requests on a Unix socket, dispatching `cmd` to async handlers."""

    def __init__(self, path: Path, handlers: Mapping[str, Handler]) -> None:
        self.path = Path(path)
        self._handlers = dict(handlers)
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()
        self._inode: int | None = None

    async def start(self) -> None:
        """Bind the socket (replacing a stale one) and start serving."""
        _check_path_length(self.path)
        _remove_stale_socket(self.path)
        self._server = await listen_unix(
            self.path, self._serve_client, mode=SOCKET_MODE, limit=MAX_LINE
        )
        self._inode = self.path.stat().st_ino
        _LOGGER.info("control socket listening on %s", self.path)

    async def stop(self) -> None:
        """Stop listening, drop connected clients and remove the socket file."""
        if self._server is None:
            return
        await stop_serving(self._server, self._clients)
        self._server = None
        self._unlink_own_socket()

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._answer_lines(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            _LOGGER.debug("control client went away")
        except ValueError:  # a line longer than MAX_LINE
            await _send(writer, _error("request too long"))
        finally:
            self._clients.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer_lines(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            async with asyncio.timeout(IDLE_TIMEOUT_S):
                line = await reader.readline()
            if not line:
                return
            await _send(writer, await self.dispatch(line))

    async def dispatch(self, line: bytes) -> dict[str, Any]:
        """Answer one request line."""
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _error("bad request: not JSON")
        cmd = request.get("cmd") if isinstance(request, dict) else None
        if not isinstance(cmd, str) or cmd not in self._handlers:
            known = ", ".join(sorted(self._handlers))
            return _error(f"unknown command {cmd!r} (known: {known})")
        try:
            result = await self._handlers[cmd]()
        except Exception:  # one failing handler must not take down the socket
            _LOGGER.exception("control command %s failed", cmd)
            return _error(f"command {cmd} failed; see the gateway log")
        return {"ok": True, cmd: result}

    def _unlink_own_socket(self) -> None:
        """Remove the socket file unless someone else has bound the path since."""
        with contextlib.suppress(FileNotFoundError):
            if self.path.stat().st_ino == self._inode:
                self.path.unlink()


def request(path: Path, cmd: str, timeout: float = 5.0) -> dict[str, Any]:
    """Send one command to the daemon (blocking) and return its result object."""
    path = Path(path)
    _check_path_length(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        _connect(sock, path)
        try:
            sock.sendall(json.dumps({"cmd": cmd}).encode() + b"\n")
            reply = _read_line(sock)
        except TimeoutError as exc:
            raise TransientError(f"gateway at {path} did not answer within {timeout:g} s") from exc
    return _parse_reply(reply, cmd)


def query_status(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """The running daemon's status dict, read over its control socket."""
    return request(path, "status", timeout)


def _connect(sock: socket.socket, path: Path) -> None:
    try:
        sock.connect(str(path))
    except FileNotFoundError as exc:
        raise GatewayNotRunningError(path, "no such socket") from exc
    except ConnectionRefusedError as exc:
        raise GatewayNotRunningError(path, "connection refused; stale socket") from exc
    except PermissionError as exc:
        raise GatewayNotRunningError(path, "permission denied; run as root or sealgw") from exc
    except OSError as exc:
        raise GatewayNotRunningError(path, exc.strerror or str(exc)) from exc


def _read_line(sock: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ProtocolError("gateway closed the control connection without answering")
        buf += chunk
        if len(buf) > MAX_REPLY:
            raise ProtocolError("control reply is too long")
    return bytes(buf[: buf.index(b"\n")])


def _parse_reply(line: bytes, cmd: str) -> dict[str, Any]:
    try:
        reply = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("control reply is not JSON") from exc
    if not isinstance(reply, dict):
        raise ProtocolError("control reply is not an object")
    if reply.get("ok") is not True:
        raise ControlError(f"gateway refused {cmd!r}: {reply.get('error', 'no reason given')}")
    result = reply.get(cmd)
    if not isinstance(result, dict):
        raise ProtocolError(f"control reply has no {cmd!r} object")
    return result


async def _send(writer: asyncio.StreamWriter, reply: Mapping[str, Any]) -> None:
    writer.write(json.dumps(reply, separators=(",", ":"), default=str).encode() + b"\n")
    await writer.drain()


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _check_path_length(path: Path) -> None:
    if len(os.fsencode(path)) > MAX_PATH_BYTES:
        raise GatewayError(f"control socket path {path} is longer than {MAX_PATH_BYTES} bytes")


def _remove_stale_socket(path: Path) -> None:
    """Unlink a socket file nobody listens on; refuse if a live daemon owns it."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise GatewayError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except ConnectionRefusedError:
            _LOGGER.info("removing stale control socket %s", path)
            path.unlink()
            return
    raise GatewayError(f"another gateway is already listening on {path}")
